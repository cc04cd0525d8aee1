"""Usage hours: the request log rolled up by hour, read with the raw log at a range's edges.

Every read here is checked three ways: against sums worked out by hand, and against the raw
log alone (the rollup's watermark removed), to the same decimals.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.costs.teams import BASES, Basis, request_log_key_usage, request_log_usage, usage_of_days
from fleet.decide.services import request_logs_write
from fleet.models import ApiKey, Pool, RequestLog, RollupWatermark, Team, UsageHour
from fleet.telemetry.rollups import rollup_hours_run, usage_rollup_run
from tests.costs.history import utc
from tests.factories import make_pool, make_request_record

KOLKATA = ZoneInfo("Asia/Kolkata")
# Rolled up to 21:00 UTC on Jan 10: the 30 s lag has passed, the hour 21:00 has not.
RUN_AT = utc(2025, 1, 10, 21) + timedelta(seconds=31)


def key(team: Team, name: str) -> ApiKey:
    return ApiKey.objects.create(team=team, name=name, prefix=f"gf_{name}", key_hash=name * 16)


def log(at: datetime, pool: Pool | None, api_key: ApiKey | None, latency_ms: float, tokens: tuple) -> None:
    RequestLog.objects.create(
        at=at,
        pool=pool,
        team=api_key.team if api_key else None,
        api_key=api_key,
        latency_ms=latency_ms,
        prompt_tokens=tokens[0],
        output_tokens=tokens[1],
        endpoint="chat",
        model="m",
        rcf=1.0,
        tier="L",
        status=200,
    )


@pytest.fixture
def history() -> dict[str, int]:
    """Three hours of requests on Jan 10 (UTC), from 18:00 to 21:00."""
    pool = make_pool()
    search, docs = Team.objects.create(name="Search", slug="search"), Team.objects.create(name="Docs", slug="docs")
    a1, b1, b2 = key(search, "a1"), key(docs, "b1"), key(docs, "b2")
    log(utc(2025, 1, 10, 18, 10), pool, a1, 1000.5, (100, 20))
    log(utc(2025, 1, 10, 18, 40), pool, b1, 250.25, (10, None))
    log(utc(2025, 1, 10, 19, 5), pool, a1, 2000.125, (5, 5))
    log(utc(2025, 1, 10, 19, 10), None, a1, 7777.0, (7, 7))  # never reached a pool: no usage
    log(utc(2025, 1, 10, 19, 50), pool, b2, 100.001, (None, None))
    log(utc(2025, 1, 10, 20, 20), pool, a1, 400.0, (1, 1))
    log(utc(2025, 1, 10, 20, 45), pool, None, 999.0, (9, 9))  # no team, no key: nobody's usage
    return dict(pool=pool.pk, search=search.pk, docs=docs.pk, a1=a1.pk, b1=b1.pk, b2=b2.pk)


def raw_only(read, start: datetime, end: datetime, basis: Basis) -> dict:
    """The same read with no rollup to use: the raw log over the whole range."""
    done_until = RollupWatermark.objects.get(name="usage").done_until
    RollupWatermark.objects.filter(name="usage").delete()
    try:
        return read(start=start, end=end, basis=basis)
    finally:
        RollupWatermark.objects.create(name="usage", done_until=done_until)


def rollup_rows() -> set[tuple[object, ...]]:
    return set(
        UsageHour.objects.values_list("hour", "pool_id", "team_id", "api_key_id", "gpu_ms", "tokens", "requests")
    )


@pytest.mark.django_db
def test_the_run_rolls_complete_hours_up_per_pool_team_and_key_and_again_gives_the_same_rows(history) -> None:
    ids, pool = history, history["pool"]
    assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 3, "usage_rows": 6}
    first = rollup_rows()
    # By hand: one request per row; tokens with a missing count as 0; the pool-less request left out.
    assert first == {
        (utc(2025, 1, 10, 18), pool, ids["search"], ids["a1"], Decimal("1000.500"), 120, 1),
        (utc(2025, 1, 10, 18), pool, ids["docs"], ids["b1"], Decimal("250.250"), 10, 1),
        (utc(2025, 1, 10, 19), pool, ids["search"], ids["a1"], Decimal("2000.125"), 10, 1),
        (utc(2025, 1, 10, 19), pool, ids["docs"], ids["b2"], Decimal("100.001"), 0, 1),
        (utc(2025, 1, 10, 20), pool, ids["search"], ids["a1"], Decimal("400.000"), 2, 1),
        (utc(2025, 1, 10, 20), pool, None, None, Decimal("999.000"), 18, 1),
    }
    # Nothing new is complete: the second run writes nothing and keeps the rows.
    assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 0, "usage_rows": 0}
    assert rollup_rows() == first
    # Recomputing the same hours (the watermark pulled back) gives the same rows, not twice the usage.
    RollupWatermark.objects.filter(name="usage").update(done_until=utc(2025, 1, 10, 18))
    assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 3, "usage_rows": 6}
    assert rollup_rows() == first


def request_log_reads(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries if "fleet_requestlog" in q["sql"]]


@pytest.mark.django_db
def test_only_the_first_run_looks_for_the_oldest_request(history) -> None:
    """The log grows by the day: a run reads the hours it rolls up, from the watermark, and no
    more; only the first, with no watermark yet, looks for where the log starts."""
    with CaptureQueriesContext(connection) as first:
        assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 3, "usage_rows": 6}
    assert len(request_log_reads(first)) == 2, "the oldest request, then the hours from its hour"
    with CaptureQueriesContext(connection) as nothing_due:
        assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 0, "usage_rows": 0}
    assert request_log_reads(nothing_due) == []
    log(utc(2025, 1, 10, 21, 5), Pool.objects.get(pk=history["pool"]), None, 10.0, (1, 1))
    with CaptureQueriesContext(connection) as next_hour:
        assert usage_rollup_run(now=RUN_AT + timedelta(hours=1)) == {"usage_hours": 1, "usage_rows": 1}
    assert len(request_log_reads(next_hour)) == 1, "the new hour's requests only"


@pytest.mark.django_db
def test_the_hour_task_rolls_usage_up_with_no_gpu_reporting(history) -> None:
    result = rollup_hours_run(now=RUN_AT)
    assert (result["usage_hours"], result["usage_rows"]) == (3, 6)
    assert UsageHour.objects.count() == 6


# A billing day in Asia/Kolkata (UTC+5:30) begins at 18:30 UTC: its first half hour and the half
# hour after its last whole UTC hour come from the raw log, the hour 19:00-20:00 from the rollup.
KOLKATA_RANGE = (datetime(2025, 1, 11, 0, 0, tzinfo=KOLKATA), datetime(2025, 1, 11, 2, 0, tzinfo=KOLKATA))
ALIGNED_RANGE = (utc(2025, 1, 10, 18), utc(2025, 1, 10, 21))


def expected(ids: dict[str, int]) -> dict[tuple[str, str, Basis], dict[tuple[int, int], Decimal]]:
    """Usage worked out by hand from the history, per range, grouping and basis."""
    pool = ids["pool"]
    return {
        # Kolkata: search 2000.125 (19:05) + 400 (20:20) ms; docs 250.25 (18:40) + 100.001 (19:50) ms.
        ("kolkata", "team", "gpu_seconds"): {
            (pool, ids["search"]): Decimal("2.400125"),
            (pool, ids["docs"]): Decimal("0.350251"),
        },
        ("kolkata", "team", "tokens"): {(pool, ids["search"]): Decimal(12), (pool, ids["docs"]): Decimal(10)},
        ("kolkata", "key", "gpu_seconds"): {
            (pool, ids["a1"]): Decimal("2.400125"),
            (pool, ids["b1"]): Decimal("0.250250"),
            (pool, ids["b2"]): Decimal("0.100001"),
        },
        ("kolkata", "key", "tokens"): {
            (pool, ids["a1"]): Decimal(12),
            (pool, ids["b1"]): Decimal(10),
            (pool, ids["b2"]): Decimal(0),
        },
        # Aligned: search 1000.5 + 2000.125 + 400 ms, 120 + 10 + 2 tokens; docs as above.
        ("aligned", "team", "gpu_seconds"): {
            (pool, ids["search"]): Decimal("3.400625"),
            (pool, ids["docs"]): Decimal("0.350251"),
        },
        ("aligned", "team", "tokens"): {(pool, ids["search"]): Decimal(132), (pool, ids["docs"]): Decimal(10)},
        ("aligned", "key", "gpu_seconds"): {
            (pool, ids["a1"]): Decimal("3.400625"),
            (pool, ids["b1"]): Decimal("0.250250"),
            (pool, ids["b2"]): Decimal("0.100001"),
        },
        ("aligned", "key", "tokens"): {
            (pool, ids["a1"]): Decimal(132),
            (pool, ids["b1"]): Decimal(10),
            (pool, ids["b2"]): Decimal(0),
        },
    }


@pytest.mark.django_db
@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("group", ["team", "key"])
@pytest.mark.parametrize("span", ["kolkata", "aligned"])
def test_usage_from_the_rollup_and_the_raw_edges_is_the_raw_reads_to_the_decimal(
    history, span: str, group: str, basis: Basis
) -> None:
    read = request_log_usage if group == "team" else request_log_key_usage
    start, end = KOLKATA_RANGE if span == "kolkata" else ALIGNED_RANGE
    usage_rollup_run(now=RUN_AT)
    with CaptureQueriesContext(connection) as queries:
        usage = read(start=start, end=end, basis=basis)
    read_tables = [("fleet_usagehour" in q["sql"], "fleet_requestlog" in q["sql"]) for q in queries]
    # The whole hours come from the rollup; only a range with edges inside an hour reads the raw log.
    assert (True, False) in read_tables
    assert ((False, True) in read_tables) == (span == "kolkata")
    assert usage == expected(history)[(span, group, basis)]
    assert usage == raw_only(read, start, end, basis)
    # Not just equal: the same decimals, digit for digit.
    assert {group: str(amount) for group, amount in usage.items()} == {
        group: str(amount) for group, amount in raw_only(read, start, end, basis).items()
    }


@pytest.mark.django_db
def test_hours_after_the_watermark_come_from_the_raw_log(history) -> None:
    ids = history
    usage_rollup_run(now=utc(2025, 1, 10, 19, 1))  # only 18:00-19:00 is rolled up
    usage = request_log_usage(start=ALIGNED_RANGE[0], end=ALIGNED_RANGE[1], basis="gpu_seconds")
    assert usage == expected(ids)[("aligned", "team", "gpu_seconds")]


@pytest.mark.django_db(transaction=True)
def test_a_request_logged_late_for_a_rolled_up_hour_counts_at_once_and_once_after_the_next_run(history) -> None:
    ids = history
    usage_rollup_run(now=RUN_AT)
    start, end = KOLKATA_RANGE
    before = request_log_usage(start=start, end=end, basis="gpu_seconds")
    # The gateway logs a request that came in at 19:30, long after the hour was rolled up.
    late = make_request_record(
        at=utc(2025, 1, 10, 19, 30).timestamp(),
        key_id=ids["a1"],
        team_id=ids["search"],
        pool_id=ids["pool"],
        latency_ms=50.5,
    )
    assert request_logs_write(records=[late]) == 1
    assert RollupWatermark.objects.get(name="usage").done_until == utc(2025, 1, 10, 19)
    # 2.400125 s + 0.0505 s, at once (from the raw log) and after the next run (from the rollup).
    after = {**before, (ids["pool"], ids["search"]): Decimal("2.450625")}
    assert request_log_usage(start=start, end=end, basis="gpu_seconds") == after
    assert usage_rollup_run(now=RUN_AT) == {"usage_hours": 2, "usage_rows": 4}
    assert request_log_usage(start=start, end=end, basis="gpu_seconds") == after
    assert UsageHour.objects.get(hour=utc(2025, 1, 10, 19), api_key_id=ids["a1"]).requests == 2


@pytest.mark.django_db
def test_a_request_of_the_current_hour_reopens_nothing(history) -> None:
    usage_rollup_run(now=RUN_AT)
    record = make_request_record(at=datetime.now().timestamp(), key_id=history["a1"], team_id=history["search"])
    with CaptureQueriesContext(connection) as queries:
        request_logs_write(records=[record])
    assert not [q for q in queries if "fleet_rollupwatermark" in q["sql"]]
    assert RollupWatermark.objects.get(name="usage").done_until == utc(2025, 1, 10, 21)


@pytest.mark.django_db
def test_usage_is_read_between_two_times_only() -> None:
    with pytest.raises(TypeError, match="two datetimes"):
        request_log_usage(start=date(2025, 1, 1), end=date(2025, 2, 1), basis="tokens")


# Three days cut at Kolkata midnights (18:30 UTC) and half hours: the first and last hold no whole
# hour; the middle one is KOLKATA_RANGE. Every raw piece touches the next.
HALF_HOUR_DAYS = [
    (utc(2025, 1, 10, 18), utc(2025, 1, 10, 18, 30)),
    KOLKATA_RANGE,
    (utc(2025, 1, 10, 20, 30), utc(2025, 1, 10, 21)),
]


@pytest.mark.django_db
def test_days_read_together_give_each_day_its_own_reads_decimals_in_three_queries(history) -> None:
    """The request log's sources read all days in one query of the raw log, one of the rollup and the
    watermark; each day's usage is its own read's, digit for digit, where one read per day costs five."""
    ids, pool = history, history["pool"]
    usage_rollup_run(now=RUN_AT)
    with CaptureQueriesContext(connection) as together:
        by_key = usage_of_days(source=request_log_key_usage, days=HALF_HOUR_DAYS, basis="gpu_seconds")
    with CaptureQueriesContext(connection) as each:
        own = [request_log_key_usage(start=start, end=end, basis="gpu_seconds") for start, end in HALF_HOUR_DAYS]
    # By hand: a1 1000.5 ms at 18:10; the Kolkata day as above; 20:45's request names no key.
    assert by_key == [
        {(pool, ids["a1"]): Decimal("1.000500")},
        expected(ids)[("kolkata", "key", "gpu_seconds")],
        {},
    ]
    assert [{group: str(amount) for group, amount in day.items()} for day in by_key] == [
        {group: str(amount) for group, amount in day.items()} for day in own
    ]
    # Apart: a raw read for each day holding no whole hour, the same three for the middle one.
    assert (len(together), len(each)) == (3, 5)
    by_team = usage_of_days(source=request_log_usage, days=HALF_HOUR_DAYS, basis="tokens")
    assert by_team == [{(pool, ids["search"]): Decimal(120)}, expected(ids)[("kolkata", "team", "tokens")], {}]


@pytest.mark.django_db
def test_days_of_another_usage_source_are_asked_one_at_a_time() -> None:
    asked = []

    def source(*, start: object, end: object, basis: Basis) -> dict[tuple[int, int], Decimal]:
        asked.append((start, end, basis))
        return {(1, len(asked)): Decimal(len(asked))}

    assert usage_of_days(source=source, days=HALF_HOUR_DAYS, basis="tokens") == [
        {(1, 1): Decimal(1)},
        {(1, 2): Decimal(2)},
        {(1, 3): Decimal(3)},
    ]
    assert asked == [(start, end, "tokens") for start, end in HALF_HOUR_DAYS]


@pytest.mark.django_db
def test_days_out_of_order_or_overlapping_are_refused_before_any_read() -> None:
    for days in (HALF_HOUR_DAYS[::-1], [(utc(2025, 1, 10, 18), utc(2025, 1, 10, 20)), KOLKATA_RANGE]):
        with CaptureQueriesContext(connection) as queries, pytest.raises(ValueError, match="in time order"):
            usage_of_days(source=request_log_usage, days=days, basis="tokens")
        assert len(queries) == 0
