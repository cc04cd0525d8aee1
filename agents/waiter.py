"""The long poll: one request held open at the panel, answered when this node's desired state changes.

The agent's report stays the one way desired state travels, at the report interval. The
waiter only shortens that: it keeps a ``GET /api/agent/v1/wait`` outstanding with the
generation of the reply the agent last applied, and when the panel answers "changed" it
wakes the agent's loop, which reports at once and acts on the reply. A sleeping engine
is then woken within a fraction of a second of the decision, not up to an interval later.

Whatever goes wrong with the wait (the panel away, a proxy cutting it, a panel that
predates it) costs only that shortening: the waiter backs off, doubling its pause up to
``MAX_BACKOFF_S``, and the loop keeps reporting at its interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx

from agents import protocol

log = logging.getLogger("gpufleet.agent")

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
# A panel without the endpoint (older than the agent): ask again rarely, it may be upgraded.
ABSENT_RETRY_S = 600.0
# The agent's read timeout: above the panel's hold (``protocol.WAIT_S``), so the panel ends a wait.
READ_MARGIN_S = 10.0
# After a "changed" answer, the next wait waits for the reply that answers it: one report per
# change, never a loop of waits and reports, however the two sides disagree.
APPLIED_WAIT_S = 1.0


@dataclass(frozen=True)
class Applied:
    """What the agent last applied: the token it reports with and the reply's generation."""

    token: str
    generation: int


class Waiter:
    def __init__(self, *, panel_url: str, http: httpx.Client, nudge: threading.Event) -> None:
        self.panel_url = panel_url
        self.http = http
        self.nudge = nudge
        self.failures = 0
        self._lock = threading.Lock()
        self._applied: Applied | None = None
        self._fresh = threading.Event()
        self._answered: int | None = None  # the generation the last "changed" answer was for

    def applied(self, *, token: str, generation: int) -> None:
        """The agent acted on a reply of this generation: the next wait starts from it."""
        with self._lock:
            self._applied = Applied(token, generation)
        self._fresh.set()

    def backoff_s(self) -> float:
        return min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2.0 ** max(0, min(self.failures - 1, 10)))

    def poll(self) -> float:
        """One wait at the panel; the seconds to pause before the next."""
        with self._lock:
            applied = self._applied
        if applied is None:
            return APPLIED_WAIT_S
        answered, self._answered = self._answered, None
        if answered == applied.generation:
            # "Changed", yet the reply that followed is the same: the two sides disagree on
            # the generation. Back off as on a failure rather than report in a loop.
            self.failures += 1
            pause = self.backoff_s()
            log.warning("the panel said desired state changed but it had not; next wait in %.0f s", pause)
            return pause
        if answered is not None:
            self.failures = 0
        started = time.monotonic()
        try:
            response = self.http.get(
                f"{self.panel_url}{protocol.WAIT_PATH}",
                params={"generation": str(applied.generation)},
                headers={"Authorization": f"Bearer {applied.token}"},
                timeout=httpx.Timeout(10.0, read=protocol.WAIT_S + READ_MARGIN_S),
            )
            if response.status_code == 404:
                log.info("the panel has no %s: reporting at the interval only", protocol.WAIT_PATH)
                return ABSENT_RETRY_S
            response.raise_for_status()
            answer = protocol.WaitReply.model_validate_json(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            self.failures += 1
            pause = self.backoff_s()
            log.warning(
                "wait for desired state failed (%s); reporting at the interval, next wait in %.0f s", exc, pause
            )
            return pause
        if answer.changed:
            self._answered = applied.generation
            self._fresh.clear()
            self.nudge.set()
            return 0.0
        self.failures = 0
        # "No change" comes after the panel's hold; one much sooner (a proxy or panel that does
        # not hold) must not turn the wait into a loop of requests.
        return max(0.0, MIN_BACKOFF_S - (time.monotonic() - started))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._fresh.wait(APPLIED_WAIT_S):
                continue
            stop.wait(self.poll())


def waiter_start(*, panel_url: str, http: httpx.Client, nudge: threading.Event, stop: threading.Event) -> Waiter:
    """A waiter on its own thread and ``http``, a client of its own, so a held wait never delays a report."""
    waiter = Waiter(panel_url=panel_url, http=http, nudge=nudge)

    def run() -> None:
        try:
            waiter.run(stop)
        finally:
            waiter.http.close()

    threading.Thread(target=run, name="desired-wait", daemon=True).start()
    return waiter
