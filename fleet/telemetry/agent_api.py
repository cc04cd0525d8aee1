"""HTTP endpoints the agents call: register with a join token, then report every interval,
and wait (a long poll) to hear that their desired state changed.

Bodies are JSON, optionally gzip-compressed; both the wire size and the decompressed size
are capped before parsing, each node's report requests are bounded per minute
(``report_rate_wait``), and every error is a JSON body with a message that says what
is wrong.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import InternalError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents import protocol
from fleet.events import listeners_loop_note, node_desired_group
from fleet.models import Node
from fleet.telemetry import ingest
from fleet.telemetry.claims import IngestError
from fleet.telemetry.ingest import report_ingest
from fleet.telemetry.registration import node_authenticate, node_register

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], HttpResponse]
M = TypeVar("M", bound=BaseModel)


def error_response(status: int, message: str, details: list[str] | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": {"message": message}}
    if details:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


def _read_body(request: HttpRequest) -> bytes:
    """The request body, decompressed, refused early when it is too large either way."""
    limit = protocol.MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > limit:
        raise IngestError(413, f"body larger than {limit} bytes")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise IngestError(413, f"body larger than {limit} bytes")
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "identity").lower()
    if encoding == "identity":
        return raw
    if encoding != "gzip":
        raise IngestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        body = decompressor.decompress(raw, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise IngestError(400, f"body is not valid gzip: {exc}") from exc
    if len(body) > limit or decompressor.unconsumed_tail:
        raise IngestError(413, f"decompressed body larger than {limit} bytes")
    return body


def _unstorable_text(data: Any) -> str | None:
    """Where the JSON holds text no database column can store (NUL, lone surrogates), or None.

    JSON escapes can carry both; PostgreSQL refuses them at INSERT, which would turn a bad
    report into a server error halfway through storing it.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                stack.append((f"{path}.{key}" if path else str(key), key))
                stack.append((f"{path}.{key}" if path else str(key), child))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}", child) for index, child in enumerate(value))
        elif isinstance(value, str) and ("\x00" in value or _has_surrogate(value)):
            return path or "(body)"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Where a body can hold NUL or a lone surrogate: only as a ``\\u`` escape (raw NUL is not
# valid JSON, raw surrogates are not valid UTF-8). Bodies without one skip the walk.
_ESCAPE = re.compile(rb"\\u")


def _parse(request: HttpRequest, model: type[M]) -> M:
    """The body as ``model``; refused with a 4xx that says what is wrong, nothing stored.

    A body without escapes is parsed and validated in one step (pydantic's own JSON
    parser); anything it refuses, or any body with escapes, takes the careful path, which
    says exactly what is wrong.
    """
    body = _read_body(request)
    if _ESCAPE.search(body) is None:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            pass
    too_deep = f"body is nested more than {protocol.MAX_JSON_DEPTH} deep"
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise IngestError(400, too_deep) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(400, f"body is not JSON: {exc}") from exc
    if protocol.nested_deeper_than(data, protocol.MAX_JSON_DEPTH):
        raise IngestError(400, too_deep)
    where = _unstorable_text(data)
    if where is not None:
        raise IngestError(400, "report refused, nothing stored", [f"{where[:200]}: NUL character or invalid UTF-8"])
    if isinstance(data, dict) and model is protocol.Batch and data.get("version") != protocol.PROTOCOL_VERSION:
        raise IngestError(400, f"unsupported protocol version {data.get('version')!r}; this panel speaks 1")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise IngestError(400, "report refused, nothing stored", protocol.error_summary(exc.errors())) from exc


def _ip(text: str) -> str:
    """``text`` as a normalised IP address (IPv4-mapped IPv6 as IPv4), or empty if it is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return ""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def agent_peer(request: HttpRequest) -> str:
    """The address the agent's request came from, as the panel sees it; empty if unknown.

    The connection's peer (REMOTE_ADDR, which the ASGI handler fills from the client of
    the connection). Behind a reverse proxy that is the proxy, so ``AGENT_ADDRESS_HEADER``
    names the header the proxy writes the agent's address into; its last entry is the one
    the proxy itself added. The header counts only when configured: any client can send it.
    """
    if settings.AGENT_ADDRESS_HEADER:
        forwarded = _ip(request.headers.get(settings.AGENT_ADDRESS_HEADER, "").rsplit(",", 1)[-1])
        if forwarded:
            return forwarded
    return _ip(request.META.get("REMOTE_ADDR", ""))


def _bearer(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise IngestError(401, "missing 'Authorization: Bearer <node token>'")
    return token.strip()


DATABASE_RETRY_AFTER_S = 5


def _refusals(view: View) -> View:
    """Turn refusals into their status; a database that cannot write (down, read-only, disk
    full) into 503, so agents keep the report and send it again instead of dropping it."""

    def wrapped(request: HttpRequest) -> HttpResponse:
        try:
            return view(request)
        except IngestError as exc:
            return error_response(exc.status, exc.message, exc.details)
        except (OperationalError, InternalError) as exc:
            logger.warning("agent API: database unavailable, %s refused: %s", request.path, exc)
            response = error_response(503, f"database unavailable, nothing stored; send again later ({exc})"[:500])
            response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
            return response

    return wrapped


@csrf_exempt
@require_POST
@_refusals
def register(request: HttpRequest) -> JsonResponse:
    registration = _parse(request, protocol.Registration)
    node, token = node_register(registration=registration, peer=agent_peer(request))
    reply = protocol.Registered(node=node.name, node_token=token, report_interval_s=5.0)
    return JsonResponse(reply.model_dump(), status=201)


REPORT_WINDOW_S = 60


_redis_client: Any = None


def _count(key: str) -> int:
    """Count one more under ``key``, which lives two windows: in Redis where the panel has it (one
    round trip: INCR and EXPIRE NX pipelined), else in this process's cache."""
    global _redis_client
    if settings.REDIS_URL:
        if _redis_client is None:
            import redis

            _redis_client = redis.Redis.from_url(settings.REDIS_URL)
        pipe = _redis_client.pipeline(transaction=False)
        pipe.incr(f"gpufleet:{key}")
        pipe.expire(f"gpufleet:{key}", int(2 * REPORT_WINDOW_S), nx=True)
        count, _ = pipe.execute()
        return int(count)
    if cache.add(key, 1, timeout=2 * REPORT_WINDOW_S):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired since the add refused: this request starts it again
        cache.add(key, 1, timeout=2 * REPORT_WINDOW_S)
        return 1


def report_rate_wait(node: Node, *, now: float | None = None) -> int:
    """Count one report request of ``node``; the seconds until it may report again, 0 if within the bound.

    A node's token makes at most ``AGENT_REPORTS_PER_MINUTE`` report requests per minute of
    the clock. The count is kept where every panel process sees it (Redis where the panel
    has it, ``_count``), one counter per node and minute, incremented atomically, so several
    workers together allow the bound once, not once each. A counter lives two minutes, so it
    never expires in the minute it counts. Without Redis the bound is not enforced (logged):
    reports keep flowing while it is down.
    """
    now = time.time() if now is None else now
    window = int(now // REPORT_WINDOW_S)
    key = f"agent-reports:{node.pk}:{node.token_hash[:16]}:{window}"
    try:
        count = _count(key)
    except (RedisError, OSError) as exc:
        logger.warning("agent API: cache unavailable, report rate of node %s not bounded: %s", node.name, exc)
        return 0
    if count <= settings.AGENT_REPORTS_PER_MINUTE:
        return 0
    return max(1, math.ceil((window + 1) * REPORT_WINDOW_S - now))


@csrf_exempt
@require_POST
@_refusals
def report(request: HttpRequest) -> HttpResponse:
    node = node_authenticate(token=_bearer(request))
    wait = report_rate_wait(node)
    if wait:
        limit = settings.AGENT_REPORTS_PER_MINUTE
        response = error_response(
            429, f"node {node.name} sent more than {limit} reports this minute; nothing stored, send again in {wait} s"
        )
        response["Retry-After"] = str(wait)
        return response
    batch = _parse(request, protocol.Batch)
    reply = report_ingest(node=node, batch=batch, peer=agent_peer(request))
    return HttpResponse(reply.model_dump_json(exclude_defaults=True), content_type="application/json")


# How long the panel holds a wait before answering "no change": under the agent's read
# timeout and the proxy's, so the panel, not a timeout, ends every wait.
WAIT_S = protocol.WAIT_S
WAIT_RETRY_AFTER_S = 5


def _generation(request: HttpRequest) -> int:
    text = request.GET.get("generation", "")
    if not text:
        raise IngestError(400, "generation is required: the desired_generation of the reply this node last applied")
    if not (text.isascii() and text.isdigit()) or int(text) > protocol.MAX_GENERATION:
        raise IngestError(
            400, f"generation must be a whole number from 0 to {protocol.MAX_GENERATION}, not {text[:40]!r}"
        )
    return int(text)


def node_desired_generations(*, node: Node) -> tuple[int, int]:
    """The node's desired-state generation, from the rows its report's reply is made of
    (``ingest.node_desired``), and the one an agent of the previous version computes from
    the same reply (``protocol.desired_generation_v1``): either means the agent is up to date.

    The row is found by id and token hash together, so a token rotated (or a node
    deleted) since ``node_authenticate`` answered from memory is refused here.
    """
    if not Node.objects.filter(pk=node.pk, token_hash=node.token_hash).exists():
        raise IngestError(401, "unknown node token")
    desired = ingest.node_desired(node)
    return protocol.desired_generation(*desired), protocol.desired_generation_v1(desired.desired, desired.batch_jobs)


def _wait_reply(changed: bool) -> HttpResponse:
    return HttpResponse(protocol.WaitReply(changed=changed).model_dump_json(), content_type="application/json")


def _wait_unavailable(what: str, exc: Exception) -> JsonResponse:
    logger.warning("agent API: wait refused, %s unavailable: %s", what, exc)
    response = error_response(503, f"{what} unavailable; report at your interval and wait again later ({exc})"[:500])
    response["Retry-After"] = str(WAIT_RETRY_AFTER_S)
    return response


async def _told(layer: Any, channel: str, *, until: float) -> bool:
    """Whether a message reached ``channel`` before ``until``.

    The Redis layer's receive blocks in rounds of 5 s, and redis-py's default socket
    timeout is 5 s too: a round the server ends on the dot can time out in the client
    (``redis.exceptions.TimeoutError``). That is a round with nothing in it, not the layer
    gone: receive again for the time left. Any other failure ends the wait as "changed",
    so the agent reports now rather than trusting a wait that may have lost its message.
    """
    while (left := until - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                await layer.receive(channel)
            return True
        except TimeoutError:
            return False
        except RedisTimeoutError:
            continue
        except Exception as exc:
            logger.warning("agent API: wait ended early, channel layer failed: %s", exc)
            return True
    return False


@csrf_exempt
async def wait(request: HttpRequest) -> HttpResponse:
    """Answer as soon as the node's desired state differs from ``generation``, else after ``WAIT_S``.

    The long poll that lets an agent act on a decision (a wake, a launch) within a fraction
    of a second instead of at its next report. It subscribes to the node's group first and
    only then reads the generation, so a change committed in between is seen either way.
    Nothing travels but "changed": the agent then reports, and the report's reply carries
    the desired state as always. A generation an agent of the previous version computes
    (``node_desired_generations``) counts as up to date too: else such an agent, whose digest
    leaves out orphan stops and specs, would be told "changed" at every wait, back off (its
    waiter's guard against a disagreement) and lose the long poll altogether. A node's token
    waits on that node only. Served by the panel's ASGI app, never the report pool's threads,
    and there outside Django's middleware (``fleet.project.asgi.agent_wait``): with a
    sync-only middleware in ``MIDDLEWARE`` Django would run the view inside a thread of its
    own for the whole wait, one thread per waiting host. The database is read in short calls
    (``database_sync_to_async``, which also drops connections the database closed).
    """
    if request.method != "GET":
        return error_response(405, f"use GET on {protocol.WAIT_PATH}, not {request.method}")
    try:
        token = _bearer(request)
        seen = _generation(request)
        node = await database_sync_to_async(node_authenticate)(token=token)
    except IngestError as exc:
        return error_response(exc.status, exc.message, exc.details)
    except (OperationalError, InternalError) as exc:
        return _wait_unavailable("database", exc)
    layer = get_channel_layer()
    if layer is None:
        return _wait_unavailable("channel layer", RuntimeError("none configured"))
    if isinstance(layer, InMemoryChannelLayer):
        listeners_loop_note(asyncio.get_running_loop())
    group = node_desired_group(node.pk)
    try:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
    except Exception as exc:  # Redis restarting: the agent falls back on its interval
        return _wait_unavailable("channel layer", exc)
    try:
        try:
            current = await database_sync_to_async(node_desired_generations)(node=node)
        except IngestError as exc:
            return error_response(exc.status, exc.message, exc.details)
        except (OperationalError, InternalError) as exc:
            return _wait_unavailable("database", exc)
        if seen not in current:
            return _wait_reply(True)
        return _wait_reply(await _told(layer, channel, until=time.monotonic() + WAIT_S))
    finally:
        try:
            await layer.group_discard(group, channel)
        except Exception as exc:  # the membership expires with the layer's group expiry
            logger.warning("agent API: could not leave %s: %s", group, exc)
