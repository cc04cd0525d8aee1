"""The hot write paths store what the ORM would, prepared once per connection on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from fleet.models import GpuSample, Node
from fleet.telemetry.bulk import hot_cursor, numbered, rows_insert, rows_update
from tests.factories import make_gpu, make_node
from tests.support.require import require

pytestmark = pytest.mark.django_db

FIELDS = ("gpu", "at", "utilization_gpu_pct", "memory_used_bytes", "power_watts", "pstate", "throttle_reasons")


def test_placeholders_are_numbered_and_literal_percents_kept() -> None:
    assert numbered("SELECT %s, '100%%', %s FROM t WHERE a = %s") == "SELECT $1, '100%', $2 FROM t WHERE a = $3"


def test_rows_round_trip_with_mixed_numbers_nulls_json_and_times() -> None:
    gpu = make_gpu(make_node())
    at = datetime(2026, 11, 1, 12, 0, 5, 250_000, tzinfo=UTC)
    rows = [
        (gpu.pk, at, 55, 0, 300, 0, ["sw_power_cap"]),  # ints where floats go, a zero where a bigint goes
        (gpu.pk, at + timedelta(seconds=5), 55.5, 80 * 2**30, 300.25, 8, []),
        (gpu.pk, at + timedelta(seconds=10), None, None, None, None, ["hw_slowdown", "sw_thermal"]),
    ]
    for _ in range(3):  # again and again: the prepared statement must take any mix of values
        rows_insert(model=GpuSample, fields=FIELDS, rows=rows)
    stored = list(GpuSample.objects.order_by("pk").values_list(*[f if f != "gpu" else "gpu_id" for f in FIELDS]))
    assert (
        stored == [tuple(float(v) if i in (2, 4) and v is not None else v for i, v in enumerate(r)) for r in rows] * 3
    )


def test_one_statement_per_call_whatever_the_number_of_rows() -> None:
    gpu = make_gpu(make_node())
    at = datetime(2026, 11, 1, tzinfo=UTC)
    for count in (1, 8, 40):
        with CaptureQueriesContext(connection) as captured:
            rows_insert(model=GpuSample, fields=FIELDS, rows=[(gpu.pk, at, 1.0, 1, 1.0, 0, [])] * count)
        assert len(captured.captured_queries) == 1
    assert GpuSample.objects.count() == 49


def test_a_bad_row_stores_nothing_and_raises_django_errors() -> None:
    gpu = make_gpu(make_node())
    at = datetime(2026, 11, 1, tzinfo=UTC)
    good = (gpu.pk, at, 1.0, 1, 1.0, 0, [])
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_insert(model=GpuSample, fields=FIELDS, rows=[good, (gpu.pk, None, 1.0, 1, 1.0, 0, [])])
    if connection.vendor == "postgresql":  # SQLite stores any integer size
        with pytest.raises(DataError), transaction.atomic():
            rows_insert(model=GpuSample, fields=FIELDS, rows=[good, (gpu.pk, at, 1.0, 1, 1.0, 2**40, [])])
    assert GpuSample.objects.count() == 0
    rows_insert(model=GpuSample, fields=FIELDS, rows=[good])  # the connection goes on after the errors
    assert GpuSample.objects.count() == 1


def test_update_sets_values_adds_counts_and_touches_only_the_rows_named() -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    seen = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    rows_update(
        model=Node,
        pks=[a.pk, b.pk],
        values={"last_seen_at": seen, "containers": [{"id": "x"}]},
        add={"reports_dropped": 3},
    )
    rows_update(model=Node, pks=[a.pk], values={"last_seq": 7}, add={"reports_dropped": 2})
    got = {n.name: (n.last_seen_at, n.containers, n.reports_dropped, n.last_seq) for n in Node.objects.all()}
    assert got["a"] == (seen, [{"id": "x"}], 5, 7)
    assert got["b"] == (seen, [{"id": "x"}], 3, c.last_seq)
    assert got["c"] == (None, c.containers, 0, c.last_seq)


@pytest.mark.services
def test_statements_are_prepared_once_on_the_connection() -> None:
    require(connection.vendor == "postgresql", "prepared statements are PostgreSQL's: set DATABASE_URL to PostgreSQL")
    gpu = make_gpu(make_node())
    at = datetime(2026, 11, 1, tzinfo=UTC)
    for _ in range(5):
        rows_insert(model=GpuSample, fields=FIELDS, rows=[(gpu.pk, at, 1.0, 1, 1.0, 0, [])] * 8)
    with hot_cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    inserts = [runs for statement, runs in prepared if statement.startswith('INSERT INTO "fleet_gpusample"')]
    assert inserts == [5]  # one statement, prepared once and run five times
