"""Pre-warm: the traffic profile learner and the start it triggers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet.policies.prewarm import prewarm, traffic_next_start, traffic_profile_learn
from tests.policies.builders import config, gpu, instance, pool, snapshot

# Monday 2026-03-02; three weeks of history before it.
NOW = datetime(2026, 3, 2, 8, 57, tzinfo=UTC)


def daily_report(days: int = 21, hour: int = 9, requests: int = 40) -> list[datetime]:
    """A 09:00 report every day: a sharp peak in the first minutes after nine."""
    start = NOW.replace(hour=hour, minute=0) - timedelta(days=days)
    return [start + timedelta(days=d, seconds=5 * r) for d in range(days) for r in range(requests)]


def friday_batch(weeks: int = 3) -> list[datetime]:
    friday = datetime(2026, 2, 27, 15, 0, tzinfo=UTC)
    return [friday - timedelta(weeks=w) + timedelta(seconds=30 * r) for w in range(weeks) for r in range(20)]


def learn(times: list[datetime], now: datetime = NOW):  # type: ignore[no-untyped-def]
    return traffic_profile_learn(times, now=now, lookback_days=21, slot_minutes=15)


def test_a_daily_job_is_a_sharp_peak_at_its_slot() -> None:
    profile = learn(daily_report())
    assert profile.mean(0, 36) == 40  # Monday 09:00-09:15
    assert profile.mean(0, 35) == 0 and profile.mean(0, 37) == 0
    assert traffic_next_start(profile, after=NOW, within_s=180, min_requests=3) == (NOW.replace(minute=0, hour=9), 40)
    assert traffic_next_start(profile, after=NOW, within_s=179, min_requests=3) is None


def test_a_weekly_batch_is_busy_on_its_weekday_only() -> None:
    profile = learn(friday_batch())
    assert profile.mean(4, 60) == 20  # Fridays 15:00
    assert profile.mean(3, 60) == 0
    thursday = datetime(2026, 3, 5, 14, 59, tzinfo=UTC)
    friday = datetime(2026, 3, 6, 14, 59, tzinfo=UTC)
    assert traffic_next_start(profile, after=thursday, within_s=600, min_requests=3) is None
    assert traffic_next_start(profile, after=friday, within_s=600, min_requests=3) is not None


def test_sparse_traffic_and_old_history_are_ignored() -> None:
    profile = learn([*daily_report(requests=2), NOW - timedelta(days=30)])
    assert traffic_next_start(profile, after=NOW, within_s=3600, min_requests=3) is None


def test_inside_a_busy_period_nothing_starts() -> None:
    profile = learn(daily_report())
    assert traffic_next_start(profile, after=NOW.replace(hour=9, minute=1), within_s=600, min_requests=3) is None


def test_with_only_days_of_history_weekdays_not_seen_borrow_the_daily_mean() -> None:
    profile = traffic_profile_learn(daily_report(days=3), now=NOW, lookback_days=3, slot_minutes=15)
    assert profile.mean(0, 36) == 40  # Monday was not in the last three days
    assert traffic_next_start(profile, after=NOW, within_s=180, min_requests=3) is not None


def test_the_pool_is_started_by_cold_start_plus_margin_before_the_peak() -> None:
    profiles = {1: learn(daily_report())}
    cold = pool(cold_start_s=150, prewarm_margin_s=30, gpu_memory_utilization=0.3)
    [action] = prewarm(snapshot(pools=[cold], gpus=[gpu(1)]), config("prewarm"), NOW, profiles)
    assert action.action == "launch"
    assert "traffic predicted from 09:00 on Mondays" in action.reason
    assert "cold start 2 min 30 s (measured) + margin 30 s" in action.reason
    late = pool(cold_start_s=120, prewarm_margin_s=30, gpu_memory_utilization=0.3)  # 150 s < 180 s: not yet
    assert prewarm(snapshot(pools=[late], gpus=[gpu(1)]), config("prewarm"), NOW, profiles) == []


def test_a_pool_already_serving_is_left_alone() -> None:
    profiles = {1: learn(daily_report())}
    warm = pool(cold_start_s=300)
    assert (
        prewarm(snapshot(pools=[warm], gpus=[gpu(1)], instances=[instance(1)]), config("prewarm"), NOW, profiles) == []
    )
