"""Rollup arithmetic against hand-computed cases: means, maxima, energy, tokens, merged percentiles, gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.models import GpuDay, GpuHour, GpuMinute, GpuSample, InstanceSample, PoolHour, PoolMinute, RollupWatermark
from fleet.telemetry import rollups
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
BOUNDS = [0.1, 0.5, 1.0]


def at(minutes: int = 0, seconds: int = 0) -> datetime:
    return NOON + timedelta(minutes=minutes, seconds=seconds)


def gpu_samples(gpu: Any, rows: list[tuple[datetime, float, float]]) -> None:
    GpuSample.objects.bulk_create(
        GpuSample(gpu=gpu, at=when, utilization_gpu_pct=util, power_watts=util * 2, energy_joules=energy)
        for when, util, energy in rows
    )


@pytest.fixture
def gpu() -> Any:
    gpu = make_gpu(make_node())
    gpu_samples(
        gpu,
        [
            (at(-1, 40), 99.0, 900.0),  # before the window: only the energy baseline of the first pair
            (at(0, 0), 10.0, 1000.0),
            (at(0, 20), 30.0, 1100.0),
            (at(0, 40), 50.0, 1250.0),
            # offline for 2m20s: no rows for 12:01 and 12:02, and no energy across the gap
            (at(3, 0), 70.0, 5000.0),
            (at(3, 30), 90.0, 4000.0),  # counter fell (driver reload): adds nothing
        ],
    )
    return gpu


def test_minute_means_maxima_and_energy(gpu: Any) -> None:
    rollups.minutes_rollup(start=at(0), end=at(5))
    rows = {m.bucket: m for m in GpuMinute.objects.filter(gpu=gpu)}
    assert sorted(rows) == [at(0), at(3)], "minutes without samples have no row"
    first, later = rows[at(0)], rows[at(3)]
    assert (first.samples, first.utilization_mean, first.utilization_max) == (3, 30.0, 50.0)
    assert (first.power_mean, first.power_max) == (60.0, 100.0)
    assert first.energy_joules == 100.0 + 100.0 + 150.0  # 11:59:40->12:00:00 counts for 12:00
    assert (later.samples, later.utilization_mean, later.utilization_max) == (2, 80.0, 90.0)
    assert later.energy_joules is None


def test_hour_is_the_sample_weighted_mean_of_its_minutes(gpu: Any) -> None:
    rollups.minutes_rollup(start=at(-1), end=at(5))
    rollups.hours_rollup(start=at(-60), end=at(60))
    hours = {h.bucket: h for h in GpuHour.objects.filter(gpu=gpu)}
    noon = hours[NOON]
    assert noon.samples == 5
    assert noon.utilization_mean == pytest.approx((10 + 30 + 50 + 70 + 90) / 5)  # not (30 + 80) / 2
    assert (noon.utilization_max, noon.energy_joules) == (90.0, 350.0)
    eleven = hours[NOON - timedelta(hours=1)]
    assert (eleven.samples, eleven.utilization_mean) == (1, 99.0)


def test_recomputing_a_window_gives_the_same_rows(gpu: Any) -> None:
    def snapshot() -> list[tuple[Any, ...]]:
        return list(GpuMinute.objects.order_by("bucket").values_list("bucket", "samples", "utilization_mean"))

    rollups.minutes_rollup(start=at(0), end=at(5))
    first = snapshot()
    rollups.minutes_rollup(start=at(0), end=at(5))
    assert snapshot() == first
    assert GpuMinute.objects.count() == 2


def histogram(counts: list[float], count: float) -> dict[str, Any]:
    return {"bounds": BOUNDS, "counts": counts, "count": count}


def instance_sample(instance: Any, when: datetime, e2e: dict[str, Any] | None, **kwargs: Any) -> InstanceSample:
    return InstanceSample(instance=instance, at=when, state="ready", e2e_histogram=e2e, **kwargs)


@pytest.fixture
def pool() -> Any:
    node = make_node()
    pool = make_pool()
    a = make_instance(pool, make_gpu(node, 0))
    b = make_instance(pool, make_gpu(node, 1))
    InstanceSample.objects.bulk_create(
        [
            instance_sample(a, at(-1, 55), None, prompt_tokens_rate=99.0),
            instance_sample(a, at(0, 10), histogram([2, 6, 8], 10), requests_waiting=2, prompt_tokens_rate=10.0),
            instance_sample(b, at(0, 15), histogram([0, 2, 10], 10), requests_waiting=4, prompt_tokens_rate=7.0),
            instance_sample(a, at(1, 10), histogram([10, 10, 10], 10), requests_waiting=0, prompt_tokens_rate=2.0),
        ]
    )
    return pool


def test_pool_percentiles_come_from_buckets_merged_across_instances(pool: Any) -> None:
    rollups.minutes_rollup(start=at(0), end=at(2))
    minute = PoolMinute.objects.get(pool=pool, bucket=at(0))
    assert minute.e2e_histogram == histogram([2, 8, 18], 20)
    # rank 10 of 20 falls in (0.5, 1.0] holding 10: 0.5 + 0.5 * (10 - 8) / 10
    assert minute.e2e_p50_s == pytest.approx(0.6)
    assert minute.e2e_p50_s != pytest.approx((0.4 + 0.6875) / 2), "the mean of the instances' p50s is wrong"
    assert minute.e2e_p95_s == 1.0  # rank 19 lies past the last finite bound: the highest finite bound
    assert (minute.requests, minute.instances, minute.samples) == (20, 2, 2)
    assert (minute.requests_waiting_mean, minute.requests_waiting_max) == (3.0, 4.0)
    # A: 10 tokens/s for the 15 s since its previous sample; B has no previous sample in reach
    assert minute.prompt_tokens == pytest.approx(150.0)


def test_pool_hour_merges_minutes_buckets_before_taking_percentiles(pool: Any) -> None:
    rollups.minutes_rollup(start=at(0), end=at(2))
    rollups.hours_rollup(start=NOON, end=at(60))
    hour = PoolHour.objects.get(pool=pool, bucket=NOON)
    assert hour.e2e_histogram == histogram([12, 18, 28], 30)
    # rank 15 of 30 falls in (0.1, 0.5] holding 6: 0.1 + 0.4 * (15 - 12) / 6
    assert hour.e2e_p50_s == pytest.approx(0.3)
    assert (hour.requests, hour.prompt_tokens) == (30, pytest.approx(150.0 + 2.0 * 60))
    assert hour.requests_waiting_mean == pytest.approx((2 + 4 + 0) / 3)


def test_the_minute_task_follows_its_watermark_and_late_reports_reopen_it(gpu: Any, settings: Any) -> None:
    settings.TELEMETRY_RAW_RETENTION_HOURS = 10_000
    # 12:04 ends at 12:05 and waits out the 30 s lag: 11:59 .. 12:03 are done
    assert rollups.rollup_minutes_run(now=at(5))["minutes"] == 5
    assert RollupWatermark.objects.get(name="minute").done_until == at(4, 0)
    assert rollups.rollup_minutes_run(now=at(5))["minutes"] == 0

    rollups.rollup_hours_run(now=at(5))
    assert RollupWatermark.objects.get(name="hour").done_until == NOON

    gpu_samples(gpu, [(at(-1, 50), 100.0, None)])  # a buffered report, landing late in the hour before
    rollups.rollup_reopen(since=at(-1, 50))
    assert RollupWatermark.objects.get(name="minute").done_until == at(-1)
    rollups.rollup_minutes_run(now=at(5))
    assert GpuMinute.objects.get(gpu=gpu, bucket=at(-1)).utilization_mean == pytest.approx(99.5)
    assert RollupWatermark.objects.get(name="hour").done_until == NOON - timedelta(hours=1)
    rollups.rollup_hours_run(now=at(5))
    assert GpuHour.objects.get(gpu=gpu, bucket=at(-60)).samples == 2
    assert RollupWatermark.objects.get(name="hour").done_until == NOON


def test_retention_prunes_raw_samples_and_rollups_by_their_settings(gpu: Any, settings: Any) -> None:
    rollups.minutes_rollup(start=at(-1), end=at(5))
    rollups.hours_rollup(start=at(-60), end=at(60))
    settings.TELEMETRY_RAW_RETENTION_HOURS = 1
    settings.TELEMETRY_MINUTE_RETENTION_DAYS = 1
    deleted = rollups.telemetry_prune(now=at(62))
    assert deleted["GpuSample"] == 4  # 11:59:40 .. 12:00:40; the two at 12:03 are within the hour
    assert GpuSample.objects.count() == 2
    assert GpuMinute.objects.count() == 3 and GpuHour.objects.count() == 2
    rollups.telemetry_prune(now=at(0) + timedelta(days=2))
    assert (GpuMinute.objects.count(), GpuHour.objects.count()) == (0, 2)


def test_ingest_of_a_late_batch_pulls_the_watermark_back() -> None:
    RollupWatermark.objects.create(name="minute", done_until=timezone.now().replace(second=0, microsecond=0))
    old = timezone.now() - timedelta(minutes=30)
    rollups.rollup_reopen(since=old)
    assert RollupWatermark.objects.get(name="minute").done_until == old.replace(second=0, microsecond=0)
    fresh_mark = RollupWatermark.objects.get(name="minute").done_until
    rollups.rollup_reopen(since=timezone.now())
    assert RollupWatermark.objects.get(name="minute").done_until == fresh_mark


def test_day_rollups_sum_complete_days_and_follow_hours_recomputed_after_late_reports() -> None:
    gpu = make_gpu(make_node())
    midnight = datetime(2026, 3, 2, tzinfo=UTC)

    def hour(h: int, util: float, samples: int = 720) -> GpuHour:
        return GpuHour(gpu=gpu, bucket=midnight + timedelta(hours=h), samples=samples, utilization_mean=util)

    # Mar 1 from 22:00: 20 and 40; Mar 2: 10 at 03:00, an hour of no samples at 04:00, 50 at 23:00; Mar 3 02:00: 90.
    GpuHour.objects.bulk_create([hour(-2, 20.0), hour(-1, 40.0), hour(3, 10.0), hour(4, 0.0, 0), hour(23, 50.0)])
    GpuHour.objects.bulk_create([hour(26, 90.0)])
    RollupWatermark.objects.create(name="minute", done_until=midnight + timedelta(hours=26, minutes=30))
    RollupWatermark.objects.create(name="hour", done_until=midnight - timedelta(hours=2))
    RollupWatermark.objects.create(name="day", done_until=midnight - timedelta(days=1))
    # The hour task recomputes hours from minutes; give it minutes that reproduce the rows above.
    for row in GpuHour.objects.all():
        GpuMinute.objects.create(gpu=gpu, bucket=row.bucket, samples=row.samples, utilization_mean=row.utilization_mean)

    result = rollups.rollup_hours_run(now=midnight + timedelta(hours=27))

    days = {day.bucket: (day.first_hour, day.hours, day.samples, day.utilization_mean) for day in GpuDay.objects.all()}
    assert days == {
        midnight - timedelta(days=1): (midnight - timedelta(hours=2), 2, 1440, pytest.approx(30.0)),
        midnight: (midnight + timedelta(hours=3), 2, 1440, pytest.approx(30.0)),  # the empty hour is no hour
    }  # Mar 3 is not over: no row yet
    assert result["day_rows"] == 2
    assert RollupWatermark.objects.get(name="day").done_until == midnight + timedelta(days=1)

    # A late report for Mar 2 03:00 recomputes that hour, and so that day, at the next run.
    GpuMinute.objects.filter(bucket=midnight + timedelta(hours=3)).update(utilization_mean=70.0)
    RollupWatermark.objects.filter(name="hour").update(done_until=midnight + timedelta(hours=3))
    rollups.rollup_hours_run(now=midnight + timedelta(hours=27))
    assert GpuDay.objects.get(bucket=midnight).utilization_mean == pytest.approx(60.0)
    assert GpuDay.objects.get(bucket=midnight - timedelta(days=1)).utilization_mean == pytest.approx(30.0)
