"""Real-time events: one place that puts fleet changes on the Channels group.

Routine reports are not published one by one: a thousand hosts reporting every five
seconds would send two hundred messages a second to every open browser. Reports are
instead coalesced into a fleet summary sent at most once per ``FLEET_SUMMARY_INTERVAL_S``
(one second by default). Instance state changes, which are rare and matter, go out at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

FLEET_GROUP = "fleet"
SUMMARY_NODES_LISTED = 50


def event_publish(*, kind: str, payload: dict[str, Any]) -> None:
    """Send a small event to every browser watching the fleet.

    Best effort: the database is the record and pages reload from it, so a channel layer
    that is down (Redis restarting) costs live updates, never the write that caused them.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(FLEET_GROUP, {"type": "fleet.event", "event": {"kind": kind, **payload}})
    except Exception as exc:
        logger.warning("fleet event %s not sent, channel layer unavailable: %s", kind, exc)


@dataclass
class SummaryThrottle:
    """Coalesces report notices into one ``fleet`` event per interval.

    Leading edge: the first report after a quiet interval is published at once, so a small
    fleet sees every report live. Under load, reports arriving within the interval are
    added up and ride out with the first report after it; with many hosts that is
    milliseconds later, so nothing waits long and no timer thread is needed.

    Each server process has its own throttle. ``claim`` (a Redis ``SET NX PX`` where Redis
    is configured) makes the interval fleet-wide: a process that loses the claim keeps its
    counts and tries again after its next interval, so nothing is lost, only delayed.
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
    _since: float | None = None

    def add(self, *, node: str, reports: int, gpu_samples: int) -> bool:
        """Count one ingested batch; publish the summary if the interval allows. True if sent."""
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since = now
            self._reports += reports
            self._gpu_samples += gpu_samples
            self._nodes[node] = None
            if now - self._last_sent < self.interval_s or not self.claim(self.interval_s):
                return False
            summary = {
                "reports": self._reports,
                "gpu_samples": self._gpu_samples,
                "nodes_reporting": len(self._nodes),
                "nodes": list(self._nodes)[:SUMMARY_NODES_LISTED],
                "window_s": round(now - self._since, 3),
            }
            self._last_sent = now
            self._reports = self._gpu_samples = 0
            self._nodes = {}
            self._since = None
        self.publish(summary)
        return True


def _redis_claim(interval_s: float) -> bool:
    """One fleet summary per interval across every server process sharing this Redis."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5)
    try:
        return bool(client.set("gpufleet:fleet-summary", b"1", nx=True, px=int(interval_s * 1000)))
    except redis.RedisError:
        return True
    finally:
        client.close()


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


def fleet_summary_add(*, node: str, reports: int, gpu_samples: int) -> bool:
    """Note an ingested batch for the coalesced ``fleet`` summary; True if a summary went out."""
    return _summary_throttle().add(node=node, reports=reports, gpu_samples=gpu_samples)
