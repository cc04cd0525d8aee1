"""Discrete-event simulation of a fleet serving a request trace, run by the production policies.

What is simulated: GPUs, vLLM engines (``fleet.sim.engine``), container start-ups, sleep
and wake. What is not: the routing function (``rcf_compute``, ``tier_for``, ``FALLBACK``),
the gateway's pick with its cool-down (``Picker``), its hold-and-wake path
(``pool_wake_actions``) and its scale-out under pressure (``pressure``), the evaluation
loop and its policy functions (reap, idle reclaim, autoscale, pre-warm, co-location:
``policies_run``), the tick period (the
``policies_evaluate`` schedule), the telemetry windows (``pool_windows``, as the snapshot
selector builds them), and which instance states hold a GPU
(``states.gpu_holding_states``): all are the production objects, looked up when called, so a change
to a policy changes the simulation. None of them needs Django, and neither does a simulation.

A fleet may hold several pools (``SimSetup.pools``), each routed to by its RCF tier. By default
they share the setup's GPUs and engine model; a pool with GPUs of its own (``SimPool.gpus``) has
them numbered after the others on nodes of their own (``setup.gpu_groups``), runs its own engine
model on them and reports its own device, and production placement keeps it to them as it keeps a
pool to its GPU model (``PoolView.gpu_model``). ``pool_results`` gives each pool's share of a run.
The static and schedule fleets below place their instances in the first pool only.

Three fleets run on the same trace:

* **policy**: starts with ``initial_instances`` warm instances per pool (the fleet as it
  stood when the trace began); every tick the policies run on a
  ``FleetSnapshot`` built from the simulated state and their actions are applied to it.
* **static**: ``n`` instances ready from the first request to the last, no policies.
* **schedule** (the oracle): a count per tick interval, instances appearing already warm
  at the interval's start and leaving (after draining) at its end.

Requests are never dropped by the simulation: a request waits in the gateway while its
pool wakes and fails only as the gateway would (hold time-out or too many held).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import math
import random
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from agents.histograms import histogram_observe, pool_latency, ttft_bound_ms
from fleet import states
from fleet.costs.allocation import Allocation
from fleet.costs.prices import PriceBook
from fleet.costs.sleep import JobMove, SleepReport, batch_runs, sleep_pieces, sleep_use
from fleet.costs.spend import GpuInfo
from fleet.policies import placement, pressure, prewarm, routing, static_hold
from fleet.policies.actions import (
    Action,
    DesireInstance,
    LaunchInstance,
    PoolDecision,
    PreemptBatchJob,
    StartBatchJob,
)
from fleet.policies.autoscale import SCALE_MOVES_KEPT
from fleet.policies.colocate import wake_evictions
from fleet.policies.pick import Picker
from fleet.policies.registry import policies_run
from fleet.policies.snapshot import (
    BatchJobView,
    FleetSnapshot,
    GpuView,
    InstanceView,
    PoolView,
    PoolWindow,
)
from fleet.policies.vram import vram_estimate_for
from fleet.policies.windows import (
    REPORT_INTERVAL_S,
    SAMPLE_FRESH_S,
    WINDOW_S,
    WINDOWS,
    cold_start_median,
    over_bound_share,
    pool_windows,
)
from fleet.sim.billing import Hold, node_billed_hours, node_billed_now, node_of
from fleet.sim.compiled import compiled_fresh, mypyc_attr
from fleet.sim.engine import E2E_BUCKETS, PROFILES, TTFT_BUCKETS, EngineCore, EngineModel, SimRequest
from fleet.sim.result import HELD_FAILED, BatchWork, Decision, SimResult, TimelinePoint, percentile_of
from fleet.sim.setup import GpuGroup, SimPool, SimSetup, gpu_groups, request_tier, tick_period_s
from fleet.sim.startup import StartDraw, start_draw
from fleet.sim.traces import Trace, TraceRequest
from fleet.states import (
    FAILED,
    JOB_DONE,
    JOB_PREEMPTED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_WAITING,
    READY,
    RUNNING,
    SLEEPING,
    STARTING,
    STOPPED,
    STOPPING,
)

compiled_fresh(__file__)

WAKING = "waking"

# What an instance asleep keeps of its memory budget (the CUDA context and buffers): vLLM's sleep mode
# frees "up to 90%+" of the GPU memory a server used (docs.vllm.ai, "Sleep Mode"); the simulator takes
# the least of that, 90%, so the memory it lends batch work is not overstated.
ASLEEP_KEEPS = 0.1
# The kind of the decision that preempts a card's batch jobs when the simulated fleet hands the card back.
CARD_RELEASE = "card_release"

Groups = list[list[int]] | routing.ContextRefused


@dataclass(frozen=True)
class _Sample:
    """One agent report: the GPU's duty cycle and what vLLM's metrics say (a ``LoadSample``)."""

    instance_id: int
    at: datetime
    duty: float
    requests_running: int
    requests_waiting: int
    kv_cache_usage: float
    prompt_tokens_rate: float


@dataclass
class _Instance:
    id: int
    pool_id: int
    gpu_id: int
    core: EngineCore
    created_s: float
    desired: str = RUNNING
    actual: str = STARTING
    generation: int = 1
    ready_s: float | None = None
    last_request_s: float | None = None
    desired_changed_s: float | None = None
    stepping: bool = False
    # The end of a step in flight past the next outside event, run in the same go as the steps before
    # it (``Simulation._step_start``), and what those steps before it finished (collected at their end).
    crossing_s: float | None = None
    finished_before: list[SimRequest] = field(default_factory=list)
    token: int = 0
    held_since_s: float | None = None
    billed_s: float = 0.0
    starting_since_s: float | None = None
    occupied_since_s: float | None = None
    start: StartDraw | None = None
    samples: list[_Sample] = field(default_factory=list)
    prompt_tokens_reported: int = 0
    asleep_since_s: float | None = None

    @property
    def occupies_device(self) -> bool:
        return states.instance_occupies_device(desired_state=self.desired, actual_state=self.actual)

    @property
    def instance_id(self) -> int:
        """Its id as the gateway's pick reads it (a ``Candidate``)."""
        return self.id


@dataclass
class _Job:
    """A batch job (``SimSetup.batch``), as the panel's ``BatchJob`` row holds it."""

    id: int
    state: str = JOB_QUEUED
    generation: int = 1
    gpu_id: int | None = None
    started_s: float = 0.0
    preemptions: int = 0


@dataclass
class _Held:
    index: int
    groups: list[list[int]]


def _per_1k(setup: SimSetup) -> Any:
    """The setup's ms per 1k prompt tokens as it was given (an int stays an int, as the result's repr
    has it): read as an ``Any``, as a compiled module would otherwise make a float of it."""
    return getattr(setup, "sla_ms_per_1k_prompt_tokens")  # noqa: B009 - an Any, not a float


@mypyc_attr(allow_interpreted_subclasses=True)
class Simulation:
    """One run of one fleet over one trace; ``run()`` returns its ``SimResult``.

    Where the module is compiled (``fleet.sim.compiled``) this is a native class, whose instances take
    no new attributes; a plain Python subclass may still override its methods (tests do, to step the
    old way or to record what the policies decide)."""

    def __init__(
        self,
        *,
        trace: Trace,
        setup: SimSetup,
        label: str,
        static_instances: int | None = None,
        schedule: Sequence[int] | None = None,
        initial_instances: int | Mapping[int, int] = 1,
        progress: Callable[[float], None] | None = None,
        groups_known: dict[tuple[int, int], Groups] | None = None,
        miss_limit: int | None = None,
    ) -> None:
        """``groups_known``: ``groups_for``'s answers to share with other runs of the same setup made at
        the same time (the oracle's probes); by default each run works out its own.

        ``initial_instances``: the policy run's warm instances per pool at the start (at least the
        pool's ``min_instances``), one count for every pool or a count per pool id (0 where not given).

        ``miss_limit``: for a run that only has to say whether it meets the SLA (the static search's
        smaller sizes), stop once more requests than this have missed it (or one has failed): the
        run then misses the SLA whatever follows, ``stopped_early`` is True and its result covers
        only what was simulated. A miss is judged as ``SimResult.attainment`` judges it, which
        is exact per request only where the first-token bound is one of vLLM's buckets or grows
        with the prompt; elsewhere the run goes on to the end."""
        self.trace = trace
        self.setup = setup
        self.label = label
        self.static_instances = static_instances
        self.schedule = schedule
        self.initial_instances = initial_instances
        self.progress = progress
        self.policy_mode = static_instances is None and schedule is None
        self.random = random.Random(setup.seed)
        # Start-up draws have their own stream, so stating a start-up model leaves the load jitter as it was.
        self.start_random = random.Random(f"{setup.seed}:start-up")
        # The fleet's GPUs in groups of one device each (``gpu_groups``), each pool's group and engine.
        self.gpu_groups = gpu_groups(setup)
        self.group_of: dict[int, GpuGroup] = {pool: group for group in self.gpu_groups for pool in group.pool_ids}
        self.device_of: dict[int, GpuGroup] = {gpu: group for group in self.gpu_groups for gpu in group.gpu_ids}
        self.engines = {pool_id: group.engine for pool_id, group in self.group_of.items()}
        self.weight_bytes = {pool_id: _weight_bytes(engine) for pool_id, engine in self.engines.items()}
        # Several groups: each pool finds its own GPUs as production placement does, by its GPU model.
        self.several = len(self.gpu_groups) > 1
        self.gpu_holds: list[Hold] = []
        self.nodes_used: set[int] = set()
        self.starts: list[StartDraw] = []
        self.tick_s = tick_period_s()
        self.pools = {
            pool.view.id: (
                replace(pool, view=replace(pool.view, gpu_model=self.group_of[pool.view.id].device))
                if self.several
                else pool
            )
            for pool in setup.pools
        }
        self.holding = states.gpu_holding_states(sleeping_holds_gpu=setup.sleeping_holds_gpu) | {WAKING}
        self.instances: dict[int, _Instance] = {}
        self.picker = Picker(cooldown_s=setup.gateway.cooldown_s)
        self.events: list[tuple[float, int, str, int, int]] = []
        self.step_ends: list[tuple[float, int, int]] = []
        self.groups_known: dict[tuple[int, int], Groups] = {} if groups_known is None else groups_known
        exact = setup.sla_ms_per_1k_prompt_tokens > 0 or setup.sla_ms / 1000 in TTFT_BUCKETS
        self.miss_limit = miss_limit if exact else None
        self.missed = 0
        self.stopped_early = False
        self.arrival_times: list[float] = []  # in time order; ``next_arrival`` is the next one's position
        self.next_arrival = 0
        self.sequence = 0
        n = len(trace.requests)
        self.first_token = [HELD_FAILED] * n
        self.finished = [HELD_FAILED] * n
        self.cold = [False] * n
        # The pool whose instance each request was sent to (0: none, refused or failed).
        self.served_by = [0] * n
        self.start_pools: list[int] = []  # the pool of each of ``starts``
        self.hold_pools: list[int] = []  # the pool of each of ``gpu_holds``
        self.pool_wakes: dict[int, int] = defaultdict(int)
        self.pool_peak: dict[int, int] = defaultdict(int)
        self.held: list[_Held] = []
        self.wake_sent: dict[int, float] = {}
        self.scale_sent: dict[int, float] = {}
        self.request_times: dict[int, list[datetime]] = defaultdict(list)
        self.ttft_log: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.e2e_log: dict[int, list[tuple[float, float]]] = defaultdict(list)
        # Per pool whose TTFT bound grows with the prompt: (first token at, TTFT ms, prompt tokens).
        self.bound_log: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
        # ``_window_latency``'s answers: (pool, log, percentile, window start and end s) -> (requests in it, ms).
        self.window_latency_known: dict[tuple[int, bool, float, float, float], tuple[int, float | None]] = {}
        self._autoscale_settings: dict[int, Mapping[str, Any] | None] = {}
        self._logs: dict[
            int,
            tuple[list[tuple[float, float]], list[tuple[float, float]] | None, list[tuple[float, float, int]] | None],
        ] = {}
        self.cold_measured: dict[int, list[float]] = defaultdict(list)
        self.last_scale: dict[tuple[int, str], float] = {}
        # Each pool's newest scale-outs and scale-ins, (s, action), as the panel reads them from its decisions.
        self.scale_moves: dict[int, deque[tuple[float, str]]] = defaultdict(lambda: deque(maxlen=SCALE_MOVES_KEPT))
        # The static-spend guard: each pool's billed runs (start, end s) and its last decision of each action.
        self.billed_runs: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.static_last: dict[tuple[int, str], float] = {}
        self.traffic = prewarm.TrafficLearner()
        self.decisions: list[Decision] = []
        self.cold_starts = 0
        self.wakes = 0
        self.failed = 0
        self.refused: set[int] = set()
        self.done = 0
        self.now = 0.0
        self.timeline: list[TimelinePoint] = []
        self.utilization: list[float] = []
        self.interval_arrivals = 0
        self.interval_ttft: list[float] = []
        self.peak = 0
        # Batch work (policy runs only): the jobs, each card's start of its current run of jobs, what they did.
        self.batch = setup.batch if self.policy_mode else None
        self.jobs = [_Job(id=n + 1) for n in range(self.batch.jobs)] if self.batch is not None else []
        # (job, s, GPU or None: off it), as the panel's colocate and preempt decisions record the moves.
        self.job_moves: list[tuple[int, float, int | None]] = []
        self.job_done_s = 0.0
        self.job_lost_s = 0.0
        # Each sleep of an instance: (instance, GPU, asleep from s, to s).
        self.sleeps: list[tuple[int, int, float, float]] = []

    # -- events ------------------------------------------------------------------

    def _push(self, at: float, kind: str, a: int = 0, b: int = 0) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, a, b))

    def _at(self, t_s: float) -> datetime:
        return self.trace.start + timedelta(seconds=t_s)

    def run(self) -> SimResult:
        """Events in time order: arrivals (read in order from the trace, not kept in the event heap),
        other events, then engine step ends; at equal times an arrival goes first (then the trace's
        order), then other events in the order they were pushed, then step ends. The cyclic garbage
        collector is paused meanwhile (the run makes many small objects and no cycles to collect)."""
        requests = self.trace.requests
        times = [request.arrival_s for request in requests]
        order: Sequence[int] = range(len(requests))
        if any(earlier > later for earlier, later in itertools.pairwise(times)):
            order = sorted(order, key=times.__getitem__)
            times = [times[index] for index in order]
        self.arrival_times = times
        self.next_arrival = 0
        self._push(self.tick_s, "tick")
        self._push(REPORT_INTERVAL_S, "sample")
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._fleet_begin()
            self._events_run(order)
        finally:
            if collecting:
                gc.enable()
        return self._result()

    def _events_run(self, order: Sequence[int]) -> None:
        total = len(order)
        arrival_times, events, step_ends = self.arrival_times, self.events, self.step_ends
        inf = math.inf
        heappop, instances, step_end, arrival = heapq.heappop, self.instances, self._step_end, self._arrival
        while True:
            following = self.next_arrival
            arrival_at = arrival_times[following] if following < total else inf
            event_at = events[0][0] if events else inf
            if step_ends and step_ends[0][0] < (arrival_at if arrival_at <= event_at else event_at):
                at, _, instance_id = heappop(step_ends)
                self.now = at
                step_end(instances[instance_id])
                if self.done == total:
                    break
                continue
            if arrival_at == inf and event_at == inf:
                break
            if arrival_at <= event_at:
                self.next_arrival = following + 1
                self.now = arrival_at
                arrival(order[following])
                if self.done == total:
                    break
                continue
            at, _, kind, a, b = heappop(events)
            self.now = at
            if kind == "ready":
                self._ready(self.instances[a], b)
            elif kind == "slept":
                self._slept(self.instances[a], b)
            elif kind == "expire":
                self._expire(a)
            elif kind == "job":
                self._job_end(a, b)
            elif kind == "sample":
                self._sample()
                if self.done < total:
                    self._push(at + REPORT_INTERVAL_S, "sample")
            elif kind == "tick":
                self._tick()
                if self.done < total:
                    self._push(at + self.tick_s, "tick")
                if self.progress:
                    self.progress(min(1.0, self.done / total))
            if self.done == total:
                break

    def _result(self) -> SimResult:
        requests = self.trace.requests
        total = len(requests)
        end = self.now
        for instance in self.instances.values():
            self._bill_close(instance, end)
            self._hold_close(instance, end)
        setup = self.setup
        batch = self._batch_work(end)
        return SimResult(
            label=self.label,
            requests=total,
            sla_ms=self.setup.sla_ms,
            gpu_hours=sum(i.billed_s for i in self.instances.values()) / 3600,
            ttft_s=[self.first_token[i] - r.arrival_s for i, r in enumerate(requests) if i not in self.refused],
            e2e_s=[self.finished[i] - r.arrival_s for i, r in enumerate(requests) if i not in self.refused],
            cold_waited=sum(self.cold),
            cold_starts=self.cold_starts,
            wakes=self.wakes,
            failed=self.failed,
            utilization=self.utilization,
            timeline=self.timeline,
            decisions=self.decisions,
            instances_peak=self.peak,
            duration_s=end,
            node_hours=node_billed_hours(
                self.gpu_holds, gpus_per_node=setup.gpus_per_node, release=setup.node_release, end=end
            ),
            gpus_per_node=setup.gpus_per_node,
            start_failures=sum(1 for s in self.starts if s.fails),
            starts_uncached=sum(1 for s in self.starts if not s.weights_cached),
            image_pulls=sum(1 for s in self.starts if not s.image_present),
            node_provisions=sum(1 for s in self.starts if s.provisioned),
            e2e_sla_ms=setup.e2e_sla_ms,
            refused=len(self.refused),
            sla_ms_per_1k_prompt_tokens=_per_1k(setup),
            prompt_tokens=[r.prompt_tokens for i, r in enumerate(requests) if i not in self.refused],
            batch=batch,
        )

    def _batch_work(self, end: float) -> BatchWork | None:
        """What the batch work did by ``end`` (the runs still going count as unfinished), and the sleep it
        used as the costs page splits it (``fleet.costs.sleep``: each sleep cut where jobs ran on its card)."""
        if self.batch is None:
            return None
        sleeps = [
            *self.sleeps,
            *((i.id, i.gpu_id, i.asleep_since_s, end) for i in self.instances.values() if i.asleep_since_s is not None),
        ]
        allocations = [
            Allocation(instance, gpu, None, self._at(first), self._at(last), Fraction(1), SLEEPING)
            for instance, gpu, first, last in sleeps
        ]
        moves = [JobMove(job, self._at(t_s), gpu) for job, t_s, gpu in self.job_moves]
        runs = batch_runs(moves, start=self.trace.start, end=self._at(end))
        per_node = self.setup.gpus_per_node
        gpus = {gpu: GpuInfo(gpu, node_of(gpu, per_node), self.device_of[gpu].device) for _, gpu, _, _ in sleeps}
        # Unpriced (the comparison prices GPU-hours): the split's GPU-hours are what is read.
        pieces = sleep_pieces(allocations=allocations, runs=runs)
        rows = sleep_use(pieces=pieces, gpus=gpus, prices=PriceBook([], tz=ZoneInfo("UTC")))
        split = SleepReport(
            start=self.trace.start, end=self._at(end), currency="", billed=self.setup.sleeping_holds_gpu, rows=rows
        )
        running = [job for job in self.jobs if job.state == JOB_RUNNING]
        return BatchWork(
            jobs=len(self.jobs),
            done=sum(1 for job in self.jobs if job.state == JOB_DONE),
            preemptions=sum(job.preemptions for job in self.jobs),
            done_hours=self.job_done_s / 3600,
            lost_hours=self.job_lost_s / 3600,
            unfinished_hours=sum(end - job.started_s for job in running) / 3600,
            asleep_gpu_hours=float(split.slept.gpu_hours),
            used_gpu_hours=float(split.used.gpu_hours),
            asleep_billed=split.billed,
        )

    def pool_results(self) -> dict[int, SimResult]:
        """Each pool's share of the finished run, by pool id, in the setup's order: the requests sent to
        its instances (a request the gateway never sent, failed while held, counts in the pool its own
        tier tried first; refused ones in no pool), its instances' GPU-hours held, the nodes its GPUs
        kept paid (``node_billed_hours`` over its own holds; a node shared with another pool is paid in
        both), and its own cold starts, wakes, starts and peak. The whole fleet's duty samples,
        timeline and decisions are in ``run()``'s result only. One pool: the run's figures."""
        requests = self.trace.requests
        setup, end = self.setup, self.now
        members: dict[int, list[int]] = {pool_id: [] for pool_id in self.pools}
        for index, request in enumerate(requests):
            pool_id = self.served_by[index]
            if not pool_id:
                if index in self.refused:
                    continue
                groups = self.groups_for(request)
                assert not isinstance(groups, routing.ContextRefused)
                pool_id = groups[0][0]
            members[pool_id].append(index)
        out: dict[int, SimResult] = {}
        for pool_id, pool in self.pools.items():
            mine = members[pool_id]
            starts = [draw for draw, owner in zip(self.starts, self.start_pools, strict=True) if owner == pool_id]
            holds = [hold for hold, owner in zip(self.gpu_holds, self.hold_pools, strict=True) if owner == pool_id]
            out[pool_id] = SimResult(
                label=pool.view.name,
                requests=len(mine),
                sla_ms=setup.sla_ms,
                gpu_hours=sum(i.billed_s for i in self.instances.values() if i.pool_id == pool_id) / 3600,
                ttft_s=[self.first_token[i] - requests[i].arrival_s for i in mine],
                e2e_s=[self.finished[i] - requests[i].arrival_s for i in mine],
                cold_waited=sum(1 for i in mine if self.cold[i]),
                cold_starts=len(self.cold_measured.get(pool_id, [])),
                wakes=self.pool_wakes.get(pool_id, 0),
                failed=sum(1 for i in mine if not self.served_by[i]),
                utilization=[],
                timeline=[],
                decisions=[],
                instances_peak=self.pool_peak.get(pool_id, 0) if len(self.pools) > 1 else self.peak,
                duration_s=end,
                node_hours=node_billed_hours(
                    holds, gpus_per_node=setup.gpus_per_node, release=setup.node_release, end=end
                ),
                gpus_per_node=setup.gpus_per_node,
                start_failures=sum(1 for s in starts if s.fails),
                starts_uncached=sum(1 for s in starts if not s.weights_cached),
                image_pulls=sum(1 for s in starts if not s.image_present),
                node_provisions=sum(1 for s in starts if s.provisioned),
                e2e_sla_ms=setup.e2e_sla_ms,
                sla_ms_per_1k_prompt_tokens=_per_1k(setup),
                prompt_tokens=[requests[i].prompt_tokens for i in mine],
            )
        return out

    # -- the fleet ------------------------------------------------------------------

    def _fleet_begin(self) -> None:
        if self.static_instances is not None:
            count = self.static_instances
        elif self.schedule is not None:
            count = self.schedule[0] if self.schedule else 0
        else:
            for pool in self.setup.pools:
                initial = self.initial_instances
                count = initial if isinstance(initial, int) else initial.get(pool.view.id, 0)
                for _ in range(max(count, pool.view.min_instances)):
                    self._warm_instance(pool.view.id)
            return
        pool_id = self.setup.pools[0].view.id
        for _ in range(count):
            self._warm_instance(pool_id)

    def _free_gpu(self, pool_id: int | None = None) -> int | None:
        """A free GPU of the pool's group (default: the first pool's), packed: on a node already paid
        for, the fullest such node first, so that other nodes can empty and be released; else the
        lowest-numbered free GPU."""
        group = self.group_of[self.setup.pools[0].view.id if pool_id is None else pool_id]
        taken = {i.gpu_id for i in self.instances.values() if i.occupies_device}
        free = [gpu for gpu in group.gpu_ids if gpu not in taken]
        if not free:
            return None
        per_node = self.setup.gpus_per_node
        free_on: dict[int, int] = defaultdict(int)
        for gpu in free:
            free_on[node_of(gpu, per_node)] += 1
        billed = {node for node in free_on if self._node_billed(node)}
        return min(free, key=lambda gpu: (node_of(gpu, per_node) not in billed, free_on[node_of(gpu, per_node)], gpu))

    def _node_billed(self, node: int) -> bool:
        """Whether the node is paid for now (``node_billed_now``: one of its GPUs taken, or a reserved node used)."""
        per_node = self.setup.gpus_per_node
        taken = any(
            i.occupied_since_s is not None and node_of(i.gpu_id, per_node) == node for i in self.instances.values()
        )
        used = node in self.nodes_used
        return node_billed_now(taken_on_node=taken, used_before=used, release=self.setup.node_release)

    def _new_instance(self, pool_id: int, gpu_id: int) -> _Instance:
        instance = _Instance(
            id=len(self.instances) + 1,
            pool_id=pool_id,
            gpu_id=gpu_id,
            core=EngineCore(self.engines[pool_id]),
            created_s=self.now,
            desired_changed_s=self.now,
        )
        self.instances[instance.id] = instance
        return instance

    def _warm_instance(self, pool_id: int) -> _Instance | None:
        """An instance that is already serving: the references' instant capacity."""
        gpu = self._free_gpu(pool_id)
        if gpu is None:
            return None
        instance = self._new_instance(pool_id, gpu)
        self._set_actual(instance, READY)
        instance.ready_s = self.now
        self._release_held()
        return instance

    def _set_actual(self, instance: _Instance, state: str) -> None:
        """Every state change goes through here, so billing follows the production holding states."""
        was_holding = instance.actual in self.holding and instance.held_since_s is not None
        now_holding = state in self.holding
        if was_holding and not now_holding:
            self._bill_close(instance, self.now)
        if now_holding and instance.held_since_s is None:
            instance.held_since_s = self.now
        if instance.asleep_since_s is not None and state != SLEEPING:
            self.sleeps.append((instance.id, instance.gpu_id, instance.asleep_since_s, self.now))
            instance.asleep_since_s = None
        elif state == SLEEPING and instance.asleep_since_s is None:
            instance.asleep_since_s = self.now
        instance.actual = state
        # Its node is paid while the instance takes its GPU as placement counts it (until its
        # process exits, or while it is still wanted: a failed start waiting for its restart).
        if instance.occupies_device and instance.occupied_since_s is None:
            instance.occupied_since_s = self.now
            self.nodes_used.add(node_of(instance.gpu_id, self.setup.gpus_per_node))
        elif not instance.occupies_device:
            self._hold_close(instance, self.now)
            jobs = self._jobs_on(instance.gpu_id) if self.batch is not None else []
            if jobs and not self._gpu_taken(instance.gpu_id):
                # The simulated fleet rents a card while an instance holds it: handed back, its jobs go too.
                for job in jobs:
                    reason = f"batch job {job.id} preempted and requeued: its card is handed back"
                    self._job_preempt(job, reason, CARD_RELEASE)
        self.peak = max(self.peak, sum(1 for i in self.instances.values() if i.held_since_s is not None))
        if len(self.pools) > 1:
            pool_id = instance.pool_id
            held = sum(1 for i in self.instances.values() if i.pool_id == pool_id and i.held_since_s is not None)
            self.pool_peak[pool_id] = max(self.pool_peak[pool_id], held)

    def _bill_close(self, instance: _Instance, end: float) -> None:
        if instance.held_since_s is not None:
            instance.billed_s += end - instance.held_since_s
            self.billed_runs[instance.pool_id].append((instance.held_since_s, end))
            instance.held_since_s = None

    def _hold_close(self, instance: _Instance, end: float) -> None:
        """End the instance's hold on its GPU, for the node bill."""
        if instance.occupied_since_s is not None:
            self.gpu_holds.append((instance.gpu_id, instance.occupied_since_s, end))
            self.hold_pools.append(instance.pool_id)
            instance.occupied_since_s = None

    def _jittered(self, seconds: float) -> float:
        spread = self.setup.start_jitter
        return seconds * (1 + self.random.uniform(-spread, spread)) if spread else seconds

    def _begin_start(self, instance: _Instance) -> None:
        """Start the container: a draw of the start-up model (``fleet.sim.startup``), with the node
        provisioned first where it is not paid for now."""
        instance.token += 1
        instance.starting_since_s = self.now
        fresh = not self._node_billed(node_of(instance.gpu_id, self.setup.gpus_per_node))
        self._set_actual(instance, STARTING)
        draw = start_draw(
            self.setup.cold_start,
            self.start_random,
            at_s=self.now,
            load_s=self._jittered(self.engines[instance.pool_id].cold_start_s),
            weight_bytes=self.weight_bytes[instance.pool_id],
            node_fresh=fresh,
        )
        instance.start = draw
        self.starts.append(draw)
        self.start_pools.append(instance.pool_id)
        self._push(self.now + draw.total_s, "ready", instance.id, instance.token)

    def _ready(self, instance: _Instance, token: int) -> None:
        if token != instance.token or instance.desired != RUNNING:
            return
        if instance.actual == FAILED:
            # The agent's reconciliation replaces a failed container of a wanted instance.
            self._begin_start(instance)
            return
        if instance.actual == STARTING and instance.start is not None and instance.start.fails:
            # The server exited: reported failed; it keeps its GPU (still desired running) until restarted.
            instance.token += 1
            self._set_actual(instance, FAILED)
            self._push(self.now + self.setup.cold_start.restart_after_s, "ready", instance.id, instance.token)
            return
        if instance.actual == STARTING and instance.starting_since_s is not None:
            self.cold_measured[instance.pool_id].append(self.now - instance.starting_since_s)
            self.cold_starts += 1
        elif instance.actual == WAKING:
            self.wakes += 1
            self.pool_wakes[instance.pool_id] += 1
        self._set_actual(instance, READY)
        instance.ready_s = self.now
        self._release_held()

    def _slept(self, instance: _Instance, token: int) -> None:
        if token == instance.token and instance.desired == SLEEPING:
            self._set_actual(instance, SLEEPING)

    def _stop(self, instance: _Instance) -> None:
        """Stop accepting requests; the container stops once what it holds has finished."""
        instance.token += 1
        if instance.core.running or instance.core.waiting:
            self._set_actual(instance, STOPPING)
        else:
            self._set_actual(instance, STOPPED)

    def _apply(self, action: Action) -> bool:
        """Apply one action as the services would: a claim on the generation (or count) it saw."""
        if isinstance(action, (StartBatchJob, PreemptBatchJob)):
            if not self._job_claim(action):
                return False
            self.decisions.append(Decision(self.now, action.kind, action.action, action.reason))
            return True
        if isinstance(action, LaunchInstance):
            active = [i for i in self.instances.values() if i.pool_id == action.pool_id and i.desired != STOPPED]
            # A GPU of another pool's group is refused as a taken one would be (placement, which
            # finds a pool's GPUs by its GPU model, never chooses one).
            if (
                len(active) != action.active_seen
                or self._gpu_taken(action.gpu_id)
                or action.gpu_id not in self.group_of[action.pool_id].gpu_ids
            ):
                return False
            instance = self._new_instance(action.pool_id, action.gpu_id)
            self._begin_start(instance)
        elif isinstance(action, DesireInstance):
            instance = self.instances[action.instance_id]
            if instance.generation != action.generation or instance.desired == action.state:
                return False
            self._desire(instance, action.state, action.kind)
        elif isinstance(action, PoolDecision):
            self.static_last[(action.pool_id, action.action)] = self.now
        else:
            return False
        self.decisions.append(Decision(self.now, action.kind, action.action, action.reason))
        if action.action in ("scale_out", "scale_in"):
            self.last_scale[(action.pool_id, action.action)] = self.now
            self.scale_moves[action.pool_id].append((self.now, action.action))
        return True

    def _gpu_taken(self, gpu_id: int) -> bool:
        return any(i.gpu_id == gpu_id and i.occupies_device for i in self.instances.values())

    def _desire(self, instance: _Instance, state: str, kind: str) -> None:
        previous = instance.desired
        instance.desired = state
        instance.generation += 1
        instance.desired_changed_s = self.now
        if state == STOPPED:
            self._stop(instance)
        elif state == SLEEPING:
            instance.token += 1
            self._push(self.now + self.engines[instance.pool_id].sleep_s, "slept", instance.id, instance.token)
        elif previous == SLEEPING and instance.actual in (SLEEPING, READY):
            instance.token += 1
            evicting = self._wake_evict(instance, kind)
            self._set_actual(instance, WAKING)
            wake_s = self.engines[instance.pool_id].wake_s + (self.batch.evict_s if evicting and self.batch else 0.0)
            self._push(self.now + wake_s, "ready", instance.id, instance.token)
        else:
            self._begin_start(instance)

    # -- batch work ----------------------------------------------------------------

    def _jobs_on(self, gpu_id: int) -> list[_Job]:
        """The jobs running on a card, newest first (the order a wake preempts them in: equal priorities)."""
        running = [job for job in self.jobs if job.state == JOB_RUNNING and job.gpu_id == gpu_id]
        return sorted(running, key=lambda job: (-job.started_s, -job.id))

    def _job_claim(self, action: StartBatchJob | PreemptBatchJob) -> bool:
        """Start or preempt a job as ``batch_job_start`` / ``batch_job_preempt`` do: a claim on its generation."""
        job = self.jobs[action.job_id - 1]
        if job.generation != action.generation:
            return False
        if isinstance(action, StartBatchJob):
            # Only a card an instance holds is rented, so co-location sees no other (``_memory_used``).
            if job.state not in JOB_WAITING or not self._gpu_taken(action.gpu_id):
                return False
            job.state, job.gpu_id, job.started_s = JOB_RUNNING, action.gpu_id, self.now
            job.generation += 1
            self.job_moves.append((job.id, self.now, action.gpu_id))
            assert self.batch is not None
            self._push(self.now + self.batch.run_s, "job", job.id, job.generation)
            return True
        if job.state != JOB_RUNNING:
            return False
        self._job_leave(job, JOB_PREEMPTED)
        return True

    def _job_leave(self, job: _Job, state: str) -> None:
        """A job's run ends, finished or preempted."""
        ran = self.now - job.started_s
        if state == JOB_DONE:
            self.job_done_s += ran
        else:
            self.job_lost_s += ran
            job.preemptions += 1
        job.state, job.gpu_id = state, None
        job.generation += 1
        self.job_moves.append((job.id, self.now, None))

    def _job_preempt(self, job: _Job, reason: str, kind: str) -> None:
        self._job_leave(job, JOB_PREEMPTED)
        self.decisions.append(Decision(self.now, kind, "preempt", reason))

    def _job_end(self, job_id: int, generation: int) -> None:
        job = self.jobs[job_id - 1]
        if job.generation == generation and job.state == JOB_RUNNING:
            self._job_leave(job, JOB_DONE)

    def _wake_evict(self, instance: _Instance, kind: str) -> bool:
        """Preempt the jobs a woken instance needs the memory of (``batch_jobs_vacate``, by
        ``colocate.wake_evictions``): whether any went."""
        jobs = self._jobs_on(instance.gpu_id)
        if not jobs:
            return False
        view = self.pools[instance.pool_id].view
        total = self.device_of[instance.gpu_id].memory_bytes
        assert self.batch is not None
        evicted = wake_evictions(
            memory_total_bytes=total,
            budgets_bytes=view.reservation_bytes(total),
            foreign_bytes=0,  # a simulated card holds only the simulation's instances and jobs
            exclusive=view.isolation == "exclusive",
            jobs=[(job.id, self.batch.memory_bytes) for job in jobs],
        )
        for job in jobs:
            if job.id in evicted:
                self._job_preempt(
                    job,
                    f"batch job {job.id} preempted and requeued: instance {instance.id} of pool {view.name} "
                    "is told to serve and takes back the memory it borrowed",
                    kind,
                )
        return bool(evicted)

    # -- requests -----------------------------------------------------------------

    def _groups(self, index: int) -> list[list[int]] | routing.ContextRefused:
        """The pools to try, in the tier fallback order of the request's RCF tier, as the gateway lists
        them (``routing.pool_groups_for``); its refusal where the request exceeds every pool's context.
        The answer depends on the request's token counts alone (the routing settings and pools are the
        run's), so it is worked out once per (prompt, output) pair and kept; it is never modified."""
        return self.groups_for(self.trace.requests[index])

    def refused_by_gateway(self, request: TraceRequest) -> bool:
        """Whether the gateway answers the request 400 at once (more tokens than any pool's context)."""
        return isinstance(self.groups_for(request), routing.ContextRefused)

    def groups_for(self, request: TraceRequest) -> list[list[int]] | routing.ContextRefused:
        """``_groups`` of any request with these token counts."""
        key = (request.prompt_tokens, request.output_tokens)
        known = self.groups_known.get(key)
        if known is not None:
            return known
        self.groups_known[key] = groups = self._groups_work(request)
        return groups

    def _groups_work(self, request: TraceRequest) -> list[list[int]] | routing.ContextRefused:
        settings = self.setup.routing
        tier = request_tier(request.prompt_tokens, request.output_tokens, settings)
        by_tier: dict[str, list[routing.PoolContext]] = defaultdict(list)
        for pool in self.setup.pools:
            limit = pool.view.max_model_len
            by_tier[pool.tier].append(routing.PoolContext(pool.view.id, sys.maxsize if limit is None else limit))
        return routing.pool_groups_for(
            tier=tier, tiers=by_tier, prompt_tokens=request.prompt_tokens, max_tokens=request.output_tokens
        )

    def _pick(self, groups: list[list[int]]) -> _Instance | None:
        """The gateway's pick (``Picker.pick``), on the simulated clock."""
        return self.picker.pick(groups, self._routable, now=self.now)

    def _routable(self, pool_id: int) -> list[_Instance]:
        """What the gateway's routing table lists: the pool's instances ready and still wanted running."""
        return [
            i for i in self.instances.values() if i.pool_id == pool_id and i.actual == READY and i.desired == RUNNING
        ]

    def _arrival(self, index: int) -> None:
        self.interval_arrivals += 1
        # ``_groups`` written out: this runs once per request of every run.
        request = self.trace.requests[index]
        groups = self.groups_known.get((request.prompt_tokens, request.output_tokens))
        if groups is None:
            groups = self.groups_for(request)
        if isinstance(groups, routing.ContextRefused):
            # The gateway answers 400 at once: no pool sees the request, and no one waits on it.
            self.refused.add(index)
            self.done += 1
            return
        if self.policy_mode:  # only the policies read the arrival history (pre-warm's ``request_times``)
            self.request_times[groups[0][0]].append(self._at(self.now))
        instance = self.picker.pick(groups, self._routable, now=self.now)  # ``_pick``
        if instance is not None:
            self._submit(instance, index)
            return
        if len(self.held) >= self.setup.gateway.max_held:
            self._fail(index)
            return
        self.cold[index] = True
        self.held.append(_Held(index, groups))
        self._push(self.now + self.setup.gateway.hold_timeout_s, "expire", index)
        self._wake(groups)
        self._pressure(groups[0][0])

    def _wake(self, groups: list[list[int]]) -> None:
        pool_id = groups[0][0]
        sent = self.wake_sent.get(pool_id)
        if sent is not None and self.now - sent < self.setup.gateway.wake_retry_s:
            return
        self.wake_sent[pool_id] = self.now
        if not self.policy_mode:
            return
        planned = placement.pool_wake_actions(
            self._snapshot(), pool_id=pool_id, kind="gateway", reason="gateway holds a request"
        )
        if not isinstance(planned, placement.PlacementRefused):
            self._apply(planned[0])

    def _pressure(self, pool_id: int) -> None:
        """The gateway's scale-out under pressure (``Gateway._pressure``): ``pressure_scale_out`` on its
        counters at each request, at most once per autoscale's scale-out cool-down, planned and
        applied as its database worker does (``pressure_actions``)."""
        if pool_id in self._autoscale_settings:
            settings = self._autoscale_settings[pool_id]
        else:  # looked up once per pool: a run's policy settings do not change
            config = self.setup.policies.get("autoscale") if self.policy_mode else None
            settings = self._autoscale_settings[pool_id] = config.for_pool(pool_id) if config is not None else None
        if settings is None:
            return
        cooldown = settings["scale_out_cooldown_s"]
        sent = self.scale_sent.get(pool_id)
        last = self.last_scale.get((pool_id, "scale_out"))
        if (sent is not None and self.now - sent < cooldown) or (last is not None and self.now - last < cooldown):
            return
        view = self.pools[pool_id].view
        # The gateway's counters in one pass over the instances (this runs once per request sent):
        # ready as ``_routable`` lists them, serving (desired running), active (not desired stopped).
        outstanding = self.picker.outstanding
        ready = serving = active = in_flight = 0
        for instance in self.instances.values():
            if instance.pool_id != pool_id:
                continue
            desired = instance.desired
            if desired == RUNNING:
                serving += 1
                if instance.actual == READY:
                    ready += 1
                    in_flight += outstanding.get(instance.id, 0)
            if desired != STOPPED:
                active += 1
        reason = pressure.pressure_scale_out(
            pool_name=view.name,
            max_num_seqs=view.max_num_seqs,
            util_band_high=view.util_band_high,
            ready=ready,
            serving=serving,
            active=active,
            max_instances=view.max_instances,
            outstanding=in_flight,
            held=sum(1 for held in self.held if held.groups[0][0] == pool_id),
        )
        if reason is None:
            return
        self.scale_sent[pool_id] = self.now
        snapshot, now = self._snapshot(), self._at(self.now)
        planned = pressure.pressure_actions(snapshot, pool_id=pool_id, settings=settings, now=now, reason=reason)
        for action in static_hold.static_guard(snapshot, self.setup.policies.get(static_hold.KIND), now, planned[:1]):
            self._apply(action)

    def _release_held(self) -> None:
        waiting, self.held = self.held, []
        for held in waiting:
            instance = self._pick(held.groups)
            if instance is None:
                self.held.append(held)
            else:
                self._submit(instance, held.index)

    def _expire(self, index: int) -> None:
        for position, held in enumerate(self.held):
            if held.index == index:
                del self.held[position]
                self._fail(index)
                return

    def _fail(self, index: int) -> None:
        self.cold[index] = self.cold[index] or bool(self.held)
        self.failed += 1
        self.done += 1
        if self.miss_limit is not None:
            self._stop_early()

    def _judge(self, finished: list[SimRequest]) -> None:
        """Count the finished requests outside the SLA (``miss_limit``), as ``SimResult.attainment`` would."""
        setup = self.setup
        e2e_s = math.inf if setup.e2e_sla_ms is None else setup.e2e_sla_ms / 1000
        per_1k = setup.sla_ms_per_1k_prompt_tokens
        for request in finished:
            assert request.first_token_s is not None and request.finished_s is not None
            ttft = request.first_token_s - request.arrival_s
            if request.finished_s - request.arrival_s > e2e_s:
                self.missed += 1
            elif per_1k > 0:
                self.missed += ttft * 1000 > ttft_bound_ms(setup.sla_ms, per_1k, request.prompt_tokens)
            else:
                self.missed += ttft > setup.sla_ms / 1000
        if self.missed > (self.miss_limit or 0):
            self._stop_early()

    def _stop_early(self) -> None:
        """The run misses the SLA whatever follows: end it (the event loop stops once all are done)."""
        self.stopped_early = True
        self.done = len(self.trace.requests)

    def _submit(self, instance: _Instance, index: int) -> None:
        request = self.trace.requests[index]
        instance.core.submit(
            SimRequest(str(index), request.arrival_s, request.prompt_tokens, request.output_tokens), self.now
        )
        outstanding = self.picker.outstanding
        outstanding[instance.id] = outstanding.get(instance.id, 0) + 1
        self.served_by[index] = instance.pool_id
        instance.last_request_s = self.now
        if self.policy_mode:  # only the policy run's gateway scales out under pressure (``_pressure``)
            self._pressure(instance.pool_id)
        if not instance.stepping:
            self._step_start(instance)

    def _step_start(self, instance: _Instance) -> None:
        """Run the engine step after step (``EngineCore.steps``) up to the next outside event, in one go.

        Until that event nothing can change the engine's batch, and nothing reads what it
        finished, so its steps run back to back here and one step end collects the requests
        they finished; the step that ends at or after the event (it started before it) runs too,
        and its requests are collected at its own end (``crossing_s``), after the event: what
        stepping one step end at a time does, in two step ends instead of one per step."""
        following, events, arrival_times = self.next_arrival, self.events, self.arrival_times
        horizon = events[0][0] if events else math.inf
        if following < len(arrival_times) and arrival_times[following] < horizon:
            horizon = arrival_times[following]
        # ``before``: the end of the last step that ends before the horizon; what the steps up to it
        # finished is taken out of the core now, so the step in flight past the horizon keeps its own.
        now = self.now
        end, before, finished = instance.core.advance(now, horizon)
        if finished:
            instance.finished_before += finished
        instance.stepping = stepping = end > now
        if stepping:
            if before is not None and end > before:
                instance.crossing_s = end
            self.sequence += 1
            heapq.heappush(self.step_ends, (end if before is None else before, self.sequence, instance.id))

    def _logs_of(
        self, pool_id: int
    ) -> tuple[list[tuple[float, float]], list[tuple[float, float]] | None, list[tuple[float, float, int]] | None]:
        """The pool's latency logs the policies read (TTFT always; end-to-end and per-request bounds where
        its settings judge them), looked up once per pool (the settings of a run's pools do not change)."""
        logs = self._logs.get(pool_id)
        if logs is None:
            view = self.pools[pool_id].view
            logs = self._logs[pool_id] = (
                self.ttft_log[pool_id],
                self.e2e_log[pool_id] if view.sla_e2e_latency_ms is not None else None,
                self.bound_log[pool_id] if view.sla_ms_per_1k_prompt_tokens > 0 else None,
            )
        return logs

    def _step_end(self, instance: _Instance) -> None:
        """Collect the requests the instance's steps finished by now, in the order they finished (those of
        a step in flight past now, ``crossing_s``, stay in the core until its end), then wait for that
        step or run the engine on. One body, no helper calls: it runs about twice a request."""
        finished, instance.finished_before = instance.finished_before, []
        if instance.crossing_s is None:
            finished += instance.core.pop_finished()
        if finished:
            first_token, finished_at = self.first_token, self.finished
            interval_ttft = self.interval_ttft
            # Only the policies read the logs (their windows), kept in time order to be cut by bisection.
            ttft_log: list[tuple[float, float]] | None = None
            e2e_log: list[tuple[float, float]] | None = None
            bound_log: list[tuple[float, float, int]] | None = None
            if self.policy_mode:
                ttft_log, e2e_log, bound_log = self._logs_of(instance.pool_id)
            for request in finished:
                index = int(request.id)
                first_s, finished_s = request.first_token_s, request.finished_s
                assert first_s is not None and finished_s is not None
                first_token[index] = first_s
                finished_at[index] = finished_s
                ttft = first_s - request.arrival_s
                if ttft_log is not None:
                    bisect.insort(ttft_log, (first_s, ttft))
                if e2e_log is not None:
                    bisect.insort(e2e_log, (finished_s, finished_s - request.arrival_s))
                if bound_log is not None:
                    bisect.insort(bound_log, (first_s, ttft * 1000, request.prompt_tokens))
                interval_ttft.append(ttft)
            self.picker.outstanding[instance.id] -= len(finished)
            self.done += len(finished)
            if self.miss_limit is not None:
                self._judge(finished)
        if instance.crossing_s is None:
            self._step_start(instance)
        else:
            self.sequence += 1
            heapq.heappush(self.step_ends, (instance.crossing_s, self.sequence, instance.id))
            instance.crossing_s = None
        if not instance.stepping and instance.actual == STOPPING:
            self._set_actual(instance, STOPPED)

    # -- telemetry and ticks ------------------------------------------------------------

    def _sample(self) -> None:
        """What an agent reports every interval: duty cycle and vLLM's running and waiting counts,
        KV-cache usage, and the prompt-token rate (from the ``prompt_tokens_total`` counter)."""
        since = self.now - REPORT_INTERVAL_S
        at = self._at(self.now)
        horizon = self._at(self.now - WINDOW_S * WINDOWS - REPORT_INTERVAL_S)
        for instance in self.instances.values():
            core = instance.core
            prompt_tokens = core.prompt_tokens_total - instance.prompt_tokens_reported
            instance.prompt_tokens_reported = core.prompt_tokens_total
            if instance.actual != READY:
                continue
            duty = core.busy_fraction(max(since, instance.ready_s or since), self.now)
            instance.samples.append(
                _Sample(
                    instance_id=instance.id,
                    at=at,
                    duty=duty,
                    requests_running=core.running,
                    requests_waiting=core.waiting,
                    kv_cache_usage=core.kv_usage,
                    prompt_tokens_rate=prompt_tokens / REPORT_INTERVAL_S,
                )
            )
            self.utilization.append(duty)
            while instance.samples and instance.samples[0].at < horizon:
                instance.samples.pop(0)

    def _tick(self) -> None:
        if self.policy_mode:
            self._evaluate()
        elif self.schedule is not None:
            self._follow_schedule()
        self._record_timeline()

    def _evaluate(self) -> None:
        """``policies_evaluate``'s loop on simulated state, its actions applied to the simulated fleet."""
        policies_run(
            configs=self.setup.policies,
            now=self._at(self.now),
            snapshot=self._snapshot,
            apply=self._apply,
            request_times=self._request_times,
            learner=self.traffic,
        )

    def _request_times(self, pool_ids: list[int], since: datetime, until: datetime) -> dict[int, list[datetime]]:
        """The gateway's arrival times per pool (kept in order) in [since, until)."""
        return {
            pool_id: times[bisect.bisect_left(times, since) : bisect.bisect_left(times, until)]
            for pool_id in pool_ids
            if (times := self.request_times.get(pool_id))
        }

    def _follow_schedule(self) -> None:
        assert self.schedule is not None
        interval = int(self.now // self.tick_s)
        wanted = self.schedule[interval] if interval < len(self.schedule) else 0
        pool_id = self.setup.pools[0].view.id
        serving = [i for i in self.instances.values() if i.desired == RUNNING]
        outstanding = self.picker.outstanding
        draining = sorted(serving, key=lambda i: (outstanding.get(i.id, 0), -i.id))[: max(0, len(serving) - wanted)]
        for instance in draining:
            instance.desired = STOPPED
            self._stop(instance)
        for _ in range(wanted - len(serving)):
            self._warm_instance(pool_id)

    def _record_timeline(self) -> None:
        # Sorted once for the three percentiles (``percentile_of`` sorts again, in one pass over sorted values).
        ttft = sorted(self.interval_ttft)
        self.timeline.append(
            TimelinePoint(
                t_s=self.now,
                arrivals_per_s=self.interval_arrivals / self.tick_s,
                serving=sum(1 for i in self.instances.values() if i.actual == READY and i.desired == RUNNING),
                billed=sum(1 for i in self.instances.values() if i.held_since_s is not None),
                gpu_hours=sum(
                    i.billed_s + (self.now - i.held_since_s if i.held_since_s is not None else 0)
                    for i in self.instances.values()
                )
                / 3600,
                ttft_p50_ms=percentile_of(ttft, 50) * 1000 if ttft else None,
                ttft_p95_ms=percentile_of(ttft, 95) * 1000 if ttft else None,
                ttft_p99_ms=percentile_of(ttft, 99) * 1000 if ttft else None,
            )
        )
        self.interval_arrivals = 0
        self.interval_ttft = []

    # -- the snapshot -------------------------------------------------------------------

    def _snapshot(self) -> FleetSnapshot:
        """The fleet as ``selectors.fleet_snapshot`` would build it from the agents' reports."""
        at = self._at(self.now)
        pools = tuple(self._pool_view(pool) for pool in self.pools.values())
        instances = tuple(self._instance_view(i) for i in self.instances.values())
        by_gpu = {i.gpu_id: i for i in self.instances.values() if i.occupies_device}
        gpus = tuple(self._gpu_view(gpu, by_gpu.get(gpu)) for group in self.gpu_groups for gpu in group.gpu_ids)
        jobs = tuple(self._job_view(job) for job in self.jobs if job.state != JOB_DONE)
        return FleetSnapshot(at=at, pools=pools, instances=instances, gpus=gpus, batch_jobs=jobs)

    def _job_view(self, job: _Job) -> BatchJobView:
        assert self.batch is not None
        return BatchJobView(
            id=job.id,
            state=job.state,
            generation=job.generation,
            memory_bytes=self.batch.memory_bytes,
            created_at=self.trace.start,
            gpu_id=job.gpu_id,
        )

    def _pool_view(self, pool: SimPool) -> PoolView:
        view = pool.view
        return self._static_view(
            replace(
                view,
                cold_start_s=cold_start_median(self.cold_measured.get(view.id, [])),
                last_scale_out_at=self._moment((view.id, "scale_out")),
                last_scale_in_at=self._moment((view.id, "scale_in")),
                scale_moves=tuple((self._at(t_s), action) for t_s, action in self.scale_moves.get(view.id, ())),
                windows=self._windows(view),
            )
        )

    def _static_view(self, view: PoolView) -> PoolView:
        """The static-spend guard's figures and state, as ``selectors.static_guard_fill`` reads them from
        the database: the pool's billed runs since its trailing window began, summed by ``held_hours``."""
        config = self.setup.policies.get(static_hold.KIND)
        replicas, settings = static_hold.replicas_of(config, view.id) if self.policy_mode else (0, None)
        if not replicas and not self.static_last:
            return view
        started = self.static_last.get((view.id, static_hold.HOLD_START))
        ended = self.static_last.get((view.id, static_hold.HOLD_END))
        refused = self.static_last.get((view.id, static_hold.REFUSE))
        released_at = self._at(ended) if ended is not None else None
        view = replace(
            view,
            static_held_since=self._at(started) if started is not None and (ended is None or started > ended) else None,
            static_released_at=released_at,
            static_refused_at=self._at(refused) if refused is not None else None,
        )
        if settings is None or not replicas:
            return view
        now = self._at(self.now)
        start = static_hold.window_start(
            now=now, hours=settings["window_hours"], since=self.trace.start, released_at=released_at
        )
        runs = self.billed_runs[view.id]
        horizon = self.now - settings["window_hours"] * 3600
        runs[:] = [run for run in runs if run[1] > horizon]
        closed = [(self._at(first), self._at(last)) for first, last in runs]
        still = [
            (self._at(i.held_since_s), None)
            for i in self.instances.values()
            if i.pool_id == view.id and i.held_since_s is not None
        ]
        paid = static_hold.held_hours([*closed, *still], since=start, until=now)
        return replace(view, static_window_start=start, static_paid_hours=paid)

    def _moment(self, key: tuple[int, str]) -> datetime | None:
        return self._at(self.last_scale[key]) if key in self.last_scale else None

    def _windows(self, view: PoolView) -> tuple[PoolWindow, ...]:
        """``pool_windows`` over the serving instances' reports, each carrying its GPU's duty cycle."""
        serving = [i for i in self.instances.values() if i.pool_id == view.id and i.desired == RUNNING]
        samples = [s for i in serving for s in i.samples]
        return pool_windows(
            now=self._at(self.now),
            samples=samples,
            duty=[(s.at, s.duty) for s in samples],
            max_num_seqs=view.max_num_seqs,
            latency=lambda start, end, mine: self._window_latency(view, start, end),
            e2e_latency=(
                (lambda start, end, mine: self._window_latency(view, start, end, self.e2e_log, E2E_BUCKETS))
                if view.sla_e2e_latency_ms is not None
                else None
            ),
            over_bound=(
                (lambda start, end: self._window_over_bound(view, start, end))
                if view.sla_ms_per_1k_prompt_tokens > 0
                else None
            ),
        )

    def _window_over_bound(self, view: PoolView, start: datetime, end: datetime) -> float | None:
        """The share of the requests whose first token came in the window over their own TTFT bound."""
        log = self.bound_log[view.id]
        del log[: bisect.bisect_left(log, (self.now - WINDOW_S * WINDOWS - 60,))]
        low, high = (start - self.trace.start).total_seconds(), (end - self.trace.start).total_seconds()
        judged = (
            (ttft_ms, tokens)
            for _, ttft_ms, tokens in log[bisect.bisect_left(log, (low,)) : bisect.bisect_left(log, (high,))]
        )
        return over_bound_share(judged, view.sla_latency_ms, view.sla_ms_per_1k_prompt_tokens)

    def _window_latency(
        self,
        view: PoolView,
        start: datetime,
        end: datetime,
        logs: Mapping[int, list[tuple[float, float]]] | None = None,
        buckets: Sequence[float] = TTFT_BUCKETS,
    ) -> float | None:
        """The SLA percentile of the time to first token of the requests whose first token came in the window
        (of the end-to-end latency of those that finished in it, given that log and vLLM's buckets for it)."""
        log = (self.ttft_log if logs is None else logs)[view.id]
        # Kept in time order (``_step_end``): what is too old to be in any window is cut, the window bisected.
        horizon = self.now - WINDOW_S * WINDOWS
        del log[: bisect.bisect_left(log, (horizon - 60,))]
        low, high = (start - self.trace.start).total_seconds(), (end - self.trace.start).total_seconds()
        first, last = bisect.bisect_left(log, (low,)), bisect.bisect_left(log, (high,))
        # A window is read at each tick until it is six windows old. Its requests are only ever added (a
        # request can be logged after a tick that read its window) and the cut above is older than any
        # window, so the same number of them is the same requests, and the same answer.
        key = (view.id, logs is None, view.sla_percentile, low, high)
        known = self.window_latency_known.get(key)
        if known is not None and known[0] == last - first:
            return known[1]
        ttfts = [value for _, value in log[first:last]]
        # Read as production reads the agents' reports: vLLM's TTFT buckets, then ``pool_latency``.
        seconds = pool_latency([histogram_observe(ttfts, buckets)], view.sla_percentile)
        latency = None if seconds is None else seconds * 1000
        if known is None and len(self.window_latency_known) >= 4096:
            # Older windows are never read again: forget them all now and then.
            self.window_latency_known = {k: v for k, v in self.window_latency_known.items() if k[3] >= horizon}
        self.window_latency_known[key] = (last - first, latency)
        return latency

    def _instance_view(self, instance: _Instance) -> InstanceView:
        """Running and waiting counts come from the agent's latest report, as in production."""
        latest = (
            instance.samples[-1]
            if instance.samples and instance.samples[-1].at >= self._at(self.now - SAMPLE_FRESH_S)
            else None
        )
        return InstanceView(
            id=instance.id,
            pool_id=instance.pool_id,
            desired_state=instance.desired,
            actual_state=instance.actual if instance.actual != WAKING else SLEEPING,
            generation=instance.generation,
            created_at=self._at(instance.created_s),
            gpu_id=instance.gpu_id,
            ready_at=self._at(instance.ready_s) if instance.ready_s is not None else None,
            last_request_at=self._at(instance.last_request_s) if instance.last_request_s is not None else None,
            desired_changed_at=self._at(instance.desired_changed_s) if instance.desired_changed_s is not None else None,
            requests_running=float(latest.requests_running) if latest else None,
            requests_waiting=float(latest.requests_waiting) if latest else None,
        )

    def _gpu_view(self, gpu: int, instance: _Instance | None) -> GpuView:
        duty = instance.samples[-1].duty * 100 if instance is not None and instance.samples else 0.0
        node = node_of(gpu, self.setup.gpus_per_node)
        device = self.device_of[gpu]
        return GpuView(
            id=gpu,
            node_id=node,
            uuid=f"GPU-simulated-{gpu}",
            model_name=device.device,
            memory_total_bytes=device.memory_bytes,
            node_name=f"simulated-{node}",
            memory_used_bytes=self._memory_used(gpu, instance),
            utilization_pct=duty,
        )

    def _memory_used(self, gpu: int, instance: _Instance | None) -> int | None:
        """What NVML would read as used on a rented card (its instance's budget, ``ASLEEP_KEEPS`` of it
        asleep, and its jobs); None without batch work (nothing reads it) and on a card no instance holds
        (the simulated fleet does not rent it, so batch work never goes there)."""
        if self.batch is None or instance is None:
            return None
        budget = self.pools[instance.pool_id].view.reservation_bytes(self.device_of[gpu].memory_bytes)
        kept = int(budget * ASLEEP_KEEPS) if instance.actual == SLEEPING else budget
        return kept + len(self._jobs_on(gpu)) * self.batch.memory_bytes


def _weight_bytes(engine: EngineModel) -> int:
    """The served model's weights, as the VRAM estimator counts them (what a start downloads)."""
    estimate = vram_estimate_for(PROFILES[engine.profile])
    return estimate.weight_bytes if estimate is not None else 0
