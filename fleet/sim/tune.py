"""Settings learned, not hand-tuned: a seeded search of the pool's and autoscale's settings on past traffic.

Each candidate is a settings mapping in the shape ``setup_build`` reads (``{"pool": {...}, "policies":
{...}}``), validated as the admin validates it (``policy_settings_validate`` for the policies, the pool's own
checks for the band and the instance bounds), run through the same ``Simulation`` over the same trace and
judged by the same SLA (``result.sla_met``) and spend (``SimResult.paid_gpu_hours``); each run is kept as its
``SimOutcome``, the figures without the per-request lists. The objective: the fewest paid GPU-hours among
candidates that meet the SLA; where none does, the best attainment (then the fewest paid GPU-hours), and the
result says so.

Settings chosen on past traffic meet the traffic that comes next only if they have room for its growth: the
cheapest candidate on the past is often the one that just meets the SLA there. With ``headroom`` > 0 the
candidates that meet the SLA are then run, cheapest first, on the same traffic at ``1 + headroom`` times its
rate (``Trace.rate_scaled``: fresh arrivals at that rate per minute, the trace's own clock and lengths), and
the first that meets the SLA there too is chosen. Where none does, the one with the best attainment there
(then the fewest paid GPU-hours on the past traffic) is chosen, and the result says so.

The search is coordinate descent over a small grid (``DEFAULT_SPACE``): from the base settings, each
dimension in turn (in an order drawn from ``random.Random(seed)`` each round) tries each of its values with
the others held, keeping any that improves the objective, for a few rounds or until a round changes
nothing, within ``max_evaluations`` simulations. The simulator is slow (a few thousand requests a second),
so tune on a rate series at a modest rate (``trace_from_rate_series``) over a few days.

``forward_rows`` evaluates settings on other days (tuned on days 1-3, judged on days 4-7): each settings
set's policy run from the static fleet, as ``compare`` runs it, beside the static fleet itself.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import multiprocessing
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from fleet.policies.settings import SettingsInvalid
from fleet.policies.static_hold import minimum_conflict
from fleet.sim.compare import saved_against, static_search
from fleet.sim.engine import EngineModel
from fleet.sim.headroom import headroom_refused, headroom_traffic
from fleet.sim.result import SimOutcome, SimResult
from fleet.sim.setup import SimSetup, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import RateSeries, Trace

DAY_S = 86_400.0
Values = dict[str, Any]
# A change to the settings: {section: {key: value}}, section "pool" or a policy kind under "policies".
Patch = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Dimension:
    """One setting (or a pair that moves together, such as the band) and the values the search tries."""

    name: str
    choices: tuple[Patch, ...]


def _pool(**fields: Any) -> Patch:
    return {"pool": fields}


def _autoscale(**fields: Any) -> Patch:
    return {"autoscale": fields}


# The settings that decide what autoscale spends and misses: the band, the scale-out triggers (the pool's
# latency bound at its percentile, the queue, breaches in a row) and cool-downs, the scale-in hysteresis,
# cool-down, draining, back-off and load margin, the floor of instances, and the static-spend guard's size.
DEFAULT_SPACE: tuple[Dimension, ...] = (
    Dimension("min_instances", tuple(_pool(min_instances=n) for n in (0, 1, 2, 3))),
    Dimension(
        "band",
        tuple(
            _pool(util_band_low=low, util_band_high=high)
            for low, high in ((0.2, 0.35), (0.25, 0.4), (0.3, 0.45), (0.4, 0.55), (0.5, 0.65), (0.6, 0.8))
        ),
    ),
    Dimension("sla_latency_ms", tuple(_pool(sla_latency_ms=ms) for ms in (250, 300, 400, 500))),
    Dimension("breach_windows", tuple(_autoscale(breach_windows=n) for n in (1, 2, 3))),
    Dimension("queue_threshold", tuple(_autoscale(queue_threshold=n) for n in (2, 4, 10, 20))),
    Dimension("scale_out_cooldown_s", tuple(_autoscale(scale_out_cooldown_s=s) for s in (0, 30, 60, 120))),
    Dimension("scale_in_windows", tuple(_autoscale(scale_in_windows=n) for n in (1, 2, 3, 6))),
    Dimension("scale_in_cooldown_s", tuple(_autoscale(scale_in_cooldown_s=s) for s in (60, 120, 300, 600))),
    # Under steady traffic no instance is ever idle: only a draining scale-in takes the pool down a card, and
    # whether that pays depends on how long a scale-in the gateway undoes backs off: the two move together.
    Dimension(
        "scale_in_drain",
        (
            _autoscale(scale_in_drain=False),
            *(_autoscale(scale_in_drain=True, scale_in_backoff_max_s=s) for s in (0, 900, 3600, 14_400)),
        ),
    ),
    # How much room a scale-in leaves on one instance fewer for the peaks its one-minute mean hides.
    Dimension("scale_in_load_margin", tuple(_autoscale(scale_in_load_margin=m) for m in (1.0, 1.3, 1.6, 2.0))),
    # The static-spend guard at a static size (0: none): never above it, and held there once the policy has not
    # saved over its window (``fleet.policies.static_hold``).
    Dimension("static_replicas", tuple({"static_hold": {"static_replicas": n}} for n in (0, 1, 2, 3, 4))),
)


def settings_patch(values: Mapping[str, Any], patch: Patch) -> Values:
    """``values`` with ``patch`` applied: pool fields under "pool", a policy kind's settings under "policies"."""
    merged: Values = copy.deepcopy(dict(values))
    for section, fields in patch.items():
        if section == "pool":
            merged.setdefault("pool", {}).update(fields)
        else:
            policies = merged.setdefault("policies", {})
            policies[section] = {**(policies.get(section) or {}), **fields}
    return merged


def pool_fields_check(pool: Mapping[str, Any], *, gpus: int) -> None:
    """The pool's own checks on the fields the tuner moves (as the admin's pool form makes them): the band
    inside 0..1 with its low edge below its high one, and at most as many instances as the fleet's GPUs."""
    problems = []
    low, high = pool.get("util_band_low", 0.5), pool.get("util_band_high", 0.65)
    if not (0 <= low <= 1 and 0 <= high <= 1):
        problems.append(f"the utilization band ({low:g}-{high:g}) must lie within 0 and 1")
    elif low >= high:
        problems.append(f"the utilization band's low ({low:g}) must be below its high ({high:g})")
    least, most = pool.get("min_instances", 0), pool.get("max_instances", gpus)
    if least < 0 or least > most or least > gpus:
        problems.append(f"min_instances ({least}) must lie within 0 and max_instances ({min(most, gpus)})")
    if problems:
        raise SettingsInvalid({"__all__": problems})


def setup_for(
    values: Mapping[str, Any],
    *,
    engine: EngineModel,
    gpus: int,
    seed: int,
    sla_ms: float,
    sla_target: float,
    e2e_sla_ms: float | None = None,
    sla_ms_per_1k_prompt_tokens: float = 0.0,
) -> SimSetup:
    """The setup a candidate runs on, validated as the admin validates (``SettingsInvalid``, a ``ValueError``),
    judged by every term of the SLA given (``SimSetup``: the first-token bound, its growth with the prompt,
    the end-to-end bound)."""
    pool_fields_check(values.get("pool", {}), gpus=gpus)
    policies = values.get("policies", {})
    autoscale, guard = policies.get("autoscale", {}), policies.get("static_hold", {})
    if autoscale is not None and guard is not None:  # the admin's check where both apply to the pool
        conflict = minimum_conflict(
            pool="tuned",
            min_instances=values.get("pool", {}).get("min_instances", 0),
            static_replicas=guard.get("static_replicas", 0),
            autoscale="autoscale",
            guard="static_hold",
        )
        if conflict:
            raise SettingsInvalid({"__all__": [conflict]})
    return setup_build(
        engine=engine,
        gpus=gpus,
        values=values,
        seed=seed,
        sla_ms=sla_ms,
        sla_target=sla_target,
        e2e_sla_ms=e2e_sla_ms,
        sla_ms_per_1k_prompt_tokens=sla_ms_per_1k_prompt_tokens,
    )


@dataclass(frozen=True)
class Candidate:
    values: Values
    result: SimOutcome
    sla_target: float

    @property
    def meets_sla(self) -> bool:
        return self.result.meets_sla(self.sla_target)

    @property
    def objective(self) -> tuple[int, float, float]:
        """Smaller is better: meeting the SLA first, then (meeting it) fewer paid GPU-hours or (missing it)
        a higher attainment, then fewer paid GPU-hours."""
        if self.meets_sla:
            return (0, self.result.paid_gpu_hours, 0.0)
        return (1, -self.result.attainment, self.result.paid_gpu_hours)


@dataclass(frozen=True)
class HeadroomCheck:
    """A candidate that meets the SLA on the past traffic, run again on it at ``1 + headroom`` times the rate."""

    candidate: Candidate
    result: SimOutcome

    @property
    def meets_sla(self) -> bool:
        return self.result.meets_sla(self.candidate.sla_target)


@dataclass
class Tuned:
    best: Candidate
    base: Candidate
    evaluated: list[Candidate] = field(default_factory=list)
    refused: list[tuple[Values, str]] = field(default_factory=list)
    # The headroom asked for (0: none) and the candidates run at it, in the order they were run.
    headroom: float = 0.0
    checks: list[HeadroomCheck] = field(default_factory=list)

    @property
    def meets_sla(self) -> bool:
        return self.best.meets_sla

    @property
    def _best_check(self) -> HeadroomCheck | None:
        """The chosen settings' run at the headroom; None where none was asked for or no candidate met the SLA
        on the past traffic (nothing was run at the headroom)."""
        return next((check for check in self.checks if check.candidate is self.best), None)

    @property
    def best_at_headroom(self) -> SimOutcome | None:
        check = self._best_check
        return None if check is None else check.result

    @property
    def holds_headroom(self) -> bool | None:
        """Whether the chosen settings meet the SLA at the headroom too; None where nothing was run there."""
        check = self._best_check
        return None if check is None else check.meets_sla

    @property
    def summary(self) -> str:
        best = self.best.result
        text = (
            f"{len(self.evaluated)} candidates simulated, {len(self.refused)} refused by validation; best: "
            f"{best.paid_gpu_hours:.3f} paid GPU-hours at {best.attainment:.3%} within the SLA "
            f"(base settings: {self.base.result.paid_gpu_hours:.3f} at {self.base.result.attainment:.3%})"
        )
        if not self.meets_sla:
            text += "; NO candidate meets the SLA: these are the settings with the best attainment"
        if (chosen := self._best_check) is not None:
            failed = sum(1 for check in self.checks if not check.meets_sla)
            at = chosen.result
            text += (
                f"; at {headroom_traffic(self.headroom)} {len(self.checks)} candidate(s) run, {failed} missed the "
                f"SLA there; the chosen one: {at.paid_gpu_hours:.3f} paid GPU-hours at {at.attainment:.3%}"
            )
            if not chosen.meets_sla:
                text += "; NO candidate meets the SLA at that headroom: these have the best attainment there"
        return text


def _key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True)


@dataclass(frozen=True)
class _Run:
    """What every candidate of one search shares (set once per worker process)."""

    trace: Trace
    engine: EngineModel
    gpus: int
    seed: int
    sla_ms: float
    sla_target: float
    initial_instances: int
    e2e_sla_ms: float | None = None
    sla_ms_per_1k_prompt_tokens: float = 0.0

    def simulate(self, values: Values) -> SimResult:
        setup = setup_for(
            values,
            engine=self.engine,
            gpus=self.gpus,
            seed=self.seed,
            sla_ms=self.sla_ms,
            sla_target=self.sla_target,
            e2e_sla_ms=self.e2e_sla_ms,
            sla_ms_per_1k_prompt_tokens=self.sla_ms_per_1k_prompt_tokens,
        )
        count = max(self.initial_instances, values.get("pool", {}).get("min_instances", 0), 1)
        return Simulation(trace=self.trace, setup=setup, label="tune", initial_instances=min(count, self.gpus)).run()


_WORKER: _Run | None = None


def _worker_init(shared: _Run) -> None:
    global _WORKER
    _WORKER = shared


def _worker_outcome(values: Values) -> SimOutcome:
    """A candidate's run, reduced in its worker to what the search keeps (``SimOutcome``): the per-request lists
    never cross to the parent."""
    assert _WORKER is not None
    return _WORKER.simulate(values).outcome()


def _processes(shared: _Run, workers: int) -> concurrent.futures.ProcessPoolExecutor | None:
    """``workers`` forked processes that each hold ``shared`` (None for one: the runs stay in this process)."""
    if workers <= 1:
        return None
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(shared,),
    )


def _outcomes(
    shared: _Run, pool: concurrent.futures.ProcessPoolExecutor | None, batch: Sequence[Values]
) -> Iterator[SimOutcome]:
    """Each of ``batch`` run on ``shared``'s traffic, in ``pool``'s processes where there is one, reduced to its
    ``SimOutcome`` where it ran; yielded in ``batch``'s order as each is done (in this process one at a time:
    a caller's progress shows each, and only one run's lists are held at once)."""
    return pool.map(_worker_outcome, batch) if pool else (shared.simulate(dict(v)).outcome() for v in batch)


def tune(
    *,
    trace: Trace,
    engine: EngineModel,
    gpus: int,
    base: Mapping[str, Any] | None = None,
    space: Sequence[Dimension] = DEFAULT_SPACE,
    seed: int = 0,
    sla_ms: float = 500.0,
    sla_target: float = 0.999,
    e2e_sla_ms: float | None = None,
    sla_ms_per_1k_prompt_tokens: float = 0.0,
    rounds: int = 2,
    max_evaluations: int = 40,
    initial_instances: int = 1,
    workers: int = 1,
    headroom: float = 0.0,
    progress: Callable[[Candidate], None] | None = None,
    checked: Callable[[HeadroomCheck], None] | None = None,
) -> Tuned:
    """Coordinate descent from ``base`` over ``space`` (see the module's docstring); every run is seeded with
    ``seed`` and the dimensions' order each round is drawn from ``random.Random(seed)``. A candidate the
    validation refuses is recorded in ``Tuned.refused`` and not run. ``workers`` > 1 simulates a dimension's
    values in that many processes at once (the same runs, the same result). Every candidate is judged by the
    same SLA: ``sla_ms`` to the first token (plus ``sla_ms_per_1k_prompt_tokens`` per 1,000 prompt tokens)
    and, where set, ``e2e_sla_ms`` for the whole answer, met by ``sla_target`` of the requests. ``headroom``:
    see the module's docstring; the traffic at the headroom is drawn with ``seed`` + 1. ``progress`` is told
    of each candidate simulated, ``checked`` of each run at the headroom."""
    if (why := headroom_refused(headroom)) is not None:
        raise ValueError(why)
    shared = _Run(
        trace, engine, gpus, seed, sla_ms, sla_target, initial_instances, e2e_sla_ms, sla_ms_per_1k_prompt_tokens
    )
    order_random = random.Random(seed)
    seen: dict[str, Candidate] = {}
    refused: list[tuple[Values, str]] = []
    refused_keys: set[str] = set()
    pool = _processes(shared, workers)

    # Each settings mapping's key, by what it runs: settings equal in effect (a default written out or left
    # implicit) share one simulation.
    effective: dict[str, str] = {}

    def run(batch: Sequence[Values]) -> list[Candidate]:
        wanted: dict[str, Values] = {}
        for values in batch:
            raw = _key(values)
            if raw in refused_keys:
                continue
            if raw not in effective:
                try:
                    setup = setup_for(
                        values,
                        engine=engine,
                        gpus=gpus,
                        seed=seed,
                        sla_ms=sla_ms,
                        sla_target=sla_target,
                        e2e_sla_ms=e2e_sla_ms,
                        sla_ms_per_1k_prompt_tokens=sla_ms_per_1k_prompt_tokens,
                    )
                except ValueError as exc:
                    refused.append((values, str(exc)))
                    refused_keys.add(raw)
                    continue
                policies = sorted((kind, config.fleet) for kind, config in setup.policies.items())
                effective[raw] = repr((setup.pools, policies, setup.routing))
            key = effective[raw]
            if key in seen or key in wanted or len(seen) + len(wanted) >= max_evaluations:
                continue
            wanted[key] = values
        runs = _outcomes(shared, pool, list(wanted.values()))
        for (key, values), result in zip(wanted.items(), runs, strict=True):
            seen[key] = Candidate(values=values, result=result, sla_target=sla_target)
            if progress is not None:
                progress(seen[key])
        keys = [effective.get(_key(values)) for values in batch]
        return [seen[key] for key in keys if key is not None and key in seen]

    try:
        first = run([copy.deepcopy(dict(base or {}))])
        if not first:
            raise ValueError(f"the base settings cannot run: {refused[0][1] if refused else 'max_evaluations is 0'}")
        best = first[0]
        for _ in range(rounds):
            improved = False
            dimensions = list(space)
            order_random.shuffle(dimensions)
            for dimension in dimensions:
                current = best.values
                for candidate in run([settings_patch(current, patch) for patch in dimension.choices]):
                    if candidate.objective < best.objective:
                        best, improved = candidate, True
            if not improved or len(seen) >= max_evaluations:
                break
    finally:
        if pool is not None:
            pool.shutdown()
    tuned = Tuned(best=best, base=first[0], evaluated=list(seen.values()), refused=refused, headroom=headroom)
    if headroom > 0 and best.meets_sla:
        _headroom_choose(tuned, replace(shared, trace=trace.rate_scaled(1 + headroom, seed=seed + 1)), checked)
    return tuned


def _headroom_choose(tuned: Tuned, stressed: _Run, checked: Callable[[HeadroomCheck], None] | None) -> None:
    """Run the candidates that meet the SLA on ``stressed`` (the traffic at the headroom), cheapest first and
    one at a time (the traffic is larger than the past's: two at once may not fit in memory where one
    candidate's run on the past did), until one meets it there too; choose that one, or where none does, the
    one with the best attainment there (then the fewest paid GPU-hours on the past traffic)."""
    for candidate in sorted((c for c in tuned.evaluated if c.meets_sla), key=lambda c: c.objective):
        check = HeadroomCheck(candidate, stressed.simulate(candidate.values).outcome())
        tuned.checks.append(check)
        if checked is not None:
            checked(check)
        if check.meets_sla:
            tuned.best = candidate
            return
    best = min(tuned.checks, key=lambda c: (-c.result.attainment, c.candidate.result.paid_gpu_hours))
    tuned.best = best.candidate


def settings_file_values(values: Mapping[str, Any]) -> Values:
    """Settings as the tuner writes them for ``setup_build`` and ``policy_apply``: the pool's fields and each
    policy kind's settings in full (defaults filled in, validated), so applying them leaves nothing implicit."""
    from fleet.policies.settings import policy_settings_validate

    policies = {
        kind: None if settings is None else policy_settings_validate(kind=kind, settings=dict(settings))
        for kind, settings in (values.get("policies") or {}).items()
    }
    return {"pool": dict(values.get("pool") or {}), "policies": policies}


# -- evaluation on other days -----------------------------------------------------------------------


def series_days(series: RateSeries, *, first_day: int, days: int) -> RateSeries:
    """Days ``first_day`` .. ``first_day + days - 1`` (counted from 1) of a rate series, its clock starting at
    0 s there and its wall-clock start moved with it."""
    begin, end = (first_day - 1) * DAY_S, (first_day - 1 + days) * DAY_S
    windows = tuple((start - begin, length, rate) for start, length, rate in series.windows if begin <= start < end)
    if not windows:
        raise ValueError(f"{series.name}: no windows in days {first_day}..{first_day + days - 1}")
    return RateSeries(
        name=f"{series.name} days {first_day}-{first_day + days - 1}",
        start=series.start + timedelta(seconds=begin),
        windows=windows,
    )


@dataclass(frozen=True)
class ForwardRow:
    label: str
    result: SimOutcome
    saved: float
    meets_sla: bool


def forward_rows(
    *,
    trace: Trace,
    engine: EngineModel,
    gpus: int,
    settings: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    sla_ms: float = 500.0,
    sla_target: float = 0.999,
    workers: int = 1,
) -> list[ForwardRow]:
    """The static fleet (``static_search``) and each named settings set's policy run on ``trace``, starting
    from the static fleet as ``compare`` starts its policy run (or from the settings' floor where that is
    higher); savings against the static fleet (``saved_against``). ``workers`` runs the settings sets at once."""
    base = setup_for({}, engine=engine, gpus=gpus, seed=seed, sla_ms=sla_ms, sla_target=sla_target)
    count, _, runs = static_search(trace=trace, setup=base)
    static = runs[count - 1].outcome()
    del runs  # each run's per-request lists: the rows keep the figures
    rows = [ForwardRow(f"static ({count} always on)", static, 0.0, static.meets_sla(sla_target))]
    shared = _Run(trace, engine, gpus, seed, sla_ms, sla_target, count)
    pool = _processes(shared, workers)
    try:
        results = list(_outcomes(shared, pool, [dict(values) for values in settings.values()]))
    finally:
        if pool is not None:
            pool.shutdown()
    for label, result in zip(settings, results, strict=True):
        rows.append(ForwardRow(label, result, saved_against(result, static), result.meets_sla(sla_target)))
    return rows


def forward_markdown(rows: Sequence[ForwardRow], *, title: str) -> str:
    """The forward evaluation as a Markdown table."""
    lines = [
        f"**{title}**",
        "",
        "| settings | requests | paid GPU-h | saved vs static | within SLA | meets SLA | cold starts |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.label} | {r.requests:,} | {r.paid_gpu_hours:.3f} | {row.saved:.1%} | {r.attainment:.3%} "
            f"| {'yes' if row.meets_sla else 'no'} | {r.cold_starts} |"
        )
    return "\n".join(lines) + "\n"
