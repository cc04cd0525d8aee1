"""Pre-warm: the profile kept up to date tick by tick, and the capacity it plans one cold start ahead."""

from __future__ import annotations

import bisect
import random
from datetime import UTC, datetime, timedelta

import pytest

from fleet.policies.prewarm import TrafficLearner, TrafficProfile, prewarm, traffic_profile_learn
from fleet.policies.snapshot import PoolWindow
from tests.policies.builders import config, gpu, instance, pool, snapshot

# Monday 2026-03-02.
NOW = datetime(2026, 3, 2, 8, 58, tzinfo=UTC)


class Source:
    """Request times of pool 1 served as the gateway's log would, recording every read."""

    def __init__(self, times: list[datetime]) -> None:
        self.times = sorted(times)
        self.reads: list[tuple[datetime, datetime, int]] = []

    def __call__(self, pool_ids: list[int], since: datetime, until: datetime) -> dict[int, list[datetime]]:
        found = self.times[bisect.bisect_left(self.times, since) : bisect.bisect_left(self.times, until)]
        self.reads.append((since, until, len(found)))
        return {1: found} if 1 in pool_ids else {}


def profile_of(learner: TrafficLearner, source: Source, now: datetime, **settings: int) -> TrafficProfile:
    return learner.profiles(snapshot(pools=[pool()]), config("prewarm", **settings), now, source)[1]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_incremental_profile_equals_the_profile_learned_from_scratch(seed: int) -> None:
    """Random histories over 12 days, learned over a 5-day look-back in 7-minute slots (7 does not divide a
    day: the last slot of each day is short) with ticks of random length, some longer than a slot; at
    every tick the learner's profile says what one learned from the whole history says."""
    rng = random.Random(seed)
    start = NOW - timedelta(days=12)
    times = [start + timedelta(seconds=rng.uniform(0, 12 * 86_400)) for _ in range(3000)]
    source = Source(times)
    learner = TrafficLearner()
    now = start + timedelta(days=2)
    for _ in range(60):
        now += timedelta(seconds=rng.choice([1, 30, 60, 61, 900, 3 * 3600, 86_400]))
        kept = profile_of(learner, source, now, lookback_days=5, slot_minutes=7)
        fresh = traffic_profile_learn(times, now=now, lookback_days=5, slot_minutes=7)
        assert kept.weekday_occurrences == fresh.weekday_occurrences and kept.days == fresh.days == 5
        assert kept.recent_per_s == fresh.recent_per_s
        slots = range(24 * 60 // 7 + 1)
        assert [kept.mean(w, s) for w in range(7) for s in slots] == [fresh.mean(w, s) for w in range(7) for s in slots]


def test_each_tick_reads_and_counts_only_the_requests_since_the_previous_one() -> None:
    """Two days of history (one request a minute, 2880) all older than the recent-rate span, then ticks a
    minute apart: the first read covers the look-back and counts every request; each later read starts
    where the previous ended and counts exactly the requests it returns (5, then 0): nothing leaves the
    21-day look-back and the recent span (six minutes) held none of the old ones."""
    history = [NOW - timedelta(days=2) + timedelta(minutes=m) for m in range(2880 - 10)]
    source = Source(history)
    learner = TrafficLearner()
    profile_of(learner, source, NOW)
    assert len(source.reads) == 1 and source.reads[0][2] == 2870
    counted = learner.histories[1].counted
    new = [NOW + timedelta(seconds=s) for s in (1, 10, 20, 30, 59)]
    source.times = sorted([*history, *new])
    later = NOW + timedelta(seconds=60)
    profile = profile_of(learner, source, later)
    assert source.reads[-1] == (NOW, later, 5)
    assert learner.histories[1].counted - counted == 5
    assert profile.recent_per_s == 5 / 360
    counted = learner.histories[1].counted
    profile_of(learner, source, later + timedelta(seconds=60))
    assert source.reads[-1][2] == 0 and learner.histories[1].counted == counted


def test_a_changed_slot_width_learns_again_from_the_whole_look_back() -> None:
    source = Source([NOW - timedelta(hours=h) for h in range(1, 30)])
    learner = TrafficLearner()
    profile_of(learner, source, NOW)
    profile_of(learner, source, NOW + timedelta(minutes=1), slot_minutes=30)
    since, _, found = source.reads[-1]
    assert since < NOW - timedelta(days=20) and found == 29


def busy_monday(recent: int) -> list[datetime]:
    """Last Monday 09:00-09:15: 1800 requests (one every 0.5 s), so with a 7-day look-back (one Monday)
    the 09:00 slot expects 1800 / 900 s = 2 requests/s; plus ``recent`` requests in the six minutes
    before ``NOW`` (the recent rate is recent / 360 s)."""
    monday = datetime(2026, 2, 23, 9, 0, tzinfo=UTC)
    return [monday + timedelta(seconds=0.5 * r) for r in range(1800)] + [
        NOW - timedelta(seconds=(r + 0.5) * 360 / recent) for r in range(recent)
    ]


def windows(load: float) -> tuple[PoolWindow, ...]:
    return tuple(
        PoolWindow(start=NOW - timedelta(seconds=60 * b), end=NOW - timedelta(seconds=60 * (b - 1)), kv_cache=load)
        for b in (3, 2, 1)
    )


def test_a_serving_pool_gets_the_instances_the_traffic_one_cold_start_ahead_needs() -> None:
    """Now 08:58, cold start 120 s + margin 30 s: the plan is for 09:00:30, in the busy 09:00 slot
    (2 requests/s expected). Recently 180 requests in 360 s = 0.5 requests/s on one ready instance at load
    0.25, so one instance serves 0.5 / 0.25 = 2 requests/s at full load, 1.3 requests/s at the top of the
    band (65%): 2 / 1.3 = 1.54, so 2 instances are wanted and one more starts. With a second one already
    starting nothing more does."""
    profiles = {1: traffic_profile_learn(busy_monday(180), now=NOW, lookback_days=7, slot_minutes=15)}
    view = pool(cold_start_s=120, prewarm_margin_s=30, gpu_memory_utilization=0.3, windows=windows(0.25))
    serving = snapshot(pools=[view], gpus=[gpu(1), gpu(2)], instances=[instance(1)])
    [action] = prewarm(serving, config("prewarm", lookback_days=7), NOW, profiles)
    assert action.kind == "prewarm" and action.action == "launch"
    assert "2.00 requests/s expected at 09:00" in action.reason and "so 2 instance(s)" in action.reason
    starting = instance(2, actual_state="starting", ready_at=None)
    both = snapshot(pools=[view], gpus=[gpu(1), gpu(2)], instances=[instance(1), starting])
    assert prewarm(both, config("prewarm", lookback_days=7), NOW, profiles) == []


def test_a_serving_pool_with_room_for_the_coming_traffic_is_left_alone() -> None:
    """Recently 720 requests in 360 s = 2 requests/s at load 0.25: one instance serves 8 requests/s at full
    load, 5.2 at 65%; the 2 requests/s expected need one instance, which runs."""
    profiles = {1: traffic_profile_learn(busy_monday(720), now=NOW, lookback_days=7, slot_minutes=15)}
    view = pool(cold_start_s=120, prewarm_margin_s=30, gpu_memory_utilization=0.3, windows=windows(0.25))
    serving = snapshot(pools=[view], gpus=[gpu(1), gpu(2)], instances=[instance(1)])
    assert prewarm(serving, config("prewarm", lookback_days=7), NOW, profiles) == []
