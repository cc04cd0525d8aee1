"""Spend of constructed histories, each checked against arithmetic done by hand in the comments."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from fleet.costs.money import money_cents
from fleet.costs.selectors import (
    cost_per_million_tokens,
    month_to_date,
    period_bounds,
    run_rate,
    savings_compute,
    spend_metric_rows,
    spend_report,
)
from fleet.models import Node
from tests.costs.history import gpu_samples, instance_samples, mig_device, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"  # a model no preset prices, so only this test's rates apply


def cents(amount: Decimal) -> str:
    return str(money_cents(amount))


def test_an_instance_across_a_price_change_midnight_and_a_month_end_in_the_billing_time_zone(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "Asia/Shanghai"  # UTC+8 all year
    price(GPU, "0.8000", date(2025, 1, 1))
    price(GPU, "1.0000", date(2025, 2, 1))  # from 2025-02-01 00:00 Shanghai = 2025-01-31 16:00 UTC
    instance = make_instance(make_pool(), make_gpu(make_node(), model_name=GPU))
    # Ready 2025-01-31 12:00 UTC (20:00 Shanghai) to 2025-02-01 04:00 UTC (12:00 Shanghai): 16 h.
    states(instance, (utc(2025, 1, 31, 12), "ready"), (utc(2025, 2, 1, 4), "stopped"))

    report = spend_report(start=utc(2025, 1, 1), end=utc(2025, 3, 1))
    # 12:00-16:00 UTC at 0.80 = 4 h x 0.80 = 3.20; 16:00-04:00 UTC at 1.00 = 12 h x 1.00 = 12.00; total 15.20.
    assert [(line.gpu_hours, line.price_per_gpu_hour, line.spend) for line in report.lines] == [
        (Decimal(4), Decimal("0.8000"), Decimal("3.2")),
        (Decimal(12), Decimal("1.0000"), Decimal("12")),
    ]
    assert cents(report.total) == "15.20"
    assert report.lines[0].arithmetic() == "4 GPU-h x 0.8000/GPU-h = 3.2000"

    # The Shanghai month boundary is 2025-01-31 16:00 UTC: January holds 3.20, February 12.00.
    january = period_bounds(period="month", now=utc(2025, 1, 31, 15))
    february = period_bounds(period="month", now=utc(2025, 1, 31, 17))
    assert january[1] == february[0] == utc(2025, 1, 31, 16)
    assert cents(spend_report(start=january[0], end=january[1]).total) == "3.20"
    assert cents(spend_report(start=february[0], end=february[1]).total) == "12.00"


def test_the_same_history_billed_in_utc_moves_the_price_change_to_utc_midnight(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "0.8000", date(2025, 1, 1))
    price(GPU, "1.0000", date(2025, 2, 1))
    instance = make_instance(make_pool(), make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2025, 1, 31, 12), "ready"), (utc(2025, 2, 1, 4), "stopped"))
    # 12:00-24:00 at 0.80 = 12 x 0.80 = 9.60; 00:00-04:00 at 1.00 = 4.00; total 13.60.
    assert cents(spend_report(start=utc(2025, 1, 1), end=utc(2025, 3, 1)).total) == "13.60"


@pytest.mark.parametrize(("sleeping_holds", "expected"), [(True, "3.00"), (False, "2.00")])
def test_sleeping_then_stopped_follows_the_sleeping_setting(settings, sleeping_holds: bool, expected: str) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_COST_SLEEPING_HOLDS_GPU = sleeping_holds
    price(GPU, "2.0000", date(2024, 1, 1))
    instance = make_instance(make_pool(), make_gpu(make_node(), model_name=GPU))
    states(
        instance,
        (utc(2024, 5, 1, 9, 50), "starting"),
        (utc(2024, 5, 1, 10), "ready"),
        (utc(2024, 5, 1, 11), "sleeping"),
        (utc(2024, 5, 1, 11, 30), "stopped"),
    )
    report = spend_report(start=utc(2024, 5, 1, 10), end=utc(2024, 5, 2))
    # From 10:00: ready 1 h (2.00) + sleeping 0.5 h (1.00) = 3.00 if sleeping holds; else 2.00.
    assert cents(report.total) == expected
    assert {line.state for line in report.lines} == ({"ready", "sleeping"} if sleeping_holds else {"ready"})


def test_a_mig_slice_beside_a_full_gpu_and_the_unallocated_rest() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    price(h100, "7.0000", date(2024, 1, 1))  # presets start 2025-06-01, after this history
    node = make_node()
    mig_gpu = make_gpu(node, index=0, model_name=h100, mig_mode="enabled")
    whole_gpu = make_gpu(node, index=1, model_name=h100)
    slice_3g = mig_device(mig_gpu, "3g.40gb")
    on_slice = make_instance(
        make_pool("chat-m", tier="M", isolation="mig", mig_profile="3g.40gb"), mig_gpu, mig_device=slice_3g
    )
    on_whole = make_instance(make_pool("chat-s", tier="S", isolation="exclusive"), whole_gpu)
    start, end = utc(2024, 3, 1, 8), utc(2024, 3, 1, 10)
    states(on_slice, (start, "ready"), (end, "stopped"))
    states(on_whole, (start, "ready"), (end, "stopped"))
    gpu_samples(mig_gpu, start, end, utilization=50.0)
    gpu_samples(whole_gpu, start, end, utilization=25.0)

    report = spend_report(start=utc(2024, 3, 1), end=utc(2024, 3, 2))
    by_instance = report.by(lambda line: line.instance_id)
    # Slice: 3/7 x 7.00 x 2 h = 6.00, busy at 50% = 3.00. Whole GPU: 7.00 x 2 h = 14.00, busy at 25% = 3.50.
    assert (cents(by_instance[on_slice.pk].spend), cents(by_instance[on_slice.pk].busy)) == ("6.00", "3.00")
    assert (cents(by_instance[on_whole.pk].spend), cents(by_instance[on_whole.pk].busy)) == ("14.00", "3.50")
    assert cents(by_instance[on_whole.pk].idle) == "10.50"
    # The MIG GPU was up 2 h with 4/7 held by nobody: 4/7 x 7.00 x 2 = 8.00 unallocated. Total 28.00.
    assert cents(report.unallocated.spend) == "8.00"
    assert cents(report.total) == "28.00"
    assert cents(report.by(lambda line: line.node_id)[node.pk].spend) == "20.00"


def test_two_instances_sharing_a_gpu_split_it_and_the_card_is_paid_once() -> None:
    price(GPU, "3.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    pool = make_pool()
    first, second = make_instance(pool, gpu), make_instance(pool, gpu)
    states(first, (utc(2024, 3, 1, 0), "ready"), (utc(2024, 3, 1, 2), "stopped"))
    states(second, (utc(2024, 3, 1, 1), "ready"), (utc(2024, 3, 1, 2), "stopped"))
    report = spend_report(start=utc(2024, 3, 1), end=utc(2024, 3, 2))
    by_instance = report.by(lambda line: line.instance_id)
    # 00-01 first alone: 3.00. 01-02 shared: 1.50 each. First 4.50, second 1.50, the card 2 h x 3.00 = 6.00.
    assert (cents(by_instance[first.pk].spend), cents(by_instance[second.pk].spend)) == ("4.50", "1.50")
    assert cents(report.total) == "6.00"


def test_a_node_override_beats_the_fleet_price_from_its_date_and_other_currencies_are_ignored() -> None:
    node = make_node()
    price(GPU, "2.0000", date(2024, 1, 1))
    price(GPU, "0.5000", date(2024, 3, 1), node=node)  # reserved host, from 1 March
    price(GPU, "99.0000", date(2024, 1, 1), currency="EUR")
    instance = make_instance(make_pool(), make_gpu(node, model_name=GPU))
    states(instance, (utc(2024, 2, 29, 22), "ready"), (utc(2024, 3, 1, 2), "stopped"))
    # 22:00-24:00 at the fleet's 2.00 = 4.00; 00:00-02:00 at the node's 0.50 = 1.00; total 5.00.
    assert cents(spend_report(start=utc(2024, 2, 1), end=utc(2024, 4, 1)).total) == "5.00"


def test_time_before_any_price_is_counted_as_unpriced_not_as_free_money() -> None:
    price(GPU, "1.0000", date(2024, 3, 1))
    instance = make_instance(make_pool(), make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2024, 2, 29, 23), "ready"), (utc(2024, 3, 1, 1), "stopped"))
    allocated = spend_report(start=utc(2024, 2, 1), end=utc(2024, 4, 1)).allocated
    assert (allocated.spend, allocated.unpriced_gpu_hours, allocated.gpu_hours) == (Decimal(1), Decimal(1), Decimal(2))


def test_savings_against_the_static_baseline_match_the_hand_figure(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_COST_SAMPLE_GAP_S = 900
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    busy_gpu, released_gpu = make_gpu(node, 0, model_name=GPU), make_gpu(node, 1, model_name=GPU)
    start, end = utc(2024, 3, 1, 0), utc(2024, 3, 1, 10)
    gpu_samples(busy_gpu, utc(2024, 2, 29, 23, 50), end, every_s=600)  # up the whole period
    gpu_samples(released_gpu, utc(2024, 2, 29, 23, 50), utc(2024, 3, 1, 4), every_s=600)  # released at 04:00
    instance = make_instance(make_pool(), busy_gpu)
    states(instance, (utc(2024, 3, 1, 2), "ready"), (utc(2024, 3, 1, 6), "stopped"))

    savings = savings_compute(start=start, end=end)
    # Baseline: both GPUs were in the fleet before the period: 2 GPUs x 10 h x 2.00 = 40.00.
    # Actual: busy GPU up 10 h = 20.00 (8.00 allocated, 12.00 unallocated) + released GPU up 4 h = 8.00: 28.00.
    # Savings 40.00 - 28.00 = 12.00; reclaimable (unallocated) 12.00 + 8.00 = 20.00.
    assert (cents(savings.baseline), cents(savings.actual)) == ("40.00", "28.00")
    assert (cents(savings.savings), cents(savings.reclaimable)) == ("12.00", "20.00")
    assert "always-on instance on every GPU" in savings.method


def test_a_gpu_new_in_the_period_joins_the_baseline_when_first_seen(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_COST_SAMPLE_GAP_S = 900
    price(GPU, "2.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    gpu_samples(gpu, utc(2024, 3, 1, 6), utc(2024, 3, 1, 8), every_s=600)
    savings = savings_compute(start=utc(2024, 3, 1, 0), end=utc(2024, 3, 1, 10))
    # Baseline from 06:00 to 10:00 = 4 h x 2.00 = 8.00; actual up 06:00-08:00 = 4.00; savings 4.00.
    assert (cents(savings.baseline), cents(savings.actual), cents(savings.savings)) == ("8.00", "4.00", "4.00")


def test_cost_per_million_tokens_on_both_bases(settings) -> None:  # type: ignore[no-untyped-def]
    price(GPU, "3.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    pool = make_pool()
    instance = make_instance(pool, gpu)
    start, end = utc(2024, 3, 1, 8), utc(2024, 3, 1, 9)
    states(instance, (start, "ready"), (end, "stopped"))
    gpu_samples(gpu, start, end, utilization=40.0)
    instance_samples(instance, start, end, prompt_rate=100.0, output_rate=400.0)

    costs = cost_per_million_tokens(start=start, end=end)[pool.pk]
    # Tokens: 500 tokens/s x 3,600 s = 1,800,000. Spend 3.00, busy 40% = 1.20.
    # Allocation basis 3.00 / 1.8 = 1.6666.. -> 1.67; usage basis 1.20 / 1.8 = 0.6666.. -> 0.67.
    assert costs.tokens == Decimal(1_800_000)
    assert (cents(costs.per_million_allocation), cents(costs.per_million_usage)) == ("1.67", "0.67")  # type: ignore[arg-type]


def test_run_rate_month_to_date_and_projection(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "1.5000", date(2024, 1, 1))
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    held, free = make_gpu(node, 0, model_name=GPU), make_gpu(node, 1, model_name=GPU)
    instance = make_instance(make_pool(), held)
    states(instance, (utc(2024, 3, 10, 0), "ready"))
    instance.actual_state = "ready"
    instance.save(update_fields=["actual_state"])
    now = utc(2024, 3, 10, 12)

    rate = run_rate(now=now)
    # One GPU held (1.50/h), one up and free (1.50/h): 3.00/h.
    assert (cents(rate.allocated_per_hour), cents(rate.unallocated_per_hour)) == ("1.50", "1.50")
    mtd = month_to_date(now=now)
    # Spent: 12 h x 1.50 = 18.00 (the free GPU sent no samples, so history shows it up for none of it).
    # Left in March: 10 Mar 12:00 -> 1 Apr 00:00 = 21.5 days = 516 h; 516 x 3.00 = 1,548.00; projected 1,566.00.
    assert (cents(mtd.spent), cents(mtd.projected)) == ("18.00", "1566.00")
    assert free.pk not in {line.gpu_id for line in spend_report(start=mtd.month_start, end=now).lines}


def test_metric_rows_give_month_to_date_spend_per_pool_and_savings(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "2.0000", date(2024, 1, 1))
    pool = make_pool("chat-l")
    instance = make_instance(pool, make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2024, 3, 1, 0), "ready"), (utc(2024, 3, 1, 3), "stopped"))
    rows = {tuple(sorted(labels.items())): value for labels, value in spend_metric_rows(now=utc(2024, 3, 2))}
    # 3 h x 2.00 = 6.00 for chat-l; no samples, so nothing unallocated; baseline 1 GPU from its first
    # allocation (00:00) to now (next day 00:00) = 24 h x 2.00 = 48.00; savings 48.00 - 6.00 = 42.00.
    spend = (("__name__", "gpufleet_spend_total"), ("currency", "USD"))
    assert rows[(*spend, ("pool", "chat-l"))] == Decimal(6)
    assert rows[(*spend, ("pool", ""))] == Decimal(0)
    assert rows[(("__name__", "gpufleet_savings_total"), ("currency", "USD"))] == Decimal(42)
