"""The request log's batch writer: rows as recorded, links to what was deleted since dropped."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.decide.services import api_key_create, request_logs_write
from fleet.gateway.accounting import RequestRecord
from fleet.models import ApiKey, Instance, RequestLog, Team
from tests.factories import make_request_record
from tests.gateway.conftest import make_ready, make_routed_pool


def record(key: ApiKey, instance: Instance, at: float, **changes: object) -> RequestRecord:
    return make_request_record(
        at=at, key_id=key.pk, team_id=key.team_id, pool_id=instance.pool_id, instance_id=instance.pk, **changes
    )


def fleet_rows() -> tuple[ApiKey, Instance, Instance]:
    key, _secret = api_key_create(team=Team.objects.create(name="Research", slug="research"), name="ci")
    pool = make_routed_pool("chat-l")
    return key, make_ready(pool, "http://127.0.0.1:9"), make_ready(pool, "http://127.0.0.1:10")


def stored() -> list[tuple[object, ...]]:
    return list(RequestLog.objects.order_by("id").values_list("team_id", "pool_id", "instance_id", "status"))


@pytest.mark.django_db(transaction=True)
def test_a_batch_goes_in_as_recorded_without_looking_its_links_up() -> None:
    key, first, second = fleet_rows()
    now = time.time()
    records = [record(key, first, now - 2), record(key, second, now - 1, status=502, error="upstream")]
    with CaptureQueriesContext(connection) as queries:
        assert request_logs_write(records=records) == 2
    statements = [query["sql"].split()[0].upper() for query in queries.captured_queries]
    assert "SELECT" not in statements
    assert stored() == [
        (key.team_id, first.pool_id, first.pk, 200),
        (key.team_id, second.pool_id, second.pk, 502),
    ]
    key.refresh_from_db()
    assert key.last_used_at is not None and key.last_used_at.timestamp() == pytest.approx(now - 1, abs=1e-3)


@pytest.mark.django_db(transaction=True)
def test_links_to_an_instance_deleted_since_the_request_are_dropped_and_the_rows_kept() -> None:
    key, first, second = fleet_rows()
    now = time.time()
    records = [record(key, first, now), record(key, second, now)]
    gone = second.pk
    second.delete()
    assert request_logs_write(records=records) == 2
    assert stored() == [(key.team_id, first.pool_id, first.pk, 200), (key.team_id, first.pool_id, None, 200)]
    assert not Instance.objects.filter(pk=gone).exists()


@pytest.mark.django_db(transaction=True)
def test_links_to_a_deleted_team_and_pool_are_dropped_too() -> None:
    key, first, second = fleet_rows()
    records = [record(key, first, time.time())]
    Instance.objects.filter(pk__in=[first.pk, second.pk]).delete()
    first.pool.delete()
    Team.objects.filter(pk=key.team_id).delete()  # and the team's keys
    assert request_logs_write(records=records) == 1
    assert stored() == [(None, None, None, 200)]


@pytest.mark.django_db
def test_inside_a_callers_transaction_the_links_are_looked_up_first() -> None:
    key, first, second = fleet_rows()
    records = [record(key, first, time.time()), record(key, second, time.time())]
    second.delete()
    assert connection.in_atomic_block
    assert request_logs_write(records=records) == 2
    assert stored() == [(key.team_id, first.pool_id, first.pk, 200), (key.team_id, first.pool_id, None, 200)]


@pytest.mark.django_db(transaction=True)
def test_each_row_names_the_key_it_came_with_and_a_revoked_or_deleted_key_leaves_no_link() -> None:
    key, first, _second = fleet_rows()
    other, _secret = api_key_create(team=key.team, name="batch")
    assert request_logs_write(records=[record(key, first, time.time()), record(other, first, time.time())]) == 2
    assert list(RequestLog.objects.order_by("id").values_list("api_key_id", flat=True)) == [key.pk, other.pk]
    gone = record(other, first, time.time())
    other.delete()
    assert request_logs_write(records=[gone]) == 1
    assert RequestLog.objects.order_by("id").last().api_key_id is None  # type: ignore[union-attr]
    assert RequestLog.objects.filter(api_key=None).count() == 2, "deleting the key unlinks its earlier rows too"
