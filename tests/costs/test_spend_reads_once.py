"""Spend worked out once where the same figure recurs: a line's arithmetic per price, length and
share, a card's price spans per node with the same rates, rollup periods of one period grouped by
GPU alone, the day watermark read with the others, and windows built from one read of a range.

Each test is checked against arithmetic done by hand in its comments."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from fleet.costs.allocation import Allocation
from fleet.costs.prices import PriceBook, RateRow
from fleet.costs.selectors import HOUR, MINUTE, Holdings, Tiers, _rollup_periods, gpu_activity
from fleet.costs.spend import ALLOCATED, UNALLOCATED, GpuInfo, UtilizationIndex, spend_lines
from fleet.models import GpuDay, GpuHour, GpuMinute
from fleet.telemetry.rollups import gpu_period_sums
from tests.costs.history import states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

GPU = "Acme X1"
OTHER = "Acme X2"


def test_lines_of_equal_prices_written_differently_keep_their_own_digits() -> None:
    """Two cards up 1 h 30 min, one priced 2.0/h, the other 2.00/h: the same value, so a figure
    worked out once for one must not serve the other. 1.5 h x 2.0 = 3.0 and 1.5 h x 2.00 = 3.00
    (an exact quotient keeps the price's exponent); both idle all of it."""
    book = PriceBook(
        [
            RateRow(1, GPU, None, date(2024, 1, 1), Decimal("2.0")),
            RateRow(2, OTHER, None, date(2024, 1, 1), Decimal("2.00")),
        ],
        tz=UTC,
    )
    start, end = utc(2024, 3, 1, 10), utc(2024, 3, 1, 11, 30)
    gpus = {1: GpuInfo(1, 1, GPU), 2: GpuInfo(2, 1, OTHER)}
    lines = spend_lines(
        allocations=[],
        up={1: [(start, end)], 2: [(start, end)]},
        gpus=gpus,
        pools={},
        prices=book,
        utilization=UtilizationIndex(()),
    )
    assert [(line.gpu_id, str(line.spend), str(line.idle), line.gpu_hours) for line in lines] == [
        (1, "3.0", "3.0", Decimal("1.5")),
        (2, "3.00", "3.00", Decimal("1.5")),
    ]


def test_cards_priced_once_per_rates_still_pay_their_nodes_own_price() -> None:
    """Fleet rate 2.0000/h; node 2 has its own 1.2500/h from 5 March (UTC). Three cards on nodes
    1, 2 and 3 held whole over 4 March 22:00 - 5 March 02:00 (4 h), priced in one call:
    node 1 and node 3 pay 4 h x 2.0000 = 8; node 2 pays 2 h x 2.0000 = 4 to midnight and
    2 h x 1.2500 = 2.5 after it."""
    book = PriceBook(
        [
            RateRow(1, GPU, None, date(2024, 1, 1), Decimal("2.0000")),
            RateRow(2, GPU, 2, date(2024, 3, 5), Decimal("1.2500")),
        ],
        tz=UTC,
    )
    start, end = utc(2024, 3, 4, 22), utc(2024, 3, 5, 2)
    gpus = {gpu: GpuInfo(gpu, gpu, GPU) for gpu in (1, 2, 3)}
    allocations = [Allocation(10 + gpu, gpu, None, start, end, Fraction(1), "ready") for gpu in (1, 2, 3)]
    lines = spend_lines(
        allocations=allocations, up={}, gpus=gpus, pools={}, prices=book, utilization=UtilizationIndex(())
    )
    assert [(line.kind, line.node_id, line.start, line.end, line.price_per_gpu_hour, line.spend) for line in lines] == [
        (ALLOCATED, 1, start, end, Decimal("2.0000"), Decimal(8)),
        (ALLOCATED, 2, start, utc(2024, 3, 5), Decimal("2.0000"), Decimal(4)),
        (ALLOCATED, 2, utc(2024, 3, 5), end, Decimal("1.2500"), Decimal("2.5")),
        (ALLOCATED, 3, start, end, Decimal("2.0000"), Decimal(8)),
    ]
    assert {line.kind for line in lines} != {UNALLOCATED}


def _periods(model: Any, width: timedelta, start: datetime, until: datetime, period: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (gpu, first, n * width, mean, weight)
        for gpu, _, first, n, mean, weight in gpu_period_sums(model, start=start, end=until, period=period)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "width"), [(GpuHour, HOUR), (GpuMinute, MINUTE)])
def test_a_window_inside_one_period_gives_the_periods_truncating_gives(model: Any, width: timedelta) -> None:
    """Buckets 1 to 20 but 5 of one card, and 1 to 20 of another, a window from bucket 1 to bucket
    21, longer than ``PERIOD_AFTER`` and inside one period (a UTC day of hours, an hour of minutes):
    one period per card, 19 buckets of up time from bucket 1 for the first, 20 for the second;
    the same rows truncating the buckets gives. Means 10 and 30, 12 samples a bucket: 19 x 12 =
    228 and 20 x 12 = 240 samples."""
    from django.db.models.functions import TruncDay, TruncHour

    node = make_node()
    one, two = make_gpu(node, index=0, model_name=GPU), make_gpu(node, index=1, model_name=GPU)
    base = utc(2024, 3, 1, 0) if width == HOUR else utc(2024, 3, 1, 10)
    rows = [(one, i, 10.0) for i in range(1, 21) if i != 5] + [(two, i, 30.0) for i in range(1, 21)]
    model.objects.bulk_create(
        model(gpu=gpu, bucket=base + i * width, samples=12, utilization_mean=mean) for gpu, i, mean in rows
    )
    start, until = base + width, base + 21 * width
    read = sorted(_rollup_periods(model, width, start, until))
    truncated = _periods(model, width, start, until, (TruncDay if width == HOUR else TruncHour)("bucket", tzinfo=UTC))
    assert read == truncated
    assert read == [(one.pk, start, 19 * width, 10.0, 228), (two.pk, start, 20 * width, 30.0, 240)]


@pytest.mark.django_db
def test_a_window_across_two_periods_still_gives_a_period_each() -> None:
    """Hours 20:00 1 March to 04:00 2 March UTC, every hour reported (8 hours): two UTC days, so
    two periods, 4 h from 20:00 and 4 h from 00:00."""
    gpu = make_gpu(make_node(), model_name=GPU)
    start = utc(2024, 3, 1, 20)
    GpuHour.objects.bulk_create(
        GpuHour(gpu=gpu, bucket=start + i * HOUR, samples=12, utilization_mean=50.0) for i in range(8)
    )
    read = sorted(_rollup_periods(GpuHour, HOUR, start, start + 8 * HOUR))
    assert [(gpu_id, first, up) for gpu_id, first, up, _, _ in read] == [
        (gpu.pk, start, 4 * HOUR),
        (gpu.pk, utc(2024, 3, 2), 4 * HOUR),
    ]


@pytest.mark.django_db
def test_whole_days_come_from_day_rollups_only_below_the_day_watermark_given() -> None:
    """A day rollup of 2 March (first hour 03:00, 20 hours) and no hour rows: a window of 1 to 4
    March reads it when the watermark given is past 2 March, and finds nothing when none is given
    (hours summed, and there are none) or the watermark stops at 2 March."""
    gpu = make_gpu(make_node(), model_name=GPU)
    GpuDay.objects.create(
        gpu=gpu, bucket=utc(2024, 3, 2), first_hour=utc(2024, 3, 2, 3), hours=20, samples=240, utilization_mean=50.0
    )
    start, until = utc(2024, 3, 1), utc(2024, 3, 4)
    assert _rollup_periods(GpuHour, HOUR, start, until, days_done=utc(2024, 3, 3)) == [
        (gpu.pk, utc(2024, 3, 2, 3), 20 * HOUR, 50.0, 240)
    ]
    assert _rollup_periods(GpuHour, HOUR, start, until) == []
    assert _rollup_periods(GpuHour, HOUR, start, until, days_done=utc(2024, 3, 2)) == []


@pytest.mark.django_db
def test_tiers_carry_the_day_watermark_so_up_time_reads_no_watermark_again(
    django_assert_num_queries: Any,
) -> None:
    """With the watermarks read (``marks``), the up time of 1 to 4 March reads the day rollups
    and the hours either side, nothing more: two queries (hours of 1 March are none: a whole day
    too, so three days of day rollups in one query, and no hours either side)."""
    gpu = make_gpu(make_node(), model_name=GPU)
    for day in (1, 2, 3):
        GpuDay.objects.create(
            gpu=gpu, bucket=utc(2024, 3, day), first_hour=utc(2024, 3, day), hours=24, samples=288, utilization_mean=1.0
        )
    marks = {"day": utc(2024, 3, 4), "hour": utc(2024, 3, 4), "minute": utc(2024, 3, 4)}
    start, end = utc(2024, 3, 1), utc(2024, 3, 4)
    tiers = Tiers.for_window(start=start, end=end, now=end, raw=False, marks=marks)
    assert tiers.days_done == utc(2024, 3, 4)
    with django_assert_num_queries(1):
        up, _ = gpu_activity(start=start, end=end, tiers=tiers, duty_cycle=False)
    assert up == {gpu.pk: [(start, end)]}


@pytest.mark.django_db
def test_a_window_is_built_only_inside_the_range_read() -> None:
    """Holds are cut from the events of the range read: a window reaching past it would miss the
    events after the range, so it is refused, naming both ranges. Inside, an instance ready from
    1 March 10:00 to 12:00 holds its card 11:00-12:00 of the window 11:00-13:00."""
    instance = make_instance(make_pool(), make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2024, 3, 1, 10), "ready"), (utc(2024, 3, 1, 12), "stopped"))
    holdings = Holdings.read(start=utc(2024, 3, 1), end=utc(2024, 3, 2))
    window = holdings.window(
        start=utc(2024, 3, 1, 11),
        end=utc(2024, 3, 1, 13),
        up={},
        utilization=UtilizationIndex(()),
        complete_until=utc(2024, 3, 1, 13),
    )
    assert [(row.instance_id, row.start, row.end) for row in window.allocations] == [
        (instance.pk, utc(2024, 3, 1, 11), utc(2024, 3, 1, 12))
    ]
    with pytest.raises(ValueError, match="not inside the range read"):
        holdings.window(
            start=utc(2024, 3, 1, 23),
            end=utc(2024, 3, 2, 1),
            up={},
            utilization=UtilizationIndex(()),
            complete_until=utc(2024, 3, 2, 1),
        )


@pytest.mark.django_db
def test_rollup_rows_read_as_offsets_are_their_buckets_in_utc() -> None:
    """A window from 10:45 in Kolkata (UTC+5:30) on 1 March, 05:15 UTC, for 2 hours reads hour rows
    from its hour's start there, 10:00 local = 04:30 UTC: the rows of 05:00 and 06:00 UTC, each
    its own period, given as those UTC instants (written +00:00 as the timestamps read back are),
    not as Kolkata times; a day rollup's first hour likewise."""
    from zoneinfo import ZoneInfo

    gpu = make_gpu(make_node(), model_name=GPU)
    GpuHour.objects.bulk_create(
        GpuHour(gpu=gpu, bucket=utc(2024, 3, 1, hour), samples=12, utilization_mean=20.0) for hour in (5, 6)
    )
    start = datetime(2024, 3, 1, 10, 45, tzinfo=ZoneInfo("Asia/Kolkata"))
    read = _rollup_periods(GpuHour, HOUR, start, start + 2 * HOUR)
    assert [(gpu_id, begin.isoformat(), up) for gpu_id, begin, up, _, _ in sorted(read)] == [
        (gpu.pk, "2024-03-01T05:00:00+00:00", HOUR),
        (gpu.pk, "2024-03-01T06:00:00+00:00", HOUR),
    ]
    GpuDay.objects.create(
        gpu=gpu, bucket=utc(2024, 3, 3), first_hour=utc(2024, 3, 3, 7), hours=2, samples=24, utilization_mean=5.0
    )
    days = _rollup_periods(GpuHour, HOUR, utc(2024, 3, 3), utc(2024, 3, 4), days_done=utc(2024, 3, 4))
    assert [(begin.isoformat(), up) for _, begin, up, _, _ in days] == [("2024-03-03T07:00:00+00:00", 2 * HOUR)]
