"""Plotly figures built on the server from selector output, as JSON-ready dicts.

Each builder is a small pure function: selector output in, ``Figure.to_plotly_json()`` out,
so a page's template only drops the dict into ``json_script`` and ``Plotly.newPlot``. Every
axis names its unit and every amount of money its currency. Traces that live updates
extend carry ``meta`` (the GPU id, say) so the browser finds them without guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
from plotly.basedatatypes import BaseTraceType

MUTED = "#5c6577"
# A time axis shows the instant under the pointer as a vertical line across the plot: the
# page's other time charts draw theirs at the same instant (``charts.js``).
TIME_AXIS = {
    "title": {"text": "time (UTC)"},
    "type": "date",
    "showspikes": True,
    "spikemode": "across",
    "spikedash": "solid",
    "spikethickness": 1,
    "spikecolor": MUTED,
}
# One colour per spend category, on every chart that shows one; allocated = busy + idle.
SPEND_COLOURS = {"busy": "#2354c7", "idle": "#9db4ec", "allocated": "#5b7bd5", "unallocated": "#8e6bbf"}
# Against a target or threshold: met, near it, missed.
STATUS_COLOURS = {"met": "#2a9d55", "warning": "#e0a100", "missed": "#c0392b"}
# The most lines a chart names in its legend; beyond, the legend would crowd out the plot.
LEGEND_ENTRIES_MAX = 20
# A heatmap's hover reads the middle of its column; these formats print it as the bucket's start.
BUCKET_HOVER = {
    timedelta(minutes=1): "minute from %Y-%m-%d %H:%M",
    timedelta(hours=1): "hour from %Y-%m-%d %H:00",
    timedelta(days=1): "day %Y-%m-%d",
}
STATE_COLOURS = {
    "starting": "#e0a100",
    "ready": "#2a9d55",
    "sleeping": "#7b8bb2",
    "stopping": "#c46b2c",
    "stopped": "#b8bec9",
    "failed": "#c0392b",
    "pending": "#d5d9e0",
    "unknown": "#9aa1ad",
}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 15}, "y": 0.97, "yanchor": "top"},
        "margin": {"l": 70, "r": 20, "t": 75, "b": 50},
        "height": 340,
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.01, "yanchor": "bottom"},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        **extra,
    }


ARRAYS = ("x", "y", "z", "customdata")

Trace = tuple[BaseTraceType, dict[str, list[Any]]]


# A line, a target or a threshold drawn for comparison, not data: marked so a reader (or a
# test) can tell a chart that draws only its reference from one that draws data.
REFERENCE = {"reference": True}
# Rollup series (one point a bucket) as lines with small markers: a lone bucket, or one
# between gaps, would draw nothing as a bare line.
BUCKET_LINE = "lines+markers"
BUCKET_MARKER = {"size": 4}


def _trace(kind: type[BaseTraceType], **properties: Any) -> Trace:
    """A trace built and checked by ``plotly.graph_objects``, its data arrays kept apart.

    Plotly validates every element of an array it is given; for a fleet's heatmap that
    costs more than the query behind it. Arrays (plain numbers, strings and datetimes
    from the selectors) are attached to the JSON after the figure is built instead.
    """
    arrays = {key: list(properties.pop(key)) for key in ARRAYS if key in properties}
    return kind(**properties), arrays


def _figure(traces: Sequence[Trace], layout: dict[str, Any]) -> dict[str, Any]:
    figure = go.Figure(data=[trace for trace, _ in traces], layout=layout)
    figure.update_xaxes(gridcolor="#eef0f4")
    figure.update_yaxes(gridcolor="#eef0f4")
    built = figure.to_plotly_json()
    for trace, (_, arrays) in zip(built["data"], traces, strict=True):
        trace.update(arrays)
    return built


def _money(values: Sequence[Decimal | float | None]) -> list[float | None]:
    return [None if v is None else round(float(v), 4) for v in values]


def time_axes_range(figure: dict[str, Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Every time x-axis of ``figure`` set to exactly ``span``, the page's chosen range, whatever the data covers.

    As under a dashboard's time picker: a stretch without data shows as empty rather than the
    axis shrinking to the data, one bucket or one point is not stretched across the chart with
    sub-millisecond ticks, and every time chart of a page spans the same instants, which is how
    the browser tells the charts it zooms and hovers together. Hover picks the traces at the
    pointer's instant (``hovermode`` x), so hovering one chart can show the same instant on the
    others; a heatmap keeps hovering its cell.
    """
    start, end = span
    if not start < end:
        raise ValueError(f"a time range must end after it starts, not {start} – {end}")
    axes = [axis for name, axis in figure["layout"].items() if name.startswith("xaxis") and axis.get("type") == "date"]
    if not axes:
        raise ValueError(f"figure {figure['layout'].get('title', {}).get('text')!r} has no time x-axis")
    for axis in axes:
        axis.update(range=[start, end], autorange=False)
    # A heatmap's column holds a row per GPU: its hover needs the row under the pointer too.
    grid = any(trace.get("type") == "heatmap" for trace in figure["data"])
    figure["layout"]["hovermode"] = "closest" if grid else "x"
    return figure


def _duration(step: timedelta) -> str:
    """A bucket's width as people write it: 5 min, 1 h, 6 h, 1 d."""
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _partial(at: Sequence[datetime], step: timedelta, span: tuple[datetime, datetime]) -> list[bool]:
    """Which buckets the range holds only part of: the one still running at its end, or one its start cuts."""
    return [bucket < span[0] or bucket + step > span[1] for bucket in at]


def _partial_marks(
    at: Sequence[datetime], step: timedelta, span: tuple[datetime, datetime]
) -> dict[str, list[dict[str, Any]]]:
    """Layout shapes and annotations that lighten each partial bucket and label it "partial" above the plot.

    The label sits at the band's outer edge (the range's end, or its start for a bucket the
    start cuts), so a thin band at the chart's edge does not push it off the chart.
    """
    shapes, labels = [], []
    for bucket, cut in zip(at, _partial(at, step, span), strict=True):
        if not cut:
            continue
        first, last = max(bucket, span[0]), min(bucket + step, span[1])
        at_end = bucket + step > span[1]
        shapes.append(
            {
                "type": "rect",
                "name": "partial",
                "xref": "x",
                "yref": "paper",
                "x0": first,
                "x1": last,
                "y0": 0,
                "y1": 1,
                "layer": "above",
                "fillcolor": "rgba(255, 255, 255, 0.5)",
                "line": {"width": 1, "dash": "dot", "color": MUTED},
            }
        )
        labels.append(
            {
                "name": "partial",
                "text": "partial",
                "xref": "x",
                "yref": "paper",
                "x": last if at_end else first,
                "xanchor": "right" if at_end else "left",
                "y": 1,
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11, "color": MUTED},
            }
        )
    return {"shapes": shapes, "annotations": labels}


def _grid_labels(grid: Mapping[str, Any]) -> list[str]:
    """The rows of a utilization grid as labelled on a chart: simulated GPUs and nodes say so."""
    return [f"{row['label']} (simulated)" if row["simulated"] else row["label"] for row in grid["rows"]]


def _grid_columns(grid: Mapping[str, Any]) -> list[datetime]:
    """Every bucket from a utilization grid's first column to its last, ``step`` apart, those without rollups too."""
    step, at = grid["step"], list(grid["at"])
    return [at[0] + i * step for i in range(int((at[-1] - at[0]) / step) + 1)] if at else []


def _grid_values(grid: Mapping[str, Any], columns: Sequence[datetime]) -> list[list[float | None]]:
    """Each row's value in each of ``columns``; None in a bucket the grid has no rollups for."""
    position = {bucket: i for i, bucket in enumerate(grid["at"])}
    return [[row[position[c]] if c in position else None for c in columns] for row in grid["utilization"]]


def utilization_heatmap(*, grid: Mapping[str, Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Duty cycle per GPU, or per node in a large fleet (rows), per bucket (columns), 0-100 %;
    simulated GPUs and nodes say so in their label.

    Columns are given by their edges, every ``step`` from the first bucket to the last, so each
    is as wide as its bucket (a lone column too) and a bucket without rollups stays blank
    instead of being covered by its neighbours. A bucket the range holds only part of is
    shaded and labelled "partial".
    """
    labels = _grid_labels(grid)
    step = grid["step"]
    columns = _grid_columns(grid)
    trace = _trace(
        go.Heatmap,
        x=[*columns, columns[-1] + step] if columns else [],
        y=labels,
        z=_grid_values(grid, columns),
        zmin=0,
        zmax=100,
        colorscale="Blues",
        colorbar={"title": {"text": "utilization (%)"}},
        hovertemplate=f"%{{y}}<br>%{{x|{BUCKET_HOVER.get(step, '%Y-%m-%d %H:%M')}}}<br>%{{z:.0f}} %<extra></extra>",
    )
    height = max(260, 60 + 22 * len(labels))
    return time_axes_range(
        _figure(
            [trace],
            _layout(
                "GPU utilization (duty cycle, %)",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "node (mean of its GPUs)" if grid["by_node"] else "GPU (node/index)"}},
                height=height,
                **_partial_marks(columns, step, span),
            ),
        ),
        span,
    )


def utilization_lines(*, grid: Mapping[str, Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """The heatmap's grid (``utilization_heatmap``) as lines: one a row (GPU, or node in a large fleet),
    its mean duty cycle per bucket over the range, 0-100 %.

    The overview draws it over a range the live chart does not stream: its points are rollups,
    as many as the heatmap's cells whatever the fleet. A bucket without rollups breaks the line
    rather than being bridged; one the range holds only part of is shaded and labelled "partial".
    A legend of more than ``LEGEND_ENTRIES_MAX`` rows (a node a line in a large fleet) would push
    the plot off the chart: then it is left out and the hover names each line.
    """
    step = grid["step"]
    columns = _grid_columns(grid)
    traces = [
        _trace(
            go.Scatter,
            x=columns,
            y=values,
            mode=BUCKET_LINE,
            marker=BUCKET_MARKER,
            name=label,
            hovertemplate=f"%{{x|{BUCKET_HOVER.get(step, '%Y-%m-%d %H:%M')}}}: %{{y:.0f}} %",
        )
        for label, values in zip(_grid_labels(grid), _grid_values(grid, columns), strict=True)
    ]
    title = "GPU utilization by node (mean of its GPUs, %)" if grid["by_node"] else "GPU utilization (%)"
    return time_axes_range(
        _figure(
            traces,
            _layout(
                f"{title}, {_duration(step)} buckets",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "utilization (%)"}, "range": [0, 100]},
                showlegend=len(traces) <= LEGEND_ENTRIES_MAX,
                **_partial_marks(columns, step, span),
            ),
        ),
        span,
    )


def gpu_lines(
    *,
    series: Sequence[Mapping[str, Any]],
    field: str,
    title: str,
    unit: str,
    span: tuple[datetime, datetime],
    scale: float = 1.0,
) -> dict[str, Any]:
    """One line per GPU of ``field`` over time (divided by ``scale``, e.g. bytes to GiB)."""
    traces = [
        _trace(
            go.Scatter,
            x=list(gpu["at"]),
            y=[None if v is None else v / scale for v in gpu[field]],
            mode="lines",
            name=f"{gpu['label']} (simulated)" if gpu.get("simulated") else gpu["label"],
            meta={"gpu": gpu["gpu"], "field": field, "scale": scale},
        )
        for gpu in series
    ]
    return time_axes_range(
        _figure(traces, _layout(title, xaxis=TIME_AXIS, yaxis={"title": {"text": unit}, "rangemode": "tozero"})), span
    )


def pool_latency(
    *,
    history: Mapping[str, Sequence[Any]],
    sla_ms: int,
    sla_label: str,
    metric: str,
    span: tuple[datetime, datetime],
    sla_per_1k_prompt_tokens: float = 0.0,
) -> dict[str, Any]:
    """Latency percentiles (ms) of the pool's SLA metric against its SLA line across the range. Where the
    bound grows with the prompt (``sla_per_1k_prompt_tokens``), the line is its floor, an empty prompt's
    bound, and says so: each request has its own bound above it."""
    at = list(history.get("at", []))
    traces = [
        _trace(go.Scatter, x=at, y=list(history.get(q, [])), mode=BUCKET_LINE, marker=BUCKET_MARKER, name=q.upper())
        for q in ("p50", "p95", "p99")
    ]
    if at:
        traces.append(
            _trace(
                go.Scatter,
                x=list(span),
                y=[sla_ms, sla_ms],
                mode="lines",
                name=f"SLA {sla_ms} ms"
                if not sla_per_1k_prompt_tokens
                else f"SLA floor {sla_ms} ms (+ {sla_per_1k_prompt_tokens:g} ms per 1k prompt tokens)",
                meta=REFERENCE,
                hovertext=sla_label,
                line={"dash": "dash", "color": "#c0392b"},
            )
        )
    return time_axes_range(
        _figure(
            traces,
            _layout(
                f"Latency ({metric}) against the SLA",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "latency (ms)"}, "rangemode": "tozero"},
            ),
        ),
        span,
    )


def pool_queue(*, history: Mapping[str, Sequence[Any]], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Requests waiting (mean and peak per bucket) and instances reporting."""
    at = list(history.get("at", []))
    traces = [
        _trace(
            go.Scatter,
            x=at,
            y=list(history.get("queue_mean", [])),
            mode=BUCKET_LINE,
            marker=BUCKET_MARKER,
            name="waiting, mean",
        ),
        _trace(
            go.Scatter,
            x=at,
            y=list(history.get("queue_max", [])),
            mode=BUCKET_LINE,
            marker=BUCKET_MARKER,
            name="waiting, peak",
            line={"dash": "dot"},
        ),
        _trace(
            go.Scatter,
            x=at,
            y=list(history.get("instances", [])),
            mode=BUCKET_LINE,
            marker=BUCKET_MARKER,
            name="instances reporting",
            yaxis="y2",
            line={"shape": "hv"},
        ),
    ]
    return time_axes_range(
        _figure(
            traces,
            _layout(
                "Queue and instances",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "requests waiting"}, "rangemode": "tozero"},
                yaxis2={
                    "title": {"text": "instances"},
                    "overlaying": "y",
                    "side": "right",
                    "rangemode": "tozero",
                    "dtick": 1,
                },
            ),
        ),
        span,
    )


def instance_states(*, states: Mapping[str, Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Instances of the pool in each actual state over time, stacked steps."""
    traces = [
        _trace(
            go.Scatter,
            x=list(states["at"]),
            y=counts,
            mode="lines",
            name=state,
            stackgroup="states",
            line={"shape": "hv", "color": STATE_COLOURS.get(state)},
        )
        for state, counts in states["states"].items()
    ]
    return time_axes_range(
        _figure(
            traces,
            _layout(
                "Instances by state",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "instances"}, "dtick": 1, "rangemode": "tozero"},
            ),
        ),
        span,
    )


def tier_traffic(*, counts: Mapping[str, int]) -> dict[str, Any]:
    """Requests served by the tier their complexity chose; other tiers than the pool's are fallbacks."""
    tiers = sorted(counts)
    few = max(counts.values(), default=0) <= 10  # whole-number ticks; Plotly would draw halves
    trace = _trace(go.Bar, x=tiers, y=[counts[t] for t in tiers], marker={"color": "#2354c7"})
    return _figure(
        [trace],
        _layout(
            "Requests by routed tier",
            xaxis={"title": {"text": "tier chosen by complexity"}},
            yaxis={"title": {"text": "requests"}, "rangemode": "tozero", **({"dtick": 1} if few else {})},
        ),
    )


def spend_over_time(*, buckets: Mapping[str, Any], currency: str, span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Spend per bucket, stacked busy / idle (allocated) / unallocated, each bar drawn over its bucket;
    a bucket the range holds only part of (the one still running, one the range's start cuts)
    is lightened and labelled "partial"."""
    at, step = list(buckets["at"]), buckets["step"]
    step_ms = step.total_seconds() * 1000
    labels = [
        f"{bucket:%Y-%m-%d %H:%M} + {_duration(step)}{' (partial)' if cut else ''}"
        for bucket, cut in zip(at, _partial(at, step, span), strict=True)
    ]
    traces = [
        _trace(
            go.Bar,
            x=at,
            y=_money(buckets[part]),
            name=part,
            width=step_ms * 0.9,
            offset=step_ms * 0.05,
            marker={"color": SPEND_COLOURS[part]},
            customdata=labels,
            hovertemplate=f"%{{customdata}}<br>%{{y:.2f}} {currency}<extra>{part}</extra>",
        )
        for part in ("busy", "idle", "unallocated")
    ]
    return time_axes_range(
        _figure(
            traces,
            _layout(
                f"Spend over time ({currency})",
                barmode="stack",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": f"spend ({currency})"}},
                **_partial_marks(at, step, span),
            ),
        ),
        span,
    )


def spend_by_pool(*, rows: Sequence[Mapping[str, Any]], currency: str) -> dict[str, Any]:
    """Each pool's spend split busy / idle, and the unallocated row's spend in its own colour."""
    names = [row["name"] for row in rows]
    traces = [
        _trace(
            go.Bar,
            y=names,
            x=_money([row[part] for row in rows]),
            name=part,
            orientation="h",
            marker={"color": SPEND_COLOURS[part]},
        )
        for part in ("busy", "idle", "unallocated")
    ]
    return _figure(
        traces,
        _layout(
            f"Spend by pool ({currency})",
            barmode="stack",
            xaxis={"title": {"text": f"spend ({currency})"}},
            yaxis={"title": {"text": "pool"}, "automargin": True},
        ),
    )


def spend_by_team(*, rows: Sequence[Mapping[str, Any]], currency: str) -> dict[str, Any]:
    """Each team's share of the pools' allocated spend (busy and idle alike)."""
    trace = _trace(
        go.Bar,
        y=[row["name"] for row in rows],
        x=_money([row["spend"] for row in rows]),
        orientation="h",
        name="allocated",
        marker={"color": SPEND_COLOURS["allocated"]},
    )
    return _figure(
        [trace],
        _layout(
            f"Spend by team ({currency})",
            xaxis={"title": {"text": f"spend ({currency})"}},
            yaxis={"title": {"text": "team"}, "automargin": True},
        ),
    )


def cost_per_million_tokens(*, rows: Sequence[Mapping[str, Any]], currency: str) -> dict[str, Any]:
    """Each pool's allocated spend over the tokens it served (prompt + generated), per million tokens."""
    priced = [row for row in rows if row["cost"] is not None]
    trace = _trace(
        go.Bar,
        x=[row["name"] for row in priced],
        y=_money([row["cost"] for row in priced]),
        name="allocated",
        marker={"color": SPEND_COLOURS["allocated"]},
        hovertemplate=f"%{{y:.4f}} {currency} per 1M tokens<extra>%{{x}}</extra>",
    )
    return _figure(
        [trace],
        _layout(
            f"Cost per million tokens ({currency})",
            xaxis={"title": {"text": "pool"}},
            yaxis={"title": {"text": f"{currency} per 1M tokens"}, "rangemode": "tozero"},
        ),
    )


def _reached(share: float | None, threshold: float | None) -> bool:
    return share is not None and threshold is not None and share >= threshold


def budget_burn(*, rows: Sequence[Mapping[str, Any]], currency: str) -> dict[str, Any]:
    """Each budget's spend so far as a share of its amount, against its soft and hard thresholds
    (either may be unset: a budget that only warns has no hard threshold)."""
    names = [f"{row['name']} ({row['scope']}, {row['period']})" for row in rows]
    shares = [float(row["spent"] / row["amount"] * 100) if row["amount"] else None for row in rows]
    trace = _trace(
        go.Bar,
        y=names,
        x=shares,
        orientation="h",
        name="spent",
        marker={
            "color": [
                STATUS_COLOURS["missed"]
                if _reached(s, row["hard_pct"])
                else STATUS_COLOURS["warning"]
                if _reached(s, row["soft_pct"])
                else STATUS_COLOURS["met"]
                for s, row in zip(shares, rows, strict=True)
            ]
        },
        customdata=[[float(row["spent"]), float(row["amount"])] for row in rows],
        hovertemplate=f"%{{customdata[0]:.2f}} of %{{customdata[1]:.2f}} {currency} (%{{x:.0f}} %)<extra></extra>",
    )
    thresholds = [
        _trace(
            go.Scatter,
            x=[row[key] for row in rows],
            y=names,
            mode="markers",
            name=label,
            meta=REFERENCE,
            marker={"symbol": "line-ns-open", "size": 18, "color": colour},
        )
        for key, label, colour in (("soft_pct", "soft threshold", "#9a5b00"), ("hard_pct", "hard threshold", "#c0392b"))
    ]
    return _figure(
        [trace, *thresholds],
        _layout(
            f"Budget burn (% of amount in {currency})",
            xaxis={"title": {"text": "spent (% of budget)"}, "rangemode": "tozero"},
            yaxis={"title": {"text": "budget"}, "automargin": True},
            height=max(220, 110 + 40 * len(rows)),
        ),
    )


def sla_attainment(*, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Share of each pool's requests served within its SLA latency, 0-100 %, against the share its
    SLA asks for (``target``: 95 % for a P95 SLA), marked on each bar; bars met or missed by colour
    and by word, as ``met`` says (``fleet.selectors.pool_sla``: an end-to-end bound counts there too).

    Each bar's label ("97.5 % met") sits inside it at its base: a target is a percentile of 50 to
    99 (``Pool.sla_percentile``), so its mark is in the upper half of the axis, while a label at
    the bar's top would sit under the mark of any bar that reaches its target."""
    measured = [row for row in rows if row["attainment"] is not None]
    names = [row["name"] for row in measured]
    verdicts = ["met" if row["met"] else "missed" for row in measured]
    bars = _trace(
        go.Bar,
        x=names,
        y=[row["attainment"] * 100 for row in measured],
        name="within SLA",
        showlegend=False,
        text=verdicts,
        texttemplate="%{y:.1f} % %{text}",
        textposition="inside",
        insidetextanchor="start",
        customdata=[[row["sla"], row["target"] * 100] for row in measured],
        marker={"color": [STATUS_COLOURS[verdict] for verdict in verdicts]},
        hovertemplate="%{x}: %{y:.2f} % within %{customdata[0]}, target %{customdata[1]:.0f} %<extra>%{text}</extra>",
    )
    target = _trace(
        go.Scatter,
        x=names,
        y=[row["target"] * 100 for row in measured],
        mode="markers",
        name="target",
        meta=REFERENCE,
        marker={"symbol": "line-ew-open", "size": 40, "color": "#1d2330", "line": {"width": 3}},
        hovertemplate="%{x}: target %{y:.0f} % within the SLA<extra></extra>",
    )
    return _figure(
        [bars, target],
        _layout(
            "SLA attainment against each pool's target",
            xaxis={"title": {"text": "pool"}},
            yaxis={"title": {"text": "requests within SLA (%)"}, "range": [0, 100]},
        ),
    )


def decisions_timeline(*, decisions: Sequence[Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Every decision as a point at its time over the whole ``span``, one row per policy kind, the reason on hover.

    Markers are not clipped at the axis: a decision taken just now sits on the range's end and is drawn whole.
    """
    by_kind: dict[str, list[Any]] = {}
    for decision in decisions:
        by_kind.setdefault(decision.policy_kind, []).append(decision)
    traces = [
        _trace(
            go.Scatter,
            x=[d.created_at for d in rows],
            y=[kind] * len(rows),
            mode="markers",
            name=kind,
            meta={"policy_kind": kind},
            marker={"size": 10, "symbol": "diamond"},
            cliponaxis=False,
            customdata=[[d.action, d.pool.name if d.pool else "fleet", d.reason[:200]] for d in rows],
            hovertemplate="%{x}<br>%{customdata[0]} on %{customdata[1]}<br>%{customdata[2]}<extra></extra>",
        )
        for kind, rows in sorted(by_kind.items())
    ]
    return time_axes_range(
        _figure(
            traces,
            _layout(
                "Decisions over time",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "decided by"}, "type": "category"},
                showlegend=False,
            ),
        ),
        span,
    )


def request_latency(*, requests: Sequence[Any], span: tuple[datetime, datetime]) -> dict[str, Any]:
    """Latency (ms) of the requests listed, at their time across the filter's range, cold starts marked apart.

    The axis is the range, not the rows' own span: a page of the newest rows of a day sits at the
    day's end, as it would under any other chart of the range."""
    traces = []
    for cold, name, colour in ((False, "warm", "#2354c7"), (True, "cold start", "#c0392b")):
        rows = [r for r in requests if r.cold_start is cold]
        traces.append(
            _trace(
                go.Scatter,
                x=[r.at for r in rows],
                y=[r.latency_ms for r in rows],
                mode="markers",
                name=name,
                marker={"color": colour, "size": 7},
                customdata=[[r.tier, r.pool.name if r.pool else "–"] for r in rows],
                hovertemplate="%{y:.0f} ms, tier %{customdata[0]}, %{customdata[1]}<extra></extra>",
            )
        )
    return time_axes_range(
        _figure(
            traces,
            _layout(
                f"Latency of the {len(requests)} request{'' if len(requests) == 1 else 's'} listed",
                xaxis=TIME_AXIS,
                yaxis={"title": {"text": "latency (ms)"}, "rangemode": "tozero"},
            ),
        ),
        span,
    )
