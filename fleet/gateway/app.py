"""The gateway as a plain ASGI application: authenticate, fingerprint, route, relay, account.

Why not a Django view: Django's request path costs milliseconds, the gateway's budget is
half of one. Here a request touches no database: it reads the in-memory routing table
(refreshed by a background task), talks to vLLM over kept-alive connections, and queues
its log record for a background batch writer. All ORM work runs on one database worker:
a process of its own in a dedicated gateway, a thread in the panel's mount.

Routing: the request's RCF picks a tier; the tier's fallback order (``FALLBACK``) lists
the pools to try, without any pool whose ``max_model_len`` the request exceeds; within a
tier the ready instance with the fewest outstanding requests wins. When no eligible pool
has a ready instance the request is held (bounded in number and time) while the
preferred pool is woken through ``fleet.decide.evaluate.pool_wake_request``; a refresh
that sees an instance ready releases it. A connection error or 5xx before the first byte
is retried once on another instance, and the failing one sits out a cool-down. Outstanding
and held requests that reach the top of the pool's band ask for one more instance at once
(``fleet.policies.pressure``; ``fleet.decide.evaluate.pool_scale_out_request``), at most once
per autoscale's scale-out cool-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

from fleet.gateway import worker
from fleet.gateway.accounting import RequestRecord, RequestRecorder
from fleet.gateway.config import GatewayConfig
from fleet.gateway.decide import Routed, authenticate, models_visible, route
from fleet.gateway.limits import KeyLimiter, SharedKeyLimiter
from fleet.gateway.protocol import (
    ApiError,
    SseRelay,
    load_json,
    parse_chat,
    parse_completion,
    usage_tokens,
)
from fleet.gateway.table import EMPTY_TABLE, ApiKeyRoute, RoutingTable, Upstream, routing_table_load
from fleet.gateway.upstream import UpstreamBroken, UpstreamPool, UpstreamResponse, UpstreamUnavailable
from fleet.policies.pick import Picker
from fleet.policies.pressure import pressure_scale_out

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

JSON = b"application/json"
PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
WAKE_FAILED_RETRY_S = 1.0


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


class Gateway:
    """The ASGI callable. One per process; its state (table, counters, pools) is per event loop."""

    def __init__(
        self,
        *,
        config: GatewayConfig | None = None,
        table_loader: Callable[[], RoutingTable] = routing_table_load,
    ) -> None:
        self.config = config or GatewayConfig.from_settings()
        self.table = EMPTY_TABLE
        self.loaded = False
        self.recorder = RequestRecorder(max_pending=self.config.log_max_pending)
        self.picker = Picker(cooldown_s=self.config.cooldown_s)
        self.limiter = KeyLimiter()
        self.shared_limiter: SharedKeyLimiter | None = None
        self.held = 0
        self._table_loader = table_loader
        self._wake_sent: dict[int, float] = {}
        self._scale_sent: dict[int, float] = {}
        self._held_for: dict[int, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._changed: asyncio.Future[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._executor: Executor | None = None
        self._upstreams: UpstreamPool | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the routing table and start the refresh and log-flush tasks, once."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        if self.config.switch_interval_s > 0:
            # The ORM thread must not hold the interpreter for Python's default 5 ms while
            # requests wait; process-wide, which suits a process that serves requests.
            sys.setswitchinterval(min(sys.getswitchinterval(), self.config.switch_interval_s))
        self._executor = self._db_executor()
        self._upstreams = UpstreamPool(
            connect_timeout_s=self.config.connect_timeout_s,
            header_timeout_s=self.config.upstream_timeout_s,
            read_timeout_s=self.config.upstream_timeout_s,
            response_timeout_s=self.config.upstream_response_timeout_s,
            max_body_bytes=self.config.upstream_max_body_bytes,
        )
        if self.config.redis_url:
            # Created on the loop that serves: its connections belong to it.
            self.shared_limiter = SharedKeyLimiter(self.config.redis_url, fallback=self.limiter)
        self._changed = loop.create_future()
        await self.refresh()
        # Everything loaded so far (Django, the first table) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it mid-request.
        gc.freeze()
        self._background = [loop.create_task(self._refresh_loop()), loop.create_task(self._flush_loop())]
        self._starting.set_result(None)

    def _db_executor(self) -> Executor:
        """The database worker: a process of its own where ``db_process`` says so, else a thread.

        ORM work is Python, and Python run on a second thread of the serving process takes
        the interpreter from the event loop: every routing-table refresh and request-log
        batch held up the requests that arrived meanwhile by milliseconds (the tail of the
        latency). A worker process runs it beside the event loop instead; only pickled
        arguments and results cross. The panel's own mount keeps the thread: it serves
        Django's pages in the same process anyway, and its tests' database is the test's.
        """
        if self.config.db_process:
            return ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=worker.start
            )
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")

    async def stop(self) -> None:
        """Stop the background tasks, write the queued log records, close connections."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        if self._upstreams is not None:
            await self._upstreams.close()
        if self.shared_limiter is not None:
            await self.shared_limiter.close()
            self.shared_limiter = None
        if self._executor is not None:
            if isinstance(self._executor, ThreadPoolExecutor):
                from django.db import connections

                await self._db(connections.close_all)
            self._executor.shutdown(wait=True)
        self._starting = None

    async def _db(self, function: Callable[..., T], **kwargs: Any) -> T:
        """Run ORM work on the gateway's database worker, never on the event loop.

        A worker process that died (killed, out of memory) is replaced and the call tried
        once on the new one.
        """
        executor = self._executor
        assert executor is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, worker.call, function, kwargs)
        except BrokenExecutor:
            if self._executor is executor:
                logger.error("the gateway's database worker died; starting another")
                executor.shutdown(wait=False)
                self._executor = self._db_executor()
            return await loop.run_in_executor(self._executor, worker.call, function, kwargs)

    async def refresh(self) -> None:
        """Swap in a fresh routing table and release held requests to look again."""
        try:
            table = await self._db(self._table_loader)
        except Exception:
            logger.exception("routing table refresh failed; keeping the previous table")
            return
        self.table = table
        self.loaded = True
        self.limiter.forget({key.key_id for key in table.keys.values()})
        for pool_id, pool in table.pools.items():
            if pool.upstreams:
                self._wake_sent.pop(pool_id, None)
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.held_refresh_s if self.held else self.config.refresh_s)
            await self.refresh()

    async def flush(self) -> None:
        """Write every queued record, in batches; a failed batch is counted as dropped."""
        while len(self.recorder):
            batch = self.recorder.take(self.config.log_batch)
            try:
                from fleet.decide.services import request_logs_write

                await self._db(request_logs_write, records=batch)
            except Exception:
                self.recorder.dropped += len(batch)
                logger.exception("writing %d request log records failed; dropped", len(batch))
                return

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_flush_s)
            await self.flush()

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._starting is None or not self._starting.done():
                await self.start()
            try:
                await self._http(scope, receive, send)
            except ApiError as error:
                await self._send_error(send, error)
            except ClientGone:
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send_error(self, send: Send, error: ApiError) -> None:
        body = error.body()
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *error.headers]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.loaded:
            raise ApiError(503, "The gateway has not loaded its routing table yet.", type="server_error")
        table = self.table
        key = authenticate(scope["headers"], table)
        path = scope["path"]
        endpoint = PATHS.get(path)
        if endpoint is None:
            if path == "/v1/models":
                await self._models(scope, send, table, key)
                return
            raise ApiError(404, f"Unknown path {path[:100]}.", code="unknown_url")
        if scope["method"] != "POST":
            raise ApiError(405, f"{path} takes POST.", code="method_not_allowed")
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"0")
        if not declared.isdigit() or int(declared) > self.config.max_body_bytes:
            raise self._too_large()
        body = await self._read_body(receive)
        payload = load_json(body)
        request = parse_chat(payload) if endpoint == "chat" else parse_completion(payload)
        routed = route(request, key, table)
        if key.requests_per_minute is not None or key.tokens_per_minute is not None:
            tokens = routed.prompt_tokens + (request.max_tokens or 1)
            if self.shared_limiter is not None:
                await self.shared_limiter.admit(key, tokens=tokens, now=time.monotonic(), wall=time.time())
            else:
                self.limiter.admit(key, tokens=tokens, now=time.monotonic())
        await self._serve(routed, body, path.encode(), receive, send)

    async def _models(self, scope: Scope, send: Send, table: RoutingTable, key: ApiKeyRoute) -> None:
        if scope["method"] != "GET":
            raise ApiError(405, "/v1/models takes GET.", code="method_not_allowed")
        names = models_visible(table, key)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gpufleet"} for name in names]
        body = json.dumps({"object": "list", "data": data}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self.config.max_body_bytes:
                raise self._too_large()
            return body
        pieces = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            piece = message.get("body", b"")
            size += len(piece)
            if size > self.config.max_body_bytes:
                raise self._too_large()
            pieces.append(piece)
            if not message.get("more_body"):
                return b"".join(pieces)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"The request body is over {self.config.max_body_bytes} bytes.", code="body_too_large")

    # -- routing -----------------------------------------------------------------

    def pick(self, groups: list[list[int]], exclude: int | None = None) -> Upstream | None:
        """``Picker.pick`` over the routing table's ready instances (the simulator's pick too)."""
        return self.picker.pick(groups, self._ready, now=time.monotonic(), exclude=exclude)

    def _ready(self, pool_id: int) -> tuple[Upstream, ...]:
        pool = self.table.pools.get(pool_id)
        return pool.upstreams if pool is not None else ()

    def _wake(self, routed: Routed) -> None:
        """Ask the database thread to wake the preferred pool; at most once per ``wake_retry_s``."""
        pool_id = routed.groups[0][0]
        now = time.monotonic()
        sent = self._wake_sent.get(pool_id)
        if sent is not None and now - sent < self.config.wake_retry_s:
            return
        self._wake_sent[pool_id] = now
        pool = self.table.pools.get(pool_id)
        name = pool.name if pool else str(pool_id)
        task = asyncio.get_running_loop().create_task(
            self._db(
                worker.pool_wake,
                pool_id=pool_id,
                reason=f"gateway holds a tier {routed.tier} request for {routed.request.model} and pool {name} "
                "has no ready instance",
                inputs={"rcf": round(routed.rcf, 3), "tier": routed.tier, "held": self.held},
            )
        )
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._wake_done(done, pool_id))

    def _wake_done(self, task: asyncio.Task[Any], pool_id: int) -> None:
        """A failed wake-up (the database busy or away) is tried again a second later, not a retry period later."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._wake_sent[pool_id] = time.monotonic() - self.config.wake_retry_s + WAKE_FAILED_RETRY_S
            logger.error("gateway wake-up of pool %s failed; trying again", pool_id, exc_info=task.exception())

    def _pressure(self, pool_id: int, arriving: int = 0) -> None:
        """Ask the database worker for one more instance when the pool's outstanding and held requests
        show pressure (``pressure_scale_out``), at most once per autoscale's scale-out cool-down.

        O(ready instances) on counters the gateway keeps anyway. A scale-out logged since (the
        tick's or another gateway's, read at the table refresh) starts the cool-down too.
        """
        pool = self.table.pools.get(pool_id)
        if pool is None or pool.scale_out_cooldown_s is None:
            return
        cooldown = pool.scale_out_cooldown_s
        now = time.monotonic()
        sent = self._scale_sent.get(pool_id)
        if sent is not None and now - sent < max(cooldown, self.config.refresh_s):
            return
        if pool.last_scale_out_at is not None and time.time() - pool.last_scale_out_at < cooldown:
            return
        outstanding = self.picker.outstanding
        held = self._held_for.get(pool_id, 0)
        reason = pressure_scale_out(
            pool_name=pool.name,
            max_num_seqs=pool.max_num_seqs,
            util_band_high=pool.util_band_high,
            ready=len(pool.upstreams),
            serving=pool.serving,
            active=pool.active,
            max_instances=pool.max_instances,
            outstanding=sum(outstanding.get(u.instance_id, 0) for u in pool.upstreams) + arriving,
            held=held,
        )
        if reason is None:
            return
        self._scale_sent[pool_id] = now
        task = asyncio.get_running_loop().create_task(
            self._db(
                worker.pool_scale_out,
                pool_id=pool_id,
                reason=reason,
                inputs={"ready": len(pool.upstreams), "held": held},
            )
        )
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._scale_done(done, pool_id, cooldown))

    def _scale_done(self, task: asyncio.Task[Any], pool_id: int, cooldown: float) -> None:
        """A failed request for a scale-out is tried again a second later, not a cool-down later."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._scale_sent[pool_id] = time.monotonic() - max(cooldown, self.config.refresh_s) + WAKE_FAILED_RETRY_S
            logger.error("gateway scale-out of pool %s failed; trying again", pool_id, exc_info=task.exception())

    async def _hold(self, routed: Routed) -> Upstream | None:
        """Wait for capacity, bounded in time; None when the wait ran out."""
        deadline = time.monotonic() + self.config.hold_timeout_s
        preferred = routed.groups[0][0]
        self.held += 1
        self._held_for[preferred] = self._held_for.get(preferred, 0) + 1
        try:
            while True:
                self._wake(routed)
                self._pressure(preferred)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                assert self._changed is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._changed), remaining)
                upstream = self.pick(routed.groups)
                if upstream is not None:
                    return upstream
        finally:
            self.held -= 1
            self._held_for[preferred] -= 1

    # -- relaying ----------------------------------------------------------------

    def _no_capacity(self, routed: Routed, message: str) -> ApiError:
        self._record(routed, None, 503, error=message[:255])
        return ApiError(
            503,
            message,
            type="server_error",
            code="no_capacity",
            headers=[(b"retry-after", str(self.config.retry_after_s).encode())],
        )

    async def _serve(self, routed: Routed, body: bytes, path: bytes, receive: Receive, send: Send) -> None:
        upstream = self.pick(routed.groups)
        if upstream is None:
            if self.held >= self.config.max_held:
                raise self._no_capacity(routed, f"No capacity and {self.held} requests already waiting; retry later.")
            routed.cold_start = True
            upstream = await self._hold(routed)
            if upstream is None:
                raise self._no_capacity(
                    routed,
                    f"No instance for {routed.request.model} became ready within {self.config.hold_timeout_s:g} s; "
                    "its pool is waking, retry later.",
                )
        self._pressure(upstream.pool_id, arriving=1)
        request = routed.request
        inject_usage = request.stream and not request.include_usage
        if inject_usage:
            payload = dict(request.payload)
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
            body = json.dumps(payload, separators=(",", ":")).encode()
        response, upstream = await self._exchange(routed, upstream, path, body)
        instance_id = upstream.instance_id
        outstanding = self.picker.outstanding
        outstanding[instance_id] = outstanding.get(instance_id, 0) + 1
        try:
            if request.stream and response.status == 200:
                await self._relay_stream(routed, upstream, response, inject_usage, receive, send)
            else:
                await self._relay_whole(routed, upstream, response, send)
        finally:
            outstanding[instance_id] -= 1

    async def _exchange(
        self, routed: Routed, upstream: Upstream, path: bytes, body: bytes
    ) -> tuple[UpstreamResponse, Upstream]:
        """Send the request; on a connection error or 5xx, cool the instance and try one other."""
        assert self._upstreams is not None
        outstanding = self.picker.outstanding
        while True:
            instance_id = upstream.instance_id
            outstanding[instance_id] = outstanding.get(instance_id, 0) + 1
            try:
                response = await self._upstreams.request(upstream.target, b"POST", path, body)
                failure = f"upstream answered {response.status}" if response.status >= 500 else ""
            except UpstreamUnavailable as exc:
                response, failure = None, str(exc)
            finally:
                outstanding[instance_id] -= 1
            if not failure and response is not None:
                return response, upstream
            self.picker.cool(instance_id, now=time.monotonic())
            logger.warning("instance %s failed (%s); cooling down %g s", instance_id, failure, self.config.cooldown_s)
            other = None if routed.retried else self.pick(routed.groups, exclude=instance_id)
            if other is None:
                if response is not None:
                    return response, upstream
                self._record(routed, upstream, 502, error=failure[:255])
                raise ApiError(502, "The model server could not be reached.", type="server_error", code="upstream")
            if response is not None:
                response.close()
            routed.retried = True
            upstream = other

    def _headers(self, routed: Routed, upstream: Upstream, content_type: bytes) -> list[tuple[bytes, bytes]]:
        pool = self.table.pools.get(upstream.pool_id)
        return [
            (b"content-type", content_type),
            (b"x-fleet-tier", routed.tier.encode()),
            (b"x-fleet-pool", (pool.name if pool else "").encode()),
            (b"x-fleet-instance", str(upstream.instance_id).encode()),
        ]

    async def _relay_whole(self, routed: Routed, upstream: Upstream, response: UpstreamResponse, send: Send) -> None:
        try:
            data = await response.read()
        except UpstreamBroken as exc:
            self._record(routed, upstream, 502, error=str(exc)[:255])
            raise ApiError(502, "The model server's answer broke off.", type="server_error", code="upstream") from exc
        headers = self._headers(routed, upstream, response.headers.get(b"content-type", JSON))
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        prompt = output = None
        if response.status == 200:
            try:
                body = json.loads(data)
            except ValueError:
                body = None
            tokens = usage_tokens(body.get("usage") if isinstance(body, dict) else None)
            if tokens is not None:
                prompt, output = tokens
        self._record(routed, upstream, response.status, prompt_tokens=prompt, output_tokens=output)

    async def _relay_stream(
        self,
        routed: Routed,
        upstream: Upstream,
        response: UpstreamResponse,
        inject_usage: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        """Pass events through as they arrive; stop reading when the client goes away.

        Time to first token runs from where latency starts (the request read and routed) to the
        first event with a generated token in it (``SseRelay.generated``), not to the first event.
        """
        headers = self._headers(routed, upstream, response.headers.get(b"content-type", b"text/event-stream"))
        headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        relay = SseRelay(strip_usage=inject_usage)
        disconnect = asyncio.ensure_future(receive())
        first: float | None = None
        status, error = 200, ""
        try:
            async for piece in response.chunks():
                out = relay.feed(piece)
                if first is None and relay.generated:
                    first = time.perf_counter()
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if disconnect.done():
                    response.close()
                    status, error = 499, "client closed the stream"
                    break
        except UpstreamBroken as exc:
            status, error = 502, str(exc)[:255]
        finally:
            disconnect.cancel()
        if status != 499:
            rest = relay.finish()
            if first is None and relay.generated:
                first = time.perf_counter()
            await send({"type": "http.response.body", "body": rest, "more_body": False})
        from_usage = relay.completion_tokens is not None
        self._record(
            routed,
            upstream,
            status,
            prompt_tokens=relay.prompt_tokens,
            output_tokens=relay.completion_tokens if from_usage else relay.data_events,
            from_usage=from_usage,
            ttft_ms=None if first is None else (first - routed.started) * 1000,
            error=error,
        )

    def _record(
        self,
        routed: Routed,
        upstream: Upstream | None,
        status: int,
        *,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
        from_usage: bool | None = None,
        ttft_ms: float | None = None,
        error: str = "",
    ) -> None:
        if from_usage is None:
            from_usage = prompt_tokens is not None
        self.recorder.record(
            RequestRecord(
                at=routed.wall,
                key_id=routed.key.key_id,
                team_id=routed.key.team_id,
                pool_id=upstream.pool_id if upstream else routed.groups[0][0],
                instance_id=upstream.instance_id if upstream else None,
                endpoint=routed.request.endpoint,
                model=routed.request.model,
                rcf=routed.rcf,
                tier=routed.tier,
                stream=routed.request.stream,
                prompt_tokens=prompt_tokens if prompt_tokens is not None else routed.prompt_tokens,
                output_tokens=output_tokens,
                tokens_from_usage=from_usage,
                ttft_ms=ttft_ms,
                latency_ms=(time.perf_counter() - routed.started) * 1000,
                status=status,
                cold_start=routed.cold_start,
                retried=routed.retried,
                error=error,
            )
        )
