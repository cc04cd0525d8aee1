"""Decisions' effects in money and GPU-hours, and their sum beside the savings headline, by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from fleet.costs.money import money_cents
from fleet.costs.selectors import decision_effects_read, savings_attribution
from fleet.models import Decision, Instance
from tests.costs.history import gpu_samples, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"  # a model no preset prices, so only this test's rates apply


def cents(amount: Decimal | None) -> str:
    assert amount is not None
    return str(money_cents(amount))


def decide(instance: Instance, action: str, at: datetime, kind: str = "idle_reclaim") -> Decision:
    """A decision logged at ``at`` (``created_at`` is set on insert, so it is moved after)."""
    decision = Decision.objects.create(
        policy_kind=kind, pool=instance.pool, instance=instance, action=action, reason=action, applied_at=at
    )
    Decision.objects.filter(pk=decision.pk).update(created_at=at)
    return decision


@pytest.fixture
def fleet(settings):  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    settings.FLEET_COST_SAMPLE_GAP_S = 900
    settings.FLEET_COST_SLEEPING_HOLDS_GPU = True
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    gpu = make_gpu(node, 0, model_name=GPU)
    instance = make_instance(make_pool(), gpu)
    # Ready from 08:00, stopped by the idle policy at 10:00, started again at 13:00.
    states(instance, (utc(2024, 3, 1, 8), "ready"), (utc(2024, 3, 1, 10), "stopped"), (utc(2024, 3, 1, 13), "ready"))
    stop = decide(instance, "stop", utc(2024, 3, 1, 10))
    start = decide(instance, "start", utc(2024, 3, 1, 13), kind="prewarm")
    return node, gpu, instance, stop, start


def test_a_stop_saves_the_price_per_hour_until_the_start_that_brings_the_capacity_back(fleet) -> None:  # type: ignore[no-untyped-def]
    """Stopped at 10:00 on a 2.00/GPU-hour card, started at 13:00: saves 2.00/h x 3 h = 6.00 and 3 GPU-hours.

    The start costs 2.00/h from 13:00; up to 14:00 that is 1 h x 2.00 = 2.00.
    """
    _, _, _, stop, start = fleet
    effects, meta = decision_effects_read(start=utc(2024, 3, 1, 0), end=utc(2024, 3, 1, 14))
    saved, cost = effects[stop.pk], effects[start.pk]
    assert (cents(saved.per_hour), cents(saved.amount), saved.gpu_hours) == ("2.00", "6.00", Decimal(3))
    assert (saved.since, saved.until, saved.ended_by) == (utc(2024, 3, 1, 10), utc(2024, 3, 1, 13), start.pk)
    assert (cents(cost.per_hour), cents(cost.amount)) == ("-2.00", "-2.00")
    assert "3 GPU-h x 2.0000/GPU-h = 6.0000" in saved.arithmetic()
    assert meta[stop.pk].policy_kind == "idle_reclaim"


def test_a_repeated_stop_and_a_sleep_that_keeps_the_gpu_change_nothing(fleet) -> None:  # type: ignore[no-untyped-def]
    """A second stop at 11:00 repeats the 10:00 one (still 6.00 in all); a sleep, with sleeping instances
    holding their GPU for billing, moves no money."""
    _, _, instance, stop, _ = fleet
    again = decide(instance, "stop", utc(2024, 3, 1, 11))
    sleep = decide(instance, "sleep", utc(2024, 3, 1, 15))
    effects, _ = decision_effects_read(start=utc(2024, 3, 1, 0), end=utc(2024, 3, 1, 16))
    assert cents(effects[stop.pk].amount) == "6.00"
    assert (effects[again.pk].amount, effects[sleep.pk].amount) == (0, 0)
    assert f"since decision {stop.pk}" in effects[again.pk].note
    assert "still holds its GPU" in effects[sleep.pk].note


def test_attributed_savings_equal_the_headline_when_the_stopped_gpu_went_down(fleet) -> None:  # type: ignore[no-untyped-def]
    """The card reports 08:00-10:00 and 13:00-14:00 only (released while stopped). Range 09:00-14:00.

    Headline: baseline 5 h x 2.00 = 10.00; paid 09-10 + 13-14 = 4.00; savings 6.00.
    Attributed: the stop, 10:00-13:00 = 6.00. Equal, to the cent; nothing reclaimable, nothing outside.
    """
    _, gpu, *_ = fleet
    gpu_samples(gpu, utc(2024, 3, 1, 8), utc(2024, 3, 1, 10), every_s=600)
    gpu_samples(gpu, utc(2024, 3, 1, 13), utc(2024, 3, 1, 14), every_s=600)
    result = savings_attribution(start=utc(2024, 3, 1, 9), end=utc(2024, 3, 1, 14))
    assert (cents(result.headline.savings), cents(result.attributed)) == ("6.00", "6.00")
    assert (cents(result.reclaimable), cents(result.outside)) == ("0.00", "0.00")
    assert (cents(result.added_cost), result.attributed_gpu_hours) == ("2.00", Decimal(3))


def test_the_difference_is_its_stated_causes_capacity_left_up_and_changes_outside_decisions(fleet) -> None:  # type: ignore[no-untyped-def]
    """Card 1 stays up 08:00-14:00 after its instance stops; card 2 (no instance, no decision) is up 08:00-11:00.

    Headline over 09:00-14:00: baseline 2 cards x 5 h x 2.00 = 20.00; paid: card 1 up 5 h = 10.00 (4.00 held,
    6.00 unallocated), card 2 up 2 h = 4.00 (unallocated): 14.00; savings 6.00.
    Attributed: the stop, 10:00-13:00 = 6.00. Reclaimable (paid, held by nothing) 6.00 + 4.00 = 10.00.
    Outside decisions: card 2 held by nothing for 5 h = 10.00. 6.00 = 6.00 - 10.00 + 10.00.
    """
    node, gpu, *_ = fleet
    gpu_samples(gpu, utc(2024, 3, 1, 8), utc(2024, 3, 1, 14), every_s=600)
    gpu_samples(make_gpu(node, 1, model_name=GPU), utc(2024, 3, 1, 8), utc(2024, 3, 1, 11), every_s=600)
    result = savings_attribution(start=utc(2024, 3, 1, 9), end=utc(2024, 3, 1, 14))
    assert (cents(result.headline.savings), cents(result.attributed)) == ("6.00", "6.00")
    assert (cents(result.reclaimable), cents(result.outside)) == ("10.00", "10.00")
    assert result.headline.savings == result.attributed - result.reclaimable + result.outside


def test_attributed_savings_by_kind_pool_and_day_in_the_billing_time_zone(settings) -> None:  # type: ignore[no-untyped-def]
    """Stopped 22:00 on 1 March, started 02:00 on 2 March at 2.00/h: 4.00 on each day, all idle_reclaim's."""
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "2.0000", date(2024, 1, 1))
    pool = make_pool()
    instance = make_instance(pool, make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2024, 3, 1, 20), "ready"), (utc(2024, 3, 1, 22), "stopped"), (utc(2024, 3, 2, 2), "ready"))
    decide(instance, "stop", utc(2024, 3, 1, 22))
    decide(instance, "start", utc(2024, 3, 2, 2))
    result = savings_attribution(start=utc(2024, 3, 1, 0), end=utc(2024, 3, 3, 0))
    assert {day: cents(amount) for day, amount in result.by("day").items()} == {
        date(2024, 3, 1): "4.00",
        date(2024, 3, 2): "4.00",
    }
    assert {kind: cents(amount) for kind, amount in result.by("policy_kind").items()} == {"idle_reclaim": "8.00"}
    assert {key: cents(amount) for key, amount in result.by("pool_id").items()} == {pool.pk: "8.00"}


def test_the_page_shows_outside_from_the_other_figures_as_rounded_so_its_sum_holds_to_the_cent() -> None:
    """headline 0.004, attributed 0.006, reclaimable 0.6449: shown 0.00, 0.01 and 0.64. Outside
    (0.6429) rounded on its own would show 0.64 and the page's sum 0.01 - 0.64 + 0.64 = 0.01,
    not the 0.00 shown; from the shown figures it is 0.00 - 0.01 + 0.64 = 0.63."""
    from types import SimpleNamespace

    from fleet.costs.selectors import Attribution

    class Shown(Attribution):
        attributed = Decimal("0.006")  # type: ignore[assignment]
        reclaimable = Decimal("0.6449")  # type: ignore[assignment]

    at = datetime(2026, 3, 2, tzinfo=UTC)
    headline: Any = SimpleNamespace(savings=Decimal("0.004"))
    shown = Shown(start=at, end=at, currency="USD", headline=headline, effects={}, decisions={})
    assert shown.outside == Decimal("0.6429")
    assert shown.outside_cents == Decimal("0.63")
    assert Decimal("0.00") == Decimal("0.01") - Decimal("0.64") + shown.outside_cents
