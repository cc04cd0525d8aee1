"""The sweep-line allocation arithmetic gives exactly what a plain scan gives.

``allocations_split`` and ``unallocated_pieces`` walk each device's boundaries once; the
references below scan every hold (every allocation) for every piece, as the definitions
read. Randomised, seeded holdings (overlapping and touching intervals, empty ones, holds
left open to the window's end, MIG slices, GPUs shared by several instances) must give
equal lists: same pieces, same order, same exact fractions.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from fleet.costs.allocation import (
    Allocation,
    Hold,
    StateEvent,
    allocations_split,
    holds_from_events,
    unallocated_pieces,
    uptime_runs,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MIG_SLICES = {11: 1, 12: 2, 13: 3, 14: 4, 15: 7}
STATES = ("ready", "starting", "sleeping", "stopped", "failed")
HOLDING = frozenset({"ready", "starting", "sleeping"})


def _reference_pieces(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    bounds = sorted({moment for interval in intervals for moment in interval})
    return list(itertools.pairwise(bounds))


def reference_split(holds: Iterable[Hold], *, mig_slices: Mapping[int, int]) -> list[Allocation]:
    """Every hold checked against every piece of its device."""
    by_device: dict[tuple[int, int | None], list[Hold]] = defaultdict(list)
    for hold in holds:
        by_device[(hold.gpu_id, hold.mig_device_id)].append(hold)
    allocations: list[Allocation] = []
    for (gpu_id, mig_device_id), device_holds in by_device.items():
        device_share = Fraction(mig_slices[mig_device_id], 7) if mig_device_id else Fraction(1)
        for begin, finish in _reference_pieces((hold.start, hold.end) for hold in device_holds):
            present = [hold for hold in device_holds if hold.start <= begin and finish <= hold.end]
            for hold in present:
                allocations.append(
                    Allocation(
                        hold.instance_id, gpu_id, mig_device_id, begin, finish, device_share / len(present), hold.state
                    )
                )
    return allocations


def reference_unallocated(
    *, up: Iterable[tuple[datetime, datetime]], allocations: Iterable[Allocation]
) -> list[tuple[datetime, datetime, Fraction]]:
    """Every up run and every allocation checked against every piece."""
    up = list(up)
    allocations = list(allocations)
    pieces: list[tuple[datetime, datetime, Fraction]] = []
    for begin, finish in _reference_pieces([*up, *((row.start, row.end) for row in allocations)]):
        if not any(first <= begin and finish <= last for first, last in up):
            continue
        held = sum((row.share for row in allocations if row.start <= begin and finish <= row.end), Fraction(0))
        free = max(Fraction(0), 1 - held)
        if free:
            pieces.append((begin, finish, free))
    return pieces


def _moment(rng: random.Random, span_min: int) -> datetime:
    # A coarse grid makes equal and touching boundaries common.
    return T0 + timedelta(minutes=5 * rng.randrange(span_min // 5 + 1))


def random_holds(rng: random.Random, count: int) -> list[Hold]:
    """Holds on few devices: whole GPUs shared by several instances and MIG devices on them."""
    holds = []
    for _ in range(count):
        gpu_id = rng.randrange(1, 4)
        mig_device_id = rng.choice([None, None, None, *MIG_SLICES])
        start = _moment(rng, 600)
        length = rng.choice([0, 5, 5, 10, 60, 300, 600])  # empty holds are kept: their bounds still cut
        holds.append(
            Hold(rng.randrange(1, 9), gpu_id, mig_device_id, start, start + timedelta(minutes=length), "ready")
        )
    return holds


def random_events(rng: random.Random, count: int) -> list[StateEvent]:
    """State changes of a few instances, some before the window, the last of each left open."""
    return [
        StateEvent(
            rng.randrange(1, 7),
            T0 + timedelta(minutes=5 * rng.randrange(-12, 130)),
            rng.choice(STATES),
            rng.choice([1, 2, None]),
            rng.choice([None, None, 11, 12, 15]),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", range(40))
def test_split_equals_the_scan_on_random_holds(seed: int) -> None:
    rng = random.Random(seed)
    holds = random_holds(rng, rng.randrange(1, 40))
    expected = reference_split(holds, mig_slices=MIG_SLICES)
    assert expected, "the holdings should give something to compare"
    assert allocations_split(holds, mig_slices=MIG_SLICES) == expected


@pytest.mark.parametrize("seed", range(40))
def test_split_and_unallocated_equal_the_scan_from_events(seed: int) -> None:
    """The path the cost pages take: events, holds clipped to a window, split, then the free share."""
    rng = random.Random(1000 + seed)
    start, end = T0, T0 + timedelta(hours=10)
    holds = holds_from_events(random_events(rng, rng.randrange(1, 60)), start=start, end=end, states=HOLDING)
    allocations = allocations_split(holds, mig_slices=MIG_SLICES)
    assert allocations == reference_split(holds, mig_slices=MIG_SLICES)
    samples = sorted({_moment(rng, 600) for _ in range(rng.randrange(2, 40))})
    by_gpu: dict[int, list[Allocation]] = defaultdict(list)
    for row in allocations:
        by_gpu[row.gpu_id].append(row)
    for gpu_id in (1, 2, 3):
        up = uptime_runs(samples, gap=timedelta(minutes=rng.choice([5, 30, 120])))
        got = unallocated_pieces(up=up, allocations=by_gpu[gpu_id])
        assert got == reference_unallocated(up=up, allocations=by_gpu[gpu_id])


@pytest.mark.parametrize("seed", range(40))
def test_unallocated_equals_the_scan_with_overlapping_runs_and_overfull_cards(seed: int) -> None:
    """Up runs that overlap or are empty, and MIG shares adding to more than the card."""
    rng = random.Random(2000 + seed)
    up = []
    for _ in range(rng.randrange(0, 6)):
        first = _moment(rng, 600)
        up.append((first, first + timedelta(minutes=rng.choice([0, 5, 60, 300]))))
    allocations = allocations_split(random_holds(rng, rng.randrange(0, 30)), mig_slices=MIG_SLICES)
    expected = reference_unallocated(up=up, allocations=allocations)
    got = unallocated_pieces(up=up, allocations=allocations)
    assert got == expected
    assert all(isinstance(free, Fraction) and 0 < free <= 1 for _, _, free in got)


@pytest.mark.parametrize("seed", range(40))
def test_a_card_nothing_held_is_free_wherever_it_was_up(seed: int) -> None:
    """No allocation: in-order runs (touching ones included) come back whole; runs that overlap,
    go back in time or are empty take the sweep. Both equal the scan."""
    rng = random.Random(3000 + seed)
    up = []
    for _ in range(rng.randrange(0, 6)):
        first = _moment(rng, 600)
        up.append((first, first + timedelta(minutes=rng.choice([0, 5, 60, 300]))))
    in_order = uptime_runs(sorted({_moment(rng, 600) for _ in range(rng.randrange(2, 40))}), gap=timedelta(minutes=5))
    for runs in (up, in_order, [(a, b) for a, b in itertools.pairwise(sorted({first for first, _ in up}))]):
        assert unallocated_pieces(up=runs, allocations=[]) == reference_unallocated(up=runs, allocations=[])


def test_a_hand_worked_card() -> None:
    """Two instances share GPU 1 for an hour of its two up hours; a 3g slice is held alone."""
    hour = timedelta(hours=1)
    holds = [
        Hold(1, 1, None, T0, T0 + 2 * hour, "ready"),
        Hold(2, 1, None, T0 + hour, T0 + 3 * hour, "ready"),
        Hold(3, 1, 13, T0, T0 + hour, "ready"),
    ]
    allocations = allocations_split(holds, mig_slices=MIG_SLICES)
    assert [(row.instance_id, row.start, row.end, row.share) for row in allocations] == [
        (1, T0, T0 + hour, Fraction(1)),
        (1, T0 + hour, T0 + 2 * hour, Fraction(1, 2)),
        (2, T0 + hour, T0 + 2 * hour, Fraction(1, 2)),
        (2, T0 + 2 * hour, T0 + 3 * hour, Fraction(1)),
        (3, T0, T0 + hour, Fraction(3, 7)),
    ]
    # Up 0-4 h: overfull in the first hour (1 + 3/7), full to 3 h, free after.
    assert unallocated_pieces(up=[(T0, T0 + 4 * hour)], allocations=allocations) == [
        (T0 + 3 * hour, T0 + 4 * hour, Fraction(1))
    ]
