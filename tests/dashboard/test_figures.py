"""Figure builders: Plotly JSON with units on every axis and the currency on money."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from dashboard import figures

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
AT = [T0, T0 + timedelta(minutes=1)]


def axis_title(figure: dict[str, Any], axis: str) -> str:
    return figure["layout"][axis]["title"]["text"]


def as_json(figure: dict[str, Any]) -> dict[str, Any]:
    """What the page embeds: the figure must survive the template's JSON encoder."""
    return json.loads(json.dumps(figure, cls=DjangoJSONEncoder))


def test_heatmap_has_a_row_per_gpu_marks_simulated_ones_and_keeps_gaps() -> None:
    grid = {
        "at": AT,
        "rows": [{"id": 1, "label": "rack1/0", "simulated": False}, {"id": 2, "label": "demo/0", "simulated": True}],
        "by_node": False,
        "utilization": [[40.0, None], [10.0, 90.0]],
    }
    figure = as_json(figures.utilization_heatmap(grid=grid))
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
        figures.gpu_lines(series=series, field="memory_used", title="Memory", unit="memory used (GiB)", scale=1024**3)
    )
    trace = figure["data"][0]
    assert trace["y"] == [2.0, None]
    assert trace["meta"] == {"gpu": 7, "field": "memory_used", "scale": 1024**3}
    assert axis_title(figure, "yaxis") == "memory used (GiB)"


def test_pool_latency_draws_the_sla_line_across_the_range() -> None:
    history = {"at": AT, "p50": [100.0, 120.0], "p95": [300.0, 650.0], "p99": [400.0, 900.0]}
    figure = as_json(figures.pool_latency(history=history, sla_ms=500, sla_label="P95 TTFT <= 500 ms", metric="TTFT"))
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["P50", "P95", "P99", "SLA 500 ms"]
    assert figure["data"][-1]["hovertext"] == "P95 TTFT <= 500 ms"
    assert "TTFT" in figure["layout"]["title"]["text"]
    assert figure["data"][-1]["y"] == [500, 500]
    assert axis_title(figure, "yaxis") == "latency (ms)"


def test_queue_chart_puts_instances_on_a_second_axis() -> None:
    history = {"at": AT, "queue_mean": [1.0, 2.5], "queue_max": [3.0, 4.0], "instances": [1, 2]}
    figure = as_json(figures.pool_queue(history=history))
    assert figure["data"][2]["yaxis"] == "y2"
    assert axis_title(figure, "yaxis") == "requests waiting" and axis_title(figure, "yaxis2") == "instances"


def test_instance_states_stack_one_trace_per_state() -> None:
    states = {"at": AT, "states": {"ready": [1, 2], "sleeping": [1, 0]}}
    figure = as_json(figures.instance_states(states=states))
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
        "busy": [Decimal("1.25"), Decimal(0)],
        "idle": [Decimal("0.75"), Decimal(1)],
        "unallocated": [Decimal(0), Decimal("2.5")],
    }
    figure = as_json(figures.spend_over_time(buckets=buckets, currency="EUR"))
    assert [(t["name"], t["y"]) for t in figure["data"]] == [
        ("busy", [1.25, 0.0]),
        ("idle", [0.75, 1.0]),
        ("unallocated", [0.0, 2.5]),
    ]
    assert figure["layout"]["barmode"] == "stack"
    assert axis_title(figure, "yaxis") == "spend (EUR)" and "EUR" in figure["layout"]["title"]["text"]


def test_spend_by_pool_and_team_label_money_with_the_currency() -> None:
    pools = [
        {"name": "chat-l", "busy": Decimal("3"), "idle": Decimal("1")},
        {"name": "unallocated", "busy": Decimal(0), "idle": Decimal("2")},
    ]
    by_pool = as_json(figures.spend_by_pool(rows=pools, currency="USD"))
    assert by_pool["data"][0]["x"] == [3.0, 0.0] and by_pool["data"][1]["x"] == [1.0, 2.0]
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


def test_sla_attainment_is_a_percentage_of_pools_with_traffic() -> None:
    rows = [
        {"name": "chat-s", "sla": "P95 TTFT <= 500 ms", "attainment": 0.975},
        {"name": "quiet", "sla": "P95 TTFT <= 500 ms", "attainment": None},
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
    figure = as_json(figures.request_latency(requests=requests))
    assert [(t["name"], t["y"]) for t in figure["data"]] == [("warm", [120.0]), ("cold start", [9000.0])]
    assert axis_title(figure, "yaxis") == "latency (ms)"
