"""What a simulation runs: the fleet's GPUs and pools, the policies' settings, the SLA and the
engine model, built as the admin would validate them (``setup_build``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fleet import catalog, schedules
from fleet.gateway.config import GatewayConfig
from fleet.policies import routing
from fleet.policies.settings import SCHEMAS, policy_settings_validate
from fleet.policies.snapshot import PolicyConfig, PoolView
from fleet.policies.vram import vram_estimate_for
from fleet.sim.engine import GPU_FACTS, PROFILES, EngineModel
from fleet.sim.startup import ColdStartModel


def request_tier(prompt_tokens: int, output_tokens: int, settings: routing.RoutingSettings) -> str:
    """The RCF tier the gateway gives a trace request (``routing.rcf_compute``, ``routing.tier_for``).

    A trace records token counts, not text, so no content feature is set (weights x1), and the
    output tokens stand in for the ``max_tokens`` asked for. The simulator routes by it and the
    tiered benchmark splits traces by it (``fleet.sim.tiers``)."""
    rcf = routing.rcf_compute(
        prompt_tokens=prompt_tokens,
        max_tokens=output_tokens,
        features=routing.Features(code_block=False, code_keywords=False, math=False),
        settings=settings,
    )
    return routing.tier_for(rcf, settings)


def tick_period_s() -> float:
    """The production evaluation period (the ``policies_evaluate`` periodic task)."""
    return float(next(every for task, every, _ in schedules.PERIODIC_TASKS if task == schedules.EVALUATE_TASK))


def policy_configs_build(overrides: Mapping[str, Mapping[str, Any] | None] | None = None) -> dict[str, PolicyConfig]:
    """Fleet-wide configs for every kind: defaults, overridden per kind; ``None`` disables one."""
    overrides = overrides or {}
    configs = {}
    for kind in SCHEMAS:
        values = overrides.get(kind, {})
        fleet = None if values is None else policy_settings_validate(kind=kind, settings=dict(values))
        configs[kind] = PolicyConfig(kind=kind, fleet=fleet)
    return configs


@dataclass(frozen=True)
class SimPool:
    """A pool as the simulator runs it: the policies' view of it plus its routing tier.

    By default a pool places its instances on the setup's GPUs and they run the setup's engine
    model. With ``gpus`` set it has GPUs of its own (``gpu_groups`` numbers them), running its
    own ``engine`` (default the setup's), reporting ``device`` (default the catalogue's name of
    the engine's GPU; a MIG slice names its profile) with ``device_memory_gib`` of memory
    (default the engine GPU's), paid ``price_per_gpu_hour`` per device-hour (None: unpriced)."""

    view: PoolView
    tier: str = "L"
    engine: EngineModel | None = None
    gpus: int | None = None
    device: str = ""
    device_memory_gib: float | None = None
    price_per_gpu_hour: Decimal | None = None


@dataclass(frozen=True)
class BatchLoad:
    """Batch work queued from the trace's start for the co-location policy (``fleet.policies.colocate``)
    to place: ``jobs`` jobs, each needing ``memory_gib`` of GPU memory and ``run_s`` seconds on a card to
    finish. A preempted job is requeued and starts over, as production's are (a ``BatchJob`` has no
    checkpoint). A wake that preempts jobs waits ``evict_s`` for them to leave its card before it
    reloads the weights (the agent stops a card's job containers before it wakes a server)."""

    jobs: int
    memory_gib: float
    run_s: float
    evict_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"batch jobs must be a whole number of at least 1, got {self.jobs!r}")
        for name in ("memory_gib", "run_s", "evict_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"batch {name} must be a number, got {value!r}")
        if self.memory_gib <= 0 or self.run_s <= 0:
            raise ValueError(
                f"batch memory_gib and run_s must be above 0, got {self.memory_gib:g} GiB and {self.run_s:g} s"
            )
        if self.evict_s < 0:
            raise ValueError(f"batch evict_s must be 0 or more, got {self.evict_s:g}")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * catalog.GIB)


def batch_load_build(values: Mapping[str, Any]) -> BatchLoad:
    """A ``BatchLoad`` from a settings section (``{"jobs": 40, "memory_gib": 20, "run_s": 1800}``)."""
    known = {"jobs", "memory_gib", "run_s", "evict_s"}
    if not isinstance(values, Mapping):
        raise ValueError(f"the batch section must be an object with {', '.join(sorted(known))}")
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown batch settings {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
    missing = {"jobs", "memory_gib", "run_s"} - set(values)
    if missing:
        raise ValueError(f"the batch section needs {', '.join(sorted(missing))}")
    return BatchLoad(**values)


@dataclass(frozen=True)
class SimSetup:
    # The GPUs and engine model of every pool without GPUs of its own (``SimPool.gpus``, ``gpu_groups``).
    engine: EngineModel
    gpus: int
    pools: tuple[SimPool, ...]
    policies: Mapping[str, PolicyConfig]
    routing: routing.RoutingSettings = field(default_factory=routing.RoutingSettings.defaults)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    sleeping_holds_gpu: bool = True
    seed: int = 0
    start_jitter: float = 0.1
    sla_ms: float = 500.0
    sla_target: float = 0.999
    # An end-to-end bound beside the first-token one: a request is within the SLA only if it meets both.
    e2e_sla_ms: float | None = None
    # Lets the first-token bound grow with the prompt: ``sla_ms`` plus this per 1,000 prompt tokens
    # (``agents.histograms.ttft_bound_ms``); 0: one flat bound.
    sla_ms_per_1k_prompt_tokens: float = 0.0
    # Billing by the node (``fleet.sim.billing``): GPUs per rented node, and whether a node
    # whose GPUs are all free is released (else paid from its first use to the end).
    gpus_per_node: int = 1
    node_release: bool = True
    # What a start has to do and how long each part takes (``fleet.sim.startup``).
    cold_start: ColdStartModel = field(default_factory=ColdStartModel)
    # Batch work for co-location to place on the memory sleeping instances lend (policy runs only); None: none.
    batch: BatchLoad | None = None


def pool_view_default(*, engine: EngineModel, gpus: int, **fields: Any) -> PoolView:
    """One exclusive pool of the engine's profile that may use every GPU."""
    profile = PROFILES[engine.profile]
    estimate = vram_estimate_for(profile)
    base: dict[str, Any] = dict(
        id=1,
        name="simulated",
        isolation="exclusive",
        max_instances=gpus,
        max_num_seqs=engine.max_num_seqs,
        max_model_len=profile.max_model_len,
        estimate=estimate,
    )
    return PoolView(**{**base, **fields})


def setup_build(
    *,
    engine: EngineModel,
    gpus: int,
    values: Mapping[str, Any] | None = None,
    seed: int = 0,
    sla_ms: float = 500.0,
    sla_target: float = 0.999,
    e2e_sla_ms: float | None = None,
    sla_ms_per_1k_prompt_tokens: float = 0.0,
) -> SimSetup:
    """A one-pool setup from a settings mapping: ``{"pool": {...PoolView fields}, "policies":
    {kind: {...} | null}, "routing": {...}, "batch": {...BatchLoad fields}}``; policy settings are
    validated as the admin does."""
    values = values or {}
    unknown = set(values) - {"pool", "policies", "routing", "batch"}
    if unknown:
        raise ValueError(
            f"unknown settings sections {', '.join(sorted(unknown))}; expected pool, policies, routing, batch"
        )
    if sla_ms_per_1k_prompt_tokens < 0:
        raise ValueError(f"the SLA's ms per 1k prompt tokens must be 0 or more, got {sla_ms_per_1k_prompt_tokens:g}")
    return SimSetup(
        engine=engine,
        gpus=gpus,
        pools=(SimPool(pool_view_default(engine=engine, gpus=gpus, **values.get("pool", {}))),),
        policies=policy_configs_build(values.get("policies", {})),
        routing=routing.RoutingSettings.from_settings(
            policy_settings_validate(kind="routing", settings=dict(values.get("routing", {})))
        ),
        seed=seed,
        sla_ms=sla_ms,
        sla_target=sla_target,
        e2e_sla_ms=e2e_sla_ms,
        sla_ms_per_1k_prompt_tokens=sla_ms_per_1k_prompt_tokens,
        batch=batch_load_build(values["batch"]) if values.get("batch") is not None else None,
    )


@dataclass(frozen=True)
class GpuGroup:
    """GPUs ``first`` .. ``first + count - 1`` of one device, the engine model they run and the pools
    that place instances on them (``gpu_groups``)."""

    first: int
    count: int
    engine: EngineModel
    device: str
    memory_bytes: int
    pool_ids: tuple[int, ...]

    @property
    def gpu_ids(self) -> range:
        return range(self.first, self.first + self.count)


def catalog_gpu_name(engine: EngineModel) -> str:
    """The name NVML would report for the engine's GPU family and memory size."""
    memory = GPU_FACTS[engine.gpu_model].memory_gib
    for spec in catalog.GPUS:
        if engine.gpu_model.upper() in spec.name.upper() and spec.memory_gib == memory:
            return spec.name
    return f"NVIDIA {engine.gpu_model}"


def gpu_groups(setup: SimSetup) -> tuple[GpuGroup, ...]:
    """The fleet's GPUs, numbered from 1: first the setup's own ``gpus`` (its engine, shared by every
    pool without GPUs of its own; left out where every pool has its own), then each pool's own in
    the setup's order, each group starting on a fresh node (``gpus_per_node``), so no node mixes
    devices and a group's nodes are billed to it alone.

    Where there is more than one group, each group's device must have a name of its own: the pools
    find their GPUs as production placement does, by ``PoolView.gpu_model`` (the simulator sets it
    to the group's device); a pool that already names another device is refused."""
    per_node = setup.gpus_per_node
    if per_node < 1:
        raise ValueError(f"gpus_per_node must be at least 1, not {per_node}")
    shared = tuple(pool.view.id for pool in setup.pools if pool.gpus is None)
    specs: list[tuple[int, EngineModel, str, float, tuple[int, ...]]] = []
    if shared or not setup.pools:
        specs.append((setup.gpus, setup.engine, "", GPU_FACTS[setup.engine.gpu_model].memory_gib, shared))
    for pool in setup.pools:
        if pool.gpus is None:
            if pool.engine is not None or pool.device or pool.device_memory_gib is not None:
                raise ValueError(f"pool {pool.view.name}: an engine or device of its own needs GPUs of its own (gpus)")
            continue
        if pool.gpus < 0:
            raise ValueError(f"pool {pool.view.name}: gpus must be 0 or more, not {pool.gpus}")
        engine = pool.engine or setup.engine
        memory = GPU_FACTS[engine.gpu_model].memory_gib if pool.device_memory_gib is None else pool.device_memory_gib
        specs.append((pool.gpus, engine, pool.device, memory, (pool.view.id,)))
    groups: list[GpuGroup] = []
    first = 1
    for count, engine, device, memory_gib, pool_ids in specs:
        groups.append(
            GpuGroup(
                first=first,
                count=count,
                engine=engine,
                device=device or catalog_gpu_name(engine),
                memory_bytes=int(memory_gib * catalog.GIB),
                pool_ids=pool_ids,
            )
        )
        first += -(-count // per_node) * per_node
    if len(groups) > 1:
        names = [group.device for group in groups]
        if len(set(names)) != len(names):
            raise ValueError(
                f"GPU groups need devices of distinct names (pools find their GPUs by it), got {', '.join(names)}"
            )
        wanted = {pool_id: group.device for group in groups for pool_id in group.pool_ids}
        for pool in setup.pools:
            if pool.view.gpu_model and pool.view.gpu_model != wanted[pool.view.id]:
                raise ValueError(
                    f"pool {pool.view.name} wants {pool.view.gpu_model!r} but its GPUs are {wanted[pool.view.id]!r}"
                )
    return tuple(groups)
