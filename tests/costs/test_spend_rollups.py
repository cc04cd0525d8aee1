"""Spend past the raw-sample retention: the same history read from rollups gives the same money."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.costs.money import money_cents
from fleet.costs.selectors import (
    HOUR,
    MINUTE,
    Tiers,
    _rollup_periods,
    cost_per_million_tokens,
    savings_compute,
    spend_report,
)
from fleet.models import GpuDay, GpuHour, GpuMinute, GpuSample, InstanceSample, RollupWatermark
from fleet.telemetry.rollups import days_rollup, floor_hour, gpu_period_sums, rollup_hours_run, rollup_minutes_run
from tests.costs.history import gpu_samples, instance_samples, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"


def cents(amount: Decimal) -> str:
    return str(money_cents(amount))


def summary(start, end) -> tuple[str, str, str, str]:  # type: ignore[no-untyped-def]
    report = spend_report(start=start, end=end)
    return (
        cents(report.allocated.spend),
        cents(report.allocated.busy),
        cents(report.allocated.idle),
        cents(report.unallocated.spend),
    )


def test_spend_busy_idle_and_tokens_survive_the_raw_samples_being_pruned(settings) -> None:  # type: ignore[no-untyped-def]
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    held, free = make_gpu(node, 0, model_name=GPU), make_gpu(node, 1, model_name=GPU)
    pool = make_pool()
    instance = make_instance(pool, held)
    # Recent enough that minute rollups are still kept for it.
    start = floor_hour(timezone.now()) - timedelta(hours=5)
    h = timedelta(hours=1)
    end = start + 3 * h
    states(instance, (start, "ready"), (start + 2 * h, "stopped"))
    # The held GPU: 25% for the first hour, 75% for the rest; the free one up for the first hour only.
    gpu_samples(held, start, start + h - timedelta(seconds=30), every_s=30, utilization=25.0)
    gpu_samples(held, start + h, end, every_s=30, utilization=75.0)
    gpu_samples(free, start, start + h, every_s=30, utilization=0.0)
    instance_samples(instance, start, start + 2 * h, every_s=30, prompt_rate=100.0, output_rate=400.0)

    raw = summary(start, end)
    tokens_raw = cost_per_million_tokens(start=start, end=end)[pool.pk].tokens
    # Held 2 h at 2.00 = 4.00; busy = 1 h x 25% + 1 h x 75% = 1 h -> 2.00, idle 2.00.
    # Unallocated: the held GPU's last hour (2.00) and the free GPU's hour (2.00) = 4.00.
    assert raw == ("4.00", "2.00", "2.00", "4.00")
    assert tokens_raw == Decimal(500 * 7_200)

    later = end + timedelta(minutes=10)
    rollup_minutes_run(now=later)
    rollup_hours_run(now=later)
    assert GpuMinute.objects.exists()
    GpuSample.objects.all().delete()
    InstanceSample.objects.all().delete()

    assert Tiers.for_window(start=start, end=end, now=later).minutes_until == end
    # Allocation comes from state events, exact either way; up time is counted by the minute
    # from rollups, so the free GPU's last sample (on the full hour) adds that minute: 2.00 / 60.
    assert summary(start, end)[:3] == raw[:3]
    assert summary(start, end)[3] == "4.03"
    assert cost_per_million_tokens(start=start, end=end)[pool.pk].tokens == tokens_raw

    # Complete hours older than the minute detail come from hour rollups: a GPU that reported
    # in an hour counts as up for all of it, so the free GPU's sample at the full hour adds
    # that hour. The same when the minutes are past their retention and gone.
    settings.FLEET_COST_MINUTE_DETAIL_HOURS = 1
    assert Tiers.for_window(start=start, end=end).hours_until == end
    assert summary(start, end) == ("4.00", "2.00", "2.00", "6.00")
    settings.FLEET_COST_MINUTE_DETAIL_HOURS = 24
    settings.TELEMETRY_MINUTE_RETENTION_DAYS = 0
    GpuMinute.objects.all().delete()
    assert Tiers.for_window(start=start, end=end).hours_until == end
    assert summary(start, end) == ("4.00", "2.00", "2.00", "6.00")


def test_a_window_without_rollups_reads_raw_samples_only() -> None:
    start, end = utc(2024, 3, 1, 8), utc(2024, 3, 1, 9)
    RollupWatermark.objects.all().delete()
    tiers = Tiers.for_window(start=start, end=end)
    assert (tiers.hours_until, tiers.minutes_until) == (start, start)


def test_a_gpu_seen_only_in_rollups_before_the_period_counts_in_the_baseline_from_its_start(settings) -> None:  # type: ignore[no-untyped-def]
    price(GPU, "1.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    GpuMinute.objects.create(gpu=gpu, bucket=utc(2024, 3, 1, 7, 59), samples=2, utilization_mean=0.0)
    start, end = utc(2024, 3, 1, 8), utc(2024, 3, 1, 10)
    gpu_samples(gpu, utc(2024, 3, 1, 9), end, every_s=60, utilization=0.0)
    # Seen before the period (in a rollup), so the baseline counts it from 08:00: 2 h x 1.00.
    assert cents(savings_compute(start=start, end=end).baseline) == "2.00"


def test_whole_days_read_from_day_rollups_give_the_money_hours_give() -> None:
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    held, free = make_gpu(node, 0, model_name=GPU), make_gpu(node, 1, model_name=GPU)
    instance = make_instance(make_pool(), held)
    first = utc(2024, 5, 1)
    states(instance, (first + timedelta(hours=5), "ready"), (first + timedelta(days=2, hours=7), "stopped"))
    hours = []
    for n in range(3 * 24):
        at = first + timedelta(hours=n)
        hours.append(GpuHour(gpu=held, bucket=at, samples=720, utilization_mean=float(n % 24) * 4))
        if n % 5 == 0:  # the free card reports now and then
            hours.append(GpuHour(gpu=free, bucket=at, samples=60, utilization_mean=None))
    GpuHour.objects.bulk_create(hours)
    RollupWatermark.objects.create(name="minute", done_until=first + timedelta(days=4))
    RollupWatermark.objects.create(name="hour", done_until=first + timedelta(days=4))
    window = (first + timedelta(hours=6, minutes=30), first + timedelta(days=2, hours=20))

    from_hours = summary(*window), savings_compute(start=window[0], end=window[1]).baseline
    days_rollup(start=first, end=first + timedelta(days=3))
    RollupWatermark.objects.create(name="day", done_until=first + timedelta(days=3))
    with CaptureQueriesContext(connection) as captured:
        from_days = summary(*window), savings_compute(start=window[0], end=window[1]).baseline

    assert any("fleet_gpuday" in query["sql"] for query in captured.captured_queries)
    assert GpuDay.objects.count() == 6  # two cards, three days; the window holds one whole day
    assert from_days == from_hours
    assert from_hours[0][0] != "0.00"


@pytest.mark.parametrize(("model", "width"), [(GpuHour, HOUR), (GpuMinute, MINUTE)])
def test_short_windows_read_each_rollup_row_as_the_grouped_sums_would_give_it(model, width) -> None:  # type: ignore[no-untyped-def]
    """A window no longer than ``PERIOD_AFTER`` takes each bucket as its own period, read row by row:
    the same (gpu, start, up time, mean, samples) ``gpu_period_sums`` gives grouping by bucket, a row
    with no samples left out and a missing mean kept missing. Two GPUs, the second with a gap."""
    node = make_node()
    first, second = make_gpu(node, index=0, model_name=GPU), make_gpu(node, index=1, model_name=GPU)
    start = utc(2024, 3, 1, 10)
    rows: list[tuple[Any, datetime, int, float | None]] = [(first, start + i * width, 12, 40.0 + i) for i in range(5)]
    rows += [
        (second, start + width, 12, None),
        (second, start + 3 * width, 0, 10.0),
        (second, start + 4 * width, 6, 7.5),
    ]
    model.objects.bulk_create(
        model(gpu=gpu, bucket=bucket, samples=samples, utilization_mean=mean) for gpu, bucket, samples, mean in rows
    )
    begin, until = start + width // 2, start + 5 * width  # a window starting inside a bucket reads that bucket
    read = sorted(_rollup_periods(model, width, begin, until))
    summed = sorted(
        (gpu, first_bucket, n * width, mean, weight)
        for gpu, _, first_bucket, n, mean, weight in gpu_period_sums(model, start=start, end=until)
    )
    assert read == summed
    assert [(gpu, bucket) for gpu, bucket, *_ in read if gpu == second.pk] == [
        (second.pk, start + width),
        (second.pk, start + 4 * width),
    ]
