"""Each instance's newest fresh report, one definition (``selectors.instance_samples_newest``) read alike by the
policies' snapshot, the idle clock's snapshot and ``/metrics``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet import selectors
from fleet.models import Instance, InstanceSample, Pool
from fleet.policies.snapshot import FleetSnapshot
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db


def report(instance: Instance, at: datetime, running: float) -> None:
    InstanceSample.objects.create(instance=instance, at=at, state="ready", requests_running=running, requests_waiting=0)


@pytest.fixture
def now() -> datetime:
    """The real present: ``instances_latest`` (``/metrics``) reads at the clock's now, the snapshots at this one;
    every report below is 10 s or more from the 120 s freshness edge, so the milliseconds between them do not
    move any report across it."""
    return timezone.now()


@pytest.fixture
def fleet(now: datetime) -> dict[str, Instance]:
    """Four instances of one enabled pool; fresh is the last 120 s up to ``now``:

    - newest: reports 150 s ago (7 running, stale), 60 s ago (2), 20 s ago (3) and 30 s ahead (9, not read
      yet): its newest fresh report has 3 running.
    - stale: one report 130 s ago (5): none fresh.
    - tied: two reports 10 s ago, 4 running stored first, then 1: the one stored first, 4.
    - ahead: one report 30 s ahead (6): none read yet.
    """
    pool = make_pool("chat-l")
    fleet = {name: make_instance(pool) for name in ("newest", "stale", "tied", "ahead")}

    def ago(seconds: float) -> datetime:
        return now - timedelta(seconds=seconds)

    report(fleet["newest"], ago(150), 7)
    report(fleet["newest"], ago(60), 2)
    report(fleet["newest"], ago(20), 3)
    report(fleet["newest"], ago(-30), 9)
    report(fleet["stale"], ago(130), 5)
    report(fleet["tied"], ago(10), 4)
    report(fleet["tied"], ago(10), 1)
    report(fleet["ahead"], ago(-30), 6)
    return fleet


def running(snapshot: FleetSnapshot) -> dict[int, float | None]:
    return {view.id: view.requests_running for view in snapshot.instances}


def expected(fleet: dict[str, Instance]) -> dict[int, float | None]:
    return {fleet["newest"].pk: 3, fleet["stale"].pk: None, fleet["tied"].pk: 4, fleet["ahead"].pk: None}


def test_the_policies_snapshot_reads_each_instances_newest_fresh_report(
    now: datetime, fleet: dict[str, Instance]
) -> None:
    assert running(selectors.fleet_snapshot(now=now)) == expected(fleet)


def test_the_idle_clocks_snapshot_reads_the_same_reports_in_three_queries(
    now: datetime, fleet: dict[str, Instance]
) -> None:
    """Pools, instances, and their newest fresh reports: three queries however many instances and reports."""
    with CaptureQueriesContext(connection) as captured:
        snapshot = selectors.idle_snapshot(now=now)
    assert running(snapshot) == expected(fleet)
    assert len(captured) == 3
    # Twice the instances, each with as many reports, still three.
    pool = Pool.objects.get(name="chat-l")
    for _ in range(4):
        extra = make_instance(pool)
        for seconds in (150, 60, 20, -30):
            report(extra, now - timedelta(seconds=seconds), 1)
    with CaptureQueriesContext(connection) as doubled:
        selectors.idle_snapshot(now=now)
    assert len(doubled) == 3


def test_metrics_read_the_same_reports_in_one_query(fleet: dict[str, Instance]) -> None:
    """``/metrics`` shows only instances with a fresh report: the stale one and the one only ahead are left out."""
    with CaptureQueriesContext(connection) as captured:
        rows = selectors.instances_latest()
    assert {row["instance_id"]: row["requests_running"] for row in rows} == {
        fleet["newest"].pk: 3,
        fleet["tied"].pk: 4,
    }
    assert {row["pool"] for row in rows} == {"chat-l"}
    assert len(captured) == 1


def test_a_report_exactly_at_the_freshness_edge_is_fresh(now: datetime) -> None:
    """Both ends of the window count: a report 120 s old, and one taken at ``now``."""
    pool = make_pool("chat-l")
    edge, present = make_instance(pool), make_instance(pool)
    report(edge, now - timedelta(seconds=120), 2)
    report(edge, now - timedelta(seconds=121), 8)
    report(present, now, 5)
    newest = selectors.instance_samples_newest(now=now)
    assert {sample.instance_id: sample.requests_running for sample in newest} == {edge.pk: 2, present.pk: 5}
    assert running(selectors.idle_snapshot(now=now)) == running(selectors.fleet_snapshot(now=now))
