"""Pre-warm: start capacity before predictable traffic arrives, one cold start ahead.

The profile is learned from request timestamps alone: each request counts in its
time-of-day slot (``slot_minutes`` wide) of its day of the week. A slot is busy when the
mean number of requests per occurrence of that weekday slot reaches
``min_requests_per_slot``; weekdays not yet seen in the look-back borrow the mean over all
days. A daily 09:00 report is a sharp busy slot at 09:00 every day; a Friday-afternoon batch
only on Fridays. The profile is kept up to date incrementally (``TrafficLearner``): each tick
counts only the requests since the previous one, so its cost follows the traffic, not the
length of the look-back.

A pool with no instance wanted running: traffic *starts* at a busy slot whose previous slot
is quiet, and the pool is started that slot's start minus its measured cold start minus
``prewarm_margin_s``. A pool already serving: the rate expected one cold start (plus the
margin) ahead, over what one instance serves at full load (measured: the recent request rate
per serving instance over their mean load, autoscale's ``window_load``), says how many
instances keep the load under the top of the band; one more starts while fewer are
running or starting."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from fleet.policies.actions import Action, duration
from fleet.policies.autoscale import window_load
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig, PoolView
from fleet.policies.windows import WINDOW_S, WINDOWS
from fleet.states import READY, RUNNING

KIND = "prewarm"
# Cold start assumed for a pool that has never been started: a vLLM start with weights in the page cache.
DEFAULT_COLD_START_S = 120.0
# The span the recent request rate is measured over: the windows the snapshot's load covers.
RECENT_S = WINDOW_S * WINDOWS
WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")


@dataclass(frozen=True)
class TrafficProfile:
    """Requests counted per (weekday, slot) and per slot over all days, and the recent request rate.

    ``mean`` divides a slot's count by the days of that weekday in the look-back (by all its
    days for a weekday it has not seen). ``recent_per_s`` is the request rate over the last
    ``RECENT_S`` seconds, what the pool serves now, against which its measured load says what
    one instance serves.
    """

    slot_minutes: int
    weekly: Mapping[tuple[int, int], int]
    daily: Mapping[int, int]
    weekday_occurrences: Mapping[int, int]
    days: int
    recent_per_s: float = 0.0

    def slot_of(self, moment: datetime) -> tuple[int, int]:
        return moment.weekday(), slot_index(moment, self.slot_minutes)

    def mean(self, weekday: int, slot: int) -> float:
        occurrences = self.weekday_occurrences.get(weekday, 0)
        if occurrences:
            return self.weekly.get((weekday, slot), 0) / occurrences
        return self.daily.get(slot, 0) / self.days

    def rate_at(self, moment: datetime) -> float:
        """Expected requests a second at ``moment``: its slot's mean spread over the slot."""
        return self.mean(*self.slot_of(moment)) / (self.slot_minutes * 60)


def slot_index(moment: datetime, slot_minutes: int) -> int:
    """The time-of-day slot of a moment: minutes since midnight over the slot width."""
    return (moment.hour * 60 + moment.minute) // slot_minutes


def slot_start(moment: datetime, slot_minutes: int) -> datetime:
    """The start of the time-of-day slot ``moment`` falls in."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(minutes=slot_minutes * slot_index(moment, slot_minutes))


def lookback_start(now: datetime, *, lookback_days: int, slot_minutes: int) -> datetime:
    """Where the look-back begins: ``lookback_days`` before the start of the current slot.

    Slot-aligned, so that requests leave the profile a whole slot at a time and the learner
    keeps one count per slot of the look-back, never the requests themselves.
    """
    return slot_start(now, slot_minutes) - timedelta(days=lookback_days)


@dataclass
class TrafficHistory:
    """One pool's counts over its look-back, brought up to date with only the requests since the last update.

    ``slots`` holds (slot start, requests) oldest first; ``weekly`` and ``daily`` are their
    sums per (weekday, slot) and per slot; ``recent`` the request times of the last ``RECENT_S``.
    ``counted`` is the work done so far: requests added plus slots and recent times dropped.
    """

    lookback_days: int
    slot_minutes: int
    until: datetime | None = None
    slots: deque[tuple[datetime, int]] = field(default_factory=deque)
    weekly: Counter[tuple[int, int]] = field(default_factory=Counter)
    daily: Counter[int] = field(default_factory=Counter)
    recent: deque[datetime] = field(default_factory=deque)
    counted: int = 0

    def since(self, now: datetime) -> datetime:
        """Where the next read starts: the last update, or the look-back's start for a fresh history."""
        start = lookback_start(now, lookback_days=self.lookback_days, slot_minutes=self.slot_minutes)
        return start if self.until is None else max(self.until, start)

    def advance(self, timestamps: Iterable[datetime], now: datetime) -> TrafficProfile:
        """Count the requests in [``since(now)``, ``now``) (others are ignored), drop the slots that left the
        look-back and return the profile as of ``now``."""
        since = self.since(now)
        self._add(sorted(t for t in timestamps if since <= t < now))
        self.until = now
        start = lookback_start(now, lookback_days=self.lookback_days, slot_minutes=self.slot_minutes)
        while self.slots and self.slots[0][0] < start:
            began, count = self.slots.popleft()
            self._count(began, -count)
            self.counted += 1
        recent_from = now - timedelta(seconds=RECENT_S)
        while self.recent and self.recent[0] < recent_from:
            self.recent.popleft()
            self.counted += 1
        occurrences = Counter((start + timedelta(days=offset)).weekday() for offset in range(self.lookback_days))
        return TrafficProfile(
            slot_minutes=self.slot_minutes,
            weekly=MappingProxyType(self.weekly),
            daily=MappingProxyType(self.daily),
            weekday_occurrences=dict(occurrences),
            days=self.lookback_days,
            recent_per_s=len(self.recent) / RECENT_S,
        )

    def _add(self, moments: list[datetime]) -> None:
        """Count request times given in time order, a slot at a time: the requests of one slot are
        found by bisection and counted together, so the work per slot, not per request."""
        self.recent.extend(moments)
        self.counted += len(moments)
        first = 0
        while first < len(moments):
            began = slot_start(moments[first], self.slot_minutes)
            # The next slot's start (midnight where the day's last slot is cut short).
            ends = slot_start(began + timedelta(minutes=self.slot_minutes), self.slot_minutes)
            last = bisect_left(moments, ends, lo=first)
            if self.slots and self.slots[-1][0] == began:
                self.slots[-1] = (began, self.slots[-1][1] + last - first)
            else:
                self.slots.append((began, last - first))
            self._count(began, last - first)
            first = last

    def _count(self, began: datetime, requests: int) -> None:
        slot = slot_index(began, self.slot_minutes)
        weekly = (began.weekday(), slot)
        self.weekly[weekly] += requests
        self.daily[slot] += requests
        if not self.weekly[weekly]:
            del self.weekly[weekly]
        if not self.daily[slot]:
            del self.daily[slot]


def traffic_profile_learn(
    timestamps: Iterable[datetime], *, now: datetime, lookback_days: int, slot_minutes: int
) -> TrafficProfile:
    """The profile over the look-back (``lookback_start`` .. ``now``) learned from scratch; older and
    future times are ignored."""
    return TrafficHistory(lookback_days=lookback_days, slot_minutes=slot_minutes).advance(timestamps, now)


# Request times per pool: (pool ids, since, until) -> {pool id: times in [since, until)}.
RequestTimesSource = Callable[[list[int], datetime, datetime], dict[int, list[datetime]]]


@dataclass
class TrafficLearner:
    """Each pre-warmed pool's ``TrafficHistory``, kept by whoever runs the evaluations.

    Each tick reads only the requests since the previous one: one ``request_times`` read per
    distinct start (one in the steady state). A pool whose look-back or slot width changed,
    or a clock that went back, starts its history again from the whole look-back.
    """

    histories: dict[int, TrafficHistory] = field(default_factory=dict)

    def profiles(
        self, snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, request_times: RequestTimesSource
    ) -> dict[int, TrafficProfile]:
        wanted: dict[int, TrafficHistory] = {}
        for pool in snapshot.pools:
            settings = config.for_pool(pool.id)
            if settings is None:
                continue
            lookback, slot = int(settings["lookback_days"]), int(settings["slot_minutes"])
            history = self.histories.get(pool.id)
            if (
                history is None
                or (history.lookback_days, history.slot_minutes) != (lookback, slot)
                or (history.until is not None and history.until > now)
            ):
                history = TrafficHistory(lookback_days=lookback, slot_minutes=slot)
            wanted[pool.id] = history
        self.histories = wanted
        by_since: dict[datetime, list[int]] = defaultdict(list)
        for pool_id, history in wanted.items():
            by_since[history.since(now)].append(pool_id)
        profiles = {}
        for since, pool_ids in by_since.items():
            times = request_times(pool_ids, since, now) if since < now else {}
            for pool_id in pool_ids:
                profiles[pool_id] = wanted[pool_id].advance(times.get(pool_id, []), now)
        return profiles


def traffic_next_start(
    profile: TrafficProfile, *, after: datetime, within_s: float, min_requests: float
) -> tuple[datetime, float] | None:
    """The next onset of busy slots after ``after`` and no later than ``within_s`` from it, with its mean."""
    step = timedelta(minutes=profile.slot_minutes)
    midnight = after.replace(hour=0, minute=0, second=0, microsecond=0)
    slot_start = midnight + step * ((after - midnight) // step + 1)
    while slot_start - after <= timedelta(seconds=within_s):
        mean = profile.mean(*profile.slot_of(slot_start))
        if mean >= min_requests and profile.mean(*profile.slot_of(slot_start - step)) < min_requests:
            return slot_start, mean
        slot_start += step
    return None


def instance_capacity_per_s(pool: PoolView, snapshot: FleetSnapshot, profile: TrafficProfile) -> float | None:
    """Requests a second one instance serves at full load, measured: the recent request rate per serving
    instance over their mean load (autoscale's ``window_load``, prefill left out: its capacity is
    autoscale's setting). None while nothing serves, nothing arrives or no load was measured."""
    serving = [i for i in snapshot.instances_of(pool.id) if i.desired_state == RUNNING and i.actual_state == READY]
    loads = [load for w in pool.windows if (load := window_load(pool, w, {"prefill_tokens_per_s": 0})) is not None]
    load = sum(loads) / len(loads) if loads else 0.0
    if not serving or profile.recent_per_s <= 0 or load <= 0:
        return None
    return profile.recent_per_s / len(serving) / load


def instances_wanted(pool: PoolView, profile: TrafficProfile, at: datetime, capacity_per_s: float) -> int:
    """Instances that keep the load expected at ``at`` at or under the top of the pool's band."""
    return math.ceil(profile.rate_at(at) / (capacity_per_s * pool.util_band_high))


def prewarm(
    snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, profiles: Mapping[int, TrafficProfile]
) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        settings = config.for_pool(pool.id)
        profile = profiles.get(pool.id)
        if settings is None or profile is None:
            continue
        cold_start = pool.cold_start_s if pool.cold_start_s is not None else DEFAULT_COLD_START_S
        lead = cold_start + pool.prewarm_margin_s
        measured = "measured" if pool.cold_start_s is not None else "assumed"
        lead_text = f"cold start {duration(cold_start)} ({measured}) + margin {duration(pool.prewarm_margin_s)}"
        active = [i for i in snapshot.instances_of(pool.id) if i.desired_state == RUNNING]
        if active:
            reason = _capacity_reason(snapshot, pool, profile, now, lead, len(active), settings)
            if reason is None:
                continue
            reason = f"{reason}; {lead_text}"
        else:
            onset = traffic_next_start(
                profile, after=now, within_s=lead, min_requests=settings["min_requests_per_slot"]
            )
            if onset is None:
                continue
            at, mean = onset
            reason = (
                f"pool {pool.name}: traffic predicted from {at:%H:%M} on {WEEKDAYS[at.weekday()]} "
                f"(mean {mean:.1f} requests per {profile.slot_minutes}-min slot over {profile.days} days); {lead_text}"
            )
        planned = pool_wake_actions(
            snapshot, pool_id=pool.id, kind=KIND, reason=reason, policy_id=config.policy_id(pool.id)
        )
        if isinstance(planned, PlacementRefused):
            continue
        actions.extend(planned)
    return actions


def _capacity_reason(
    snapshot: FleetSnapshot,
    pool: PoolView,
    profile: TrafficProfile,
    now: datetime,
    lead: float,
    active: int,
    settings: Mapping[str, Any],
) -> str | None:
    """Why one more instance should start now for the traffic one cold start ahead; None if none should."""
    if active >= pool.max_instances:
        return None
    at = now + timedelta(seconds=lead)
    if profile.mean(*profile.slot_of(at)) < settings["min_requests_per_slot"]:
        return None
    capacity = instance_capacity_per_s(pool, snapshot, profile)
    if capacity is None:
        return None
    wanted = instances_wanted(pool, profile, at, capacity)
    if wanted <= active:
        return None
    return (
        f"pool {pool.name}: {profile.rate_at(at):.2f} requests/s expected at {at:%H:%M} on {WEEKDAYS[at.weekday()]} "
        f"(now {profile.recent_per_s:.2f}); one instance serves {capacity:.2f} requests/s at full load, "
        f"so {wanted} instance(s) keep the load under {pool.util_band_high:.0%}; {active} running or starting"
    )
