"""Dashboard reads: ranges, rollup grids and the spend of a range computed from rollups."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from dashboard import selectors as pages
from fleet.costs.money import money_cents
from fleet.costs.selectors import fleet_window, spend_report
from fleet.models import Decision, RollupWatermark
from fleet.telemetry.rollups import floor_hour
from tests.costs.history import price, states
from tests.dashboard.history import gpu_rollups, histogram, pool_rollup
from tests.factories import make_gpu, make_instance, make_node, make_pool

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("params", "key", "span", "resolution"),
    [
        ({"range": "1h"}, "1h", timedelta(hours=1), "minute"),
        ({}, "24h", timedelta(hours=24), "minute"),
        ({"range": "7d"}, "7d", timedelta(days=7), "hour"),
        ({"range": "30d"}, "30d", timedelta(days=30), "hour"),
        ({"range": "forever"}, "24h", timedelta(hours=24), "minute"),
        (
            {"range": "custom", "start": "2026-11-20T00:00", "end": "2026-11-21T12:00"},
            "custom",
            timedelta(hours=36),
            "hour",
        ),
        (
            {"range": "custom", "start": "2026-11-21T00:00", "end": "2026-11-20T00:00"},
            "24h",
            timedelta(hours=24),
            "minute",
        ),
        ({"range": "custom", "start": "yesterday"}, "24h", timedelta(hours=24), "minute"),
    ],
)
def test_time_range_reads_minute_rollups_up_to_a_day_and_hours_beyond(
    params: dict[str, str], key: str, span: timedelta, resolution: str
) -> None:
    parsed = pages.time_range_parse(params=params, now=NOW)
    assert (parsed.key, parsed.end - parsed.start, parsed.resolution) == (key, span, resolution)


@pytest.mark.django_db
def test_utilization_grid_has_a_row_per_gpu_and_gaps_where_no_rollup_exists() -> None:
    real = make_gpu(make_node("rack1"), 0)
    demo = make_gpu(make_node("demo", simulated=True), 0)
    start = NOW - timedelta(minutes=3)
    gpu_rollups(real, start, 3, utilization=40)
    gpu_rollups(demo, start + timedelta(minutes=2), 1, utilization=90)
    grid = pages.gpu_utilization_grid(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    assert [(g["label"], g["simulated"]) for g in grid["rows"]] == [("demo/0", True), ("rack1/0", False)]
    assert grid["at"] == [start, start + timedelta(minutes=1), start + timedelta(minutes=2)]
    assert grid["utilization"] == [[None, None, 90.0], [40.0, 40.0, 40.0]]
    assert grid["step"] == timedelta(minutes=1)


@pytest.mark.django_db
def test_spend_from_rollups_splits_busy_idle_and_unallocated_by_hand() -> None:
    """One L4 at 2.00 USD/h up for three hours at 25 % duty cycle, held by an instance for two.

    allocated 2 h x 2.00 = 4.00, busy 4.00 x 0.25 = 1.00, idle 3.00; unallocated 1 h = 2.00.
    """
    gpu = make_gpu(make_node("rack1"), 0, "NVIDIA L4")
    price("NVIDIA L4", "2.00", date(2026, 1, 1))
    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    gpu_rollups(gpu, start, 3, hourly=True, utilization=25)
    instance = make_instance(make_pool("chat-l"), gpu)
    states(instance, (start, "ready"), (start + timedelta(hours=2), "stopped"))

    window = fleet_window(start=start, end=start + timedelta(hours=3), raw=False)
    report = spend_report(start=start, end=start + timedelta(hours=3), window=window)

    assert report.allocated.spend == Decimal("4.00")
    assert report.allocated.busy == Decimal("1.00")
    assert report.allocated.idle == Decimal("3.00")
    assert report.unallocated.spend == Decimal("2.00")
    buckets = pages.spend_buckets(report=report, size=timedelta(hours=1))
    assert buckets["at"] == [start, start + timedelta(hours=1), start + timedelta(hours=2)]
    assert buckets["step"] == timedelta(hours=1)
    assert [round(v, 2) for v in buckets["busy"]] == [Decimal("0.50"), Decimal("0.50"), Decimal("0.00")]
    assert [round(v, 2) for v in buckets["unallocated"]] == [Decimal("0.00"), Decimal("0.00"), Decimal("2.00")]


@pytest.mark.django_db
def test_savings_compare_actual_and_baseline_up_to_the_same_complete_minute(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two GPUs at 3.60 USD/h (0.06 a minute), both reporting since before the month began; the clock
    stands at 01:01:30 on the 1st, minute rollups are complete to 01:00.

    One GPU is up throughout and held from 00:10 on; the other reported until 00:15 and left.
    Up to 01:00: held 50 min x 0.06 = 3.00, free before the hold 10 min = 0.60, the departed
    GPU 15 min = 0.90: month to date 4.50. Baseline 2 GPUs x 60 min x 0.06 = 7.20; saved
    7.20 - 4.50 = 2.70. Running the baseline on to 01:01:30 instead would add 2 x 1.5 min x 0.06
    = 0.18, of which the hold covers 0.09, so 0.09 of a departed GPU would show as saved.
    """
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    now = datetime(2026, 11, 1, 1, 1, 30, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: now)
    month = datetime(2026, 11, 1, tzinfo=UTC)
    price("Acme X1", "3.60", date(2026, 1, 1))
    node = make_node("rack1")
    held, departed = make_gpu(node, 0, "Acme X1"), make_gpu(node, 1, "Acme X1")
    gpu_rollups(held, month - timedelta(minutes=1), 62)  # 23:59 on the 31st to the minute of 00:59
    gpu_rollups(departed, month - timedelta(minutes=1), 16)  # 23:59 to the minute of 00:14
    RollupWatermark.objects.create(name="minute", done_until=month + timedelta(hours=1))
    RollupWatermark.objects.create(name="hour", done_until=month)
    states(make_instance(make_pool("chat-l"), held), (month + timedelta(minutes=10), "ready"))

    summary = pages.spend_summary(now=now)

    figures = (summary.month_to_date, summary.today, summary.baseline_month_to_date, summary.savings_month_to_date)
    assert [str(money_cents(value)) for value in figures] == ["4.50", "4.50", "7.20", "2.70"]
    assert summary.month_to_date + summary.savings_month_to_date == summary.baseline_month_to_date


@pytest.mark.django_db
def test_complete_hours_past_the_minute_detail_come_from_hour_rollups_the_rest_from_minutes(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_COST_MINUTE_DETAIL_HOURS = 1
    hour = floor_hour(timezone.now()) - timedelta(hours=3)
    gpu = make_gpu(make_node("rack1"), 0, "NVIDIA L4")
    price("NVIDIA L4", "6.00", date(2026, 1, 1))
    gpu_rollups(gpu, hour, 1, hourly=True)
    gpu_rollups(gpu, hour + timedelta(hours=1), 30)
    start, end = hour, hour + timedelta(hours=1, minutes=30)
    report = spend_report(start=start, end=end, window=fleet_window(start=start, end=end, raw=False))
    assert report.unallocated.spend == Decimal("9.00")  # 1.5 h up x 6.00, nothing allocated


@pytest.mark.django_db
@pytest.mark.parametrize("percentile", [95, 90])  # stored by the rollup; read from the histogram
def test_sla_attainment_weighs_buckets_by_requests(percentile: int) -> None:
    pool = make_pool("chat-l", sla_metric="ttft", sla_percentile=percentile, sla_latency_ms=500)
    make_pool("quiet")
    pool_rollup(pool, NOW - timedelta(minutes=3), requests=90, fast=True)
    pool_rollup(pool, NOW - timedelta(minutes=2), requests=10, fast=False)
    rows = pages.sla_attainment(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    by_name = {row["name"]: row for row in rows}
    assert by_name["chat-l"]["attainment"] == pytest.approx(0.9)
    assert by_name["chat-l"]["requests"] == 100
    assert by_name["quiet"]["attainment"] is None
    assert (by_name["chat-l"]["target"], by_name["quiet"]["target"]) == (percentile / 100, 0.95)


@pytest.mark.django_db
def test_sla_attainment_is_the_share_of_requests_within_the_latency_limit() -> None:
    """P95 TTFT <= 500 ms over the range holds when at least 95 % of its requests got their first
    token within 500 ms, whatever each minute's own P95 was.

    Minute 1: 94 requests under 100 ms, 6 between 500 ms and 1 s (that minute's P95 is over 500 ms).
    Minute 2: 100 requests under 100 ms. Within 500 ms: (94 + 100) / 200 = 0.97, over the 0.95 target.
    The other pool's limit, 300 ms, falls inside the 250-500 ms bucket: of its 10 requests there,
    (300 - 250) / (500 - 250) = 1/5 count as within, as a histogram quantile interpolates:
    (90 + 10 / 5) / 100 = 0.92.
    """
    pool = make_pool("chat-l", sla_metric="ttft", sla_percentile=95, sla_latency_ms=500)
    strict = make_pool("chat-s", sla_metric="ttft", sla_percentile=90, sla_latency_ms=300)
    pool_rollup(pool, NOW - timedelta(minutes=3), requests=100, ttft=histogram({0.1: 94, 1.0: 6}))
    pool_rollup(pool, NOW - timedelta(minutes=2), requests=100, fast=True)
    pool_rollup(strict, NOW - timedelta(minutes=2), requests=100, ttft=histogram({0.1: 90, 0.5: 10}))
    rows = pages.sla_attainment(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    by_name = {row["name"]: row for row in rows}
    assert by_name["chat-l"]["attainment"] == pytest.approx(0.97)
    assert by_name["chat-l"]["requests"] == 200
    assert by_name["chat-s"]["attainment"] == pytest.approx(0.92)
    assert by_name["chat-s"]["target"] == 0.90


@pytest.mark.django_db
def test_instance_states_step_at_every_change() -> None:
    pool = make_pool("chat-l")
    gpu = make_gpu(make_node("rack1"), 0)
    first, second = make_instance(pool, gpu), make_instance(pool, gpu)
    t = NOW - timedelta(minutes=30)
    states(first, (t, "starting"), (t + timedelta(minutes=1), "ready"))
    states(
        second,
        (t + timedelta(minutes=5), "starting"),
        (t + timedelta(minutes=6), "ready"),
        (t + timedelta(minutes=20), "sleeping"),
    )
    result = pages.instance_states_over_time(
        pool=pool, time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW)
    )
    assert result["states"]["ready"] == [0, 1, 1, 2, 1, 1]
    assert result["states"]["starting"] == [1, 0, 1, 0, 0, 0]
    assert result["states"]["sleeping"] == [0, 0, 0, 0, 1, 1]
    assert result["at"][-1] == NOW


@pytest.mark.django_db
def test_decisions_filter_by_kind_pool_and_range() -> None:
    chat, code = make_pool("chat-l"), make_pool("code-m", tier="M")
    for kind, pool in (("autoscale", chat), ("idle", chat), ("autoscale", code)):
        Decision.objects.create(policy_kind=kind, pool=pool, action="scale_out", reason=f"{kind} on {pool.name}")
    Decision.objects.filter(pool=chat).update(created_at=NOW - timedelta(hours=1))
    Decision.objects.filter(pool=code).update(created_at=NOW - timedelta(days=3))
    day = pages.time_range_parse(params={"range": "24h"}, now=NOW)
    assert {d.reason for d in pages.decisions_filtered(time_range=day)} == {"autoscale on chat-l", "idle on chat-l"}
    assert [d.reason for d in pages.decisions_filtered(time_range=day, kind="idle")] == ["idle on chat-l"]
    week = pages.time_range_parse(params={"range": "7d"}, now=NOW)
    assert [d.reason for d in pages.decisions_filtered(time_range=week, pool_id=code.pk)] == ["autoscale on code-m"]


@pytest.mark.django_db
def test_a_month_heatmap_averages_hour_rollups_per_day() -> None:
    gpu = make_gpu(make_node("rack1"), 0)
    day = datetime(2026, 11, 20, tzinfo=UTC)
    gpu_rollups(gpu, day, 2, hourly=True, utilization=lambda at: 20.0 if at.hour == 0 else 40.0)
    gpu_rollups(gpu, day + timedelta(days=1), 1, hourly=True, utilization=90.0)
    gpu_rollups(gpu, NOW - timedelta(minutes=5), 5)  # minute rollups are not read for a month
    grid = pages.gpu_utilization_grid(time_range=pages.time_range_parse(params={"range": "30d"}, now=NOW))
    assert grid["at"] == [day, day + timedelta(days=1)]
    assert grid["step"] == timedelta(days=1)
    assert grid["utilization"] == [[pytest.approx(30.0), pytest.approx(90.0)]]


@pytest.mark.django_db
def test_spend_over_days_reads_one_period_per_gpu_day() -> None:
    """Two days up at 1.00 USD/h, 25 % busy the first day and 75 % the second, held the first day only.

    allocated 24 h x 1.00 = 24.00, busy 24.00 x 0.25 = 6.00; unallocated the second day = 24.00.
    """
    gpu = make_gpu(make_node("rack1"), 0, "NVIDIA L4")
    price("NVIDIA L4", "1.00", date(2026, 1, 1))
    day = datetime(2026, 11, 20, tzinfo=UTC)
    gpu_rollups(gpu, day, 48, hourly=True, utilization=lambda at: 25.0 if at < day + timedelta(days=1) else 75.0)
    states(make_instance(make_pool("chat-l"), gpu), (day, "ready"), (day + timedelta(days=1), "stopped"))
    end = day + timedelta(days=3)
    report = spend_report(start=day, end=end, window=fleet_window(start=day, end=end, raw=False))
    assert (report.allocated.spend, report.allocated.busy) == (Decimal("24.00"), Decimal("6.00"))
    assert report.unallocated.spend == Decimal("24.00")


@pytest.mark.django_db
def test_a_large_fleet_heatmap_has_a_row_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "HEATMAP_GPU_ROWS", 2)
    rack, demo = make_node("rack1"), make_node("demo", simulated=True)
    busy, idle, sim = make_gpu(rack, 0), make_gpu(rack, 1), make_gpu(demo, 0)
    at = NOW - timedelta(minutes=3)
    gpu_rollups(busy, at, 1, utilization=80.0)
    gpu_rollups(idle, at, 1, utilization=20.0)
    gpu_rollups(sim, at, 1, utilization=10.0)
    grid = pages.gpu_utilization_grid(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    assert grid["by_node"] is True
    assert [(row["label"], row["simulated"]) for row in grid["rows"]] == [
        ("demo (1 GPU)", True),
        ("rack1 (2 GPUs)", False),
    ]
    assert grid["utilization"] == [[pytest.approx(10.0)], [pytest.approx(50.0)]]
