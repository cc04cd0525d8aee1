"""A page's time charts in a browser: one range, zoomed together, hovered together, refreshed on a timer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.models import Node
from tests.browser.fleet_history import history_build
from tests.browser.test_dashboard import sign_in
from tests.support.browser import screenshot

pytestmark = pytest.mark.services
WAIT_MS = 20_000
# Each linked chart's x-range, in milliseconds since the epoch (Plotly's strings carry no zone: UTC).
RANGES = """() => fleetTime.linked.map((div) => div.layout.xaxis.range.map((value) => {
    let text = String(value).replace(" ", "T");
    return Date.parse(/(Z|[+-]\\d\\d:?\\d\\d)$/.test(text) ? text : `${text}Z`);
}))"""
TIMED_REFRESHES = "Number(document.querySelector('main').dataset.timedRefreshes || 0)"
PAGE_RANGE = "() => ['start', 'end'].map((end) => Date.parse(document.getElementById('range').dataset[end]))"


def drag(page: Any, chart: str, start: float, end: float) -> None:
    """Drag across the plot area of ``chart`` from ``start`` to ``end`` (shares of its width), as a zoom."""
    box = page.locator(f"#{chart} .nsewdrag").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end, y, steps=8)
    page.mouse.up()


def all_at(page: Any, expected: list[float], *, within_ms: float) -> None:
    """Wait until every linked chart's x-range is ``expected`` (ms), within ``within_ms``."""
    page.wait_for_function(
        f"""([expected, within]) => ({RANGES})().every((range) =>
            Math.abs(range[0] - expected[0]) <= within && Math.abs(range[1] - expected[1]) <= within)""",
        arg=[expected, within_ms],
        timeout=WAIT_MS,
    )


def test_time_charts_share_the_range_zoom_and_hover(asgi_live_server: Any, page: Any) -> None:
    pools = history_build()
    node = Node.objects.get(gpus__instances__pool=pools["chat-s"])
    end = timezone.now().replace(second=0, microsecond=0)
    start = end - timedelta(hours=3)
    path = f"/nodes/{node.pk}/?range=custom&start={start:%Y-%m-%dT%H:%M}&end={end:%Y-%m-%dT%H:%M}"
    sign_in(page, asgi_live_server.url, path)
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 4", timeout=WAIT_MS)

    # Every chart spans exactly the chosen range, though the data reaches back 24 hours.
    chosen = [start.timestamp() * 1000, end.timestamp() * 1000]
    assert page.evaluate(PAGE_RANGE) == chosen
    assert page.evaluate(RANGES) == [chosen] * 4

    # A drag on one zooms them all; the range bar offers the zoomed range as a custom range.
    drag(page, "chart-utilization", 0.3, 0.6)
    page.wait_for_function("fleetTime.zoomed() !== null", timeout=WAIT_MS)
    zoomed = page.evaluate(RANGES)[0]
    assert chosen[0] < zoomed[0] < zoomed[1] < chosen[1]
    all_at(page, zoomed, within_ms=1)
    assert page.locator("#range-zoom").is_visible()
    assert "range=custom" in page.locator("#range-zoom-load").get_attribute("href")

    # Hovering one shows the same instant on the others: their x-axis labels read alike.
    box = page.locator("#chart-memory .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function(
        "['utilization', 'memory', 'power', 'temperature'].every((name) =>"
        " document.querySelectorAll(`#chart-${name} .hoverlayer .hovertext`).length > 0)",
        timeout=WAIT_MS,
    )
    labels = page.evaluate(
        "['utilization', 'memory', 'power', 'temperature'].map((name) =>"
        " document.querySelector(`#chart-${name} .hoverlayer .axistext`)?.textContent)"
    )
    assert labels[0] and len(set(labels)) == 1, labels
    screenshot(page, "charts-hover")

    # A double-click puts every chart back on the chosen range.
    page.locator("#chart-power .nsewdrag").first.dblclick()
    all_at(page, chosen, within_ms=1)
    page.wait_for_function("fleetTime.zoomed() === null", timeout=WAIT_MS)
    assert not page.locator("#range-zoom").is_visible()


def test_a_page_refreshes_on_the_period_in_its_url_and_keeps_the_zoom(asgi_live_server: Any, page: Any) -> None:
    pools = history_build()
    sign_in(page, asgi_live_server.url, f"/pools/{pools['chat-s'].pk}/?range=24h&refresh=5s")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 3", timeout=WAIT_MS)
    assert page.locator("#refresh a.on").inner_text() == "5s"
    assert page.locator("#refresh").get_attribute("data-seconds") == "5"

    drag(page, "chart-latency", 0.9, 0.99)
    page.wait_for_function("fleetTime.zoomed() !== null", timeout=WAIT_MS)
    zoomed = page.evaluate(RANGES)[0]
    page.mouse.move(0, 0)  # off the charts: a refresh waits while a pointer is on one
    page.evaluate("window.drawnBefore = document.getElementById('chart-latency')")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(TIMED_REFRESHES + " >= 1", timeout=90_000)
    except PlaywrightTimeout:
        state = page.evaluate("({...document.querySelector('main').dataset, interacting: fleetTime.interacting()})")
        raise AssertionError(f"no timed refresh: {state}") from None
    # Drawn anew from the server's page, and still on the zoomed range.
    page.wait_for_function("document.getElementById('chart-latency') !== window.drawnBefore", timeout=WAIT_MS)
    all_at(page, zoomed, within_ms=1)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
