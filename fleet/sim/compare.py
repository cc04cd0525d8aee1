"""The policy run against its two references, all by the same simulator on the same trace.

The SLA all three are held to is the one the policy is judged by, over the whole trace: at
least ``sla_target`` (default 99.9%) of all requests get their first token within
``sla_ms`` (default 500 ms; and the whole answer within ``e2e_sla_ms`` where set), counted
as ``SimResult.attainment`` counts it (requests the gateway refuses outright are outside
the count), and none fails.

* **static**: the fewest always-on instances whose run meets the SLA, found by trying
  1, 2, ... instances up to the fleet's GPUs. Where no size does, the largest tried (all
  the GPUs) stands in, ``static_meets_sla`` is False and the comparison says so in its
  ``notes``: savings are then against a fleet that misses the SLA itself.
* **oracle**: a lower bound on the GPU-hours of any policy deciding on the same tick with
  the same SLA. For each tick interval i and count c, ``misses_i(c)`` is how many of the
  interval's arrivals miss the SLA when they meet c warm, empty instances (the interval
  simulated alone; c = 0: all of them miss). The oracle picks one count per interval,
  minimising the GPU-seconds sum(c_i x the interval's length) subject to
  sum misses_i(c_i) <= the misses the SLA allows over the whole trace, solved exactly by
  a dynamic programme over the miss budget (``fewest_instances``). Its instances appear
  warm at the interval's start, free and at once, and leave at its end; an interval's
  arrivals never meet work carried over from earlier intervals. This relaxes what a
  policy on the same tick faces (its instances cost the same per interval, but start
  cold, may hold earlier work and are chosen without knowing the future), so it needs
  no fewer GPU-seconds to meet the SLA: the bound. The one way a policy could beat it is
  an interval's late arrivals served by a larger next interval, which the bound leaves
  to the interval's own instances. The last interval is charged only up to the last
  arrival. Failures: a count at which an interval alone has a failed request is not
  allowed (the SLA allows none); a count of 0 is allowed where the gateway can hold all
  of the interval's arrivals (they count as misses and wait for a later interval's
  instances), and only where that wait can end: a run of intervals without instances
  must end (a later interval's instances come) before its first held request's hold
  time-out, its arrivals, all held at once, must fit in the gateway, and the last
  interval leaves nothing held. Otherwise the held requests fail, in the replay as under
  any policy that had no instance then (its instances would start cold, later still),
  so the rule keeps the bound a bound; without it a week's replays failed requests.
* The oracle's schedule is then **replayed** over the whole trace like the other fleets.
  There, requests carried over from a busier interval can push later arrivals out of the
  SLA, so the replay may miss it: ``oracle_meets_sla`` says whether it met it, and the
  bound's GPU-hours are reported as they are, never adjusted. Where it missed,
  ``oracle_repair`` adds instances where the replay missed (a few replays at most) and the
  comparison reports that schedule separately (``oracle_repaired``, with its own
  ``oracle_repaired_meets_sla``): an achievable hindsight schedule, not a bound.

Savings = 1 - policy / static paid GPU-hours (billed by the node, ``SimResult.paid_gpu_hours``; with
the default one GPU a node, the GPU-hours instances held); efficiency = oracle bound / policy
GPU-hours held (the bound counts instance time, not nodes). Spend = paid GPU-hours x price.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from fleet.presets import PRICE_PRESETS
from fleet.sim.result import SimOutcome, SimResult
from fleet.sim.setup import SimSetup, tick_period_s
from fleet.sim.simulate import Groups, Simulation
from fleet.sim.traces import Trace, TraceRequest

Progress = Callable[[str, float], None]
REPAIR_ROUNDS = 6  # replays of the oracle's schedule at most, each adding instances where the last missed


@dataclass(frozen=True)
class OracleBound:
    """The oracle's schedule and what it costs and misses, before any replay."""

    schedule: tuple[int, ...]
    gpu_hours: float
    misses: int
    interval_misses: tuple[int, ...]
    allowed: int
    feasible: bool


@dataclass(frozen=True)
class Comparison:
    trace: str
    gpu_model: str
    policy: SimResult
    static: SimResult
    static_instances: int
    static_meets_sla: bool
    oracle: SimResult
    schedule: tuple[int, ...]
    price_per_gpu_hour: Decimal | None
    setup: SimSetup
    oracle_bound: OracleBound
    oracle_meets_sla: bool
    oracle_repaired: SimResult
    repaired_schedule: tuple[int, ...]
    oracle_repaired_meets_sla: bool
    notes: tuple[str, ...] = ()

    def saved(self, result: SimResult) -> float:
        """The share of the static fleet's bill a fleet saves: 1 - its paid GPU-hours / the static
        fleet's (paid as billed: by the node, ``SimResult.paid_gpu_hours``)."""
        return saved_against(result, self.static)

    @property
    def savings(self) -> float:
        """What the policy saves against the static fleet (``saved``)."""
        return self.saved(self.policy)

    @property
    def efficiency(self) -> float:
        """Oracle lower bound / policy GPU-hours (1.0: the policy spends no more than the bound)."""
        return self.oracle_bound.gpu_hours / self.policy.gpu_hours if self.policy.gpu_hours else 0.0

    def spend(self, result: SimResult) -> Decimal | None:
        if self.price_per_gpu_hour is None:
            return None
        return (Decimal(str(result.paid_gpu_hours)) * self.price_per_gpu_hour).quantize(Decimal("0.01"))


def saved_against(result: SimResult | SimOutcome, static: SimResult | SimOutcome) -> float:
    """The share of a static fleet's bill ``result`` saves: 1 - its paid GPU-hours / the static fleet's (0 where
    the static fleet paid nothing). ``Comparison.saved`` and the tuner's forward evaluation both read it."""
    return 1 - result.paid_gpu_hours / static.paid_gpu_hours if static.paid_gpu_hours else 0.0


def price_preset(gpu_model: str) -> Decimal | None:
    """The panel's preset price per GPU-hour for a GPU family (the list price it ships with)."""
    for name, price, _, _ in PRICE_PRESETS:
        if gpu_model.upper() in name.upper():
            return Decimal(price)
    return None


def static_search(
    *,
    trace: Trace,
    setup: SimSetup,
    progress: Progress | None = None,
    stop_early: bool = False,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> tuple[int, bool, list[SimResult]]:
    """Static runs with 1, 2, ... instances until one meets the SLA; the runs made, the last one the
    size found. Where none does, the largest size tried (``setup.gpus``) and False.

    ``stop_early``: a size smaller than the largest only has to fail, so its run stops once more
    requests missed than the SLA allows over the whole trace (``Simulation.miss_limit``) and is
    left out of the runs returned; the size found and its run are the same.

    ``groups_known``: the gateway's answers per token counts (``Simulation.groups_for``) shared by the
    runs, and with other runs of the same setup; by default the search keeps its own."""
    runs: list[SimResult] = []
    groups_known = {} if groups_known is None else groups_known
    allowed = misses_allowed(len(trace.requests), setup.sla_target)
    for count in range(1, setup.gpus + 1):
        label = f"static {count}"
        simulation = Simulation(
            trace=trace,
            setup=setup,
            label=label,
            static_instances=count,
            progress=_fraction(progress, label),
            miss_limit=allowed if stop_early and count < setup.gpus else None,
            groups_known=groups_known,
        )
        result = simulation.run()
        if simulation.stopped_early:
            continue
        runs.append(result)
        if result.meets_sla(setup.sla_target):
            return count, True, runs
    return setup.gpus, False, runs


def misses_allowed(requests: int, target: float) -> int:
    """The most requests out of ``requests`` that may miss while the share within stays >= ``target``."""
    allowed = max(0, min(requests, math.floor(requests * (1 - target) + 1e-9)))
    while allowed > 0 and (requests - allowed) / requests < target:
        allowed -= 1
    while allowed < requests and (requests - allowed - 1) / requests >= target:
        allowed += 1
    return allowed


def trace_intervals(trace: Trace) -> list[list[TraceRequest]]:
    """The trace's requests per tick interval, arrivals counted from the interval's start (a copy of
    each request, built directly: ``dataclasses.replace`` costs three times as much, which a week's
    six million requests feel; the collector is paused meanwhile, as the trace's own are built)."""
    tick = tick_period_s()
    members: list[list[TraceRequest]] = [[] for _ in range(int(trace.duration_s // tick) + 1)]
    collecting = gc.isenabled()
    gc.disable()
    try:
        for request in trace.requests:
            index = int(request.arrival_s // tick)
            members[index].append(
                TraceRequest(request.arrival_s - index * tick, request.prompt_tokens, request.output_tokens)
            )
    finally:
        if collecting:
            gc.enable()
    return members


def interval_seconds(trace: Trace) -> list[float]:
    """How long each tick interval's instances are charged in the bound: a whole tick, the last
    one only up to the trace's last arrival."""
    tick = tick_period_s()
    count = int(trace.duration_s // tick) + 1
    return [tick] * (count - 1) + [trace.duration_s - (count - 1) * tick]


def interval_misses(
    *,
    requests: Sequence[TraceRequest],
    setup: SimSetup,
    count: int,
    trace: Trace,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> int | None:
    """Misses of one interval's arrivals (counted from its start) meeting ``count`` warm, empty
    instances, simulated alone; None where a request fails (no count the SLA allows).

    With no instances every arrival the gateway does not refuse outright misses; the gateway
    holds them for a later interval's instances, so they count as failed only where it cannot
    hold them all. Misses are read from ``SimResult.attainment`` (failed requests are outside
    the SLA there), rounded down.
    """
    if not requests:
        return 0
    probe = _probe(requests=requests, setup=setup, count=count, trace=trace, groups_known=groups_known)
    return _probe_misses(probe, count, setup)


def _probe(
    *,
    requests: Sequence[TraceRequest],
    setup: SimSetup,
    count: int,
    trace: Trace,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> SimResult:
    alone = Trace(name=f"{trace.name} interval", start=trace.start, requests=tuple(requests))
    return Simulation(
        trace=alone, setup=setup, label="oracle probe", static_instances=count, groups_known=groups_known
    ).run()


def _probe_misses(result: SimResult, count: int, setup: SimSetup) -> int | None:
    if count == 0:
        return _empty_misses(len(result.ttft_s), setup)
    return None if result.failed else _misses(result)


def _empty_misses(judged: int, setup: SimSetup) -> int | None:
    """Misses of an interval's ``judged`` requests (those not refused outright) meeting no instance: all
    of them, held by the gateway for a later interval; None (failed) where it cannot hold them all."""
    return judged if judged <= setup.gateway.max_held else None


def _misses(result: SimResult) -> int:
    """Requests outside the SLA as ``SimResult.attainment`` counts them (failed ones included), rounded down."""
    return math.floor(len(result.ttft_s) * (1 - result.attainment) + 1e-6)


@dataclass(frozen=True)
class Holds:
    """What the gateway's hold allows an interval with no instance (``fewest_instances``'s ``holds``):
    per interval the arrivals it then holds (those it does not refuse) and the time of the first
    from the trace's start (``math.inf`` where none), the interval length the schedule follows, and
    the gateway's hold time-out and the most requests it holds at once."""

    held: Sequence[int]
    first_s: Sequence[float]
    tick_s: float
    timeout_s: float
    max_held: int


# The DP's state where the gateway holds nothing (else: the interval the oldest held request came in).
_NOTHING_HELD = -1


def fewest_instances(
    table: Sequence[Sequence[int | None]],
    seconds: Sequence[float],
    allowed: int,
    *,
    holds: Holds | None = None,
) -> tuple[int, ...] | None:
    """The count per interval with the fewest GPU-seconds (sum of count x ``seconds``) whose misses
    (``table[i][count]``, None: not allowed) add up to at most ``allowed``; None where none does.

    Exact: a dynamic programme over the misses spent so far, so it needs no convexity of the miss
    curves. A count that misses no fewer than a smaller one is never worth its cost and is left out.
    Ties go to the schedule with fewer misses, then to the smaller count in the latest interval
    (with ``holds``, then to nothing held before it), and so on back.

    It keeps, after each interval, only the misses worth spending: those reached more cheaply than
    with any fewer misses (the Pareto front of misses against cost), in increasing misses. A point
    off that front is never on the best schedule's path (the same choices from the cheaper point
    with fewer misses would reach fewer misses at no more cost), so the front gives the same costs,
    choices and ties as a table over every budget 0..``allowed``, where a week (20,160 intervals, a
    budget of 6,000 misses) was hundreds of millions of steps; a front is a few dozen points where
    a miss costs a whole interval's arrivals. Where misses come cheap (an instance fewer for a few
    misses in many intervals) fronts grow to hundreds of points, so a point is also dropped where
    even its cheapest completion, by the Lagrangian bound of the intervals after it
    (``_prune_limits``), costs more than a schedule known to meet the budget: it is on no best path
    and ties with none, so the schedule is the same.

    ``holds``: a count of 0 leaves an interval's arrivals held by the gateway until a later
    interval's instances, and a replay fails any that waits past the hold time-out or finds the
    gateway full. With ``holds`` a run of intervals with no instance is allowed only where the
    first request held is released before it times out (a later interval with instances starts
    strictly before its arrival + ``timeout_s``: at the same instant the simulator's time-out goes
    first) and the run's arrivals, all held at once, fit in ``max_held``; the last interval leaves
    nothing held (no later instance would serve it). A policy with no instance throughout such a run
    fails the same requests (its instances start cold, later still), so the bound stays a bound.
    The DP then keeps a front per state: nothing held, or held since interval r.
    """
    price, rest, ceiling = _prune_limits(table, seconds, allowed, holds)
    # fronts[state] = (misses spent, costs): increasing misses, strictly decreasing cost.
    fronts: dict[int, tuple[list[int], list[float]]] = {_NOTHING_HELD: ([0], [0.0])}
    held_count: dict[int, int] = {}
    # Per interval and state reached: its front's misses and, per point, the count and the state before.
    trail: list[dict[int, tuple[list[int], list[int], list[int]]]] = []
    for index, (row, length) in enumerate(zip(table, seconds, strict=True)):
        options = _options(row, allowed, holding=holds is not None)
        moves: dict[int, list[tuple[int, int, int]]] = {}  # state after -> (count, misses, state before)
        held_after: dict[int, int] = {}
        for state in fronts:
            for count, misses in options:
                if count >= len(row) and state == _NOTHING_HELD:
                    continue  # an instance for an empty interval only releases what earlier ones left held
                after = _held_after(state, count, index, holds, held_count)
                if after is None:
                    continue
                target, held = after
                moves.setdefault(target, []).append((count, misses, state))
                if target != _NOTHING_HELD:
                    held_after[target] = held
        step: dict[int, tuple[list[int], list[float]]] = {}
        kept: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for target, sources in moves.items():
            # Each source's points shifted by the option, merged in order of misses, then cost, then
            # the smaller count (a sort finds the sources' runs already in order).
            candidates: list[tuple[int, float, int, int]] = []
            for count, misses, state in sources:
                spent_from, cost_from = fronts[state]
                more = count * length
                reach = bisect.bisect_right(spent_from, allowed - misses)
                candidates += [
                    (spent + misses, cost + more, count, state)
                    for spent, cost in zip(spent_from[:reach], cost_from[:reach], strict=True)
                ]
            candidates.sort()
            spent_list: list[int] = []
            cost_list: list[float] = []
            counts: list[int] = []
            befores: list[int] = []
            last = math.inf
            # A point whose cheapest completion (at least the rest's Lagrangian bound) costs more than
            # a schedule known to meet the budget is on no best path: it still hides the points it
            # dominates, but is not kept.
            limit = ceiling - rest[index + 1] + price * allowed
            for total, cost, count, state in candidates:
                if cost < last:
                    last = cost
                    if cost + price * total > limit:
                        continue
                    spent_list.append(total)
                    cost_list.append(cost)
                    counts.append(count)
                    befores.append(state)
            if spent_list:
                step[target] = (spent_list, cost_list)
                kept[target] = (spent_list, counts, befores)
        fronts, held_count = step, held_after
        trail.append(kept)
    final = fronts.get(_NOTHING_HELD)
    if final is None:
        return None
    spent, state = final[0][-1], _NOTHING_HELD
    schedule: list[int] = []
    for row, kept in zip(reversed(table), reversed(trail), strict=True):
        spent_list, counts, befores = kept[state]
        point = bisect.bisect_left(spent_list, spent)
        count, state = counts[point], befores[point]
        schedule.append(count)
        spent -= (row[count] if count < len(row) else 0) or 0
    return tuple(reversed(schedule))


def _prune_limits(
    table: Sequence[Sequence[int | None]], seconds: Sequence[float], allowed: int, holds: Holds | None
) -> tuple[float, list[float], float]:
    """What ``fewest_instances`` prunes its fronts with: a price per miss, the Lagrangian bound of
    the intervals from each on (``rest[i]``: for any choice from interval i on that misses at most b,
    cost >= ``rest[i]`` - price x b, the intervals' own cheapest of count x length + price x misses
    summed), and the cost of one schedule that meets the budget (and the hold), ``math.inf`` where
    none is found (nothing is pruned then).

    The price is the LP relaxation's: every interval starts at its cheapest count, and the steps
    along each miss curve's lower convex hull (misses saved for instance-seconds) are taken cheapest
    per miss first until the misses fit the budget; the counts reached are the schedule. With the
    hold, a count of 0 the gateway could not hold through is raised to the interval's cheapest
    other count (which misses no more than all its arrivals). The bound ignores the hold, which
    only forbids schedules, so it stays a bound."""
    hulls: list[list[tuple[float, int, int]]] = []  # per interval: (cost, misses, count) on the lower hull
    steps: list[tuple[float, int, int]] = []  # (price per miss saved, misses saved, interval)
    for index, (row, length) in enumerate(zip(table, seconds, strict=True)):
        hull: list[tuple[float, int, int]] = []
        for count, misses in _options(row, allowed, holding=False):
            point = (count * length, misses, count)
            while hull and hull[-1][0] == point[0]:
                hull.pop()  # as cheap with fewer misses
            while len(hull) >= 2 and _slope(hull[-2], hull[-1]) >= _slope(hull[-1], point):
                hull.pop()
            hull.append(point)
        if not hull:
            return 0.0, [0.0] * (len(table) + 1), math.inf
        hulls.append(hull)
        steps += [(_slope(a, b), a[1] - b[1], index) for a, b in itertools.pairwise(hull)]
    at = [0] * len(hulls)
    misses = sum(hull[0][1] for hull in hulls)
    price = 0.0
    for slope, saved, index in sorted(steps):
        if misses <= allowed:
            break
        price, misses = slope, misses - saved
        at[index] += 1
    if misses > allowed:
        return 0.0, [0.0] * (len(table) + 1), math.inf
    rest = [0.0] * (len(hulls) + 1)
    for index in range(len(hulls) - 1, -1, -1):
        rest[index] = rest[index + 1] + min(cost + price * misses for cost, misses, _ in hulls[index])
    chosen = [hull[i][2] for hull, i in zip(hulls, at, strict=True)]
    if holds is not None:
        state, held_count = _NOTHING_HELD, dict[int, int]()
        for index, row in enumerate(table):
            after = _held_after(state, chosen[index], index, holds, held_count)
            if after is None:
                others = [(count * seconds[index], count) for count, _ in _options(row, allowed, holding=True) if count]
                if not others:
                    return price, rest, math.inf
                chosen[index] = min(others)[1]
                after = _NOTHING_HELD, 0
            state, held_count = after[0], {after[0]: after[1]}
        spent = sum((row[c] if c < len(row) else 0) or 0 for row, c in zip(table, chosen, strict=True))
        if spent > allowed:
            return price, rest, math.inf
    ceiling = sum(count * length for count, length in zip(chosen, seconds, strict=True))
    # Room for rounding in the sums (a relative 1e-9, far above a float sum's error), so a point
    # is dropped only where its every completion costs more than the schedule found.
    return price, rest, ceiling + 1e-9 * (abs(ceiling) + price * allowed + abs(rest[0]) + 1.0)


def _slope(cheaper: tuple[float, int, int], dearer: tuple[float, int, int]) -> float:
    """Instance-seconds a miss saved costs between two counts of one interval's hull."""
    return (dearer[0] - cheaper[0]) / (cheaper[1] - dearer[1])


def _options(row: Sequence[int | None], allowed: int, *, holding: bool) -> list[tuple[int, int]]:
    """The counts worth trying in one interval, with their misses: those the interval alone allows
    (not None) within the budget, each missing fewer than every smaller count kept, so a larger
    count is never chosen for the same misses at more cost. With the gateway's hold in the DP
    (``holding``), a count of 0 holds the arrivals while any other releases what is held, so
    count 0 is kept apart from the others, and an interval with no arrival (its row ends at count 0)
    may still take one instance, to release what earlier intervals left held."""
    options: list[tuple[int, int]] = []
    fewest: int | None = None  # the fewest misses among the counts kept that release held requests
    for count, misses in enumerate(row):
        if misses is None or misses > allowed:
            continue
        if holding and count == 0:
            options.append((0, misses))
        elif fewest is None or misses < fewest:
            options.append((count, misses))
            fewest = misses
    if holding and len(row) == 1 and row[0] == 0:
        options.append((1, 0))
    return options


def _held_after(
    state: int, count: int, index: int, holds: Holds | None, held_count: dict[int, int]
) -> tuple[int, int] | None:
    """The DP's state after interval ``index`` at ``count`` from ``state`` and the requests then held,
    or None where a held request would time out or find the gateway full (``fewest_instances``)."""
    if holds is None:
        return _NOTHING_HELD, 0
    if count > 0:
        return _NOTHING_HELD, 0
    arrivals = holds.held[index]
    oldest = index if state == _NOTHING_HELD else state
    if state == _NOTHING_HELD and arrivals == 0:
        return _NOTHING_HELD, 0
    held = held_count.get(state, 0) + arrivals
    released = (index + 1) * holds.tick_s  # the next interval's instances, the earliest there are
    if held > holds.max_held or holds.first_s[oldest] + holds.timeout_s <= released or index == len(holds.held) - 1:
        return None
    return oldest, held


def oracle_bound(
    *,
    trace: Trace,
    setup: SimSetup,
    progress: Progress | None = None,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> OracleBound:
    """The oracle's lower bound (module docstring): each interval's miss curve up to the first count
    that serves it with no miss (more instances cannot do better, so none is probed), then
    ``fewest_instances`` with the gateway's hold (``Holds``), so that no interval goes without
    instances longer than its held requests can wait. ``groups_known`` as in ``static_search``."""
    intervals = trace_intervals(trace)
    # The gateway's answers per token counts, worked out once for all the probes.
    gateway = Simulation(
        trace=trace, setup=setup, label="oracle gateway", static_instances=0, groups_known=groups_known
    )
    table: list[list[int | None]] = []
    tick = tick_period_s()
    counted: list[int] = []  # per interval, the requests the SLA counts: all but those the gateway refuses outright
    held: list[int] = []  # per interval, those of them held where it has no instance
    first_s: list[float] = []  # per interval, when the first of those came, from the trace's start
    for index, requests in enumerate(intervals):
        row: list[int | None] = [0]
        # No instances: no need to simulate, the gateway's answer to each request is all there is.
        judged = [request.arrival_s for request in requests if not gateway.refused_by_gateway(request)]
        counted.append(len(judged))
        # One arriving at the very tick meets the fleet before the tick changes it (arrivals go first
        # at the same instant): it is held only where the interval before had no instance, in which case
        # that interval's own hold decides. Left out here, so the rule forbids no schedule a policy
        # could follow (a bound), at worst allowing one whose replay fails that request.
        waiting = [arrival for arrival in judged if arrival > 0 or index == 0]
        held.append(len(waiting))
        first_s.append(index * tick + min(waiting) if waiting else math.inf)
        if requests:
            row = [_empty_misses(len(judged), setup)]
        for count in range(1, setup.gpus + 1):
            if row[-1] == 0:
                break
            row.append(
                interval_misses(
                    requests=requests, setup=setup, count=count, trace=trace, groups_known=gateway.groups_known
                )
            )
        table.append(row)
        if progress is not None:
            progress("oracle bound", (index + 1) / len(intervals))
    seconds = interval_seconds(trace)
    allowed = misses_allowed(sum(counted), setup.sla_target)
    holds = Holds(
        held=held,
        first_s=first_s,
        tick_s=tick,
        timeout_s=setup.gateway.hold_timeout_s,
        max_held=setup.gateway.max_held,
    )
    chosen = fewest_instances(table, seconds, allowed, holds=holds)
    feasible = chosen is not None
    if chosen is None:
        # No schedule of up to setup.gpus per interval meets the SLA even with every interval
        # alone: the fewest misses each interval can reach, with the fewest instances that reach it.
        chosen = tuple(_fewest_misses(row, setup.gpus) for row in table)
    missed = tuple(row[c] or 0 for row, c in zip(table, chosen, strict=True))
    gpu_hours = sum(c * s for c, s in zip(chosen, seconds, strict=True)) / 3600
    return OracleBound(
        schedule=chosen,
        gpu_hours=gpu_hours,
        misses=sum(missed),
        interval_misses=missed,
        allowed=allowed,
        feasible=feasible,
    )


def _fewest_misses(row: Sequence[int | None], most: int) -> int:
    allowed = [(misses, count) for count, misses in enumerate(row) if misses is not None]
    return min(allowed)[1] if allowed else most


def oracle_replay(
    *,
    trace: Trace,
    setup: SimSetup,
    schedule: Sequence[int],
    label: str = "oracle",
    progress: Progress | None = None,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> tuple[SimResult, list[int]]:
    """The oracle's schedule simulated over the whole trace, carried-over queues included, and the
    misses among each tick interval's arrivals (counted as ``interval_misses`` counts them).
    ``groups_known`` as in ``static_search``."""
    simulation = Simulation(
        trace=trace,
        setup=setup,
        label=label,
        schedule=list(schedule),
        progress=_fraction(progress, label),
        groups_known=groups_known,
    )
    result = simulation.run()
    tick = tick_period_s()
    judged = [index for index in range(len(trace.requests)) if index not in simulation.refused]
    ttfts: list[list[float]] = [[] for _ in schedule]
    e2es: list[list[float]] = [[] for _ in schedule]
    tokens: list[list[int]] = [[] for _ in schedule]
    for index, ttft, e2e in zip(judged, result.ttft_s, result.e2e_s, strict=True):
        interval = int(trace.requests[index].arrival_s // tick)
        ttfts[interval].append(ttft)
        e2es[interval].append(e2e)
        tokens[interval].append(trace.requests[index].prompt_tokens)
    parts = zip(ttfts, e2es, tokens, strict=True)
    return result, [_misses(replace(result, ttft_s=t, e2e_s=e, prompt_tokens=p)) for t, e, p in parts]


def oracle_repair(
    *,
    trace: Trace,
    setup: SimSetup,
    bound: OracleBound,
    replayed: tuple[SimResult, list[int]],
    rounds: int = REPAIR_ROUNDS,
    progress: Progress | None = None,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> tuple[tuple[int, ...], SimResult]:
    """An achievable schedule near the bound: while the replay misses the SLA, one more instance
    (up to ``setup.gpus``) for each interval whose arrivals missed it more often than alone, then
    replayed again; ``rounds`` replays at most. It may still miss: check ``meets_sla`` on the result.
    Not a bound (instances added where the carry-over hurt, not where it is cheapest)."""
    current = list(bound.schedule)
    result, missed = replayed
    for _ in range(rounds):
        if result.meets_sla(setup.sla_target):
            break
        bumped = False
        for index, misses in enumerate(missed):
            if misses > bound.interval_misses[index] and current[index] < setup.gpus:
                current[index] += 1
                bumped = True
        if not bumped:
            break
        result, missed = oracle_replay(
            trace=trace,
            setup=setup,
            schedule=current,
            label="oracle repaired",
            progress=progress,
            groups_known=groups_known,
        )
    return tuple(current), replace(result, label="oracle repaired")


def _fraction(progress: Progress | None, label: str) -> Callable[[float], None] | None:
    if progress is None:
        return None
    return lambda done: progress(label, done)


def _policy_run(
    *,
    trace: Trace,
    setup: SimSetup,
    count: int,
    progress: Progress | None,
    groups_known: dict[tuple[int, int], Groups] | None = None,
) -> SimResult:
    """The policy run, starting from the static fleet of ``count`` instances."""
    return Simulation(
        trace=trace,
        setup=setup,
        label="policy",
        initial_instances=count,
        progress=_fraction(progress, "policy"),
        groups_known=groups_known,
    ).run()


_FORKED: dict[str, Any] = {}  # what a forked process works on, set before the fork (never pickled)


def _forked_static_and_policy() -> tuple[int, bool, SimResult, SimResult]:
    """In the forked process: the static search and the policy run from its fleet."""
    trace, setup, known = _FORKED["trace"], _FORKED["setup"], _FORKED["groups_known"]
    count, meets, runs = static_search(trace=trace, setup=setup, stop_early=True, groups_known=known)
    return count, meets, runs[-1], _policy_run(trace=trace, setup=setup, count=count, progress=None, groups_known=known)


class _Forked:
    """One call run in a forked process (its arguments inherited, its result sent back); a context
    manager that shuts the process down."""

    def __init__(self, call: Callable[[], tuple[int, bool, SimResult, SimResult]]) -> None:
        self.executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        self.submitted = self.executor.submit(call)

    def __enter__(self) -> _Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown()
        _FORKED.clear()


def _fork(
    call: Callable[[], tuple[int, bool, SimResult, SimResult]],
    *,
    trace: Trace,
    setup: SimSetup,
    groups_known: dict[tuple[int, int], Groups],
) -> _Forked | None:
    """``call`` under way in a forked process, or None where this platform cannot fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    _FORKED.update(trace=trace, setup=setup, groups_known=groups_known)
    return _Forked(call)


def compare(
    *,
    trace: Trace,
    setup: SimSetup,
    price_per_gpu_hour: Decimal | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> Comparison:
    """Static search, the oracle bound and its replay, then the policy run, which starts with the
    static fleet (the fleet as it stood before the policies were switched on) and may scale it.
    Whatever falls short of the SLA is said in ``notes``.

    ``jobs`` 2: the static search and the policy run (which needs nothing from the oracle) run in
    a second process, forked, while this one works out the oracle; every run is seeded on its
    own, so the comparison is the same as with one (only its progress shows less).

    Every run shares the gateway's answers per token counts (``groups_known``: they depend on the
    setup alone); a forked process fills its own copy."""
    known: dict[tuple[int, int], Groups] = {}
    forked = _fork(_forked_static_and_policy, trace=trace, setup=setup, groups_known=known) if jobs > 1 else None
    if forked is None:
        count, meets, runs = static_search(
            trace=trace, setup=setup, progress=progress, stop_early=True, groups_known=known
        )
    bound = oracle_bound(trace=trace, setup=setup, progress=progress, groups_known=known)
    replayed = oracle_replay(trace=trace, setup=setup, schedule=bound.schedule, progress=progress, groups_known=known)
    oracle = replayed[0]
    oracle_meets = oracle.meets_sla(setup.sla_target)
    repaired_schedule, repaired = oracle_repair(
        trace=trace, setup=setup, bound=bound, replayed=replayed, progress=progress, groups_known=known
    )
    repaired_meets = repaired.meets_sla(setup.sla_target)
    if forked is None:
        static_run, policy = (
            runs[-1],
            _policy_run(trace=trace, setup=setup, count=count, progress=progress, groups_known=known),
        )
    else:
        with forked:
            count, meets, static_run, policy = forked.submitted.result()
    static = replace(static_run, label=f"static ({count} always on)")
    notes: list[str] = []
    if not meets:
        notes.append(
            f"no static size of 1..{count} meets the SLA; savings are against {count} always-on instances "
            f"that miss it ({static.attainment:.2%} within, {static.failed} failed), and the policy starts from them"
        )
    if not bound.feasible:
        notes.append(
            f"no schedule of up to {setup.gpus} instances per interval meets the SLA even with each interval "
            f"served alone ({bound.misses} missed, {bound.allowed} allowed): the oracle figure is the cost of "
            "the fewest misses, not a lower bound at the SLA"
        )
    if not oracle_meets:
        why = (
            "work carried over from earlier intervals, which the bound leaves out; its lower bound of "
            f"{bound.gpu_hours:.3f} GPU-hours is kept as the bound"
            if bound.feasible
            else "no schedule meets it, as said above"
        )
        repair = (
            f". With instances added where the replay missed (at most {REPAIR_ROUNDS} replays) the schedule "
            f"takes {repaired.gpu_hours:.3f} GPU-hours at {repaired.attainment:.2%} within "
            f"({'meets' if repaired_meets else 'still misses'} the SLA)"
            if repaired_schedule != bound.schedule
            else ""
        )
        notes.append(
            f"the oracle's schedule replayed over the whole trace misses the SLA ({oracle.attainment:.2%} within, "
            f"{oracle.failed} failed): {why}{repair}"
        )
    return Comparison(
        trace=trace.name,
        gpu_model=setup.engine.gpu_model,
        policy=policy,
        static=static,
        static_instances=count,
        static_meets_sla=meets,
        oracle=oracle,
        schedule=bound.schedule,
        price_per_gpu_hour=price_per_gpu_hour,
        setup=setup,
        oracle_bound=bound,
        oracle_meets_sla=oracle_meets,
        oracle_repaired=repaired,
        repaired_schedule=repaired_schedule,
        oracle_repaired_meets_sla=repaired_meets,
        notes=tuple(notes),
    )
