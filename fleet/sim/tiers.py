"""The whole method in the benchmark: requests split into RCF tiers, each tier its own pool on its own GPU type.

The gateway routes a request by its RCF (``routing.rcf_compute``, ``routing.tier_for``) to the
S, M or L pool; the method puts S on exclusive H100s, M on MIG slices and L on cheaper cards.
Here a trace is split by the same function (``setup.request_tier``, which the simulator routes
by) into one sub-trace per tier, and each tier is compared (``compare.compare``: policy, static
and oracle) as its own pool on its own GPU type, priced per GPU-hour from the panel's presets.
The reference it is judged against is the fleet the method replaces: one always-on pool of
H100s serving every request, sized for the peak (``compare.static_search`` on the whole trace).

**Apart and together.** Each tier is compared apart (``tier_compare``: policy, static and oracle on
its own sub-trace and pool), and the tiers are also run **together** (``together_run``): one
simulation of all three pools, each on GPUs of its own with its own engine model, device and price
(``SimPool.engine``, ``gpus``, ``device``, ``price_per_gpu_hour``), every request routed as the
gateway routes it, so a request whose tier's pool has no ready instance goes to the next tier's in
``routing.FALLBACK`` order (``Picker.pick``), and each pool's share of the run reported apart
(``Simulation.pool_results``: the requests its instances served, its GPU-hours, the nodes its GPUs
kept paid, its cold starts). The gateway falls back only where a pool has no ready instance (a
busy one still takes the request): apart, such a request waits while its pool wakes, which makes the
apart figures pessimistic where another tier's warm instance could have served it, and leaves out
the load those requests put on that tier. Together, a request's own tier's pool records its arrival
(pre-warm's history) and is the one the gateway wakes while it is held; the pool that serves it
counts it in its latency windows and its pressure check. What the run together does not have is a
static fleet or oracle of its own: the static reference stays one always-on H100 pool sized for the
peak (``static_reference``), the oracle is the sum of the tiers' bounds apart, and each pool starts
from its tier's static fleet apart (``together_initial``), as its policy run apart does. The split
itself is exact: the same requests, the same tier as the gateway gives them.

**MIG.** A MIG slice is modelled as the engine model on a share of the card
(``fleet.demo.engine_server.device_model``, which the simulated engine server runs on a slice):
prefill at the slice's share of compute (``3g``: 3 of 7 compute slices), decode at its share of
memory bandwidth, a KV cache from the slice's memory. Each simulated "GPU" of an M pool is one
slice; its price is the card's preset price divided by the slices of that profile one card
holds (two ``3g.40gb`` per H100). The simulated placement sees whole cards, so an M pool is run
as an exclusive pool of slices, each reported as a device of its own (``tier_device``: the card's
name with the profile, the slice's memory): what MIG placement would refuse (a card's other slices
taken by another pool) is not modelled, and the S pool's H100s and the M pool's slices are separate
GPUs, never one card cut both ways.

**Each tier's SLA is its pool's.** A tier is judged by the first-token bound its own pool states
(``PoolView.sla_latency_ms`` plus ``sla_ms_per_1k_prompt_tokens`` per 1,000 prompt tokens, each
request against its own ``agents.histograms.ttft_bound_ms``; ``tier_bound``), the same bound for its
policy, static and oracle fleets apart and for its pool's share of the run together, so a long-context
tier may allow long prefills without the yardstick of the other tiers moving. A spec may state its
bound instead (``TierSpec.sla_ms``, ``sla_ms_per_1k_prompt_tokens``): the benchmark's long-prompt mix
does, to judge a pool that is not told of the allowance by it.
"""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from fleet import catalog
from fleet.demo.engine_server import device_model
from fleet.policies import routing
from fleet.policies.snapshot import PolicyConfig, PoolView
from fleet.sim.compare import Comparison, Progress, compare, price_preset, static_search
from fleet.sim.engine import GPU_FACTS, PROFILES, EngineModel, engine_model_for, kv_cache_tokens_for
from fleet.sim.result import SimResult
from fleet.sim.setup import SimPool, SimSetup, catalog_gpu_name, request_tier, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import RateWindow, Trace, arrivals_from_rates, trace_from_arrivals

TIERS = tuple(routing.FALLBACK)  # S, M, L
MIG_COMPUTE_SLICES = 7  # an H100's or A100's compute slices (``catalog.mig_slices`` counts a profile's)
MIG_MEMORY = re.compile(r"\.(\d+)gb$")


@dataclass(frozen=True)
class TierSpec:
    """One tier's pool: its GPU type (a slice of it where ``mig_profile`` is set), how many it may
    use, its settings (``setup_build`` values) and SLA (None: the bound its pool states, ``tier_bound``);
    the price comes from the panel's presets unless stated."""

    tier: str
    gpu: str
    gpus: int = 8
    values: Mapping[str, Any] = field(default_factory=dict)
    mig_profile: str | None = None
    price_per_gpu_hour: Decimal | None = None
    sla_ms: float | None = None
    sla_ms_per_1k_prompt_tokens: float | None = None


def tier_bound(spec: TierSpec) -> tuple[float, float]:
    """The first-token bound the tier is judged by, ``(ms, ms per 1,000 prompt tokens)``: what the spec
    states, else what its pool states (``pool.sla_latency_ms``, ``pool.sla_ms_per_1k_prompt_tokens``,
    ``PoolView``'s defaults where unset). One figure for the tier's every fleet, and the one its pool's
    policies aim at, so the benchmark never judges a pool by a bound it was not given."""
    pool = spec.values.get("pool", {})
    ms = spec.sla_ms if spec.sla_ms is not None else float(pool.get("sla_latency_ms", PoolView.sla_latency_ms))
    per_1k = spec.sla_ms_per_1k_prompt_tokens
    if per_1k is None:
        per_1k = float(pool.get("sla_ms_per_1k_prompt_tokens", PoolView.sla_ms_per_1k_prompt_tokens))
    return ms, per_1k


def mig_shares(gpu: str, profile: str) -> tuple[float, float, int]:
    """A MIG slice's share of the card's compute and of its memory, and how many such slices one
    card holds: ``3g.40gb`` on an 80 GB H100 is 3/7 of compute, half the memory, two a card."""
    slices = catalog.mig_slices(profile)
    match = MIG_MEMORY.search(profile)
    if match is None:
        raise ValueError(f"no memory size in MIG profile {profile!r}")
    memory = GPU_FACTS[engine_model_for(gpu).gpu_model].memory_gib
    slice_gib = int(match.group(1))
    return slices / MIG_COMPUTE_SLICES, slice_gib / memory, min(MIG_COMPUTE_SLICES // slices, memory // slice_gib)


def tier_engine(spec: TierSpec) -> EngineModel:
    """The engine model of the tier's device: the card's, or its MIG slice's (``device_model``)."""
    engine = engine_model_for(spec.gpu)
    if spec.mig_profile is None:
        return engine
    compute, memory, _ = mig_shares(spec.gpu, spec.mig_profile)
    sliced = device_model(engine, compute_share=compute, bandwidth_share=memory)
    memory_gib = GPU_FACTS[engine.gpu_model].memory_gib * memory
    return replace(sliced, kv_cache_tokens=kv_cache_tokens_for(memory_gib=memory_gib, profile=PROFILES[engine.profile]))


def tier_price(spec: TierSpec) -> Decimal | None:
    """Price per device-hour: as stated, else the preset's per GPU-hour, divided among a card's slices."""
    if spec.price_per_gpu_hour is not None:
        return spec.price_per_gpu_hour
    price = price_preset(spec.gpu)
    if price is None or spec.mig_profile is None:
        return price
    return price / mig_shares(spec.gpu, spec.mig_profile)[2]


def tier_device(spec: TierSpec) -> tuple[str, float | None]:
    """The name and memory (GiB; None: the card's) the tier's devices report: the card's catalogue
    name, a MIG slice's with its profile and the slice's memory."""
    engine = engine_model_for(spec.gpu)
    if spec.mig_profile is None:
        return catalog_gpu_name(engine), None
    _, memory, _ = mig_shares(spec.gpu, spec.mig_profile)
    return f"{catalog_gpu_name(engine)} MIG {spec.mig_profile}", GPU_FACTS[engine.gpu_model].memory_gib * memory


def tier_setup(spec: TierSpec, *, seed: int = 0) -> SimSetup:
    """The tier's one-pool setup (``setup_build``) with the pool in the tier, so the simulator routes
    the tier's requests to it first. An autoscale prefill capacity in the settings is the H100's:
    it is scaled to the tier's device (in a copy: the spec's settings, which other tiers' specs may
    share, are left as they were)."""
    engine = tier_engine(spec)
    sla_ms, per_1k = tier_bound(spec)
    values: dict[str, Any] = copy.deepcopy(dict(spec.values))
    autoscale = values.get("policies", {}).get("autoscale")
    if autoscale and autoscale.get("prefill_tokens_per_s"):
        reference = engine_model_for("H100").prefill_tokens_per_s
        autoscale["prefill_tokens_per_s"] = round(
            autoscale["prefill_tokens_per_s"] * engine.prefill_tokens_per_s / reference
        )
    setup = setup_build(
        engine=engine,
        gpus=spec.gpus,
        values=values,
        seed=seed,
        sla_ms=sla_ms,
        sla_ms_per_1k_prompt_tokens=per_1k,
    )
    pools = tuple(SimPool(view=replace(pool.view, name=f"tier {spec.tier}"), tier=spec.tier) for pool in setup.pools)
    return replace(setup, pools=pools)


def tier_split(trace: Trace, settings: routing.RoutingSettings | None = None) -> dict[str, Trace]:
    """The trace's requests by RCF tier (``request_tier``, as the gateway routes them), each tier a
    trace of its own on the same clock; every tier present, empty where no request falls in it."""
    settings = settings or routing.RoutingSettings.defaults()
    members: dict[str, list[Any]] = {tier: [] for tier in TIERS}
    for request in trace.requests:
        members[request_tier(request.prompt_tokens, request.output_tokens, settings)].append(request)
    return {
        tier: Trace(name=f"{trace.name} tier {tier}", start=trace.start, requests=tuple(requests))
        for tier, requests in members.items()
    }


def _money(hours: float, price: Decimal | None) -> Decimal:
    return Decimal(0) if price is None else Decimal(str(hours)) * price


@dataclass(frozen=True)
class TierResult:
    """One tier's comparison (None where no request fell in the tier) and its device's price."""

    spec: TierSpec
    requests: int
    price: Decimal | None
    comparison: Comparison | None

    def spend(self, which: str) -> Decimal:
        """What the tier's policy, static or oracle fleet costs: paid GPU-hours x price (the oracle:
        its bound's GPU-hours x price)."""
        return _money(self.hours(which), self.price)

    def hours(self, which: str) -> float:
        """Device-hours paid by the tier's ``policy`` or ``static`` fleet, or the ``oracle`` bound's."""
        if self.comparison is None:
            return 0.0
        if which == "oracle":
            return self.comparison.oracle_bound.gpu_hours
        result: SimResult = getattr(self.comparison, which)
        return result.paid_gpu_hours


@dataclass(frozen=True)
class TieredComparison:
    """Every tier's comparison and the static fleet the method replaces (one always-on H100 pool)."""

    trace: str
    requests: int
    tiers: tuple[TierResult, ...]
    static: SimResult
    static_instances: int
    static_meets_sla: bool
    static_gpu: str
    static_price: Decimal | None
    # The same tiers in one simulation with the gateway's fallback (``together_run``); None: not run.
    together: TogetherResult | None = None

    def spend(self, which: str) -> Decimal:
        """The tiered fleets' spend summed over the tiers (``TierResult.spend``); ``together``: the tiers'
        pools run in one simulation (``TogetherResult.spend``)."""
        if which == "together":
            if self.together is None:
                raise ValueError(f"the tiers of {self.trace} were not run together")
            return self.together.spend()
        return sum((tier.spend(which) for tier in self.tiers), Decimal(0))

    @property
    def static_spend(self) -> Decimal:
        """The one always-on pool's bill: paid GPU-hours x its GPU's price."""
        return _money(self.static.paid_gpu_hours, self.static_price)

    def saved(self, which: str = "policy") -> float:
        """Share of the static fleet's bill the tiered ``which`` fleet (``spend``) saves, in money."""
        static = self.static_spend
        return float(1 - self.spend(which) / static) if static else 0.0

    @property
    def efficiency(self) -> float:
        """Oracle bound / policy over all tiers, in money (each tier's device-hours weighed by its price)."""
        policy = sum((_money(t.comparison.policy.gpu_hours, t.price) for t in self.tiers if t.comparison), Decimal(0))
        return float(self.spend("oracle") / policy) if policy else 0.0

    @property
    def attainment(self) -> float:
        """Share of all judged requests within their tier's SLA (``attainment_weighed`` over the tiers'
        policy runs)."""
        return attainment_weighed(t.comparison.policy for t in self.tiers if t.comparison)


def attainment_weighed(results: Iterable[SimResult]) -> float:
    """Share of the results' judged requests within each one's own SLA: each ``SimResult.attainment``
    weighed by the requests it judged (1.0 where none was), so parts judged by different bounds add up."""
    judged = [(len(result.ttft_s), result.attainment) for result in results]
    total = sum(n for n, _ in judged)
    return sum(n * share for n, share in judged) / total if total else 1.0


def tiered_from(
    *,
    trace: Trace,
    specs: Sequence[TierSpec],
    comparisons: Mapping[str, Comparison | None],
    static: tuple[int, bool, list[SimResult]],
    static_spec: TierSpec,
    together: TogetherResult | None = None,
) -> TieredComparison:
    """Assemble the tiered comparison from each tier's ``compare``, the whole trace's ``static_search`` and
    the tiers run together (computed apart so a benchmark can run them side by side)."""
    if sorted(spec.tier for spec in specs) != sorted(TIERS):
        raise ValueError(f"one spec per tier {', '.join(TIERS)} is needed, got {[spec.tier for spec in specs]}")
    split = tier_split(trace)
    count, meets, runs = static
    return TieredComparison(
        trace=trace.name,
        requests=len(trace.requests),
        tiers=tuple(
            TierResult(
                spec=spec,
                requests=len(split[spec.tier].requests),
                price=tier_price(spec),
                comparison=comparisons[spec.tier],
            )
            for spec in specs
        ),
        static=replace(runs[-1], label=f"static ({count} always on)"),
        static_instances=count,
        static_meets_sla=meets,
        static_gpu=tier_engine(static_spec).gpu_model,
        static_price=tier_price(static_spec),
        together=together,
    )


def tier_compare(trace: Trace, spec: TierSpec, *, seed: int = 0, progress: Progress | None = None) -> Comparison | None:
    """One tier's sub-trace compared on its own pool (``compare``); None where it holds no request."""
    if not trace.requests:
        return None
    return compare(
        trace=trace, setup=tier_setup(spec, seed=seed), price_per_gpu_hour=tier_price(spec), progress=progress
    )


def static_reference(
    trace: Trace, spec: TierSpec, *, seed: int = 0, progress: Progress | None = None
) -> tuple[int, bool, list[SimResult]]:
    """The fleet the method replaces: ``static_search`` over the whole trace on one pool of ``spec``'s GPU
    (smaller sizes stop once they miss the SLA: only the size found is reported)."""
    return static_search(trace=trace, setup=tier_setup(spec, seed=seed), progress=progress, stop_early=True)


def tiered_compare(
    trace: Trace,
    specs: Sequence[TierSpec],
    static_spec: TierSpec,
    *,
    seed: int = 0,
) -> TieredComparison:
    """Split, compare every tier, search the static fleet, run the tiers together (each pool starting
    from its tier's static fleet), assemble: one after another."""
    split = tier_split(trace)
    comparisons = {spec.tier: tier_compare(split[spec.tier], spec, seed=seed) for spec in specs}
    static = static_reference(trace, static_spec, seed=seed)
    together = together_run(trace, specs, seed=seed, initial=together_initial(comparisons))
    return tiered_from(
        trace=trace, specs=specs, comparisons=comparisons, static=static, static_spec=static_spec, together=together
    )


def together_initial(comparisons: Mapping[str, Comparison | None]) -> dict[str, int]:
    """Each tier's warm instances at the start of the run together: its static fleet's size, as its policy
    run apart starts (0 for a tier without requests; its pool's minimum still applies)."""
    return {tier: comparison.static_instances if comparison else 0 for tier, comparison in comparisons.items()}


def together_setup(specs: Sequence[TierSpec], *, seed: int = 0) -> SimSetup:
    """Every tier's pool in one setup: pool ids 1, 2, ... in ``specs``' order, each with its tier, its
    own GPUs, engine model, device and price (``tier_engine``, ``tier_device``, ``tier_price``), its
    pool settings, and its policy settings as a per-pool override (``PolicyConfig.pools``; the first
    tier's stand for the fleet). The routing settings are one for the whole fleet: specs that differ in
    them are refused. The setup's own SLA is the first tier's; each pool's share is judged by its own
    tier's (``together_run``)."""
    if sorted(spec.tier for spec in specs) != sorted(TIERS):
        raise ValueError(f"one spec per tier {', '.join(TIERS)} is needed, got {[spec.tier for spec in specs]}")
    setups = [tier_setup(spec, seed=seed) for spec in specs]
    if len({setup.routing for setup in setups}) != 1:
        raise ValueError("the tiers judged together need one routing setting (the gateway's)")
    pools = []
    for pool_id, (spec, setup) in enumerate(zip(specs, setups, strict=True), start=1):
        device, memory_gib = tier_device(spec)
        pools.append(
            SimPool(
                view=replace(setup.pools[0].view, id=pool_id),
                tier=spec.tier,
                engine=setup.engine,
                gpus=spec.gpus,
                device=device,
                device_memory_gib=memory_gib,
                price_per_gpu_hour=tier_price(spec),
            )
        )
    policies = {
        kind: PolicyConfig(
            kind=kind,
            fleet=config.fleet,
            pools={pool_id: setup.policies[kind].fleet for pool_id, setup in enumerate(setups, start=1)},
        )
        for kind, config in setups[0].policies.items()
    }
    return replace(setups[0], gpus=sum(spec.gpus for spec in specs), pools=tuple(pools), policies=policies)


@dataclass(frozen=True)
class TogetherResult:
    """The tiers' pools run in one simulation (``together_run``): the whole run, each tier's pool's share
    of it (``Simulation.pool_results``) and price, and how many requests each tier's routing sent and
    how many a pool of another tier served (the gateway's fallback). Each pool's share is judged by its
    own tier's SLA where the run was given them (``pools_run``'s ``bounds``); ``total`` by the setup's."""

    total: SimResult
    pools: Mapping[str, SimResult]
    prices: Mapping[str, Decimal | None]
    routed: Mapping[str, int]
    served_elsewhere: Mapping[str, int]

    @property
    def attainment(self) -> float:
        """Share of the run's judged requests within the SLA of the pool whose share they are (each
        pool's ``SimResult.attainment``, weighed by the requests it judged): the whole run's figure where
        the tiers' bounds differ, which ``total``, judged by one bound, is not."""
        return attainment_weighed(self.pools.values())

    def spend(self, tier: str | None = None) -> Decimal:
        """What the tier's pool was paid (paid device-hours x its price), or all pools' summed."""
        tiers = list(self.pools) if tier is None else [tier]
        return sum((_money(self.pools[t].paid_gpu_hours, self.prices[t]) for t in tiers), Decimal(0))

    def hours(self, tier: str | None = None) -> float:
        """Paid device-hours of the tier's pool, or of all pools."""
        return sum(self.pools[t].paid_gpu_hours for t in (list(self.pools) if tier is None else [tier]))


def together_run(
    trace: Trace,
    specs: Sequence[TierSpec],
    *,
    seed: int = 0,
    initial: Mapping[str, int] | None = None,
    hold_static: bool = False,
) -> TogetherResult:
    """The policy run of every tier's pool in one simulation (``together_setup``, ``pools_run``).
    ``initial``: each tier's warm instances at the start (default one; at least the pool's minimum),
    as each tier's policy run starts from its own static fleet in ``tier_compare``. ``hold_static``:
    each pool guarded at that size (``static_held``), so no tier's pool costs more than its static fleet.
    Each pool's share is judged by its tier's bound (``tier_bound``), as the tier is apart."""
    if hold_static:
        counts = initial or {}
        specs = [replace(spec, values=static_held(spec.values, replicas=counts.get(spec.tier, 0))) for spec in specs]
    bounds = {spec.tier: tier_bound(spec) for spec in specs}
    return pools_run(trace, together_setup(specs, seed=seed), initial=initial, bounds=bounds)


def static_held(values: Mapping[str, Any], *, replicas: int) -> dict[str, Any]:
    """The settings with the product's static-spend guard (``static_hold``) at ``replicas`` instances (0:
    no guard), the rest as given: the operator states the always-on fleet a pool replaces, and the guard
    refuses every scale-out past it (and holds it once the policy has paid as much over a day), so the
    policy's bill stays at most the static fleet's. A copy: specs that share the settings keep theirs."""
    held: dict[str, Any] = copy.deepcopy(dict(values))
    policies = held.setdefault("policies", {})
    policies["static_hold"] = {**(policies.get("static_hold") or {}), "static_replicas": replicas}
    return held


def one_pool_policy(trace: Trace, spec: TierSpec, *, count: int, seed: int = 0, hold_static: bool = False) -> SimResult:
    """The policy run of the whole trace on one pool of ``spec``'s device, from ``count`` instances (the
    static fleet ``static_reference`` found, as ``compare`` starts its policy run); ``hold_static``: guarded
    at that size (``static_held``). The single-pool figure the tiers' saving is read beside: what the
    policies save without any split."""
    if hold_static:
        spec = replace(spec, values=static_held(spec.values, replicas=count))
    label = f"policy from {count}" + (f", static hold {count}" if hold_static else "")
    return Simulation(trace=trace, setup=tier_setup(spec, seed=seed), label=label, initial_instances=count).run()


def pools_run(
    trace: Trace,
    setup: SimSetup,
    *,
    initial: Mapping[str, int] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> TogetherResult:
    """The policy run of a setup with at most one pool per tier: requests routed as the gateway routes
    them, falling back to another tier's ready instances in ``routing.FALLBACK`` order where their own
    tier's pool has none (or is absent); each pool's share and spend at its own price. ``bounds``: each
    tier's first-token bound, ``(ms, ms per 1k prompt tokens)``, that its pool's share is judged by (a
    request another tier's pool served is judged by that pool's); a tier left out, or no ``bounds``:
    the setup's SLA."""
    tiers = [pool.tier for pool in setup.pools]
    if len(set(tiers)) != len(tiers) or not set(tiers) <= set(TIERS):
        raise ValueError(f"at most one pool per tier {', '.join(TIERS)} is needed, got {tiers}")
    tier_of = {pool.view.id: pool.tier for pool in setup.pools}
    counts = {pool.view.id: (1 if initial is None else initial.get(pool.tier, 0)) for pool in setup.pools}
    simulation = Simulation(trace=trace, setup=setup, label="tiers together", initial_instances=counts)
    total = simulation.run()
    shares = simulation.pool_results()
    routed = dict.fromkeys(TIERS, 0)  # by the request's own tier, whether or not its pool exists
    elsewhere = dict.fromkeys(TIERS, 0)
    for index, request in enumerate(trace.requests):
        if index in simulation.refused:
            continue
        own = request_tier(request.prompt_tokens, request.output_tokens, setup.routing)
        routed[own] += 1
        served = simulation.served_by[index]
        elsewhere[own] += bool(served) and tier_of[served] != own
    judged = {
        pool.tier: replace(shares[pool.view.id], sla_ms=bound[0], sla_ms_per_1k_prompt_tokens=bound[1])
        if bounds and (bound := bounds.get(pool.tier)) is not None
        else shares[pool.view.id]
        for pool in setup.pools
    }
    return TogetherResult(
        total=total,
        pools=judged,
        prices={pool.tier: pool.price_per_gpu_hour for pool in setup.pools},
        routed=routed,
        served_elsewhere=elsewhere,
    )


# Document summaries (the method's long-context use case): prompts log-uniform over 8k..128k tokens,
# summaries uniform over 256..1,024 tokens.
DOCUMENT_PROMPT_TOKENS = (8_192, 131_072)
DOCUMENT_OUTPUT_TOKENS = (256, 1_024)


def document_lengths(draw: random.Random) -> tuple[int, int]:
    """One document summary's (prompt, output) tokens: the prompt log-uniform over
    ``DOCUMENT_PROMPT_TOKENS`` (as many 8-16k documents as 64-128k ones), the output uniform."""
    low, high = DOCUMENT_PROMPT_TOKENS
    prompt = round(math.exp(draw.uniform(math.log(low), math.log(high))))
    return prompt, draw.randint(*DOCUMENT_OUTPUT_TOKENS)


def document_summaries(windows: Sequence[RateWindow], *, seed: int, name: str = "document summaries") -> Trace:
    """A long-prompt trace: Poisson arrivals at the windows' rates (``arrivals_from_rates``), lengths
    from ``document_lengths``, both seeded."""
    return trace_from_arrivals(arrivals_from_rates(windows, seed=seed), lengths=document_lengths, seed=seed, name=name)
