"""The pages: signed-in users only, charts from rollups, empty states that say what to do."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dashboard.views import PLOTLY_JS, PLOTLY_JS_VERSION
from fleet.models import Alert, AlertRule, BatchJob, Budget, Decision, PoolHour, Team
from fleet.telemetry.rollups import HOUR, floor_hour, pool_hours_compute
from tests.costs.history import price, states
from tests.dashboard.history import gpu_rollups, pool_rollup, request
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet() -> dict[str, object]:
    """A real node and a simulated one with an hour of rollups, a pool with traffic and decisions."""
    now = timezone.now().replace(second=0, microsecond=0)
    real, demo = make_node("rack1-h100"), make_node("demo-l4", simulated=True)
    gpu, sim_gpu = make_gpu(real, 0, "NVIDIA H100 80GB HBM3"), make_gpu(demo, 0, "NVIDIA L4")
    price("NVIDIA H100 80GB HBM3", "2.50", date(2026, 1, 1))
    price("NVIDIA L4", "0.80", date(2026, 1, 1))
    for item in (gpu, sim_gpu):
        gpu_rollups(item, now - timedelta(minutes=30), 30)
        gpu_rollups(item, now - timedelta(hours=5), 4, hourly=True)
    pool = make_pool("chat-l")
    instance = make_instance(pool, gpu, actual_state="ready")
    states(instance, (now - timedelta(minutes=40), "starting"), (now - timedelta(minutes=39), "ready"))
    for i in range(5):
        pool_rollup(pool, now - timedelta(minutes=10 - i), requests=20, fast=i != 4)
    # And the hour rows the rollup task makes of those minutes: a page reads complete hours
    # from hour rollups, so in the first minutes of an hour these minutes are an hour ago.
    PoolHour.objects.bulk_create(pool_hours_compute(start=floor_hour(now) - HOUR, end=floor_hour(now) + HOUR))
    Decision.objects.create(
        policy_kind="autoscale", pool=pool, action="scale_out", reason="P95 over the SLA for 3 windows"
    )
    request(pool, now - timedelta(minutes=1), tier="S", cold_start=True, latency_ms=8200)
    request(pool, now - timedelta(minutes=2), tier="L")
    BatchJob.objects.create(name="nightly-embeddings", image="batch:1", memory_bytes=1024**3, gpu=gpu, state="running")
    team = Team.objects.create(name="search", slug="search")
    Budget.objects.create(name="search monthly", team=team, amount=100, spent=85)
    rule = AlertRule.objects.create(name="silent nodes", kind="node_silent")
    Alert.objects.create(
        rule=rule, key="node:rack9", state="firing", message="rack9 silent for 5 min", started_at=now, fired_at=now
    )
    return {"real": real, "demo": demo, "pool": pool, "gpu": gpu}


def urls(fleet: dict[str, object]) -> list[str]:
    return [
        reverse("dashboard:index"),
        reverse("dashboard:pool", args=[fleet["pool"].pk]),  # type: ignore[attr-defined]
        reverse("dashboard:node", args=[fleet["real"].pk]),  # type: ignore[attr-defined]
        reverse("dashboard:costs"),
        reverse("dashboard:decisions"),
        reverse("dashboard:requests"),
    ]


def figures_in(page: str) -> dict[str, dict[str, object]]:
    found = {}
    for chunk in page.split('<script id="figure-')[1:]:
        name, rest = chunk.split('"', 1)
        found[name] = json.loads(rest.split(">", 1)[1].split("</script>", 1)[0])
    return found


def test_every_page_sends_anonymous_visitors_to_sign_in(client: Client, fleet: dict[str, object]) -> None:
    for url in urls(fleet):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_overview_shows_spend_heatmap_sla_alerts_and_live_chart(admin_client: Client, fleet: dict[str, object]) -> None:
    page = admin_client.get(reverse("dashboard:index") + "?range=1h").content.decode()
    charts = figures_in(page)
    assert set(charts) == {"live", "heatmap", "sla"}
    assert charts["heatmap"]["data"][0]["y"] == ["demo-l4/0 (simulated)", "rack1-h100/0"]
    assert len(charts["heatmap"]["data"][0]["z"][0]) == 30  # columns; x holds their 31 edges
    assert charts["sla"]["data"][0]["y"] == [80.0]
    assert 'data-live-groups="fleet"' in page and 'data-live="fleet"' in page
    assert "USD/h" in page and "Month to date" in page
    assert "rack9 silent for 5 min" in page
    assert page.count('class="badge sim">simulated') == 1


def test_pool_page_shows_latency_against_sla_states_and_tier_traffic(
    admin_client: Client, fleet: dict[str, object]
) -> None:
    pool = fleet["pool"]
    page = admin_client.get(reverse("dashboard:pool", args=[pool.pk]) + "?range=1h").content.decode()  # type: ignore[attr-defined]
    charts = figures_in(page)
    assert set(charts) == {"latency", "queue", "states", "traffic"}
    assert charts["latency"]["data"][-1]["name"] == "SLA 500 ms"
    assert charts["traffic"]["data"][0]["x"] == ["L", "S"]
    assert f'data-live-groups="pool.{pool.pk}"' in page  # type: ignore[attr-defined]
    assert "P95 over the SLA for 3 windows" in page
    assert reverse("admin:fleet_pool_change", args=[pool.pk]) in page  # type: ignore[attr-defined]


def test_node_page_shows_each_gpu_metric_and_what_runs_there(admin_client: Client, fleet: dict[str, object]) -> None:
    node = fleet["real"]
    page = admin_client.get(reverse("dashboard:node", args=[node.pk]) + "?range=1h").content.decode()  # type: ignore[attr-defined]
    charts = figures_in(page)
    assert set(charts) == {"utilization", "memory", "power", "temperature"}
    assert charts["memory"]["data"][0]["y"][0] == 8.0  # GiB
    assert charts["memory"]["layout"]["yaxis"]["title"]["text"] == "memory used (GiB)"
    assert "nightly-embeddings" in page and "chat-l" in page
    demo = admin_client.get(reverse("dashboard:node", args=[fleet["demo"].pk])).content.decode()  # type: ignore[attr-defined]
    assert 'class="badge sim">simulated' in demo


def test_cost_page_splits_spend_and_burns_budgets(admin_client: Client, fleet: dict[str, object]) -> None:
    page = admin_client.get(reverse("dashboard:costs") + "?range=24h").content.decode()
    charts = figures_in(page)
    assert {"spend", "by-pool", "per-million", "budgets"} <= set(charts)
    assert [t["name"] for t in charts["spend"]["data"]] == ["busy", "idle", "unallocated"]
    assert charts["spend"]["layout"]["yaxis"]["title"]["text"] == "spend (USD)"
    assert charts["budgets"]["data"][0]["x"] == [85.0]
    assert "No team spend in this range" in page


def test_decisions_page_filters_by_policy_kind(admin_client: Client, fleet: dict[str, object]) -> None:
    Decision.objects.create(policy_kind="idle", pool=fleet["pool"], action="sleep", reason="no request for 10 min")
    page = admin_client.get(reverse("dashboard:decisions") + "?kind=idle").content.decode()
    assert "no request for 10 min" in page and "P95 over the SLA" not in page
    assert [t["name"] for t in figures_in(page)["timeline"]["data"]] == ["idle"]


def test_requests_page_lists_tier_pool_latency_and_cold_starts(admin_client: Client, fleet: dict[str, object]) -> None:
    page = admin_client.get(reverse("dashboard:requests")).content.decode()
    assert page.count("cold start</span>") == 1 and "8200" in page
    only_s = admin_client.get(reverse("dashboard:requests") + "?tier=S").content.decode()
    assert only_s.count('<tr data-request="') == 1


@pytest.mark.parametrize("key", ["1h", "24h", "7d", "30d"])
def test_history_never_reads_raw_samples(admin_client: Client, fleet: dict[str, object], key: str) -> None:
    for url in urls(fleet):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(f"{url}?range={key}").status_code == 200
        raw = [
            q["sql"]
            for q in queries.captured_queries
            if ("fleet_gpusample" in q["sql"] or "fleet_instancesample" in q["sql"]) and "EXISTS" not in q["sql"]
        ]
        assert raw == [], url


def test_empty_fleet_pages_say_what_to_do_next(admin_client: Client) -> None:
    expected = {
        reverse("dashboard:index"): "No GPUs have reported yet",
        reverse("dashboard:costs"): "No GPU time in this range",
        reverse("dashboard:decisions"): "No decisions in this range",
        reverse("dashboard:requests"): "No requests yet",
    }
    for url, text in expected.items():
        assert text in admin_client.get(url).content.decode(), url


def test_plotly_is_served_from_the_package_with_long_caching(client: Client) -> None:
    response = client.get(reverse("dashboard:plotly-js", args=[PLOTLY_JS_VERSION]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert "max-age=31536000" in response["Cache-Control"] and "immutable" in response["Cache-Control"]
    assert response.content == PLOTLY_JS.read_bytes()
    assert client.get(reverse("dashboard:plotly-js", args=["0.0.1"])).status_code == 404


def test_pages_load_plotly_from_the_panel_not_a_cdn(admin_client: Client) -> None:
    page = admin_client.get(reverse("dashboard:index")).content.decode()
    assert reverse("dashboard:plotly-js", args=[PLOTLY_JS_VERSION]) in page
    assert "cdn" not in page.lower()


def test_longer_range_advice_only_where_there_is_history_before_the_range(admin_client: Client) -> None:
    """An empty chart says to pick a longer range only when an earlier rollup exists; otherwise what to wait for."""
    gpu = make_gpu(make_node("rack1"), 0)
    pool = make_pool("chat-l")
    pages = [
        reverse("dashboard:index") + "?range=1h",
        reverse("dashboard:node", args=[gpu.node_id]) + "?range=1h",
        reverse("dashboard:pool", args=[pool.pk]) + "?range=1h",
    ]
    for url in pages:
        page = admin_client.get(url).content.decode().lower()
        assert "longer range" not in page, url
        assert "a minute or two" in page, url
    hours_ago = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=3)
    gpu_rollups(gpu, hours_ago, 2)
    pool_rollup(pool, hours_ago, requests=5)
    for url in pages:
        assert "pick a longer range" in admin_client.get(url).content.decode().lower(), url


def test_each_chart_is_as_tall_as_its_figure(admin_client: Client, fleet: dict[str, object]) -> None:
    """Plotly's resize takes the div's height over the layout's: without one every chart shrinks to the minimum."""
    page = admin_client.get(reverse("dashboard:index") + "?range=1h").content.decode()
    charts = figures_in(page)
    assert charts
    for name, figure in charts.items():
        assert f'id="chart-{name}" style="height:{figure["layout"]["height"]}px"' in page, name
