"""The instances page's cheaper reads price each instance exactly as the full reports do.

``holds_window`` and ``next_hour_report(unallocated=False)`` skip what an instance's own spend does
not depend on (GPUs' up time, duty cycle, the unallocated rest); these tests pin that the
per-instance amounts are unchanged, by hand and against the full reads.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from fleet.costs.selectors import fleet_window, holds_window, next_hour_report, spend_report, totals_by_instance
from fleet.costs.spend import ALLOCATED
from fleet.models import Node
from tests.costs.history import gpu_samples, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"  # a model no preset prices, so only this test's rates apply


@pytest.fixture
def two_instances(settings):
    """Two GPUs of an online node at 2.00/GPU-h, up (sampled, 50 % busy) from 00:00 to 12:00 UTC on 1 March.

    ``shared``: two instances on GPU 0, the first ready 02:00-08:00, the second ready 05:00 on
    (still at 12:00), so 05:00-08:00 they pay half each. GPU 1 holds nothing (unallocated).
    """
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    settings.FLEET_BILLING_CURRENCY = "USD"
    settings.FLEET_COST_SAMPLE_GAP_S = 120
    price(GPU, "2.00", date(2024, 1, 1))
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status="online")  # its GPUs count as up in the run rate
    gpu, idle_gpu = make_gpu(node, 0, GPU), make_gpu(node, 1, GPU)
    pool = make_pool()
    first = make_instance(pool, gpu, actual_state="stopped")
    second = make_instance(pool, gpu, actual_state="ready")
    states(first, (utc(2024, 3, 1, 2), "ready"), (utc(2024, 3, 1, 8), "stopped"))
    states(second, (utc(2024, 3, 1, 5), "ready"))
    for card in (gpu, idle_gpu):
        gpu_samples(card, utc(2024, 3, 1), utc(2024, 3, 1, 12), utilization=50.0)
    return first, second


def test_holds_window_prices_each_instance_as_the_full_window_does(two_instances) -> None:
    """00:00-12:00. First: 02-05 whole GPU 3 h x 2.00 = 6.00, 05-08 half 3 h x 1.00 = 3.00: 9.00.
    Second: 05-08 half = 3.00, 08-12 whole 4 h x 2.00 = 8.00: 11.00. The full window adds the idle
    GPU's 12 h and GPU 0's 00-02 as unallocated lines and splits spend into busy and idle; the
    holds-only window gives the same spend per instance, with nothing else."""
    first, second = two_instances
    start, end = utc(2024, 3, 1), utc(2024, 3, 1, 12)

    cheap = spend_report(start=start, end=end, window=holds_window(start=start, end=end))
    full = spend_report(start=start, end=end, window=fleet_window(start=start, end=end))

    spent = {pk: totals.spend for pk, totals in totals_by_instance(cheap).items()}
    assert spent == {first.pk: Decimal("9.00"), second.pk: Decimal("11.00")}
    assert spent == {pk: totals.spend for pk, totals in totals_by_instance(full).items()}
    assert {line.kind for line in cheap.lines} == {ALLOCATED}
    assert full.unallocated.spend > 0  # the full read did price what the cheap one leaves out


def test_next_hour_without_unallocated_lines_keeps_each_instance_cost(two_instances) -> None:
    """At 12:00 only the second instance is ready: the whole GPU, 1 h x 2.00 = 2.00/h. The full
    run rate adds GPU 1 (online, held by nothing) as an unallocated line; without it the
    instance's figure is the same and there is no other line."""
    _, second = two_instances
    now = utc(2024, 3, 1, 12)

    full = next_hour_report(now=now)
    cheap = next_hour_report(now=now, unallocated=False)

    assert {pk: totals.spend for pk, totals in totals_by_instance(cheap).items()} == {second.pk: Decimal("2.00")}
    assert totals_by_instance(cheap)[second.pk].spend == totals_by_instance(full)[second.pk].spend
    assert {line.kind for line in cheap.lines} == {ALLOCATED}
    assert full.unallocated.gpu_hours == Decimal(1)  # GPU 1 for the hour
    assert cheap.end - cheap.start == timedelta(hours=1)
