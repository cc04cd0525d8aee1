"""Allocations rebuilt from instance history: who held which GPU share, when.

Pure functions over plain records, so the arithmetic is tested by hand without a database.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

WHOLE = Fraction(1)  # a whole card's share (fractions are immutable: one object serves every line)
NONE_HELD = Fraction(0)


@dataclass(frozen=True)
class StateEvent:
    instance_id: int
    at: datetime
    state: str
    gpu_id: int | None
    mig_device_id: int | None


@dataclass(frozen=True)
class Hold:
    """An interval in which one instance held one device in one state."""

    instance_id: int
    gpu_id: int
    mig_device_id: int | None
    start: datetime
    end: datetime
    state: str


@dataclass(frozen=True)
class Allocation:
    """A piece of a hold with a constant share of its GPU's price."""

    instance_id: int
    gpu_id: int
    mig_device_id: int | None
    start: datetime
    end: datetime
    share: Fraction
    state: str


def holds_from_events(
    events: Iterable[StateEvent], *, start: datetime, end: datetime, states: frozenset[str]
) -> list[Hold]:
    """Each event's state lasts until the instance's next event (or ``end``); clip to [start, end).

    Events before ``start`` matter: they say what state the instance was in when the window opened.
    """
    by_instance: dict[int, list[StateEvent]] = defaultdict(list)
    for event in events:
        by_instance[event.instance_id].append(event)
    holds: list[Hold] = []
    for rows in by_instance.values():
        rows.sort(key=lambda row: row.at)
        for event, following in zip(rows, [*rows[1:], None], strict=True):
            if event.state not in states or event.gpu_id is None:
                continue
            begin = max(event.at, start)
            finish = min(following.at if following else end, end)
            if begin < finish:
                holds.append(Hold(event.instance_id, event.gpu_id, event.mig_device_id, begin, finish, event.state))
    return holds


def _pieces(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    bounds = sorted({moment for interval in intervals for moment in interval})
    return list(itertools.pairwise(bounds))


def allocations_split(holds: Iterable[Hold], *, mig_slices: Mapping[int, int]) -> list[Allocation]:
    """Give each hold its share of the GPU: slices/7 for a MIG device, all of it for a whole GPU,
    split equally among the instances on the same device at the same moment (a card is paid once).

    A sweep over each device's boundaries keeps the set of holds present, so a month of state
    changes costs n log n rather than a scan of every hold for every piece; pieces and their
    holds come out in the order a scan would give (time, then the holds' input order).
    """
    by_device: dict[tuple[int, int | None], list[Hold]] = defaultdict(list)
    for hold in holds:
        by_device[(hold.gpu_id, hold.mig_device_id)].append(hold)
    allocations: list[Allocation] = []
    for (gpu_id, mig_device_id), device_holds in by_device.items():
        device_share = Fraction(mig_slices[mig_device_id], 7) if mig_device_id else WHOLE
        arriving: dict[datetime, list[int]] = defaultdict(list)
        leaving: dict[datetime, list[int]] = defaultdict(list)
        for index, hold in enumerate(device_holds):
            if hold.start < hold.end:  # an empty or reversed hold covers no piece
                arriving[hold.start].append(index)
                leaving[hold.end].append(index)
        active: set[int] = set()
        shares: dict[int, Fraction] = {}  # device_share / holders, by holders
        for begin, finish in _pieces((hold.start, hold.end) for hold in device_holds):
            # Present in [begin, finish): started at or before begin, ends after it (ends are bounds).
            active.difference_update(leaving.get(begin, ()))
            active.update(arriving.get(begin, ()))
            if not active:
                continue
            share = shares.get(len(active))
            if share is None:
                share = shares[len(active)] = device_share / len(active)
            for index in sorted(active):
                hold = device_holds[index]
                allocations.append(
                    Allocation(hold.instance_id, gpu_id, mig_device_id, begin, finish, share, hold.state)
                )
    return allocations


def uptime_runs(times: Iterable[datetime], *, gap: timedelta) -> list[tuple[datetime, datetime]]:
    """Runs of samples no further apart than ``gap``: the GPU was up from a run's first to its last."""
    runs: list[list[datetime]] = []
    for moment in sorted(times):
        if runs and moment - runs[-1][1] <= gap:
            runs[-1][1] = moment
        else:
            runs.append([moment, moment])
    return [(first, last) for first, last in runs if first < last]


def unallocated_pieces(
    *, up: Iterable[tuple[datetime, datetime]], allocations: Iterable[Allocation]
) -> list[tuple[datetime, datetime, Fraction]]:
    """Where one GPU was up, the share of it no allocation held (never below zero).

    A sweep keeps how many up runs are open and the shares held (exact fractions, so the
    running total equals the sum over the allocations present): n log n, not pieces x rows.
    A card nothing held, up in runs that are in order and do not overlap (as spend reads
    them), is free run by run: the sweep would give the same pieces, and idle cards are the
    common case where spend is priced card by card and day by day.
    """
    up = list(up)
    allocations = list(allocations)
    if (
        not allocations
        and all(first < last for first, last in up)
        and all(before[1] <= after[0] for before, after in itertools.pairwise(up))
    ):
        return [(first, last, WHOLE) for first, last in up]
    up_change: dict[datetime, int] = defaultdict(int)
    for first, last in up:
        if first < last:
            up_change[first] += 1
            up_change[last] -= 1
    # Each instant's change of the shares held, with no addition to zero where it is the first
    # (fraction arithmetic is most of a held card's cost, and a day of a fleet is a thousand cards).
    held_change: dict[datetime, Fraction] = {}
    for row in allocations:
        if row.start < row.end:
            for moment, delta in ((row.start, row.share), (row.end, -row.share)):
                known = held_change.get(moment)
                held_change[moment] = delta if known is None else known + delta
    open_runs = 0
    held = NONE_HELD
    pieces: list[tuple[datetime, datetime, Fraction]] = []
    for begin, finish in _pieces([*up, *((row.start, row.end) for row in allocations)]):
        open_runs += up_change.get(begin, 0)
        change = held_change.get(begin)
        if change is not None:
            held += change
        if not open_runs:
            continue
        if held < 1:  # a full or overfull card leaves nothing free (and costs no subtraction)
            pieces.append((begin, finish, 1 - held))
    return pieces
