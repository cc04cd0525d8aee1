"""The whole method in the benchmark: requests split by RCF tier, each tier on its own GPU type, in money.

For each trace: the requests are split into the S, M and L tiers by the gateway's routing
function (``fleet.sim.tiers.tier_split``), each tier is compared (policy, static, oracle) as
its own pool on the GPU type ``bench/sim/tiers.json`` gives it (M on H100 MIG ``3g.40gb``
slices), and the whole trace is sized as one always-on H100 pool: the static fleet the method
replaces. Then the same tiers run together (``fleet.sim.tiers.together_run``): one simulation of
all three pools, each on its own devices at its own price and starting from its tier's static
fleet, with the gateway's fallback to another tier's ready instances. Prints one Markdown table per
trace (spend and GPU-hours per tier and in total, saved vs that static fleet, oracle/policy, SLA
attainment, P95 TTFT, cold starts; then a row per pool and a total for the tiers together, whose
static and oracle are those of the tiers apart) and the settings. Each tier is judged by the
first-token bound its pool states (``tier_bound``: ``sla_latency_ms`` plus
``sla_ms_per_1k_prompt_tokens`` per 1,000 prompt tokens, in its settings), printed in its row; a
trace's ``trace_tiers`` entry in ``tiers.json`` lays that trace's own tier settings (device count,
minimum, static guard) over the tiers' (``tier_entry``).

Traces: both Azure traces (the conversation trace at four times its rate, as ``make bench-sim``
runs it), the first ``days`` of the ServeGen rate series at a stated mean rate with lengths from
the conversation trace, the first week of it at the same mean rate, and a long-prompt mix
(document summaries, 8k-128k-token prompts) on the same day's shape, whose pool allows 256K-token
contexts. Only where ``SIM_TRACES`` names it (``SIM_TRACES="servegen 2"``): the series' first
days at a fleet's rate (``servegen_fleet``: 2 days at 55 req/s, about 9.5 million requests, where
the one H100 pool needs 4 cards at the peak and nights could free whole cards), with settings of its own
(``policy_settings``), the policy's run on the one H100 pool beside its static fleet (the saving without
any split), and, where ``hold_static`` says so, the product's static-spend guard at the static fleet's
size in that run (``fleet.sim.tiers.static_held``). The tiers' run together stays unguarded: guarded at
each tier's static size, the S pool's drained instance still counts as billed and its next scale-out is
refused (measured: 97.29% within, against 99.17% unguarded).
Jobs run side by side on up to ``SIM_JOBS`` processes (default: the CPUs).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.sim.compare import Comparison, saved_against  # noqa: E402
from fleet.sim.result import SimResult  # noqa: E402
from fleet.sim.tiers import (  # noqa: E402
    TieredComparison,
    TierSpec,
    TogetherResult,
    document_summaries,
    one_pool_policy,
    static_reference,
    tier_bound,
    tier_compare,
    tier_engine,
    tier_split,
    tiered_from,
    together_initial,
    together_run,
)
from fleet.sim.traces import RateSeries, rate_series_load, trace_from_rate_series, trace_load  # noqa: E402

SEED = int(os.environ.get("SIM_SEED", "0"))
SETTINGS = ROOT / os.environ.get("SIM_TIERS_SETTINGS", "bench/sim/tiers.json")
SERVEGEN = Path(
    os.environ.get("SIM_SERVEGEN", str(ROOT / "fleet" / "sim" / "traces" / "servegen_m-mid_rate_10min.csv"))
)
ONLY = [name for name in os.environ.get("SIM_TRACES", "").split(",") if name]
# The week's row: the ServeGen series' first days at the day's mean rate (``SIM_TRACES="servegen 7"`` runs it alone).
WEEK_DAYS = 7
# A workload's extra key (never a TierSpec field): run the policy on the one H100 pool too, guarded or not.
ONE_POOL = "one_pool"


def _values(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "bench" / "sim" / name).read_text(encoding="utf-8"))


def _merged(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The trace's settings with a tier's overrides laid over them, one section (and policy) at a time."""
    out = {key: dict(value) for key, value in values.items()}
    for section, changes in overrides.items():
        base = out.setdefault(section, {})
        for key, value in changes.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def tier_entry(settings: dict[str, Any], label: str, tier: str) -> dict[str, Any]:
    """A tier's entry in ``tiers.json`` for one trace: the tier's, with the trace's own ``trace_tiers``
    entry for it laid over (its keys win, its ``settings`` merged section by section; the trace matched
    by label prefix, as ``SIM_TRACES`` matches), so one trace's tier can hold more devices or its static
    size without another trace's tier paying for them."""
    entry = dict(settings["tiers"][tier])
    for prefix, tiers in settings.get("trace_tiers", {}).items():
        if label.startswith(prefix) and tier in tiers:
            own = tiers[tier]
            merged = _merged(entry.get("settings", {}), own.get("settings", {}))
            entry = {**entry, **own, "settings": merged}
    return entry


def _spec(tier: str, entry: dict[str, Any], values: dict[str, Any], **extra: Any) -> TierSpec:
    """A tier's spec: the trace's settings, the tier's overrides over them, then the trace's own
    overrides (``extra["overrides"]``: a workload's settings win over a tier's defaults)."""
    values = _merged(_merged(values, entry.get("settings", {})), extra.pop("overrides", {}))
    return TierSpec(
        tier=tier,
        gpu=entry["gpu"],
        gpus=int(entry.get("gpus", 8)),
        mig_profile=entry.get("mig_profile"),
        price_per_gpu_hour=Decimal(entry["price"]) if "price" in entry else None,
        values=values,
        **extra,
    )


def _day(series: RateSeries, days: float) -> RateSeries:
    span = days * 86_400
    return RateSeries(
        name=f"{series.name} first {days:g} day(s)",
        start=series.start,
        windows=tuple(w for w in series.windows if w[0] < span),
    )


def workloads(settings: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any], dict[str, Any]]]:
    """(label, trace, policy settings, extra TierSpec fields) per trace of the benchmark."""
    out: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
        ("azure-code", trace_load("azure-code"), _values("azure-code.json"), {}),
        ("azure-conv x4", trace_load("azure-conv").rate_scaled(4, seed=SEED), _values("azure-conv.json"), {}),
    ]
    servegen = settings["servegen"]
    series = _day(rate_series_load(SERVEGEN), servegen["days"])
    # The same series, rate and lengths over a week (``WEEK_DAYS``): the week's ramps and quiet days at once.
    for days in (servegen["days"], WEEK_DAYS):
        label = f"servegen {days:g} d @ {servegen['mean_rate_per_s']:g}/s"
        if not _wanted(label):
            continue  # a week's six million requests are not drawn for nothing
        span = _day(rate_series_load(SERVEGEN), days)
        scale = servegen["mean_rate_per_s"] / span.mean_rate
        trace = trace_from_rate_series(span, lengths=trace_load(servegen["lengths"]), seed=SEED, scale=scale)
        out.append((label, trace, _values(servegen["policy_settings"]), {}))
    # A fleet's rate: the series' first days at a mean rate that needs several H100s at the peak, so
    # that nights free whole cards. Millions of requests: run only where ``SIM_TRACES`` names it.
    fleet = settings.get("servegen_fleet")
    if fleet:
        label = f"servegen {fleet['days']:g} d @ {fleet['mean_rate_per_s']:g}/s"
        if any(label.startswith(o) for o in ONLY):
            span = _day(rate_series_load(SERVEGEN), fleet["days"])
            scale = fleet["mean_rate_per_s"] / span.mean_rate
            trace = trace_from_rate_series(span, lengths=trace_load(servegen["lengths"]), seed=SEED, scale=scale)
            policy = _values(fleet.get("policy_settings", servegen["policy_settings"]))
            out.append((label, trace, policy, {ONE_POOL: {"hold_static": bool(fleet.get("hold_static"))}}))
    documents = settings["documents"]
    hours = documents["hours"]
    shape = [w for w in series.windows if w[0] < hours * 3600]
    mean = sum(w[1] * w[2] for w in shape) / sum(w[1] for w in shape)
    windows = [(start, length, rate * documents["mean_rate_per_s"] / mean) for start, length, rate in shape]
    values = _values(documents["policy_settings"])
    values = {**values, "pool": {**values.get("pool", {}), "max_model_len": documents["max_model_len"]}}
    # The pool knows the SLA grows with the prompt (else its autoscale reads a 17 s first token as a breach):
    # the mix's bound is every tier's pool's, over the tiers' own. A pool not told is still judged by it.
    per_1k = documents["sla_ms_per_1k_prompt_tokens"]
    knows = documents["pool_knows_bound"]
    bound = {"pool": {"sla_latency_ms": 500, "sla_ms_per_1k_prompt_tokens": per_1k if knows else 0}}
    judged = {} if knows else {"sla_ms": 500.0, "sla_ms_per_1k_prompt_tokens": per_1k}
    out.append(
        (
            f"documents {hours:g} h @ {documents['mean_rate_per_s']:g}/s",
            document_summaries(windows, seed=SEED),
            values,
            {**judged, "overrides": _merged(bound, documents.get("settings", {}))},
        )
    )
    return [w for w in out if _wanted(w[0])]


def _wanted(label: str) -> bool:
    """Whether ``SIM_TRACES`` (label prefixes, comma-separated; empty: all) selects a trace."""
    return not ONLY or any(label.startswith(o) for o in ONLY)


def _job(kind: str, trace: Any, spec: TierSpec) -> tuple[float, Any]:
    started = time.monotonic()
    if kind == "static":
        result: Any = static_reference(trace, spec, seed=SEED)
    else:
        result = tier_compare(trace, spec, seed=SEED)
    return time.monotonic() - started, result


def _together_job(trace: Any, specs: list[TierSpec], initial: dict[str, int]) -> tuple[float, TogetherResult]:
    started = time.monotonic()
    result = together_run(trace, specs, seed=SEED, initial=initial)
    return time.monotonic() - started, result


def _one_pool_job(trace: Any, spec: TierSpec, count: int, hold_static: bool) -> tuple[float, SimResult]:
    started = time.monotonic()
    result = one_pool_policy(trace, spec, count=count, seed=SEED, hold_static=hold_static)
    return time.monotonic() - started, result


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def bound_text(bound: tuple[float, float]) -> str:
    """A first-token bound ``(ms, ms per 1k prompt tokens)`` as a row states it: ``500 ms`` or
    ``500 ms + 56 ms/1k prompt tokens``."""
    ms, per_1k = bound
    return f"{ms:g} ms" + (f" + {per_1k:g} ms/1k prompt tokens" if per_1k else "")


def _row(
    label: str, gpu: str, bound: str, requests: int, price: Any, c: Comparison | None, money: dict[str, Any]
) -> str:
    if c is None:
        return f"| {label} | {gpu} | {bound} | {requests:,} | {price} | - | - | - | - | - | - | - | - | - |"
    p: SimResult = c.policy
    return (
        f"| {label} | {gpu} | {bound} | {requests:,} | {price} "
        f"| {p.paid_gpu_hours:.2f} / ${money['policy']:.2f} | {c.static.paid_gpu_hours:.2f} ({c.static_instances}) / "
        f"${money['static']:.2f} | {c.oracle_bound.gpu_hours:.2f} / ${money['oracle']:.2f} "
        f"| {c.savings:.1%} | {c.efficiency:.2f} | {p.attainment:.3%} "
        f"(static {c.static.attainment:.2%}) | {_ms(p.ttft_ms(95))} | {p.cold_starts} | {p.refused} |"
    )


def table(tc: TieredComparison, one_pool: SimResult | None = None) -> str:
    lines = [
        f"### {tc.trace} ({tc.requests:,} requests)",
        "",
        "| tier | device | SLA: 99.9% of first tokens within | requests | $/device-h | policy dev-h / $ "
        "| tier static dev-h (n) / $ | oracle bound dev-h / $ "
        "| saved vs tier static | oracle/policy | policy within SLA | P95 TTFT ms | cold starts | refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tier in tc.tiers:
        device = tier.spec.gpu + (f" MIG {tier.spec.mig_profile}" if tier.spec.mig_profile else "")
        money = {which: tier.spend(which) for which in ("policy", "static", "oracle")}
        bound = bound_text(tier_bound(tier.spec))
        lines.append(_row(tier.spec.tier, device, bound, tier.requests, tier.price, tier.comparison, money))
    policy_h = sum(t.hours("policy") for t in tc.tiers)
    oracle_h = sum(t.hours("oracle") for t in tc.tiers)
    tier_static = sum((t.spend("static") for t in tc.tiers), Decimal(0))
    s = tc.static
    one_bound = bound_text((s.sla_ms, s.sla_ms_per_1k_prompt_tokens))
    lines.append(
        f"| **total** | tiers | each tier's; one pool: {one_bound} | {tc.requests:,} "
        f"| | {policy_h:.2f} / ${tc.spend('policy'):.2f} "
        f"| tiers' static ${tier_static:.2f}; **one {tc.static_gpu} pool: {s.paid_gpu_hours:.2f} "
        f"({tc.static_instances}) / ${tc.static_spend:.2f}** | {oracle_h:.2f} / ${tc.spend('oracle'):.2f} "
        f"| **{tc.saved('policy'):.1%}** (oracle {tc.saved('oracle'):.1%}) | {tc.efficiency:.2f} "
        f"| {tc.attainment:.3%} (one pool {s.attainment:.2%}{'' if tc.static_meets_sla else ', misses'}) "
        f"| one pool {_ms(s.ttft_ms(95))} | | {s.refused} (one pool) |"
    )
    if one_pool is not None:
        lines.append(_one_pool_row(tc, one_pool))
    if tc.together is not None:
        lines.extend(_together_rows(tc, tc.together))
    return "\n".join(lines)


def _one_pool_row(tc: TieredComparison, p: SimResult) -> str:
    """The policy on the one H100 pool, no split, from its static fleet: what it saves against that fleet."""
    spend = Decimal(0) if tc.static_price is None else Decimal(str(p.paid_gpu_hours)) * tc.static_price
    return (
        f"| **one {tc.static_gpu} pool, {p.label}** | {tc.static_gpu} "
        f"| {bound_text((p.sla_ms, p.sla_ms_per_1k_prompt_tokens))} | {p.requests:,} | {tc.static_price} "
        f"| {p.paid_gpu_hours:.2f} / ${spend:.2f} | {tc.static.paid_gpu_hours:.2f} ({tc.static_instances}) / "
        f"${tc.static_spend:.2f} | | **{saved_against(p, tc.static):.1%}** | | {p.attainment:.3%} "
        f"| {_ms(p.ttft_ms(95))} | {p.cold_starts} | {p.refused} |"
    )


def hold_lines(tc: TieredComparison) -> list[str]:
    """Per tier whose policy run logged static-hold decisions (``fleet.policies.static_hold``: the guard
    refused to spend past the static fleet, or held it): how many, and the first one's reason, so a row
    at 0% saved says that the policy held the static size, and why."""
    lines = []
    for tier in tc.tiers:
        held = [d for d in tier.comparison.policy.decisions if d.kind == "static_hold"] if tier.comparison else []
        if held:
            lines.append(f"{tier.spec.tier}: {len(held)} static-hold decision(s); the first: {held[0].reason}")
    return lines


def _together_rows(tc: TieredComparison, t: TogetherResult) -> list[str]:
    """The tiers' pools in one simulation, the gateway's fallback on: per pool (the requests it served;
    those its own tier routed, and how many of them another tier's pool served) and in total.
    Static and oracle are as in the rows above (per tier apart, and the one H100 pool)."""
    rows = []
    for tier in tc.tiers:
        share = t.pools[tier.spec.tier]
        device = tier.spec.gpu + (f" MIG {tier.spec.mig_profile}" if tier.spec.mig_profile else "")
        bound = bound_text((share.sla_ms, share.sla_ms_per_1k_prompt_tokens))
        rows.append(
            f"| {tier.spec.tier} together | {device} | {bound} | {share.requests:,} served (routed "
            f"{t.routed[tier.spec.tier]:,}, {t.served_elsewhere[tier.spec.tier]:,} of them elsewhere) "
            f"| {t.prices[tier.spec.tier]} | {share.paid_gpu_hours:.2f} / ${t.spend(tier.spec.tier):.2f} | as apart "
            f"| as apart | | | {share.attainment:.3%} | {_ms(share.ttft_ms(95))} | {share.cold_starts} | |"
        )
    total = t.total
    rows.append(
        f"| **total together** | one simulation, fallback on | each pool's | {tc.requests:,} | | {t.hours():.2f} / "
        f"${tc.spend('together'):.2f} | | | **{tc.saved('together'):.1%}** | | {t.attainment:.3%} "
        f"| {_ms(total.ttft_ms(95))} | {total.cold_starts} | {total.refused} |"
    )
    return rows


def main() -> None:
    settings = json.loads(SETTINGS.read_text(encoding="utf-8"))
    started = time.monotonic()
    plans = []
    jobs: dict[tuple[int, str], Any] = {}
    with ProcessPoolExecutor(max_workers=int(os.environ.get("SIM_JOBS", os.cpu_count() or 1))) as pool:
        for index, (label, trace, values, extra) in enumerate(workloads(settings)):
            extra = dict(extra)
            one_pool = extra.pop(ONE_POOL, None)
            trace = type(trace)(name=label, start=trace.start, requests=trace.requests)
            specs = [_spec(tier, tier_entry(settings, label, tier), values, **extra) for tier in settings["tiers"]]
            static_spec = _spec("L", settings["static"], values, **extra)
            split = tier_split(trace)
            for spec in specs:
                jobs[(index, spec.tier)] = pool.submit(_job, "tier", split[spec.tier], spec)
            jobs[(index, "static")] = pool.submit(_job, "static", trace, static_spec)
            plans.append((index, trace, specs, static_spec, one_pool))
        # The tiers together start from each tier's static fleet, so they follow the tiers apart; the one
        # pool's policy run starts from its static fleet, so it follows the static search.
        results = {}
        for index, trace, specs, static_spec, one_pool in plans:
            done = {key[1]: future.result() for key, future in jobs.items() if key[0] == index}
            hold = bool(one_pool and one_pool["hold_static"])
            initial = together_initial({spec.tier: done[spec.tier][1] for spec in specs})
            later: dict[str, Future[tuple[float, Any]]] = {
                "together": pool.submit(_together_job, trace, specs, initial)
            }
            if one_pool is not None:
                count = done["static"][1][0]
                later["one pool"] = pool.submit(_one_pool_job, trace, static_spec, count, hold)
            results[index] = done, later
        for index, trace, specs, static_spec, _ in plans:
            done, later = results[index]
            done.update({key: future.result() for key, future in later.items()})
            for key, (seconds, _) in sorted(done.items()):
                print(f"{trace.name} {key}: {seconds:.0f} s", file=sys.stderr)
            tc = tiered_from(
                trace=trace,
                specs=specs,
                comparisons={spec.tier: done[spec.tier][1] for spec in specs},
                static=done["static"][1],
                static_spec=static_spec,
                together=done["together"][1],
            )
            print(table(tc, done["one pool"][1] if "one pool" in done else None))
            notes = [n for t in tc.tiers if t.comparison for n in t.comparison.notes]
            for note in notes:
                print(f"- {note}")
            for line in hold_lines(tc):
                print(f"- {line}")
            print()
    engines = {f"{s.tier}": tier_engine(s).source for s in plans[0][2]} if plans else {}
    print(
        f"Settings: {SETTINGS.relative_to(ROOT)} = {json.dumps(settings)}; policies: bench/sim/<trace>.json; "
        f"seed {SEED}; SLA: 99.9% of first tokens within each tier's pool bound (its row's SLA column)."
    )
    for tier, source in engines.items():
        print(f"- engine {tier}: {source}")
    print(f"Wall time {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
