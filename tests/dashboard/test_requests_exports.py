"""The requests page's filters, pages and detail; the CSV exports; the alert history."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings
from django.urls import reverse

from dashboard import request_log
from dashboard.request_log import billing_days
from dashboard.selectors import time_range_parse
from fleet.costs.selectors import fleet_window, spend_report, spend_reports_by_day
from fleet.costs.spend import SpendReport
from fleet.decide.services import api_key_create
from fleet.models import Alert, AlertRule, RequestLog, RollupWatermark, Team
from fleet.telemetry.rollups import days_rollup
from tests.costs.history import mig_device, price, states, utc
from tests.dashboard.history import gpu_rollups, request
from tests.dashboard.history import request as log_request
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"
# 1 March 2024, 09:00 to 14:00 UTC: the log below holds five requests, four of them in this range.
RANGE = {"range": "custom", "start": "2024-03-01T09:00:00+00:00", "end": "2024-03-01T14:00:00+00:00"}


@pytest.fixture
def log() -> dict[str, Any]:
    """Five requests, hand-built. Team A (keys a1, a2) sent #1-#3, team B (key b1) #4-#5:

    #1 10:00 A/a1 pool S tier S 200       #4 12:00 B/b1 pool L tier L 200
    #2 11:00 A/a1 pool L tier L 200 cold  #5 15:00 B/b1 pool L tier L 503 (outside RANGE)
    #3 11:00 A/a2 pool L tier L 502       (#2 and #3 share a time: the id breaks the tie)
    """
    team_a, team_b = Team.objects.create(name="A", slug="a"), Team.objects.create(name="B", slug="b")
    a1, _ = api_key_create(team=team_a, name="a1")
    a2, _ = api_key_create(team=team_a, name="a2")
    b1, _ = api_key_create(team=team_b, name="b1")
    small, large = make_pool("chat-s"), make_pool("chat-l")
    rows = [
        request(small, utc(2024, 3, 1, 10), tier="S", team=team_a, api_key=a1, latency_ms=100),
        request(large, utc(2024, 3, 1, 11), tier="L", team=team_a, api_key=a1, cold_start=True, latency_ms=9100),
        request(large, utc(2024, 3, 1, 11), tier="L", team=team_a, api_key=a2, status=502, error="upstream"),
        request(large, utc(2024, 3, 1, 12), tier="L", team=team_b, api_key=b1),
        request(large, utc(2024, 3, 1, 15), tier="L", team=team_b, api_key=b1, status=503),
    ]
    return {"a": team_a, "b": team_b, "a1": a1, "a2": a2, "b1": b1, "small": small, "large": large, "rows": rows}


def shown(response: Any) -> list[int]:
    """The request ids a page lists, top to bottom, as positions 1-5 in the fixture."""
    return [int(pk) for pk in re.findall(r'data-request="(\d+)"', response.content.decode())]


def numbers(log: dict[str, Any], *positions: int) -> list[int]:
    return [log["rows"][position - 1].pk for position in positions]


def test_filters_by_team_key_pool_tier_status_cold_start_and_range(admin_client: Client, log: dict[str, Any]) -> None:
    """Newest first, ties by id: #4, #3, #2, #1 in RANGE (#5 at 15:00 is outside it).
    Team A: #3, #2, #1 (3 of the 5). Key a1: #2, #1. Pool chat-s: #1. Tier L: #4, #3, #2.
    Status error: #3 (502; #5's 503 is outside). Status 502: #3. Cold start only: #2; no cold start: #4, #3, #1.
    10:30-11:30: #3, #2. Team B over all of 1 March (00:00-23:59): #5, #4."""
    url = reverse("dashboard:requests")
    assert shown(admin_client.get(url, RANGE)) == numbers(log, 4, 3, 2, 1)
    assert shown(admin_client.get(url, {**RANGE, "team": log["a"].pk})) == numbers(log, 3, 2, 1)
    assert shown(admin_client.get(url, {**RANGE, "key": log["a1"].pk})) == numbers(log, 2, 1)
    assert shown(admin_client.get(url, {**RANGE, "pool": log["small"].pk})) == numbers(log, 1)
    assert shown(admin_client.get(url, {**RANGE, "tier": "L"})) == numbers(log, 4, 3, 2)
    assert shown(admin_client.get(url, {**RANGE, "status": "error"})) == numbers(log, 3)
    assert shown(admin_client.get(url, {**RANGE, "status": "502"})) == numbers(log, 3)
    assert shown(admin_client.get(url, {**RANGE, "cold": "yes"})) == numbers(log, 2)
    assert shown(admin_client.get(url, {**RANGE, "cold": "no"})) == numbers(log, 4, 3, 1)
    narrow = {**RANGE, "start": "2024-03-01T10:30:00+00:00", "end": "2024-03-01T11:30:00+00:00"}
    assert shown(admin_client.get(url, narrow)) == numbers(log, 3, 2)
    whole_day = {**RANGE, "start": "2024-03-01T00:00:00+00:00", "end": "2024-03-01T23:59:00+00:00"}
    assert shown(admin_client.get(url, {**whole_day, "team": log["b"].pk})) == numbers(log, 5, 4)


def test_pages_are_keyset_pages_that_end_where_the_rows_end(admin_client: Client, log: dict[str, Any]) -> None:
    """Two a page over RANGE's four rows (#4, #3, #2, #1): [#4, #3], then [#2, #1] with no older page;
    #3 and #2 share 11:00, so the cursor after #3 must carry its id or #2 would be lost or repeated."""
    url = reverse("dashboard:requests")
    first = admin_client.get(url, {**RANGE, "per": 2})
    assert shown(first) == numbers(log, 4, 3)
    older = re.search(r'id="older" href="\?([^"]+)"', first.content.decode())
    assert older is not None
    second = admin_client.get(url + "?" + older.group(1).replace("&amp;", "&"))
    assert shown(second) == numbers(log, 2, 1)
    assert 'id="older"' not in second.content.decode()
    assert "Newest</a>" in second.content.decode()
    exactly = admin_client.get(url, {**RANGE, "per": 4})
    assert shown(exactly) == numbers(log, 4, 3, 2, 1) and 'id="older"' not in exactly.content.decode()
    assert 'data-live-groups="fleet"' in first.content.decode(), "the newest page takes new rows as they arrive"
    assert "data-live-groups" not in second.content.decode(), "an older page stays as it is"


def test_one_request_shows_every_field(admin_client: Client, log: dict[str, Any]) -> None:
    cold = log["rows"][1]
    page = admin_client.get(reverse("dashboard:request", args=[cold.pk])).content.decode()
    for text in ("2024-03-01 11:00:00", ">A<", "a1 (", "chat-l", "9100.0 ms", "held while its pool woke from zero"):
        assert text in page, text
    assert admin_client.get(reverse("dashboard:request", args=[cold.pk + 100])).status_code == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"team": "999"}, "No team &#x27;999&#x27;"),
        ({"key": "x"}, "No API key &#x27;x&#x27;"),
        ({"pool": "999"}, "No pool &#x27;999&#x27;"),
        ({"tier": "XL"}, "No tier &#x27;XL&#x27;"),
        ({"status": "fine"}, "Status &#x27;fine&#x27; is neither ok, error nor an HTTP status"),
        ({"cold": "maybe"}, "Cold start &#x27;maybe&#x27; is neither yes nor no"),
        ({"per": "5000"}, "Page size &#x27;5000&#x27; is not a number from 1 to 200"),
        ({"before": "yesterday"}, "The page cursor &#x27;yesterday&#x27; cannot be read"),
        ({"range": "1y"}, "Unknown range &#x27;1y&#x27;"),
        ({"start": "2024-03-01T14:00:00+00:00", "end": "2024-03-01T09:00:00+00:00"}, "must end after it starts"),
    ],
)
def test_a_bad_filter_is_refused_with_a_message_and_no_rows(
    admin_client: Client, log: dict[str, Any], params: dict[str, str], message: str
) -> None:
    response = admin_client.get(reverse("dashboard:requests"), {**RANGE, **params})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert shown(response) == [], "an unfiltered table is never shown as if it were filtered"
    export = admin_client.get(reverse("dashboard:requests-csv"), {**RANGE, **params})
    if "before" not in params and "per" not in params:
        assert export.status_code == 400 and export.content.startswith(b"Not exported: ")


def test_the_page_costs_the_same_queries_however_many_rows(
    admin_client: Client, log: dict[str, Any], django_assert_num_queries: Any
) -> None:
    """Session and user (2), the demo banner's simulated-node count (1), teams, keys, pools (3) and the page's
    rows (1): 7, for 4 rows as for 24."""
    url = reverse("dashboard:requests")
    with django_assert_num_queries(7):
        admin_client.get(url, RANGE)
    for minute in range(20):
        request(log["large"], utc(2024, 3, 1, 13, minute), team=log["b"], api_key=log["b1"])
    with django_assert_num_queries(7):
        assert len(shown(admin_client.get(url, RANGE))) == 24


def read_csv(response: Any) -> list[list[str]]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_the_request_export_holds_the_filtered_rows_of_the_range(admin_client: Client, log: dict[str, Any]) -> None:
    """Team A in RANGE: #3, #2, #1, newest first, with their keys, pools and statuses; the link on the page carries
    the filters."""
    page = admin_client.get(reverse("dashboard:requests"), {**RANGE, "team": log["a"].pk}).content.decode()
    link = re.search(r'id="export-requests" href="([^"]+)"', page)
    assert link is not None
    table = read_csv(admin_client.get(link.group(1).replace("&amp;", "&")))
    assert table[0][:5] == ["id", "at_utc", "team", "api_key", "pool"]
    assert [row[0] for row in table[1:]] == [str(pk) for pk in numbers(log, 3, 2, 1)]
    assert [(row[1], row[3], row[4], row[15], row[16]) for row in table[1:]] == [
        ("2024-03-01T11:00:00+00:00", "a2", "chat-l", "502", "False"),
        ("2024-03-01T11:00:00+00:00", "a1", "chat-l", "200", "True"),
        ("2024-03-01T10:00:00+00:00", "a1", "chat-s", "200", "False"),
    ]


def test_an_export_over_the_bound_is_refused(
    admin_client: Client, log: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dashboard.request_log.EXPORT_ROWS_MAX", 3)
    response = admin_client.get(reverse("dashboard:requests-csv"), RANGE)
    assert response.status_code == 400
    assert b"4 requests match, more than the 3 one export holds" in response.content


def test_exports_need_a_signed_in_user(client: Client, log: dict[str, Any]) -> None:
    for name in ("dashboard:requests-csv", "dashboard:spend-csv", "dashboard:alerts", "dashboard:requests"):
        assert client.get(reverse(name), RANGE).status_code == 302, name


@pytest.fixture
def spend(settings) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A 2.00/GPU-hour card. Its instance in chat-l was ready 22:00 on 1 March to 02:00 on 2 March, the card up
    (hour rollups) 22:00-03:00: allocated 2 h x 2.00 = 4.00 on each day, unallocated 02:00-03:00 = 2.00 on
    2 March; 10.00 in all. chat-l's usage: on 1 March team A 3 s (key a1 2 s, a2 1 s), team B 1 s (key b1)
    of requests; on 2 March team A's key a1 only."""
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "2.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    pool = make_pool("chat-l")
    instance = make_instance(pool, gpu)
    states(instance, (utc(2024, 3, 1, 22), "ready"), (utc(2024, 3, 2, 2), "stopped"))
    gpu_rollups(gpu, utc(2024, 3, 1, 22), 5, hourly=True)
    RollupWatermark.objects.create(name="minute", done_until=utc(2024, 3, 2, 4))
    team_a, team_b = Team.objects.create(name="A", slug="a"), Team.objects.create(name="B", slug="b")
    keys = ((team_a, "a1"), (team_a, "a2"), (team_b, "b1"))
    a1, a2, b1 = (api_key_create(team=team, name=name)[0] for team, name in keys)
    request(pool, utc(2024, 3, 1, 23), team=team_a, api_key=a1, latency_ms=2000)
    request(pool, utc(2024, 3, 1, 23), team=team_a, api_key=a2, latency_ms=1000)
    request(pool, utc(2024, 3, 1, 23), team=team_b, api_key=b1, latency_ms=1000)
    request(pool, utc(2024, 3, 2, 0, 30), team=team_a, api_key=a1, latency_ms=500)
    return {"pool": pool}


SPEND_RANGE = {"range": "custom", "start": "2024-03-01T20:00:00+00:00", "end": "2024-03-02T04:00:00+00:00"}


def costs_total(client: Client) -> Decimal:
    page = client.get(reverse("dashboard:costs"), SPEND_RANGE).content.decode()
    found = re.search(r"Spend in range</div><div class=\"value\">([\d.]+) USD", page)
    assert found is not None
    return Decimal(found.group(1))


def test_spend_by_day_and_pool_adds_up_to_the_costs_page_total(admin_client: Client, spend: dict[str, Any]) -> None:
    """1 March chat-l 4.00; 2 March chat-l 4.00 and unallocated 2.00: 10.00, the costs page's total."""
    page = admin_client.get(reverse("dashboard:costs"), SPEND_RANGE).content.decode()
    link = re.search(r'id="spend-csv-pool" href="([^"]+)"', page)
    assert link is not None
    table = read_csv(admin_client.get(link.group(1).replace("&amp;", "&")))
    assert table[0] == ["day", "pool", "spend", "currency"]
    rows = [(day, pool, Decimal(amount).quantize(Decimal("0.01")), cur) for day, pool, amount, cur in table[1:]]
    assert rows == [
        ("2024-03-01", "chat-l", Decimal("4.00"), "USD"),
        ("2024-03-02", "chat-l", Decimal("4.00"), "USD"),
        ("2024-03-02", "unallocated", Decimal("2.00"), "USD"),
    ]
    total = sum((Decimal(row[2]) for row in table[1:]), Decimal(0))
    assert total.quantize(Decimal("0.01")) == costs_total(admin_client) == Decimal("10.00")


def test_spend_by_day_and_team_shares_each_pool_by_usage(admin_client: Client, spend: dict[str, Any]) -> None:
    """1 March: 4.00 x 3/4 = 3.00 to A, 4.00 x 1/4 = 1.00 to B; 2 March: 4.00 to A, 2.00 unallocated. Sum 10.00."""
    table = read_csv(admin_client.get(reverse("dashboard:spend-csv"), {**SPEND_RANGE, "group": "team"}))
    assert table[0] == ["day", "team", "spend", "currency"]
    assert [(day, team, Decimal(amount).quantize(Decimal("0.01"))) for day, team, amount, _ in table[1:]] == [
        ("2024-03-01", "A", Decimal("3.00")),
        ("2024-03-01", "B", Decimal("1.00")),
        ("2024-03-02", "A", Decimal("4.00")),
        ("2024-03-02", "unallocated", Decimal("2.00")),
    ]
    assert sum((Decimal(row[2]) for row in table[1:]), Decimal(0)) == costs_total(admin_client)


def test_spend_by_day_and_key_shares_each_pool_by_each_keys_usage(admin_client: Client, spend: dict[str, Any]) -> None:
    """1 March: 4.00 x 2/4 = 2.00 to A's a1, x 1/4 = 1.00 to a2 and 1.00 to B's b1; 2 March: 4.00 to a1,
    2.00 unallocated. Sum 10.00, the costs page's total; A's keys add up to A's 3.00 of 1 March."""
    table = read_csv(admin_client.get(reverse("dashboard:spend-csv"), {**SPEND_RANGE, "group": "key"}))
    assert table[0] == ["day", "key", "spend", "currency"]
    assert [(day, key, Decimal(amount).quantize(Decimal("0.01"))) for day, key, amount, _ in table[1:]] == [
        ("2024-03-01", "A: a1", Decimal("2.00")),
        ("2024-03-01", "A: a2", Decimal("1.00")),
        ("2024-03-01", "B: b1", Decimal("1.00")),
        ("2024-03-02", "A: a1", Decimal("4.00")),
        ("2024-03-02", "unallocated", Decimal("2.00")),
    ]
    assert sum((Decimal(row[2]) for row in table[1:]), Decimal(0)) == costs_total(admin_client)


def test_a_bad_spend_export_is_refused(admin_client: Client, spend: dict[str, Any]) -> None:
    bad_group = admin_client.get(reverse("dashboard:spend-csv"), {**SPEND_RANGE, "group": "gpu"})
    assert bad_group.status_code == 400 and b"Group 'gpu' is neither pool, team nor key." in bad_group.content
    long = {**SPEND_RANGE, "start": "2023-11-01T00:00:00+00:00"}  # 122 days
    too_long = admin_client.get(reverse("dashboard:spend-csv"), long)
    assert too_long.status_code == 400 and b"at most 92 days" in too_long.content


def per_day_reports(*, days: list[tuple[datetime, datetime]]) -> list[SpendReport]:
    """The reference: each billing day its own window and report, as the export read them before one pass."""
    return [
        spend_report(start=first, end=last, window=fleet_window(start=first, end=last, raw=False))
        for first, last in days
    ]


@pytest.fixture
def days_history(settings, request: pytest.FixtureRequest) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Four billing days (3-6 March 2024) in the time zone the test names.

    Fleet price 2.00/GPU-h, 3.50 from 4 March (a local midnight, mid-day in UTC, inside holds);
    node 2's own 1.25 from 5 March. Card g1 (node 1, whole) is shared: instance A (pool chat-l)
    ready from 3 March 20:00 local across midnight to 4 March 03:00, sleeping to 06:00, ready to
    5 March 14:00; instance B (chat-l) ready 4 March 01:00-09:00 (the card split in half). Card g2
    (node 2, MIG) holds instance C (chat-m, 3g slice) ready 4 March 22:00 to 6 March 02:00 and is
    up with a gap (hour rollups with two hours missing around each UTC day's start). Teams A and
    B send requests to both pools on every day but 6 March, where chat-m has spend and no usage.
    """
    tz = ZoneInfo(request.param)
    settings.FLEET_BILLING_TIMEZONE = request.param

    def local(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2024, 3, day, hour, minute, tzinfo=tz)

    price(GPU, "2.0000", date(2024, 1, 1))
    price(GPU, "3.5000", date(2024, 3, 4))
    node1, node2 = make_node("gpu-host-1"), make_node("gpu-host-2")
    price(GPU, "1.2500", date(2024, 3, 5), node=node2)
    g1, g2 = make_gpu(node1, model_name=GPU), make_gpu(node2, model_name=GPU, mig_mode="enabled")
    large, medium = make_pool("chat-l"), make_pool("chat-m", tier="M", isolation="mig", mig_profile="3g.40gb")
    a, b = make_instance(large, g1), make_instance(large, g1)
    c = make_instance(medium, g2, mig_device=mig_device(g2, "3g.40gb"))
    states(a, (local(3, 20), "ready"), (local(4, 3), "sleeping"), (local(4, 6), "ready"), (local(5, 14), "stopped"))
    states(b, (local(4, 1), "ready"), (local(4, 9), "stopped"))
    states(c, (local(4, 22), "ready"), (local(6, 2), "stopped"))
    first_hour = datetime(2024, 3, 2, tzinfo=UTC)
    gpu_rollups(g1, first_hour, 5 * 24, hourly=True)
    for day in range(5):  # g2 reports 02:00-24:00 UTC of each day
        gpu_rollups(g2, first_hour + timedelta(days=day, hours=2), 22, hourly=True)
    days_rollup(start=first_hour, end=first_hour + timedelta(days=5))
    RollupWatermark.objects.create(name="minute", done_until=first_hour + timedelta(days=5))
    RollupWatermark.objects.create(name="hour", done_until=first_hour + timedelta(days=5))
    RollupWatermark.objects.create(name="day", done_until=first_hour + timedelta(days=5))
    team_a, team_b = Team.objects.create(name="A", slug="a"), Team.objects.create(name="B", slug="b")
    key_a, key_b = api_key_create(team=team_a, name="a1")[0], api_key_create(team=team_b, name="b1")[0]
    for day in (3, 4, 5):
        for pool, team, key, ms in ((large, team_a, key_a, 3000), (large, team_b, key_b, 1000 * day)):
            log_request(pool, local(day, 21), team=team, api_key=key, latency_ms=ms)
        log_request(medium, local(day, 23), team=team_b, api_key=key_b, latency_ms=700)
    # From 3 March 07:15 to 6 March 04:45 local: the first and last days are partial.
    return {"range": {"range": "custom", "start": local(3, 7, 15).isoformat(), "end": local(6, 4, 45).isoformat()}}


@pytest.mark.parametrize("days_history", ["America/New_York", "Asia/Kolkata", "UTC"], indirect=True)
@pytest.mark.parametrize("group", ["pool", "team", "key"])
def test_spend_export_read_in_one_pass_gives_each_days_own_rows(
    admin_client: Client,
    days_history: dict[str, Any],
    group: str,
    monkeypatch: pytest.MonkeyPatch,
    django_assert_max_num_queries: Any,
) -> None:
    """The export's rows, read in one pass, are exactly (to the last digit, in the same order) the rows
    each billing day's own window and report give; and each day's report prices the same lines (with
    no duty cycle read: nothing counted busy)."""
    url, query = reverse("dashboard:spend-csv"), {**days_history["range"], "group": group}
    with django_assert_max_num_queries(12 + 4 * 4) as one_pass:
        table = read_csv(admin_client.get(url, query))
    days = billing_days(time_range_parse(params=query).start, time_range_parse(params=query).end)
    assert [report.lines for report in spend_reports_by_day(days=days)] == [
        [replace(line, busy=Decimal(0), idle=line.spend, utilization=None) for line in report.lines]
        for report in per_day_reports(days=days)
    ]
    monkeypatch.setattr(request_log, "spend_reports_by_day", per_day_reports)
    with django_assert_max_num_queries(100) as per_day:
        reference = read_csv(admin_client.get(url, query))
    assert table == reference
    assert {row[0] for row in table[1:]} == {"2024-03-03", "2024-03-04", "2024-03-05", "2024-03-06"}
    assert len(one_pass.captured_queries) < len(per_day.captured_queries)


@override_settings(FLEET_BILLING_CURRENCY="USD")
def test_alert_history_lists_fired_alerts_newest_first_with_their_states(admin_client: Client) -> None:
    """Fired 09:00 resolved 09:30 (value 1.80, threshold 1.00 USD/h); fired 10:00 still firing (value 2.40); a
    pending one that never fired is not history. Newest fired first: the 10:00 one, then the 09:00 one."""
    rule = AlertRule.objects.create(name="idle spend", kind="idle_waste", threshold=Decimal("1"))
    old = Alert.objects.create(
        rule=rule,
        key="fleet",
        state="resolved",
        message="idle 1.80/h",
        value="1.80",
        started_at=utc(2024, 3, 1, 9),
        fired_at=utc(2024, 3, 1, 9),
        resolved_at=utc(2024, 3, 1, 9, 30),
    )
    new = Alert.objects.create(
        rule=rule,
        key="fleet",
        state="firing",
        message="idle 2.40/h",
        value="2.40",
        started_at=utc(2024, 3, 1, 10),
        fired_at=utc(2024, 3, 1, 10),
    )
    Alert.objects.create(rule=rule, key="pool:x", state="pending", message="waiting", started_at=utc(2024, 3, 1, 11))
    page = re.sub(r"\s+", " ", admin_client.get(reverse("dashboard:alerts")).content.decode())
    assert [int(pk) for pk in re.findall(r'data-alert="(\d+)"', page)] == [new.pk, old.pk]
    assert (
        '<td>2024-03-01 10:00:00</td><td>–</td> <td><span class="badge bad">firing</span></td>' in page
        and "<td>2.40</td> <td>1.00 USD/h</td>" in page
    )
    assert "<td>2024-03-01 09:00:00</td><td>2024-03-01 09:30:00</td> <td>resolved</td>" in page
    assert "<td>1.80</td> <td>1.00 USD/h</td>" in page


def test_the_alerts_page_reads_in_a_fixed_number_of_queries(
    admin_client: Client, django_assert_num_queries: Any
) -> None:
    """Session and user (2), the demo banner's count (1) and the alerts with their rules and pools (1): 4,
    however many alerts."""
    rule = AlertRule.objects.create(name="silent", kind="node_silent", threshold=Decimal("60"))
    for hour in range(6):
        Alert.objects.create(
            rule=rule,
            key=f"node:{hour}",
            state="resolved",
            message="m",
            started_at=utc(2024, 3, 1, hour),
            fired_at=utc(2024, 3, 1, hour),
            resolved_at=utc(2024, 3, 1, hour, 5),
        )
    with django_assert_num_queries(4):
        admin_client.get(reverse("dashboard:alerts"))


def test_a_user_without_staff_sees_requests_too(log: dict[str, Any]) -> None:
    """The page and its export take a signed-in user, nothing more, as before."""
    user = get_user_model().objects.create_user("viewer", password="pw-for-tests-only")
    client = Client()
    client.force_login(user)
    assert shown(client.get(reverse("dashboard:requests"), RANGE)) == numbers(log, 4, 3, 2, 1)
    assert len(read_csv(client.get(reverse("dashboard:requests-csv"), RANGE))) == 5
    assert RequestLog.objects.count() == 5


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_export_streams_through_an_asynchronous_iterator(log: dict[str, Any]) -> None:
    """Django would read a plain iterator whole before sending under ASGI: the panel's export is asynchronous
    there, and holds the same four rows of RANGE (#4, #3, #2, #1)."""
    user = get_user_model().objects.create_user("viewer", password="pw-for-tests-only")

    async def fetch() -> tuple[bool, str]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(reverse("dashboard:requests-csv"), RANGE)
        body = b"".join([part async for part in response.streaming_content])  # type: ignore[union-attr]
        return response.is_async, body.decode()

    is_async, body = async_to_sync(fetch)()
    assert is_async
    assert [int(line.split(",")[0]) for line in body.splitlines()[1:]] == numbers(log, 4, 3, 2, 1)
