"""A page's decisions priced alone: the same effects as the whole range read, for fewer rows read."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from fleet.costs.money import money_cents
from fleet.costs.selectors import decision_effects_read
from fleet.models import Decision, Instance, MigDevice
from tests.costs.history import mig_device, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"  # a model no preset prices, so only this test's rates apply


def decide(instance: Instance, action: str, at: datetime) -> Decision:
    decision = Decision.objects.create(
        policy_kind="autoscale", pool=instance.pool, instance=instance, action=action, reason=action, applied_at=at
    )
    Decision.objects.filter(pk=decision.pk).update(created_at=at)
    return decision


def shown(effect: Any) -> tuple[Any, ...]:
    return (effect.direction, effect.per_hour, effect.amount, effect.since, effect.until, effect.ended_by, effect.note)


def test_asked_decisions_read_their_instance_and_its_card_mates_only(settings) -> None:  # type: ignore[no-untyped-def]
    """Card 0: instance A stopped at 10:00, instance B started on the same card at 12:00, which ends
    A's saving (2 h x 2.00 = 4.00). Card 1: instance C stopped at 09:00 and started at 11:00.

    Asking for A's stop alone gives what the whole read gives, ended by B's start: B shares the card,
    so it is read although not asked for. Only the asked decision comes back, and C's decisions are
    not read at all. Read from 11:00 only, C's start is priced as from 00:00."""
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    settings.FLEET_COST_SLEEPING_HOLDS_GPU = True
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    card, other = make_gpu(node, 0, model_name=GPU), make_gpu(node, 1, model_name=GPU)
    pool = make_pool()
    a, b, c = make_instance(pool, card), make_instance(pool, card), make_instance(pool, other)
    states(a, (utc(2024, 3, 1, 8), "ready"), (utc(2024, 3, 1, 10), "stopped"))
    states(b, (utc(2024, 3, 1, 12), "ready"))
    states(c, (utc(2024, 3, 1, 8), "ready"), (utc(2024, 3, 1, 9), "stopped"), (utc(2024, 3, 1, 11), "ready"))
    stop_a, start_b = decide(a, "stop", utc(2024, 3, 1, 10)), decide(b, "start", utc(2024, 3, 1, 12))
    stop_c, start_c = decide(c, "stop", utc(2024, 3, 1, 9)), decide(c, "start", utc(2024, 3, 1, 11))
    span = {"start": utc(2024, 3, 1, 0), "end": utc(2024, 3, 1, 14)}
    whole, whole_meta = decision_effects_read(**span)

    asked, asked_meta = decision_effects_read(**span, decision_ids=[stop_a.pk])

    assert list(asked) == [stop_a.pk]
    assert shown(asked[stop_a.pk]) == shown(whole[stop_a.pk])
    assert (asked[stop_a.pk].ended_by, str(money_cents(asked[stop_a.pk].amount))) == (start_b.pk, "4.00")
    assert set(asked_meta) == {stop_a.pk, start_b.pk} and set(whole_meta) >= {stop_c.pk, start_c.pk}
    both, _ = decision_effects_read(**span, decision_ids=[stop_c.pk, start_c.pk])
    assert {pk: shown(effect) for pk, effect in both.items()} == {
        pk: shown(whole[pk]) for pk in (stop_c.pk, start_c.pk)
    }
    # Read from the asked decision's own time (the decisions page reads from its oldest row): C's stop
    # before it is the instance's last decision, taken as in effect, and the start still ends it.
    late, late_meta = decision_effects_read(start=utc(2024, 3, 1, 11), end=span["end"], decision_ids=[start_c.pk])
    assert shown(late[start_c.pk]) == shown(whole[start_c.pk]) and stop_c.pk in late_meta


def test_a_mig_slice_is_priced_as_its_profile_s_share_of_the_card(settings) -> None:  # type: ignore[no-untyped-def]
    """At 2.00/GPU-hour, an instance on a 3g.40gb slice stopped at 10:00 saves 3/7 x 2.00 = 0.857142.../h,
    1.71 over the 2 h to 12:00; one on a slice whose profile the catalogue cannot read is priced as the
    whole card: 2.00/h, 4.00. The same read for the page's rows alone."""
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node()
    card, odd_card = (make_gpu(node, index, model_name=GPU, mig_mode="enabled") for index in (0, 1))
    pool = make_pool("chat-m", tier="M", isolation="mig", mig_profile="3g.40gb")
    sliced = make_instance(pool, card, mig_device=mig_device(card, "3g.40gb"))
    odd_slice = mig_device(odd_card, "3g.40gb")
    odd = make_instance(pool, odd_card, mig_device=odd_slice)
    MigDevice.objects.filter(pk=odd_slice.pk).update(profile="half")  # as an agent might report it
    stops = [decide(instance, "stop", utc(2024, 3, 1, 10)) for instance in (sliced, odd)]
    start, end = utc(2024, 3, 1, 0), utc(2024, 3, 1, 12)

    for effects, _ in (
        decision_effects_read(start=start, end=end),
        decision_effects_read(start=start, end=end, decision_ids=[stop.pk for stop in stops]),
    ):
        said = [
            (effects[stop.pk].share, effects[stop.pk].per_hour, money_cents(effects[stop.pk].amount)) for stop in stops
        ]
        assert said == [
            (Fraction(3, 7), Decimal(6) / Decimal(7), Decimal("1.71")),
            (Fraction(1), Decimal(2), Decimal("4.00")),
        ]
