"""The requests page in a browser: filtered, and its newest page taking new matching requests as they arrive."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fleet.decide.services import api_key_create, request_logs_write
from fleet.models import RequestLog, Team
from tests.browser.test_dashboard import sign_in, wait_live
from tests.factories import make_pool, make_request_record

pytestmark = pytest.mark.services


def test_new_requests_that_match_the_filters_come_in_on_top_and_others_do_not(asgi_live_server: Any, page: Any) -> None:
    """Filtered to tier S: the one S request shows; then an S and an L request are logged as the gateway logs
    them. Within a refresh (15 s) the new S request is the top row, above the first; the L one never shows.
    The CSV export of the same filters holds the two S requests."""
    key, _secret = api_key_create(team=Team.objects.create(name="Research", slug="research"), name="ci")
    pool = make_pool("chat-s")

    def logged(tier: str) -> int:
        record = make_request_record(at=time.time(), key_id=key.pk, team_id=key.team_id, pool_id=pool.pk, tier=tier)
        request_logs_write(records=[record])
        return RequestLog.objects.order_by("-id").values_list("pk", flat=True)[0]

    first = logged("S")
    sign_in(page, asgi_live_server.url, "/requests/?tier=S")
    wait_live(page)
    assert page.locator("#requests tbody tr").count() == 1
    new_s, new_l = logged("S"), logged("L")
    page.wait_for_selector(f"#requests tr[data-request='{new_s}']", timeout=25_000)
    order = page.eval_on_selector_all("#requests tbody tr", "rows => rows.map(row => Number(row.dataset.request))")
    assert order == [new_s, first]
    assert page.locator(f"#requests tr[data-request='{new_l}']").count() == 0
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1, "no reload: the rows came in live"

    # The page's CSV link, served by the panel as shipped (ASGI): the same two S requests, newest first.
    link = page.get_attribute("#export-requests", "href")
    assert link is not None and "tier=S" in link
    download = page.request.get(f"{asgi_live_server.url}{link}")
    assert download.ok and download.headers["content-type"].startswith("text/csv")
    lines = download.text().splitlines()
    assert lines[0].startswith("id,at_utc,team,api_key,pool")
    assert [int(line.split(",")[0]) for line in lines[1:]] == [new_s, first]
