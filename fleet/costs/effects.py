"""What a decision did to spend: the GPU share it released or took, priced as any spend line.

A decision that stops an instance (``stop``, ``scale_in``, ``expire``, and ``sleep`` where a
sleeping instance does not hold its GPU for billing) *saves* the instance's share of its GPU
at the price in effect, from the moment it was applied until the next decision that brings
that capacity back: one that starts or wakes the same instance, or one that puts another
instance on the same device. A decision that adds capacity (``start``, ``wake``, ``launch``,
``scale_out``, ``add``) *costs* it, until the next decision that stops that instance.
Decisions about no instance (a host, a batch job, an orphan container) change no serving
allocation and have no effect here; their instances' stops are decisions of their own.

The effect per hour is one number (``effect_per_hour``); what it saved or cost over any
range is the same share priced line by line (``spend.effect_lines``), split wherever the
price changes. Pure functions over plain records, so the arithmetic is tested by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from zoneinfo import ZoneInfo

from fleet.costs.money import CONTEXT, MICROSECONDS_PER_HOUR, ZERO, duration_us, money_cost
from fleet.costs.prices import PriceBook
from fleet.costs.spend import CostLine, GpuInfo, effect_lines

SAVES = 1
COSTS = -1
NONE = 0

RELEASING = frozenset({"stop", "scale_in", "expire"})
ADDING = frozenset({"start", "launch", "scale_out", "add"})


def action_direction(action: str, *, sleeping_holds_gpu: bool) -> int:
    """``SAVES`` for an action that releases capacity, ``COSTS`` for one that adds it, else ``NONE``.

    Sleeping and waking move money only where a sleeping instance frees its GPU for billing
    (``FLEET_COST_SLEEPING_HOLDS_GPU`` off); otherwise the card is paid all along.
    """
    if action in RELEASING or (action == "sleep" and not sleeping_holds_gpu):
        return SAVES
    if action in ADDING or (action == "wake" and not sleeping_holds_gpu):
        return COSTS
    return NONE


@dataclass(frozen=True)
class DecisionRow:
    """A ``Decision`` reduced to what its effect needs; ``action`` is the one that moved the device
    (a scale-out carries the start, wake or launch it was done by)."""

    decision_id: int
    instance_id: int | None
    action: str
    at: datetime


@dataclass(frozen=True)
class Device:
    """The device an instance holds and its share of the GPU's price (slices/7 for MIG)."""

    gpu_id: int
    mig_device_id: int | None
    share: Fraction


@dataclass
class DecisionEffect:
    decision_id: int
    direction: int
    note: str = ""
    share: Fraction = Fraction(0)
    price_per_gpu_hour: Decimal | None = None
    per_hour: Decimal | None = None
    since: datetime | None = None
    until: datetime | None = None
    ended_by: int | None = None
    lines: list[CostLine] = field(default_factory=list)

    @property
    def amount(self) -> Decimal:
        """Saved (positive) or cost (negative) over the lines' range."""
        with localcontext(CONTEXT):
            return sum((line.spend for line in self.lines), ZERO) * self.direction

    @property
    def gpu_hours(self) -> Decimal:
        """GPU-hours released (positive) or taken (negative) over the lines' range."""
        with localcontext(CONTEXT):
            return sum((line.gpu_hours for line in self.lines), ZERO) * self.direction

    @property
    def per_hour_shown(self) -> Decimal | None:
        """The rate saved or spent, without its sign: the page says which."""
        return abs(self.per_hour) if self.per_hour is not None else None

    @property
    def amount_shown(self) -> Decimal:
        return abs(self.amount)

    def arithmetic(self) -> str:
        if self.direction == NONE:
            return self.note
        verb = "saves" if self.direction == SAVES else "costs"
        if self.price_per_gpu_hour is None:
            head = f"share {self.share} of its GPU, no price in effect at the decision"
        else:
            head = f"{verb} {self.share} GPU x {self.price_per_gpu_hour}/GPU-h = {abs(self.per_hour or ZERO)}/h"
        pieces = " + ".join(line.arithmetic() for line in self.lines) or "no time in range"
        return f"{head}; {pieces}" + (f" ({self.note})" if self.note else "")


def effect_per_hour(*, direction: int, share: Fraction, price_per_gpu_hour: Decimal | None) -> Decimal | None:
    """Money a decision saves (positive) or costs (negative) per hour: share x price, signed.

    The one definition of a decision's effect per hour; over time the same share is priced by
    ``spend.effect_lines``. None where no price was in effect.
    """
    if price_per_gpu_hour is None:
        return None
    return money_cost(price_per_hour=price_per_gpu_hour, micros=MICROSECONDS_PER_HOUR, share=share) * direction


def decision_effects(
    *,
    decisions: Iterable[DecisionRow],
    devices: Mapping[int, Device],
    gpus: Mapping[int, GpuInfo],
    prices: PriceBook,
    start: datetime,
    end: datetime,
    sleeping_holds_gpu: bool,
    wanted: Collection[int] | None = None,
) -> dict[int, DecisionEffect]:
    """Each decision's effect, its accrued lines clipped to [start, end).

    ``decisions`` must hold, for the instances concerned, every decision from the last one
    before ``start`` on (earlier ones only move where a span that is clipped anyway begins).
    A decision repeating one already in effect (a second stop) changes nothing.

    ``wanted`` names the decisions asked about (None: all): every decision still takes part in
    deciding which are in effect and when each ends, but pricing the time is most of the work,
    so only the wanted ones are priced and returned (a page of decisions out of a week's).
    """
    rows = sorted(decisions, key=lambda row: (row.at, row.decision_id))
    asked = None if wanted is None else set(wanted)
    effects: dict[int, DecisionEffect] = {}
    # direction -> instance -> decision; each dict holds its decisions in the order they were
    # taken, as they are added in that order (an instance's entry is added only once it has none).
    open_by: dict[int, dict[int, DecisionRow]] = {SAVES: {}, COSTS: {}}
    held: dict[int, Device] = {}  # decision -> the device it moved

    def close(row: DecisionRow, at: datetime, by: int) -> None:
        effects[row.decision_id].until, effects[row.decision_id].ended_by = at, by

    for row in rows:
        direction = action_direction(row.action, sleeping_holds_gpu=sleeping_holds_gpu)
        device = devices.get(row.instance_id) if row.instance_id is not None else None
        if device is not None and device.gpu_id not in gpus:
            device = None  # a card no longer listed is priced nowhere, here neither
        if direction == NONE or device is None:
            why = (
                "changes no instance's hold on a GPU"
                if direction == NONE
                else "its instance holds no GPU, so it moves no money"
            )
            if row.action in ("sleep", "wake") and direction == NONE:
                why = "a sleeping instance still holds its GPU for billing, so this moves no money"
            effects[row.decision_id] = DecisionEffect(row.decision_id, NONE, note=why)
            continue
        instance_id = row.instance_id
        assert instance_id is not None  # a device is known only for an instance
        same = open_by[direction].get(instance_id)
        if same is not None:
            effects[row.decision_id] = DecisionEffect(
                row.decision_id, NONE, note=f"already in effect since decision {same.decision_id}; changes nothing"
            )
            continue
        opposite = open_by[-direction]
        if instance_id in opposite:
            close(opposite.pop(instance_id), row.at, row.decision_id)
        elif direction == COSTS:
            # Another instance put on the same device brings the released capacity back: the
            # earliest release on it, as ``opposite`` holds them in the order they were taken.
            here = (device.gpu_id, device.mig_device_id)
            for other_id in opposite:
                other_device = devices[other_id]
                if (other_device.gpu_id, other_device.mig_device_id) == here:
                    close(opposite.pop(other_id), row.at, row.decision_id)
                    break
        open_by[direction][instance_id] = row
        held[row.decision_id] = device
        gpu = gpus[device.gpu_id]
        # Only a decision asked about is priced; the others only open and close effects.
        priced = asked is None or row.decision_id in asked
        rate = prices.rate_at(gpu_model=gpu.model_name, node_id=gpu.node_id, at=row.at) if priced else None
        price = rate.price_per_gpu_hour if rate else None
        effects[row.decision_id] = DecisionEffect(
            row.decision_id,
            direction,
            share=device.share,
            price_per_gpu_hour=price,
            per_hour=effect_per_hour(direction=direction, share=device.share, price_per_gpu_hour=price),
            since=row.at,
        )
    if wanted is not None:
        effects = {decision_id: effects[decision_id] for decision_id in wanted if decision_id in effects}
    for decision_id, row_device in held.items():
        effect = effects.get(decision_id)
        if effect is None or effect.since is None:
            continue
        begin, finish = max(effect.since, start), min(effect.until or end, end)
        if begin < finish:
            effect.lines = effect_lines(
                gpu=gpus[row_device.gpu_id], start=begin, end=finish, share=row_device.share, prices=prices
            )
    return effects


def amount_by_day(effect: DecisionEffect, *, tz: ZoneInfo) -> dict[date, Decimal]:
    """The effect's amount cut at local midnights (billing time zone), each piece priced by ``money_cost``."""
    days: dict[date, Decimal] = defaultdict(Decimal)
    with localcontext(CONTEXT):
        for line in effect.lines:
            begin = line.start
            while begin < line.end:
                local = begin.astimezone(tz).date()
                midnight = datetime.combine(local + timedelta(days=1), time(0), tzinfo=tz)
                finish = min(line.end, midnight)
                if line.price_per_gpu_hour is not None:
                    days[local] += (
                        money_cost(
                            price_per_hour=line.price_per_gpu_hour, micros=duration_us(begin, finish), share=line.share
                        )
                        * effect.direction
                    )
                begin = finish
    return dict(days)
