"""Pre-warm: start a pool's first instance before its predictable traffic arrives.

The profile is learned from request timestamps alone: each request counts in its
time-of-day slot (``slot_minutes`` wide) of its day of the week. A slot is busy when the
mean number of requests per occurrence of that weekday slot reaches
``min_requests_per_slot``; weekdays not yet seen in the look-back borrow the mean over all
days. A daily 09:00 report is a sharp busy slot at 09:00 every day; a Friday-afternoon batch
only on Fridays. Traffic *starts* at a busy slot whose previous slot is quiet. The pool is
started that slot's start minus its measured cold start minus ``prewarm_margin_s``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet.policies.actions import Action, duration
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig
from fleet.states import RUNNING

KIND = "prewarm"
# Cold start assumed for a pool that has never been started: a vLLM start with weights in the page cache.
DEFAULT_COLD_START_S = 120.0
WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")


@dataclass(frozen=True)
class TrafficProfile:
    """Mean requests per occurrence of each (weekday, slot), and per slot over all days."""

    slot_minutes: int
    weekly: Mapping[tuple[int, int], float]
    daily: Mapping[int, float]
    weekday_occurrences: Mapping[int, int]
    days: int

    def slot_of(self, moment: datetime) -> tuple[int, int]:
        return moment.weekday(), (moment.hour * 60 + moment.minute) // self.slot_minutes

    def mean(self, weekday: int, slot: int) -> float:
        if self.weekday_occurrences.get(weekday, 0):
            return self.weekly.get((weekday, slot), 0.0)
        return self.daily.get(slot, 0.0)


def traffic_profile_learn(
    timestamps: Iterable[datetime], *, now: datetime, lookback_days: int, slot_minutes: int
) -> TrafficProfile:
    """Learn the profile from the look-back period's timestamps (older and future ones are ignored)."""
    start = now - timedelta(days=lookback_days)
    weekly: Counter[tuple[int, int]] = Counter()
    daily: Counter[int] = Counter()
    for moment in timestamps:
        if start <= moment < now:
            weekday, slot = moment.weekday(), (moment.hour * 60 + moment.minute) // slot_minutes
            weekly[(weekday, slot)] += 1
            daily[slot] += 1
    occurrences = Counter((start + timedelta(days=offset)).weekday() for offset in range(lookback_days))
    return TrafficProfile(
        slot_minutes=slot_minutes,
        weekly={key: count / occurrences[key[0]] for key, count in weekly.items() if occurrences[key[0]]},
        daily={slot: count / lookback_days for slot, count in daily.items()},
        weekday_occurrences=dict(occurrences),
        days=lookback_days,
    )


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


def prewarm(
    snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, profiles: Mapping[int, TrafficProfile]
) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        settings = config.for_pool(pool.id)
        profile = profiles.get(pool.id)
        if settings is None or profile is None:
            continue
        if any(i.desired_state == RUNNING for i in snapshot.instances_of(pool.id)):
            continue
        cold_start = pool.cold_start_s if pool.cold_start_s is not None else DEFAULT_COLD_START_S
        lead = cold_start + pool.prewarm_margin_s
        onset = traffic_next_start(profile, after=now, within_s=lead, min_requests=settings["min_requests_per_slot"])
        if onset is None:
            continue
        at, mean = onset
        measured = "measured" if pool.cold_start_s is not None else "assumed"
        reason = (
            f"pool {pool.name}: traffic predicted from {at:%H:%M} on {WEEKDAYS[at.weekday()]} "
            f"(mean {mean:.1f} requests per {profile.slot_minutes}-min slot over {profile.days} days); "
            f"cold start {duration(cold_start)} ({measured}) + margin {duration(pool.prewarm_margin_s)}"
        )
        planned = pool_wake_actions(
            snapshot, pool_id=pool.id, kind=KIND, reason=reason, policy_id=config.policy_id(pool.id)
        )
        if isinstance(planned, PlacementRefused):
            continue
        actions.extend(planned)
    return actions
