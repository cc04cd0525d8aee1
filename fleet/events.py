"""Real-time events: one place that puts fleet changes on the Channels group.

Routine reports are not published one by one: a thousand hosts reporting every five
seconds would send two hundred messages a second to every open browser. Reports are
instead coalesced into a fleet summary sent at most once per ``FLEET_SUMMARY_INTERVAL_S``
(one second by default). Instance state changes, which are rare and matter, go out at once.

Summaries carry each reporting GPU's newest numbers (utilization, memory, power,
temperature), at most ``SUMMARY_GPUS_LISTED`` of them, so live charts extend their traces
without reading the database. A node's own readings also go to its ``node.<id>`` group,
one message per report batch, for the few browsers watching that node.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

FLEET_GROUP = "fleet"
SUMMARY_NODES_LISTED = 50
SUMMARY_GPUS_LISTED = 256
CLAIM_RETRIES_PER_INTERVAL = 20


def node_group(node_id: int) -> str:
    return f"node.{node_id}"


def pool_group(pool_id: int) -> str:
    return f"pool.{pool_id}"


def node_desired_group(node_id: int) -> str:
    """The group of a node's agent waiting to hear that its desired state changed (the long poll)."""
    return f"node-desired.{node_id}"


def node_desired_changed(*, node_ids: Iterable[int | None], why: str) -> None:
    """Tell the agents of these nodes waiting on the long poll to report now.

    Call after the change is committed (``transaction.on_commit``): an agent told earlier
    could report before the change is visible and wait again on stale state. Best effort
    like every event: an agent not told learns the change at its next report.
    """
    for node_id in sorted({node_id for node_id in node_ids if node_id is not None}):
        event_publish(kind="desired", payload={"node": node_id, "why": why}, groups=(node_desired_group(node_id),))


def event_publish(*, kind: str, payload: dict[str, Any], groups: tuple[str, ...] = (FLEET_GROUP,)) -> None:
    """Send a small event to every browser watching the fleet (or the given groups).

    Best effort: the database is the record and pages reload from it, so a channel layer
    that is down (Redis restarting) costs live updates, never the write that caused them.
    With a shared layer (Redis) the event is handed to this process's publisher thread and
    the caller goes on at once (``async_to_sync`` made a new event loop per call, half a
    millisecond of a report's CPU); the in-process layer, whose listeners live on the
    server's own loop, is sent to directly.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "fleet.event", "event": {"kind": kind, **payload}}
    if not isinstance(layer, InMemoryChannelLayer):
        _publisher().put(layer, groups, message)
        return
    loop = _listeners_loop
    if loop is not None and loop.is_running() and not _running_on(loop):
        # A thread of the server's own (the embedded scheduler, a gateway worker): the
        # layer's queues belong to the listeners' loop, so the send is handed to it.
        for group in groups:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception as exc:
        logger.warning("fleet event %s not sent, channel layer unavailable: %s", kind, exc)


# The loop the in-process layer's listeners wait on (the server's), once one has said so.
_listeners_loop: asyncio.AbstractEventLoop | None = None


def listeners_loop_note(loop: asyncio.AbstractEventLoop) -> None:
    """Say which loop waits on the in-process layer, so any thread's events reach it safely."""
    global _listeners_loop
    _listeners_loop = loop


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Publisher:
    """One thread per process with its own event loop, sending events in the order given.

    The queue is bounded: with the layer unreachable, events beyond ``PUBLISH_BACKLOG``
    are dropped (and counted in the log) rather than held in memory.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, tuple[str, ...], dict[str, Any]]] = queue.SimpleQueue()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="fleet-events", daemon=True)
        self._thread.start()

    def put(self, layer: Any, groups: tuple[str, ...], message: dict[str, Any]) -> None:
        if self._queue.qsize() >= PUBLISH_BACKLOG:
            self._dropped += 1
            if self._dropped % PUBLISH_BACKLOG == 1:
                logger.warning("fleet events: %d dropped, the channel layer is not keeping up", self._dropped)
            return
        self._queue.put((layer, groups, message))

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        while True:
            layer, groups, message = self._queue.get()
            if isinstance(layer, _Marker):
                layer.done.set()
                continue
            try:
                for group in groups:
                    loop.run_until_complete(layer.group_send(group, message))
            except Exception as exc:
                logger.warning("fleet event %s not sent, channel layer unavailable: %s", message["event"]["kind"], exc)

    def idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event handed over so far is sent (for tests and shutdown)."""
        done = threading.Event()
        self._queue.put((_Marker(done), (), {}))
        return done.wait(timeout_s)


def events_flush(timeout_s: float = 5.0) -> bool:
    """Wait until this process's events handed to the publisher are sent; True if they were."""
    publisher = _publishers.get(os.getpid())
    return publisher is None or publisher.idle(timeout_s)


@dataclass
class _Marker:
    done: threading.Event


PUBLISH_BACKLOG = 10_000
_publishers: dict[int, Publisher] = {}
_publishers_lock = threading.Lock()


def _publisher() -> Publisher:
    """This process's publisher (a forked worker starts its own: threads do not survive fork)."""
    pid = os.getpid()
    publisher = _publishers.get(pid)
    if publisher is None:
        with _publishers_lock:
            publisher = _publishers.setdefault(pid, Publisher())
    return publisher


@dataclass
class SummaryThrottle:
    """Coalesces report notices into one ``fleet`` event per interval.

    Leading edge: the first report after a quiet interval is published at once, so a small
    fleet sees every report live. Under load, reports arriving within the interval are
    added up and ride out with the first report after it; with many hosts that is
    milliseconds later, so nothing waits long and no timer thread is needed.

    Each server process has its own throttle. ``claim`` (a Redis ``SET NX PX`` where Redis
    is configured) makes the interval fleet-wide: a process that loses the claim keeps its
    counts and asks again a twentieth of an interval later (not on every report, which
    under load would be a Redis round trip per report), so nothing is lost, only delayed.
    """

    interval_s: float
    publish: Callable[[dict[str, Any]], None]
    claim: Callable[[float], bool] = lambda _interval: True
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sent: float = float("-inf")
    _reports: int = 0
    _gpu_samples: int = 0
    _nodes: dict[str, None] = field(default_factory=dict)
    _gpus: dict[int, dict[str, Any]] = field(default_factory=dict)
    _since: float | None = None
    _claim_again_at: float = float("-inf")

    def add(self, *, node: str, reports: int, gpu_samples: int, gpus: tuple[dict[str, Any], ...] = ()) -> bool:
        """Count one ingested batch; publish the summary if the interval allows. True if sent.

        ``gpus`` are the batch's newest reading per GPU (``{"gpu": id, ...}``); a later
        reading of the same GPU within the interval replaces an earlier one.
        """
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since = now
            self._reports += reports
            self._gpu_samples += gpu_samples
            self._nodes[node] = None
            for reading in gpus:
                if reading["gpu"] in self._gpus or len(self._gpus) < SUMMARY_GPUS_LISTED:
                    self._gpus[reading["gpu"]] = reading
            if now - self._last_sent < self.interval_s or now < self._claim_again_at:
                return False
            if not self.claim(self.interval_s):
                self._claim_again_at = now + self.interval_s / CLAIM_RETRIES_PER_INTERVAL
                return False
            summary = {
                "reports": self._reports,
                "gpu_samples": self._gpu_samples,
                "nodes_reporting": len(self._nodes),
                "nodes": list(self._nodes)[:SUMMARY_NODES_LISTED],
                "window_s": round(now - self._since, 3),
                "gpus": list(self._gpus.values()),
            }
            self._last_sent = now
            self._reports = self._gpu_samples = 0
            self._nodes = {}
            self._gpus = {}
            self._since = None
        self.publish(summary)
        return True


@functools.cache
def _redis_client(url: str) -> Any:
    """One client (and connection pool) per process, not a new connection per claim."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=0.5)


def _redis_claim(interval_s: float) -> bool:
    """One fleet summary per interval across every server process sharing this Redis."""
    import redis

    try:
        return bool(
            _redis_client(settings.REDIS_URL).set("gpufleet:fleet-summary", b"1", nx=True, px=int(interval_s * 1000))
        )
    except redis.RedisError:
        return True


_throttle: SummaryThrottle | None = None
_throttle_lock = threading.Lock()


def _summary_throttle() -> SummaryThrottle:
    global _throttle
    with _throttle_lock:
        if _throttle is None:
            _throttle = SummaryThrottle(
                interval_s=settings.FLEET_SUMMARY_INTERVAL_S,
                publish=lambda summary: event_publish(kind="fleet", payload=summary),
                claim=_redis_claim if settings.REDIS_URL else (lambda _interval: True),
            )
        return _throttle


def fleet_summary_add(*, node: str, reports: int, gpu_samples: int, gpus: tuple[dict[str, Any], ...] = ()) -> bool:
    """Note an ingested batch for the coalesced ``fleet`` summary; True if a summary went out."""
    return _summary_throttle().add(node=node, reports=reports, gpu_samples=gpu_samples, gpus=gpus)
