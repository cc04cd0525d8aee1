"""The simulation report: a Markdown table and a self-contained HTML page of Plotly charts.

The HTML page embeds plotly.js so it opens offline, and carries the settings and engine
model it was produced with, so a figure on it can be reproduced with the same command.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from fleet.policies.registry import ORDER
from fleet.sim.compare import Comparison
from fleet.sim.result import SimResult, percentile_of

COLUMNS = (
    "fleet",
    "GPU-hours",
    "paid GPU-hours",
    "spend",
    "saved vs static",
    "SLA attainment",
    "P50 TTFT",
    "P95 TTFT",
    "P99 TTFT",
    "P50 e2e",
    "P95 e2e",
    "P99 e2e",
    "cold starts",
    "waited for one",
    "failed",
    "refused",
)


def _ms(value: float) -> str:
    return "never" if value == float("inf") else f"{value:,.0f} ms"


def _row(comparison: Comparison, result: SimResult) -> list[str]:
    spend = comparison.spend(result)
    return [
        result.label,
        f"{result.gpu_hours:.3f}",
        f"{result.paid_gpu_hours:.3f}",
        "-" if spend is None else f"{spend:,.2f}",
        f"{comparison.saved(result):.1%}" if result is not comparison.static else "-",
        f"{result.attainment:.2%}",
        _ms(result.ttft_ms(50)),
        _ms(result.ttft_ms(95)),
        _ms(result.ttft_ms(99)),
        _ms(result.e2e_ms(50)),
        _ms(result.e2e_ms(95)),
        _ms(result.e2e_ms(99)),
        str(result.cold_starts),
        str(result.cold_waited),
        str(result.failed),
        str(result.refused),
    ]


def _table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def comparison_summary(comparison: Comparison) -> str:
    """The headline figures in one paragraph, stating what was compared with what."""
    setup = comparison.setup
    e2e = "" if setup.e2e_sla_ms is None else f" and end-to-end latency <= {setup.e2e_sla_ms:.0f} ms"
    per_1k = setup.sla_ms_per_1k_prompt_tokens
    e2e = (f" + {per_1k:g} ms per 1k prompt tokens" if per_1k else "") + e2e
    static_note = "" if comparison.static_meets_sla else " (no static size up to the fleet's GPUs met the SLA)"
    return (
        f"Trace {comparison.trace}, {comparison.policy.requests:,} requests, simulated {comparison.gpu_model} GPUs "
        f"(up to {setup.gpus}), SLA: {setup.sla_target:.1%} of requests with TTFT <= {setup.sla_ms:.0f} ms{e2e}. "
        f"Policy saved {comparison.savings:.1%} of paid GPU-hours against the static fleet of "
        f"{comparison.static_instances} always-on instance(s){static_note}; oracle / policy = "
        f"{comparison.efficiency:.2f}; {comparison.policy.attainment:.2%} of requests got their first token "
        f"within {setup.sla_ms:.0f} ms{e2e}. "
        f"Oracle: {'a lower bound of' if comparison.oracle_bound.feasible else 'none meets the SLA; fewest misses:'} "
        f"{comparison.oracle_bound.gpu_hours:.3f} GPU-hours "
        f"(the oracle row is its schedule replayed: {comparison.oracle.attainment:.2%} within the SLA, "
        f"{'meets' if comparison.oracle_meets_sla else 'misses'} it)."
        + (
            f" Refused as the gateway refuses them (more tokens than any pool's context; answered at once, "
            f"outside the SLA): {comparison.policy.refused:,} requests."
            if comparison.policy.refused
            else ""
        )
        + (
            f" Spend at {comparison.price_per_gpu_hour} per GPU-hour."
            if comparison.price_per_gpu_hour is not None
            else " No price given: GPU-hours only."
        )
    )


def utilization_summary(result: SimResult) -> str:
    values = result.utilization
    if not values:
        return "no samples"
    return " / ".join(f"P{p} {percentile_of(values, p):.0%}" for p in (10, 50, 90))


def policy_activity(result: SimResult) -> str:
    """What acted on one fleet and how often: every policy kind, in the order they run, with its count of
    each action that took effect (0 where it never acted), then anything else that acted (the gateway's
    wakes). A benchmark in which one policy does all the work shows as zeros for the others."""
    counts = result.actions
    parts = []
    for kind in [*ORDER, *sorted({k for k, _ in counts} - set(ORDER))]:
        mine = sorted((action, n) for (k, action), n in counts.items() if k == kind)
        label = kind.replace("_", " ")
        parts.append(f"{label} " + (", ".join(f"{action} {n}" for action, n in mine) if mine else "0"))
    return f"{result.label} fleet: {'; '.join(parts)}"


def batch_summary(result: SimResult) -> str:
    """What sleeping cost and what its freed memory ran (``SimResult.batch``); empty without batch work."""
    work = result.batch
    if work is None:
        return ""
    billed = "billed" if work.asleep_billed else "not billed (FLEET_COST_SLEEPING_HOLDS_GPU off)"
    used = "" if work.asleep_used is None else f" ({work.asleep_used:.1%})"
    return (
        f"Sleeping and batch work ({result.label} fleet): instances spent {work.asleep_gpu_hours:.3f} "
        f"GPU-hours asleep, {billed}; batch jobs ran on their cards for {work.used_gpu_hours:.3f} of them{used}: "
        f"{work.run_hours:.3f} job-hours, "
        f"of which {work.done_hours:.3f} in the {work.done} job(s) of {work.jobs} that finished, "
        f"{work.lost_hours:.3f} thrown away by {work.preemptions} preemption(s) and {work.unfinished_hours:.3f} "
        f"still running at the end."
    )


def comparison_markdown(comparison: Comparison) -> str:
    rows = [_row(comparison, r) for r in (comparison.policy, comparison.static, comparison.oracle)]
    utilization = "; ".join(
        f"{r.label}: {utilization_summary(r)}" for r in (comparison.policy, comparison.static, comparison.oracle)
    )
    notes = "".join(f"\nNote: {note}.\n" for note in comparison.notes)
    batch = batch_summary(comparison.policy)
    notes += f"\n{batch}\n" if batch else ""
    return (
        f"### {comparison.trace} on simulated {comparison.gpu_model}\n\n{comparison_summary(comparison)}\n\n"
        f"{_table(rows)}\n{notes}\nGPU duty cycle of serving instances (5 s samples), {utilization}.\n"
        + "\nActions that took effect, per fleet:\n\n"
        + "".join(f"* {policy_activity(r)}\n" for r in (comparison.policy, comparison.static, comparison.oracle))
    )


def benchmark_markdown(comparisons: Sequence[Comparison]) -> str:
    """One row per trace: the benchmark table."""
    head = (
        "| trace | policy GPU-h held / paid | static GPU-h paid (instances) | oracle bound GPU-h | savings "
        "| oracle/policy | SLA attainment | P95 TTFT | cold starts |"
    )
    lines = [head, "|" + "---|" * 9]
    for c in comparisons:
        lines.append(
            f"| {c.trace} | {c.policy.gpu_hours:.3f} / {c.policy.paid_gpu_hours:.3f} "
            f"| {c.static.paid_gpu_hours:.3f} ({c.static_instances}) "
            f"| {c.oracle_bound.gpu_hours:.3f} | {c.savings:.1%} | {c.efficiency:.2f} | {c.policy.attainment:.2%} "
            f"| {_ms(c.policy.ttft_ms(95))} | {c.policy.cold_starts} |"
        )
    notes = [f"* {c.trace}: {note}." for c in comparisons for note in c.notes]
    activity = [f"* {c.trace}: {policy_activity(c.policy)}" for c in comparisons]
    return "\n".join(lines + (["", *notes] if notes else []) + ["", *activity]) + "\n"


def _minutes(result: SimResult) -> list[float]:
    return [point.t_s / 60 for point in result.timeline]


def _figures(comparison: Comparison) -> list[go.Figure]:
    policy, static, oracle = comparison.policy, comparison.static, comparison.oracle
    load = make_subplots(specs=[[{"secondary_y": True}]])
    load.add_trace(
        go.Scatter(
            x=_minutes(policy), y=[p.arrivals_per_s for p in policy.timeline], name="requests/s", fill="tozeroy"
        ),
        secondary_y=False,
    )
    for result in (policy, static, oracle):
        load.add_trace(
            go.Scatter(
                x=_minutes(result),
                y=[p.billed for p in result.timeline],
                name=f"{result.label} instances",
                line={"shape": "hv"},
            ),
            secondary_y=True,
        )
    load.update_layout(title="Load and instances over time (simulated)", xaxis_title="minutes")
    load.update_yaxes(title_text="requests/s", secondary_y=False)
    load.update_yaxes(title_text="instances holding a GPU", secondary_y=True)

    latency = go.Figure()
    for name, values in (
        ("P50", [p.ttft_p50_ms for p in policy.timeline]),
        ("P95", [p.ttft_p95_ms for p in policy.timeline]),
        ("P99", [p.ttft_p99_ms for p in policy.timeline]),
    ):
        latency.add_trace(go.Scatter(x=_minutes(policy), y=values, name=f"policy TTFT {name}", mode="lines"))
    latency.add_trace(
        go.Scatter(
            x=_minutes(static),
            y=[p.ttft_p95_ms for p in static.timeline],
            name="static TTFT P95",
            mode="lines",
            line={"dash": "dot"},
        )
    )
    latency.add_hline(y=policy.sla_ms, line_dash="dash", annotation_text=f"SLA {policy.sla_ms:.0f} ms")
    latency.update_layout(
        title="Time to first token per tick interval (simulated)",
        xaxis_title="minutes",
        yaxis_title="ms",
        yaxis_type="log",
    )

    price = float(comparison.price_per_gpu_hour) if comparison.price_per_gpu_hour is not None else None
    spend = go.Figure()
    for result in (policy, static, oracle):
        spend.add_trace(
            go.Scatter(
                x=_minutes(result),
                y=[p.gpu_hours * price if price is not None else p.gpu_hours for p in result.timeline],
                name=result.label,
            )
        )
    spend.update_layout(
        title="Cumulative spend (simulated)" if price is not None else "Cumulative GPU-hours (simulated, no price)",
        xaxis_title="minutes",
        yaxis_title="spend" if price is not None else "GPU-hours",
    )
    duty = go.Figure()
    for result in (policy, static, oracle):
        duty.add_trace(
            go.Histogram(
                x=[value * 100 for value in result.utilization],
                name=result.label,
                xbins={"start": 0, "end": 100, "size": 5},
                histnorm="percent",
                opacity=0.6,
            )
        )
    duty.update_layout(
        title="GPU duty cycle of serving instances, 5 s samples (simulated)",
        barmode="overlay",
        xaxis_title="duty cycle %",
        yaxis_title="% of samples",
    )
    return [load, latency, spend, duty]


def comparison_html(comparison: Comparison, *, command: str = "") -> str:
    charts = [
        pio.to_html(figure, include_plotlyjs=index == 0, full_html=False, div_id=f"chart-{index}")
        for index, figure in enumerate(_figures(comparison))
    ]
    table = comparison_markdown(comparison)
    engine = json.dumps(asdict(comparison.setup.engine), indent=2)
    settings = json.dumps(
        {
            kind: dict(config.fleet) if config.fleet is not None else None
            for kind, config in comparison.setup.policies.items()
        },
        indent=2,
        default=str,
    )
    pool = json.dumps(
        {k: v for k, v in asdict(comparison.setup.pools[0].view).items() if k not in ("estimate", "windows")},
        indent=2,
        default=str,
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Simulation: {html.escape(comparison.trace)} on simulated {html.escape(comparison.gpu_model)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>Simulation report: {html.escape(comparison.trace)}</h1>
<p><strong>Everything on this page is simulated</strong>: GPUs and vLLM engines are the engine performance
model below, driven by the production routing and policy functions.</p>
<p>{html.escape(comparison_summary(comparison))}</p>
<pre>{html.escape(table)}</pre>
{"".join(charts)}
<h2>How it was produced</h2>
<pre>{html.escape(command)}</pre>
<h3>Engine model</h3><pre>{html.escape(engine)}</pre>
<h3>Pool</h3><pre>{html.escape(pool)}</pre>
<h3>Policy settings</h3><pre>{html.escape(settings)}</pre>
<h3>Oracle schedule (instances per tick interval)</h3><pre>{html.escape(" ".join(map(str, comparison.schedule)))}</pre>
</body></html>
"""
