"""Figure builders: Plotly JSON with units on every axis and the currency on money."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from dashboard import figures

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
AT = [T0, T0 + timedelta(minutes=1)]
RANGE = (T0 - timedelta(hours=1), T0 + timedelta(minutes=2))


def axis_title(figure: dict[str, Any], axis: str) -> str:
    return figure["layout"][axis]["title"]["text"]


def as_json(figure: dict[str, Any]) -> dict[str, Any]:
    """What the page embeds: the figure must survive the template's JSON encoder."""
    return json.loads(json.dumps(figure, cls=DjangoJSONEncoder))


def test_heatmap_has_a_row_per_gpu_marks_simulated_ones_and_keeps_gaps() -> None:
    grid = {
        "at": AT,
        "step": timedelta(minutes=1),
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}, {"id": 2, "label": "demo/0", "simulated": True}],
        "by_node": False,
        "utilization": [[40.0, None], [10.0, 90.0]],
    }
    figure = as_json(figures.utilization_heatmap(grid=grid, span=RANGE))
    trace = figure["data"][0]
    assert trace["type"] == "heatmap"
    assert trace["y"] == ["rack1/0", "demo/0 (simulated)"]
    assert trace["z"] == [[40.0, None], [10.0, 90.0]]
    assert (trace["zmin"], trace["zmax"]) == (0, 100)
    assert "%" in trace["colorbar"]["title"]["text"]
    assert axis_title(figure, "xaxis") == "time (UTC)" and "GPU" in axis_title(figure, "yaxis")


def test_gpu_lines_scale_values_and_tag_traces_for_live_updates() -> None:
    series = [{"gpu": 7, "label": "rack1/0", "simulated": False, "at": AT, "memory_used": [2 * 1024**3, None]}]
    figure = as_json(
        figures.gpu_lines(
            series=series, field="memory_used", title="Memory", unit="memory used (GiB)", span=RANGE, scale=1024**3
        )
    )
    trace = figure["data"][0]
    assert trace["y"] == [2.0, None]
    assert trace["meta"] == {"gpu": 7, "field": "memory_used", "scale": 1024**3}
    assert axis_title(figure, "yaxis") == "memory used (GiB)"


def test_pool_latency_draws_the_sla_line_across_the_range() -> None:
    history = {"at": AT, "p50": [100.0, 120.0], "p95": [300.0, 650.0], "p99": [400.0, 900.0]}
    figure = as_json(
        figures.pool_latency(history=history, sla_ms=500, sla_label="P95 TTFT <= 500 ms", metric="TTFT", span=RANGE)
    )
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["P50", "P95", "P99", "SLA 500 ms"]
    assert figure["data"][-1]["hovertext"] == "P95 TTFT <= 500 ms"
    assert "TTFT" in figure["layout"]["title"]["text"]
    assert figure["data"][-1]["y"] == [500, 500]
    assert figure["data"][-1]["x"] == figure["layout"]["xaxis"]["range"]
    assert axis_title(figure, "yaxis") == "latency (ms)"


def test_a_lone_bucket_is_drawn_and_reference_lines_are_marked_as_such() -> None:
    """One minute of rollups must show as points (a line through one point draws nothing), and
    the SLA line, which draws with no data at all, says it is a reference."""
    history = {"at": AT[:1], "p50": [100.0], "p95": [300.0], "p99": [400.0]}
    latency = as_json(
        figures.pool_latency(history=history, sla_ms=500, sla_label="P95 TTFT <= 500 ms", metric="TTFT", span=RANGE)
    )
    queue = as_json(
        figures.pool_queue(history={"at": AT[:1], "queue_mean": [0.5], "queue_max": [2], "instances": [1]}, span=RANGE)
    )
    for trace in latency["data"][:3] + queue["data"]:
        assert "markers" in trace["mode"], trace["name"]
        assert not trace.get("meta"), trace["name"]
    assert latency["data"][3]["meta"] == {"reference": True}
    rows = [
        {
            "pool": 1,
            "name": "chat",
            "sla": "P95 TTFT <= 500 ms",
            "target": 0.95,
            "requests": 9,
            "attainment": 0.9,
            "met": False,
        }
    ]
    attainment = as_json(figures.sla_attainment(rows=rows))
    assert [trace.get("meta") for trace in attainment["data"]] == [None, {"reference": True}]


def test_queue_chart_puts_instances_on_a_second_axis() -> None:
    history = {"at": AT, "queue_mean": [1.0, 2.5], "queue_max": [3.0, 4.0], "instances": [1, 2]}
    figure = as_json(figures.pool_queue(history=history, span=RANGE))
    assert figure["data"][2]["yaxis"] == "y2"
    assert axis_title(figure, "yaxis") == "requests waiting" and axis_title(figure, "yaxis2") == "instances"


def test_instance_states_stack_one_trace_per_state() -> None:
    states = {"at": AT, "states": {"ready": [1, 2], "sleeping": [1, 0]}}
    figure = as_json(figures.instance_states(states=states, span=RANGE))
    assert [(t["name"], t["y"], t["stackgroup"]) for t in figure["data"]] == [
        ("ready", [1, 2], "states"),
        ("sleeping", [1, 0], "states"),
    ]
    assert axis_title(figure, "yaxis") == "instances"


def test_tier_traffic_counts_requests_per_routed_tier() -> None:
    figure = as_json(figures.tier_traffic(counts={"S": 3, "L": 10}))
    assert (figure["data"][0]["x"], figure["data"][0]["y"]) == (["L", "S"], [10, 3])
    assert axis_title(figure, "yaxis") == "requests" and figure["layout"]["yaxis"]["dtick"] == 1
    assert "dtick" not in as_json(figures.tier_traffic(counts={"M": 4000}))["layout"]["yaxis"]


def test_spend_over_time_stacks_busy_idle_unallocated_in_the_currency() -> None:
    buckets = {
        "at": AT,
        "step": timedelta(minutes=1),
        "busy": [Decimal("1.25"), Decimal(0)],
        "idle": [Decimal("0.75"), Decimal(1)],
        "unallocated": [Decimal(0), Decimal("2.5")],
    }
    figure = as_json(figures.spend_over_time(buckets=buckets, currency="EUR", span=RANGE))
    assert [(t["name"], t["y"]) for t in figure["data"]] == [
        ("busy", [1.25, 0.0]),
        ("idle", [0.75, 1.0]),
        ("unallocated", [0.0, 2.5]),
    ]
    assert figure["layout"]["barmode"] == "stack"
    assert axis_title(figure, "yaxis") == "spend (EUR)" and "EUR" in figure["layout"]["title"]["text"]


def test_spend_by_pool_and_team_label_money_with_the_currency() -> None:
    pools = [
        {"name": "chat-l", "busy": Decimal("3"), "idle": Decimal("1"), "unallocated": Decimal(0)},
        {"name": "unallocated", "busy": Decimal(0), "idle": Decimal(0), "unallocated": Decimal("2")},
    ]
    by_pool = as_json(figures.spend_by_pool(rows=pools, currency="USD"))
    assert [trace["x"] for trace in by_pool["data"]] == [[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    assert axis_title(by_pool, "xaxis") == "spend (USD)"
    by_team = as_json(figures.spend_by_team(rows=[{"name": "search", "spend": Decimal("4.5")}], currency="USD"))
    assert by_team["data"][0]["x"] == [4.5] and axis_title(by_team, "xaxis") == "spend (USD)"


def test_cost_per_million_tokens_leaves_out_pools_without_tokens() -> None:
    rows = [{"name": "chat-l", "cost": Decimal("0.8125")}, {"name": "idle-pool", "cost": None}]
    figure = as_json(figures.cost_per_million_tokens(rows=rows, currency="USD"))
    assert (figure["data"][0]["x"], figure["data"][0]["y"]) == (["chat-l"], [0.8125])
    assert axis_title(figure, "yaxis") == "USD per 1M tokens"


def test_budget_burn_colours_by_threshold_and_marks_both_thresholds() -> None:
    def budget(name: str, spent: str) -> dict[str, Any]:
        return {
            "name": name,
            "scope": "search",
            "period": "month",
            "amount": Decimal("100"),
            "spent": Decimal(spent),
            "soft_pct": 80,
            "hard_pct": 100,
        }

    figure = as_json(
        figures.budget_burn(rows=[budget("a", "50"), budget("b", "85"), budget("c", "120")], currency="USD")
    )
    bars = figure["data"][0]
    assert bars["x"] == [50.0, 85.0, 120.0]
    assert bars["marker"]["color"] == ["#2a9d55", "#e0a100", "#c0392b"]
    assert [t["x"] for t in figure["data"][1:]] == [[80, 80, 80], [100, 100, 100]]
    assert axis_title(figure, "xaxis") == "spent (% of budget)" and "USD" in figure["layout"]["title"]["text"]


def test_a_budget_that_only_warns_is_drawn_without_a_hard_threshold() -> None:
    """The demo's budget: 25.00 a day, warning at 80%, no hard stop. 21.00 spent is 84%: warned."""
    row = {
        "name": "demo",
        "scope": "demo team",
        "period": "day",
        "amount": Decimal("25"),
        "spent": Decimal("21"),
        "soft_pct": 80,
        "hard_pct": None,
    }
    figure = as_json(figures.budget_burn(rows=[row], currency="USD"))
    assert figure["data"][0]["marker"]["color"] == ["#e0a100"]
    assert [t["x"] for t in figure["data"][1:]] == [[80], [None]]


def test_sla_attainment_is_a_percentage_of_pools_with_traffic() -> None:
    rows = [
        {"name": "chat-s", "sla": "P95 TTFT <= 500 ms", "target": 0.95, "attainment": 0.975, "met": True},
        {"name": "quiet", "sla": "P95 TTFT <= 500 ms", "target": 0.95, "attainment": None, "met": False},
    ]
    figure = as_json(figures.sla_attainment(rows=rows))
    assert (figure["data"][0]["x"], figure["data"][0]["y"]) == (["chat-s"], [97.5])
    assert figure["layout"]["yaxis"]["range"] == [0, 100]
    assert axis_title(figure, "yaxis") == "requests within SLA (%)"


def test_decisions_timeline_has_one_row_per_policy_kind_with_reasons() -> None:
    pool = SimpleNamespace(name="chat-l")
    decisions = [
        SimpleNamespace(
            created_at=AT[0], policy_kind="autoscale", action="scale_out", pool=pool, reason="P95 over SLA"
        ),
        SimpleNamespace(created_at=AT[1], policy_kind="idle", action="sleep", pool=None, reason="idle 10 min"),
        SimpleNamespace(created_at=AT[1], policy_kind="autoscale", action="scale_in", pool=pool, reason="under band"),
    ]
    figure = as_json(figures.decisions_timeline(decisions=decisions, span=(T0 - timedelta(hours=1), AT[1])))
    assert [(t["name"], len(t["x"]), t["meta"]) for t in figure["data"]] == [
        ("autoscale", 2, {"policy_kind": "autoscale"}),
        ("idle", 1, {"policy_kind": "idle"}),
    ]
    assert figure["data"][1]["customdata"] == [["sleep", "fleet", "idle 10 min"]]
    assert figure["layout"]["xaxis"]["range"] == ["2026-11-25T07:00:00Z", "2026-11-25T08:01:00Z"]


def test_request_latency_separates_cold_starts() -> None:
    pool = SimpleNamespace(name="chat-l")
    requests = [
        SimpleNamespace(at=AT[0], latency_ms=120.0, cold_start=False, tier="L", pool=pool),
        SimpleNamespace(at=AT[1], latency_ms=9000.0, cold_start=True, tier="S", pool=None),
    ]
    figure = as_json(figures.request_latency(requests=requests, span=RANGE))
    assert [(t["name"], t["y"]) for t in figure["data"]] == [("warm", [120.0]), ("cold start", [9000.0])]
    assert axis_title(figure, "yaxis") == "latency (ms)"


def test_request_latency_spans_the_filters_range_not_the_rows() -> None:
    """Two rows a minute apart, filtered over a day: the axis is the day, the rows sit at its end."""
    day = (T0 - timedelta(hours=23), T0 + timedelta(hours=1))
    requests = [
        SimpleNamespace(at=at, latency_ms=100.0, cold_start=False, tier="S", pool=None) for at in (AT[0], AT[1])
    ]
    figure = as_json(figures.request_latency(requests=requests, span=day))
    layout = figure["layout"]
    assert layout["xaxis"]["range"] == ["2026-11-24T09:00:00Z", "2026-11-25T09:00:00Z"]
    assert layout["xaxis"]["autorange"] is False and layout["hovermode"] == "x"
    assert layout["title"]["text"] == "Latency of the 2 requests listed"
    assert figure["data"][0]["x"] == ["2026-11-25T08:00:00Z", "2026-11-25T08:01:00Z"]
    one = as_json(figures.request_latency(requests=requests[:1], span=day))
    assert one["layout"]["title"]["text"] == "Latency of the 1 request listed"


def test_utilization_lines_draw_the_heatmap_grid_as_one_line_a_row_over_the_range() -> None:
    """Minute columns 08:00 and 08:02 (none at 08:01), over 07:00-08:02:30: three points a line,
    a gap at 08:01, and the 08:02 bucket, half in the range, marked partial from 08:02 to 08:02:30."""
    grid = {
        "at": [T0, T0 + timedelta(minutes=2)],
        "step": timedelta(minutes=1),
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}, {"id": 2, "label": "demo/0", "simulated": True}],
        "by_node": False,
        "utilization": [[40.0, 60.0], [None, 90.0]],
    }
    span = (T0 - timedelta(hours=1), T0 + timedelta(minutes=2, seconds=30))
    figure = as_json(figures.utilization_lines(grid=grid, span=span))
    columns = ["2026-11-25T08:00:00Z", "2026-11-25T08:01:00Z", "2026-11-25T08:02:00Z"]
    assert [(t["name"], t["x"], t["y"]) for t in figure["data"]] == [
        ("rack1/0", columns, [40.0, None, 60.0]),
        ("demo/0 (simulated)", columns, [None, None, 90.0]),
    ]
    assert all(t["type"] == "scatter" and t["mode"] == "lines+markers" for t in figure["data"])
    layout = figure["layout"]
    assert layout["title"]["text"] == "GPU utilization (%), 1 min buckets"
    assert layout["xaxis"]["range"] == ["2026-11-25T07:00:00Z", "2026-11-25T08:02:30Z"]
    assert layout["xaxis"]["autorange"] is False and layout["hovermode"] == "x"
    assert layout["yaxis"]["range"] == [0, 100] and axis_title(figure, "yaxis") == "utilization (%)"
    assert partial_marks(figure) == (
        [("2026-11-25T08:02:00Z", "2026-11-25T08:02:30Z")],
        [("partial", "2026-11-25T08:02:30Z")],
    )

    by_node = {
        "at": [T0],
        "step": timedelta(days=1),
        "rows": [{"id": 1, "label": "rack1 (8 GPUs)", "simulated": False}],
        "by_node": True,
        "utilization": [[40.0]],
    }
    layout = as_json(figures.utilization_lines(grid=by_node, span=(T0, T0 + timedelta(days=1))))["layout"]
    assert layout["title"]["text"] == "GPU utilization by node (mean of its GPUs, %), 1 d buckets"
    assert layout["showlegend"] is True

    # 21 nodes: one more than a legend names; each line is still drawn, named on hover.
    rows = [{"id": n, "label": f"rack{n} (8 GPUs)", "simulated": False} for n in range(21)]
    many = as_json(figures.utilization_lines(grid={**by_node, "rows": rows, "utilization": [[40.0]] * 21}, span=span))
    assert len(many["data"]) == 21 and many["layout"]["showlegend"] is False


HOUR_MS = 3_600_000
SPAN = (T0 - timedelta(hours=1), T0 + timedelta(minutes=20))


def iso(at: datetime) -> str:
    return as_json({"at": at})["at"]


def test_time_series_x_axes_follow_the_chosen_range() -> None:
    """One column or one point must not shrink the axis to sub-millisecond ticks."""
    grid = {
        "at": [T0],
        "step": timedelta(hours=1),
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}],
        "by_node": False,
        "utilization": [[40.0]],
    }
    history = {"at": [T0], "p50": [1.0], "p95": [2.0], "p99": [3.0], "queue_mean": [0], "queue_max": [0]}
    history["instances"] = [1]
    buckets = {"at": [T0], "step": timedelta(hours=1), "busy": [1.0], "idle": [0.0], "unallocated": [0.0]}
    built = [
        figures.utilization_heatmap(grid=grid, span=SPAN),
        figures.gpu_lines(
            series=[{"gpu": 7, "label": "rack1/0", "at": [T0], "power": [100.0]}],
            field="power",
            title="Power",
            unit="power (W)",
            span=SPAN,
        ),
        figures.pool_latency(history=history, sla_ms=500, sla_label="P95 TTFT <= 500 ms", metric="TTFT", span=SPAN),
        figures.pool_queue(history=history, span=SPAN),
        figures.instance_states(states={"at": [T0], "states": {"ready": [1]}}, span=SPAN),
        figures.spend_over_time(buckets=buckets, currency="USD", span=SPAN),
    ]
    for figure in built:
        layout = as_json(figure)["layout"]
        assert layout["xaxis"]["range"] == [iso(SPAN[0]), iso(SPAN[1])], layout["title"]["text"]


def test_heatmap_columns_are_as_wide_as_their_bucket_with_gaps_left_empty() -> None:
    """Columns are given by their edges, so a lone column spans its hour; a missing hour stays blank."""
    grid = {
        "at": [T0 - timedelta(hours=2), T0],
        "step": timedelta(hours=1),
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}],
        "by_node": False,
        "utilization": [[40.0, 60.0]],
    }
    trace = as_json(figures.utilization_heatmap(grid=grid, span=(T0 - timedelta(hours=3), T0)))["data"][0]
    assert trace["x"] == [iso(T0 + timedelta(hours=h)) for h in (-2, -1, 0, 1)]
    assert trace["z"] == [[40.0, None, 60.0]]
    one = as_json(figures.utilization_heatmap(grid={**grid, "at": [T0], "utilization": [[60.0]]}, span=SPAN))
    assert one["data"][0]["x"] == [iso(T0), iso(T0 + timedelta(hours=1))]


def partial_marks(figure: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The lightened bands (from, to) and the labels (text, where) that mark partial buckets."""
    layout = figure["layout"]
    bands = [(mark["x0"], mark["x1"]) for mark in layout.get("shapes", []) if mark.get("name") == "partial"]
    labels = [(note["text"], note["x"]) for note in layout.get("annotations", []) if note.get("name") == "partial"]
    return bands, labels


def test_the_partial_bucket_is_marked_and_complete_ones_are_not() -> None:
    """The range ends 20 minutes into the T0 hour: that hour is partial, the two before it complete."""
    at = [T0 - timedelta(hours=2), T0 - timedelta(hours=1), T0]
    span = (T0 - timedelta(hours=2), T0 + timedelta(minutes=20))
    buckets = {"at": at, "step": timedelta(hours=1), "busy": [1, 2, 3], "idle": [1, 1, 1], "unallocated": [0, 0, 1]}
    grid = {
        "at": at,
        "step": timedelta(hours=1),
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}],
        "by_node": False,
        "utilization": [[10.0, 20.0, 30.0]],
    }
    bars = as_json(figures.spend_over_time(buckets=buckets, currency="USD", span=span))
    heatmap = as_json(figures.utilization_heatmap(grid=grid, span=span))
    for figure in (bars, heatmap):
        assert partial_marks(figure) == ([(iso(T0), iso(span[1]))], [("partial", iso(span[1]))])
    assert bars["data"][0]["customdata"] == [
        "2026-11-25 06:00 + 1 h",
        "2026-11-25 07:00 + 1 h",
        "2026-11-25 08:00 + 1 h (partial)",
    ]
    # Each bar is drawn over its own hour, not centred on the hour's start.
    first = bars["data"][0]
    assert first["x"][0] == iso(at[0]) and 0 <= first["offset"] < first["offset"] + first["width"] <= HOUR_MS

    # A range that starts mid-bucket cuts its first bucket too.
    cut = (at[0] + timedelta(minutes=5), span[1])
    late = as_json(figures.spend_over_time(buckets=buckets, currency="USD", span=cut))
    assert partial_marks(late)[0] == [(iso(cut[0]), iso(at[1])), (iso(T0), iso(span[1]))]

    # A range that ends with the last bucket holds every bucket whole.
    whole = (at[0], T0 + timedelta(hours=1))
    assert partial_marks(as_json(figures.spend_over_time(buckets=buckets, currency="USD", span=whole))) == ([], [])
    assert partial_marks(as_json(figures.utilization_heatmap(grid=grid, span=whole))) == ([], [])


def test_sla_bars_are_coloured_met_or_not_against_each_pools_target() -> None:
    rows = [
        {"name": "chat-s", "sla": "P95 TTFT <= 450 ms", "target": 0.95, "attainment": 0.97, "met": True},
        {"name": "chat-m", "sla": "P95 TTFT <= 600 ms", "target": 0.95, "attainment": 0.94, "met": False},
        {"name": "chat-l", "sla": "P99 TTFT <= 900 ms", "target": 0.99, "attainment": 0.985, "met": False},
        {"name": "code-l", "sla": "P90 E2E <= 9000 ms", "target": 0.90, "attainment": 0.90, "met": True},
        {"name": "quiet", "sla": "P95 TTFT <= 500 ms", "target": 0.95, "attainment": None, "met": False},
    ]
    figure = as_json(figures.sla_attainment(rows=rows))
    bars, target = figure["data"]
    assert bars["x"] == ["chat-s", "chat-m", "chat-l", "code-l"]
    met, missed = figures.STATUS_COLOURS["met"], figures.STATUS_COLOURS["missed"]
    assert bars["marker"]["color"] == [met, missed, missed, met]
    assert target["name"] == "target"
    assert target["x"] == bars["x"]
    assert target["y"] == pytest.approx([95.0, 95.0, 99.0, 90.0])


def test_sla_labels_sit_at_the_bars_base_clear_of_the_target_marks() -> None:
    """A bar that met its target reaches above the mark: a label at the bar's top ("100.0 % met" at
    100 %, the mark at 95 %) would be crossed by it. At the base, a label spans the bottom of the axis
    while the lowest target a pool may ask (P50) marks 50 %."""
    rows = [
        {"name": "chat-s", "sla": "P95 TTFT <= 450 ms", "target": 0.95, "attainment": 1.0, "met": True},
        {"name": "batch", "sla": "P50 E2E <= 9000 ms", "target": 0.50, "attainment": 0.60, "met": True},
    ]
    bars, target = as_json(figures.sla_attainment(rows=rows))["data"]
    assert (bars["textposition"], bars["insidetextanchor"]) == ("inside", "start")
    assert bars["texttemplate"] == "%{y:.1f} % %{text}" and bars["text"] == ["met", "met"]
    assert bars["y"] == pytest.approx([100.0, 60.0])
    assert min(target["y"]) == pytest.approx(50.0)


def test_a_spend_category_has_one_colour_on_every_chart() -> None:
    buckets = {"at": AT, "step": timedelta(minutes=1), "busy": [1, 1], "idle": [1, 1], "unallocated": [1, 1]}
    over_time = as_json(figures.spend_over_time(buckets=buckets, currency="USD", span=(AT[0], AT[-1])))
    rows = [
        {"name": "chat-l", "busy": Decimal(3), "idle": Decimal(1), "unallocated": Decimal(0)},
        {"name": "unallocated", "busy": Decimal(0), "idle": Decimal(0), "unallocated": Decimal(2)},
    ]
    by_pool = as_json(figures.spend_by_pool(rows=rows, currency="USD"))

    def colours(figure: dict[str, Any]) -> dict[str, str]:
        return {trace["name"]: trace["marker"]["color"] for trace in figure["data"]}

    assert (
        colours(over_time)
        == colours(by_pool)
        == {part: figures.SPEND_COLOURS[part] for part in ("busy", "idle", "unallocated")}
    )
    assert len(set(figures.SPEND_COLOURS.values())) == len(figures.SPEND_COLOURS)
    unallocated = next(trace for trace in by_pool["data"] if trace["name"] == "unallocated")
    assert unallocated["x"] == [0.0, 2.0]


def test_time_axes_range_sets_every_time_axis_to_exactly_the_range() -> None:
    """Hand-built layout: two time axes (one autoscaled to its data), a numeric x-axis and a y-axis."""
    figure = {
        "data": [],
        "layout": {
            "title": {"text": "two time axes"},
            "xaxis": {"type": "date", "autorange": True},
            "xaxis2": {"type": "date", "range": [T0, T0 + timedelta(minutes=5)]},
            "xaxis3": {"type": "linear", "range": [0, 1]},
            "yaxis": {"range": [0, 5]},
        },
    }
    start, end = T0 - timedelta(hours=6), T0 + timedelta(minutes=30)
    layout = figures.time_axes_range(figure, (start, end))["layout"]
    for name in ("xaxis", "xaxis2"):
        assert layout[name]["range"] == [start, end] and layout[name]["autorange"] is False, name
    assert layout["xaxis3"]["range"] == [0, 1] and layout["yaxis"]["range"] == [0, 5]
    assert layout["hovermode"] == "x"  # hover picks every trace at the pointer's instant
    heatmap = {"data": [{"type": "heatmap"}], "layout": {"xaxis": {"type": "date"}}}
    assert figures.time_axes_range(heatmap, (start, end))["layout"]["hovermode"] == "closest"  # its cell, not a column


@pytest.mark.parametrize(
    ("layout", "span", "message"),
    [
        ({"xaxis": {"type": "date"}}, (T0, T0), "must end after it starts"),
        ({"xaxis": {"type": "date"}}, (T0, T0 - timedelta(hours=1)), "must end after it starts"),
        ({"title": {"text": "pools"}, "xaxis": {"type": "category"}}, (T0 - timedelta(hours=1), T0), "no time x-axis"),
    ],
)
def test_time_axes_range_refuses_an_empty_range_or_a_figure_without_time(
    layout: dict[str, Any], span: tuple[datetime, datetime], message: str
) -> None:
    figure = {"data": [], "layout": json.loads(json.dumps(layout))}
    with pytest.raises(ValueError, match=message):
        figures.time_axes_range(figure, span)
    assert figure["layout"] == layout


def test_every_time_chart_spans_the_range_and_hovers_by_instant() -> None:
    """The page's charts share one x-range and hover at an instant, with a spike line, so the
    browser can zoom and hover them together; data one hour into a six-hour range leaves the rest empty."""
    span = (T0 - timedelta(hours=5), T0 + timedelta(hours=1))
    history: dict[str, list[Any]] = {"at": [T0], "p50": [1.0], "p95": [2.0], "p99": [3.0], "instances": [1]}
    history.update(queue_mean=[0], queue_max=[0])
    decision = SimpleNamespace(created_at=T0, policy_kind="autoscale", action="scale_out", pool=None, reason="busy")
    built = [
        figures.gpu_lines(
            series=[{"gpu": 7, "label": "rack1/0", "at": AT, "power": [100.0, 110.0]}],
            field="power",
            title="Power",
            unit="power (W)",
            span=span,
        ),
        figures.pool_latency(history=history, sla_ms=500, sla_label="P95 TTFT <= 500 ms", metric="TTFT", span=span),
        figures.pool_queue(history=history, span=span),
        figures.decisions_timeline(decisions=[decision], span=span),
    ]
    for figure in built:
        layout = as_json(figure)["layout"]
        assert layout["xaxis"]["range"] == [iso(span[0]), iso(span[1])], layout["title"]["text"]
        assert layout["xaxis"]["autorange"] is False and layout["hovermode"] == "x"
        assert layout["xaxis"]["showspikes"] is True and layout["xaxis"]["spikemode"] == "across"
