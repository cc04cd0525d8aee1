"""The policy run against its two references, all by the same simulator on the same trace.

The SLA both are held to is the one the policy is judged by: at least ``sla_target``
(default 99.9%) of requests get their first token within ``sla_ms`` (default 500 ms), and
none fails.

* **static**: the fewest always-on instances whose run meets the SLA, found by trying
  1, 2, ... instances up to the fleet's GPUs.
* **oracle**: for every tick interval, the fewest instances that serve the requests
  arriving in it within the SLA when they meet an empty, warm fleet (each interval
  simulated alone); the instances appear already warm at the interval's start and leave
  at its end (none for an interval without requests). That schedule is then simulated
  over the whole trace like the others; where requests carried over from a busier
  interval push an interval's arrivals out of the SLA, that interval gets one more
  instance and the run is repeated (a few rounds at most). It knows the future and pays
  no start-up, so it is a lower bound for any policy deciding on the same tick.

Savings = 1 - policy / static GPU-hours; efficiency = oracle / policy GPU-hours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

from agents.histograms import attainment, histogram_observe
from fleet.presets import PRICE_PRESETS
from fleet.sim.engine import TTFT_BUCKETS
from fleet.sim.simulate import SimResult, SimSetup, Simulation, tick_period_s
from fleet.sim.traces import Trace, TraceRequest

Progress = Callable[[str, float], None]


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

    @property
    def savings(self) -> float:
        return 1 - self.policy.gpu_hours / self.static.gpu_hours if self.static.gpu_hours else 0.0

    @property
    def efficiency(self) -> float:
        return self.oracle.gpu_hours / self.policy.gpu_hours if self.policy.gpu_hours else 0.0

    def spend(self, result: SimResult) -> Decimal | None:
        if self.price_per_gpu_hour is None:
            return None
        return (Decimal(str(result.gpu_hours)) * self.price_per_gpu_hour).quantize(Decimal("0.01"))


def price_preset(gpu_model: str) -> Decimal | None:
    """The panel's preset price per GPU-hour for a GPU family (the list price it ships with)."""
    for name, price, _, _ in PRICE_PRESETS:
        if gpu_model.upper() in name.upper():
            return Decimal(price)
    return None


def static_search(
    *, trace: Trace, setup: SimSetup, progress: Progress | None = None
) -> tuple[int, bool, list[SimResult]]:
    """Static runs with 1, 2, ... instances until one meets the SLA; every run made."""
    runs: list[SimResult] = []
    for count in range(1, setup.gpus + 1):
        label = f"static {count}"
        result = Simulation(
            trace=trace, setup=setup, label=label, static_instances=count, progress=_fraction(progress, label)
        ).run()
        runs.append(result)
        if result.meets_sla(setup.sla_target):
            return count, True, runs
    return setup.gpus, False, runs


def oracle_schedule(*, trace: Trace, setup: SimSetup, most: int) -> tuple[int, ...]:
    """Per tick interval, the fewest warm instances (up to ``most``) that serve its arrivals within the SLA."""
    tick = tick_period_s()
    intervals = int(trace.duration_s // tick) + 1
    members: list[list[TraceRequest]] = [[] for _ in range(intervals)]
    for request in trace.requests:
        index = int(request.arrival_s // tick)
        members[index].append(replace(request, arrival_s=request.arrival_s - index * tick))
    schedule = []
    for index, requests in enumerate(members):
        need = 0
        if requests:
            alone = Trace(name=f"{trace.name} interval {index}", start=trace.start, requests=tuple(requests))
            need = most
            for count in range(1, most):
                result = Simulation(trace=alone, setup=setup, label="oracle probe", static_instances=count).run()
                if result.meets_sla(setup.sla_target):
                    need = count
                    break
        schedule.append(need)
    return tuple(schedule)


def oracle_refine(
    *, trace: Trace, setup: SimSetup, schedule: tuple[int, ...], rounds: int = 6, progress: Progress | None = None
) -> tuple[tuple[int, ...], SimResult]:
    """Simulate the schedule; add an instance to each interval whose arrivals missed the SLA; repeat."""
    tick = tick_period_s()
    limit = setup.sla_ms / 1000
    current = list(schedule)
    for _ in range(rounds):
        result = Simulation(
            trace=trace, setup=setup, label="oracle", schedule=current, progress=_fraction(progress, "oracle")
        ).run()
        if result.meets_sla(setup.sla_target):
            break
        arrived: list[list[float]] = [[] for _ in current]
        for request, ttft in zip(trace.requests, result.ttft_s, strict=True):
            arrived[int(request.arrival_s // tick)].append(ttft)
        bumped = False
        for index, ttfts in enumerate(arrived):
            share = attainment([histogram_observe(ttfts, TTFT_BUCKETS)], limit)
            if share is not None and share < setup.sla_target and current[index] < setup.gpus:
                current[index] += 1
                bumped = True
        if not bumped:
            break
    return tuple(current), result


def _fraction(progress: Progress | None, label: str) -> Callable[[float], None] | None:
    if progress is None:
        return None
    return lambda done: progress(label, done)


def compare(
    *,
    trace: Trace,
    setup: SimSetup,
    price_per_gpu_hour: Decimal | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Static search, the oracle schedule, then the policy run, which starts with the static
    fleet (the fleet as it stood before the policies were switched on) and may scale it."""
    count, meets, runs = static_search(trace=trace, setup=setup, progress=progress)
    schedule, oracle = oracle_refine(
        trace=trace, setup=setup, schedule=oracle_schedule(trace=trace, setup=setup, most=setup.gpus), progress=progress
    )
    policy = Simulation(
        trace=trace,
        setup=setup,
        label="policy",
        initial_instances=count,
        progress=_fraction(progress, "policy"),
    ).run()
    static = replace(runs[count - 1], label=f"static ({count} always on)")
    return Comparison(
        trace=trace.name,
        gpu_model=setup.engine.gpu_model,
        policy=policy,
        static=static,
        static_instances=count,
        static_meets_sla=meets,
        oracle=oracle,
        schedule=schedule,
        price_per_gpu_hour=price_per_gpu_hour,
        setup=setup,
    )
