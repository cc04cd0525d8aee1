"""The pure effect arithmetic: which release a start on a shared card ends, and a page's rows priced alone."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from fleet.costs.effects import COSTS, SAVES, DecisionEffect, DecisionRow, Device, decision_effects
from fleet.costs.prices import PriceBook, RateRow
from fleet.costs.spend import GpuInfo

CARD = 10
GPUS = {CARD: GpuInfo(gpu_id=CARD, node_id=1, model_name="Acme X1")}
PRICES = PriceBook([RateRow(1, "Acme X1", None, date(2024, 1, 1), Decimal("2.0000"))], tz=ZoneInfo("UTC"))
# Instances 1 to 3 all on the one card, whole.
DEVICES = {instance: Device(gpu_id=CARD, mig_device_id=None, share=Fraction(1)) for instance in (1, 2, 3)}


def at(hour: int) -> datetime:
    return datetime(2024, 3, 1, hour, tzinfo=UTC)


def effects(rows: list[DecisionRow], wanted: list[int] | None = None) -> dict[int, DecisionEffect]:
    return decision_effects(
        decisions=rows,
        devices=DEVICES,
        gpus=GPUS,
        prices=PRICES,
        start=at(0),
        end=at(14),
        sleeping_holds_gpu=True,
        wanted=wanted,
    )


# Given out of order: instance 2 stopped at 10:00 (decision 5) and instance 1 at 10:00 too (decision 4),
# instance 1 stopped again at 11:00 (decision 6: a repeat, no effect), instance 3 started on the card at
# 12:00 (decision 7).
ROWS = [
    DecisionRow(7, 3, "start", at(12)),
    DecisionRow(5, 2, "stop", at(10)),
    DecisionRow(6, 1, "stop", at(11)),
    DecisionRow(4, 1, "stop", at(10)),
]


def test_a_start_on_a_shared_card_ends_the_earliest_release_on_it() -> None:
    """Both stops came at 10:00; decision 4 is the earlier by id, so 7's start ends it at 12:00
    (2 h x 2.00 = 4.00 saved) and 5's saving runs on to the range's end (4 h x 2.00 = 8.00)."""
    found = effects(ROWS)
    assert (found[4].direction, found[4].until, found[4].ended_by, found[4].amount) == (
        SAVES,
        at(12),
        7,
        Decimal("4.00"),
    )
    assert (found[5].until, found[5].ended_by, found[5].amount) == (None, None, Decimal("8.00"))
    assert found[6].note == "already in effect since decision 4; changes nothing"
    assert (found[7].direction, found[7].per_hour, found[7].amount) == (COSTS, Decimal("-2.00"), Decimal("-4.00"))


def test_the_decisions_asked_about_come_back_as_the_whole_run_gives_them() -> None:
    """Asking for decision 4 and 7 alone: the same effects (5 still decides nothing for them), only those two."""
    whole, asked = effects(ROWS), effects(ROWS, wanted=[7, 4])
    assert set(asked) == {4, 7}
    for decision_id in (4, 7):
        assert asked[decision_id].arithmetic() == whole[decision_id].arithmetic()
        assert (asked[decision_id].until, asked[decision_id].ended_by, asked[decision_id].per_hour) == (
            whole[decision_id].until,
            whole[decision_id].ended_by,
            whole[decision_id].per_hour,
        )
