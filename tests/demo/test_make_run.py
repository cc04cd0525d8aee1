"""The README's first command, ``make run``, from a clean copy of the repository, looked at as a person does.

The demo (``tests.support.demo_run``, one for the session: ``conftest.py``) runs with its
default options for a minute or two and every dashboard page and the admin are opened in Debian's Chromium: any failed
request, console error, chart without drawn data, live chart that does not move or
unstyled admin page fails the test. The last test sends Ctrl-C and checks that nothing is
left behind, simulated engines included.

With ``FLEET_SCREENSHOTS=1`` the screenshots land in ``docs/screenshots/`` (the README's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.support.browser import screenshot
from tests.support.demo_run import Demo, Problems, login, make_run
from tests.support.sim_engine import process_running

EVENT_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 30.0
# By when, from the start, every chart must have drawn data: "a minute or two" of the demo
# brings engines past their 30 s cold start, requests answered through them, the first
# complete minutes rolled up (the rollup runs each minute) and a few policy decisions.
CHARTS_BY_S = 240.0
# How long the test waits for an in-page change that the panel promises every few seconds.
MOVE_TIMEOUT_MS = 30_000
# Spend is shown in cents: four simulated H100s at about 2 USD an hour add a cent every few seconds.
SPEND_MOVES_MS = 60_000

pytestmark = pytest.mark.services


# Data a chart has drawn: its data traces' values that are not empty (heatmaps: cells), not
# counting reference lines and targets (``meta.reference``), which draw without any data.
DRAWN = """(div) => div.data.reduce((total, trace) => {
    if (trace.meta && trace.meta.reference) return total;
    const values = trace.z ? trace.z.flat() : (trace.orientation === "h" ? trace.x : trace.y) || [];
    return total + values.filter((value) => value !== null && value !== undefined).length;
}, 0)"""


def charts_drawn(page: Any) -> dict[str, int]:
    """Every chart's id and its drawn points, once Plotly has drawn each chart box of the page."""
    boxes = page.locator(".chart").count()
    page.wait_for_function(f"document.querySelectorAll('.chart.js-plotly-plot').length === {boxes}")
    script = f"Array.from(document.querySelectorAll('.chart')).map((div) => [div.id, ({DRAWN})(div)])"
    return dict(page.evaluate(script))


def charts_settled(page: Any, demo: Demo, url: str, expected: set[str]) -> dict[str, int]:
    """The page's charts once the expected ones are there with data, loading it again until the
    demo has run ``CHARTS_BY_S``; then whatever the page draws is what a person sees."""
    while True:
        page.goto(url)
        drawn = charts_drawn(page)
        if (expected <= drawn.keys() and all(drawn.values())) or time.monotonic() - demo.started > CHARTS_BY_S:
            return drawn
        page.wait_for_timeout(5_000)


def admin_styled(page: Any) -> bool:
    """The admin's own stylesheet applies: its header is coloured, not the browser's transparent default."""
    colour = page.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor")
    return colour not in ("rgba(0, 0, 0, 0)", "transparent")


def test_make_run_draws_every_page_in_a_browser_and_it_moves(demo: Demo, page: Any) -> None:
    problems = Problems(page)
    username, password = demo.credentials()

    problems.where = "login"
    page.goto(f"{demo.base}/")
    assert "/admin/login/" in page.url
    assert admin_styled(page), "the login page is unstyled: the admin's stylesheets were not served"
    screenshot(page, "login", docs=True)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{demo.base}/")

    problems.where = "overview"
    drawn = charts_settled(page, demo, f"{demo.base}/?range=1h", {"chart-live", "chart-heatmap", "chart-sla"})
    assert drawn.keys() >= {"chart-live", "chart-heatmap", "chart-sla"} and all(drawn.values()), drawn
    assert page.locator(".demo-banner").count() == 1, "no banner says the fleet is simulated"
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'", timeout=10_000)
    live = "fleetCharts.pointCount(document.getElementById('chart-live'))"
    before = page.evaluate(live)
    page.wait_for_function(f"{live} > {before}", timeout=MOVE_TIMEOUT_MS)  # the live trace grows
    spend = "document.getElementById('spend').innerText"
    before = page.evaluate(spend)
    page.wait_for_function(  # the spend cards, refreshed while the page stays open, count on
        f"{spend} !== {json.dumps(before)}", timeout=SPEND_MOVES_MS
    )
    assert page.evaluate("document.querySelector('main').dataset.refreshedAt")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    screenshot(page, "overview", docs=True)

    client = login(demo.base, username, password)
    pools = sorted(set(re.findall(r'href="(/pools/\d+/)"', client.get("/").text)))
    nodes = sorted(set(re.findall(r'href="(/nodes/\d+/)"', client.get("/").text)))
    assert len(pools) == 3 and len(nodes) == 2, (pools, nodes)
    pools_charts = {"chart-latency", "chart-queue", "chart-states", "chart-traffic"}
    pages = {
        "costs": ("/costs/?range=1h", {"chart-spend", "chart-by-pool", "chart-by-team", "chart-per-million"}),
        "decisions": ("/decisions/?range=1h", {"chart-timeline"}),
        "requests": ("/requests/", {"chart-latency"}),
        "hosts-add": ("/hosts/add/", set()),
        **{f"pool-{tier}": (f"{path}?range=1h", pools_charts) for tier, path in zip("sml", pools, strict=True)},
        **{
            f"node-{index}": (f"{path}?range=1h", {"chart-utilization", "chart-memory", "chart-power"})
            for index, path in enumerate(nodes, 1)
        },
    }
    for name, (path, expected) in pages.items():
        problems.where = name
        drawn = charts_settled(page, demo, f"{demo.base}{path}", expected)
        assert drawn.keys() >= expected and all(drawn.values()), (name, drawn)
        assert page.locator(".demo-banner").count() == 1, name
        screenshot(page, name, docs=True)

    for name, path in {"admin": "/admin/", "admin-policies": "/admin/fleet/policy/"}.items():
        problems.where = name
        page.goto(f"{demo.base}{path}")
        assert admin_styled(page), f"{name} is unstyled"
        screenshot(page, name, docs=True)
    assert problems.seen == [], "\n".join(problems.seen)


def engine_pids(repo: Path) -> list[int]:
    records = (repo / "var" / "demo" / "hosts").glob("*/processes/*.json")
    return [json.loads(path.read_text())["pid"] for path in records]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace") if entry.name.isdigit() else ""
        except OSError:
            continue
        if text in command and process_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_make_run_refuses_a_busy_port_in_one_line(tmp_path: Path, demo: Demo) -> None:
    """A second demo on the first one's port says so before it migrates or starts anything."""
    demo.credentials()
    process = make_run(demo.repo, demo.port)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    refusal = [line for line in output.splitlines() if "in use" in line]
    assert len(refusal) == 1 and f"port {demo.port}" in refusal[0], output
    assert "Demo running" not in output and "Login:" not in output


@pytest.mark.demo_stops
def test_make_run_serves_a_live_simulated_fleet_and_stops_cleanly(demo: Demo) -> None:
    process, output, repo = demo.process, demo.output, demo.repo
    client = login(demo.base, *demo.credentials())
    page = client.get("/")
    assert page.status_code == 200 and 'class="badge sim">simulated' in page.text and "simulated-host-1" in page.text

    headers = {"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": demo.base}
    with connect(f"ws://127.0.0.1:{demo.port}/ws/fleet/", additional_headers=headers, open_timeout=5) as socket:
        asked = time.monotonic()
        event = json.loads(socket.recv(timeout=EVENT_TIMEOUT_S))
        assert time.monotonic() - asked < EVENT_TIMEOUT_S
    assert event["kind"] in {"fleet", "node", "instances", "decision"}, event

    served = output.wait_for(r"replay: .* ok ([1-9]\d*),", process)  # requests answered through the gateway
    assert int(served.group(1)) > 0
    deadline = time.monotonic() + 15
    while not (pids := engine_pids(repo)):  # the replayer's first requests make the gateway wake pools
        assert time.monotonic() < deadline, "no simulated engine was started"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    process.wait(STOP_TIMEOUT_S)
    output.thread.join(5)
    assert "Demo stopped." in "".join(output.lines)
    assert [pid for pid in pids if process_running(pid)] == []
    assert processes_mentioning(str(repo)) == [], "agents, panel or replayer left behind"
