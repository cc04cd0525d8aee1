"""The dashboard in a browser: live charts, a policy edited in the admin, and who may see it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from fleet import events
from fleet.decide.evaluate import Evaluation, policies_evaluate
from fleet.decide.services import node_create
from fleet.models import Decision, GpuSample, Instance, Policy, RollupWatermark
from tests.api.test_agent_api import batch, gpu_reading, report
from tests.browser.fleet_history import history_build
from tests.factories import make_gpu, make_instance, make_node, make_pool
from tests.support.browser import screenshot

pytestmark = pytest.mark.services
PASSWORD = "a-long-password-1"
POINTS = "fleetCharts.pointCount(document.getElementById('chart-live'))"


def sign_in(page: Any, server: str, path: str) -> None:
    User.objects.create_superuser("ops", "", PASSWORD)
    page.goto(f"{server}{path}")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server}{path}")


def wait_live(page: Any) -> None:
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'", timeout=10_000)


def charts_drawn(page: Any) -> int:
    page.wait_for_selector(".chart.js-plotly-plot", timeout=10_000)
    return page.locator(".chart.js-plotly-plot").count()


def evaluate_idle_reclaim() -> Evaluation:
    """One evaluation, as the Celery task runs it, in a thread of its own: Playwright's event
    loop holds this one, and publishing a decision needs a thread without a running loop."""

    def run() -> Evaluation:
        try:
            return policies_evaluate(kinds=["idle_reclaim"])
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result(timeout=30)


@pytest.fixture
def fresh_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new throttle and no fleet-wide claim left by an earlier test on this Redis."""
    monkeypatch.setattr(events, "_throttle", None)
    redis.Redis.from_url(settings.REDIS_URL).delete("gpufleet:fleet-summary")


def test_overview_chart_grows_as_an_agent_reports_and_every_page_draws(
    asgi_live_server: Any, page: Any, fresh_summaries: None
) -> None:
    pools = history_build()
    node, token = node_create(name="rack1-h100")
    api = httpx.Client(base_url=asgi_live_server.url, headers={"Authorization": f"Bearer {token}"})
    assert api.post("/api/agent/v1/report", json=batch(node.name, report(1, [gpu_reading(util=30)]))).status_code == 200

    sign_in(page, asgi_live_server.url, "/")
    wait_live(page)
    before = page.evaluate(POINTS)
    seq, deadline = 2, time.monotonic() + 20
    while page.evaluate(POINTS) <= before:
        assert time.monotonic() < deadline, "the live chart did not grow"
        response = api.post("/api/agent/v1/report", json=batch(node.name, report(seq, [gpu_reading(util=40 + seq)])))
        assert response.status_code == 200
        seq += 1
        page.wait_for_timeout(1_200)  # the fleet summary goes out at most once a second
    assert "/admin/login/" not in page.url and page.evaluate("performance.getEntriesByType('navigation').length") == 1
    trace = page.evaluate("document.getElementById('chart-live').data.find(t => t.name === 'rack1-h100/0')")
    assert trace["y"][-1] >= 42
    assert charts_drawn(page) == 3
    assert page.locator("#nodes .badge.sim").count() == 2
    screenshot(page, "overview")

    pages = {
        "pool": (f"/pools/{pools['chat-s'].pk}/?range=24h", 4),
        "costs": ("/costs/?range=24h", 5),
        "decisions": ("/decisions/?range=24h", 1),
        "savings": ("/savings/?range=24h", 0),
        "requests": ("/requests/", 1),
        "recommendations": ("/recommendations/", 0),
    }
    for name, (path, charts) in pages.items():
        page.goto(f"{asgi_live_server.url}{path}")
        if charts:
            assert charts_drawn(page) == charts, name
        screenshot(page, name)
    # With the rollups marked done the month has spend: each headline shows a figure and links
    # to the page that breaks it down.
    done = timezone.now().replace(second=0, microsecond=0)
    for name in ("minute", "hour"):
        RollupWatermark.objects.update_or_create(name=name, defaults={"done_until": done})
    page.goto(f"{asgi_live_server.url}/")
    for name in ("rate", "today", "month", "forecast", "efficiency", "idle", "savings"):
        assert page.locator(f"#headline-{name} .value").inner_text().strip() not in ("", "–"), name
        assert page.locator(f"#headline-{name} a").count() == 1, name
    assert page.locator("#headline-efficiency .value").inner_text().strip().endswith("%")
    assert page.locator("#headline-forecast a").get_attribute("href") == "/costs/?range=30d"
    screenshot(page, "overview-headlines")
    page.goto(f"{asgi_live_server.url}/recommendations/")
    assert page.locator("#recommendations").count() == 1
    page.goto(f"{asgi_live_server.url}/savings/?range=24h")
    assert "headline = attributed" in page.locator("#reconciliation").inner_text()
    demo_node = pools["chat-s"].instances.first().gpu.node
    page.goto(f"{asgi_live_server.url}/nodes/{demo_node.pk}/?range=1h")
    assert charts_drawn(page) == 4
    assert page.locator("h1 .badge.sim").inner_text() == "simulated"
    screenshot(page, "node")


def test_the_page_reconnects_after_a_server_restart_and_says_when_data_is_stale(
    asgi_live_server: Any, page: Any, fresh_summaries: None
) -> None:
    node, token = node_create(name="rack1-h100")
    api = httpx.Client(base_url=asgi_live_server.url, headers={"Authorization": f"Bearer {token}"})
    assert api.post("/api/agent/v1/report", json=batch(node.name, report(1, [gpu_reading(util=30)]))).status_code == 200
    sign_in(page, asgi_live_server.url, "/")
    wait_live(page)

    asgi_live_server.stop()
    page.wait_for_function("document.getElementById('live-state').className === 'down'", timeout=10_000)
    assert "reconnecting" in page.locator("#live-state").inner_text()
    asgi_live_server.start()
    wait_live(page)  # back by itself, within the backoff

    before = page.evaluate(POINTS)
    assert api.post("/api/agent/v1/report", json=batch(node.name, report(2, [gpu_reading(util=55)]))).status_code == 200
    page.wait_for_function(f"{POINTS} > {before}", timeout=10_000)  # subscribed again

    page.evaluate("document.querySelector('main').dataset.staleAfter = '1'")
    page.wait_for_function("document.getElementById('live-state').className === 'stale'", timeout=10_000)
    assert page.locator("#live-state").inner_text().startswith("stale: no update for")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_a_policy_edited_in_the_admin_shows_on_the_decisions_page_after_the_next_evaluation(
    asgi_live_server: Any, page: Any
) -> None:
    pool = make_pool("chat-l", min_instances=0, idle_minimize_after_s=60, idle_stop_after_s=120)
    gpu = make_gpu(make_node("rack2-l4"), 0)
    instance = make_instance(pool, gpu, actual_state="ready")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Instance.objects.filter(pk=instance.pk).update(ready_at=an_hour_ago, desired_changed_at=an_hour_ago)
    GpuSample.objects.create(gpu=gpu, at=timezone.now(), utilization_gpu_pct=50)
    policy = Policy.objects.get(kind="idle_reclaim", pool=None)
    assert not evaluate_idle_reclaim().applied  # busy at 50 % by the default 20 % threshold

    sign_in(page, asgi_live_server.url, f"/admin/fleet/policy/{policy.pk}/change/")
    page.fill("#id_idle_duty_cycle_pct", "80")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    page.goto(f"{asgi_live_server.url}/decisions/")
    wait_live(page)
    assert page.locator("#decisions tr.none").count() == 1

    GpuSample.objects.create(gpu=gpu, at=timezone.now(), utilization_gpu_pct=50)
    assert len(evaluate_idle_reclaim().applied) == 1
    decision = Decision.objects.get(policy_kind="idle_reclaim")
    row = page.locator(f"#decisions tr[data-decision='{decision.pk}']")
    row.wait_for(timeout=10_000)  # arrived over the socket, no reload
    assert f"stopping instance {instance.pk}" in row.inner_text()

    page.reload()
    row = page.locator(f"#decisions tr[data-decision='{decision.pk}']")
    assert "idle_reclaim" in row.inner_text() and f"stopping instance {instance.pk}" in row.inner_text()
    assert row.locator(f"a[href='/admin/fleet/policy/{policy.pk}/change/']").count() == 1
    assert decision.inputs["idle_duty_cycle_pct"] == 80


def test_anonymous_visitors_are_sent_to_sign_in_and_their_socket_is_refused(asgi_live_server: Any, page: Any) -> None:
    for path in ("/", "/costs/", "/decisions/", "/savings/", "/requests/", "/recommendations/"):
        page.goto(f"{asgi_live_server.url}{path}")
        assert "/admin/login/" in page.url, path
    outcome = page.evaluate(
        """() => new Promise((resolve) => {
            const socket = new WebSocket(`ws://${location.host}/ws/fleet/`);
            socket.onopen = () => resolve("open");
            socket.onclose = (event) => resolve(`closed ${event.code}`);
        })"""
    )
    assert outcome.startswith("closed"), outcome
