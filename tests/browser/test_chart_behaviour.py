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
    area = page.locator(f"#{chart} .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
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
    # The page's own range was rendered, not the zoom the address bar holds: a reset finds the whole day drawn.
    shown = page.evaluate(PAGE_RANGE)
    assert shown[1] - shown[0] == 24 * 3_600_000 and "range=custom" in page.url


def custom_range(start: Any, end: Any) -> str:
    return f"range=custom&start={start:%Y-%m-%dT%H:%M}&end={end:%Y-%m-%dT%H:%M}"


def test_the_overviews_line_chart_follows_the_range_except_the_default_live_hour(
    asgi_live_server: Any, page: Any
) -> None:
    history_build()
    end = timezone.now().replace(second=0, microsecond=0)
    start = end - timedelta(hours=6)
    sign_in(page, asgi_live_server.url, f"/?{custom_range(start, end)}")

    # A chosen range: the line chart is drawn over it from rollups and linked with the heatmap.
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 2", timeout=WAIT_MS)
    chosen = [start.timestamp() * 1000, end.timestamp() * 1000]
    assert page.evaluate(RANGES) == [chosen, chosen]
    assert page.evaluate("fleetTime.linked.map((div) => div.id)") == ["chart-live", "chart-heatmap"]
    assert page.locator("#chart-live").get_attribute("data-live") == ""  # rollups: no reading extends it
    assert page.locator("#live-note").count() == 0
    screenshot(page, "overview-custom-range")

    # A preset range ending now: the same, over the preset's span.
    page.click("#range a:text-is('7d')")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 2", timeout=WAIT_MS)
    week = page.evaluate(PAGE_RANGE)
    assert week[1] - week[0] == 7 * 24 * 3_600_000
    assert page.evaluate(RANGES) == [week, week]

    # 1h: the live chart is the page's range, linked, and still streams.
    page.click("#range a:text-is('1h')")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 2", timeout=WAIT_MS)
    assert page.locator("#chart-live").get_attribute("data-live") == "fleet"
    assert page.evaluate("fleetTime.linked.map((div) => div.id)") == ["chart-live", "chart-heatmap"]

    # The default range: the live chart keeps streaming the last hour, on its own, and says so.
    page.click("#range a:text-is('24h')")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 1", timeout=WAIT_MS)
    assert page.evaluate("fleetTime.linked.map((div) => div.id)") == ["chart-heatmap"]
    assert page.locator("#chart-live").get_attribute("data-live") == "fleet"
    assert "last hour" in page.locator("#live-note").inner_text()
    hour = page.evaluate(RANGES.replace("fleetTime.linked", "[document.getElementById('chart-live')]"))[0]
    assert 3_600_000 - 5_000 <= hour[1] - hour[0] <= 3_600_000 + 5_000
    screenshot(page, "overview-default-range")


def test_the_requests_chart_spans_the_filters_range(asgi_live_server: Any, page: Any) -> None:
    history_build()
    end = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=40)
    sign_in(page, asgi_live_server.url, f"/requests/?{custom_range(start, end)}")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 1", timeout=WAIT_MS)
    chosen = [start.timestamp() * 1000, end.timestamp() * 1000]
    assert page.evaluate(RANGES) == [chosen]
    screenshot(page, "requests-range")

    # Zoomed, the filter form asks for the zoomed range.
    drag(page, "chart-latency", 0.4, 0.9)
    page.wait_for_function("fleetTime.zoomed() !== null", timeout=WAIT_MS)
    zoomed = page.evaluate(RANGES)[0]
    page.select_option("#filters select[name=cold]", "no")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**cold=no**")
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 1", timeout=WAIT_MS)
    shown = page.evaluate(PAGE_RANGE)
    assert abs(shown[0] - zoomed[0]) <= 1000 and abs(shown[1] - zoomed[1]) <= 1000, (shown, zoomed)


def test_a_zoom_is_in_the_url_so_a_reload_shows_the_same_span(asgi_live_server: Any, page: Any) -> None:
    history_build()
    end = timezone.now().replace(second=0, microsecond=0)
    start = end - timedelta(hours=6)
    path = f"/?{custom_range(start, end)}&refresh=5m"
    sign_in(page, asgi_live_server.url, path)
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 2", timeout=WAIT_MS)
    original, entries = page.url, page.evaluate("history.length")

    # A zoom replaces the address (no new history entry); a reset puts the page's own back.
    drag(page, "chart-heatmap", 0.2, 0.5)
    page.wait_for_function("fleetTime.zoomed() !== null", timeout=WAIT_MS)
    assert page.url != original and "range=custom" in page.url and "refresh=5m" in page.url
    assert page.evaluate("history.length") == entries
    assert "range=custom" in page.locator("#refresh a:text-is('30s')").get_attribute("href")
    page.locator("#chart-live .nsewdrag").first.dblclick()
    page.wait_for_function("fleetTime.zoomed() === null", timeout=WAIT_MS)
    assert page.url == original

    drag(page, "chart-live", 0.3, 0.6)
    page.wait_for_function("fleetTime.zoomed() !== null", timeout=WAIT_MS)
    zoomed = page.evaluate(RANGES)[0]
    all_at(page, zoomed, within_ms=1)

    # Reloaded, the server draws every chart over the zoomed span (to the second the URL holds).
    page.reload()
    page.wait_for_function("window.fleetTime && fleetTime.linked.length === 2", timeout=WAIT_MS)
    all_at(page, zoomed, within_ms=1000)
    shown = page.evaluate(PAGE_RANGE)
    assert abs(shown[0] - zoomed[0]) <= 1000 and abs(shown[1] - zoomed[1]) <= 1000, (shown, zoomed)
    assert page.locator("#refresh a.on").inner_text() == "5m"
    screenshot(page, "overview-zoom-reloaded")
