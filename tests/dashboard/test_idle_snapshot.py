"""The idle clock's snapshot: the pools and instances idle reclaim's clock reads, and nothing it does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard.selectors import instances_page
from fleet import selectors
from fleet.models import GpuSample, Instance, InstanceSample, Pool
from fleet.policies.idle import IdleClock, idle_clock
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)
H100 = "NVIDIA H100 80GB HBM3"


def dated(instance: Instance, **moments: datetime) -> Instance:
    """The instance created and last ordered 3 h before NOW, with ``moments`` set."""
    three_hours = NOW - timedelta(hours=3)
    Instance.objects.filter(pk=instance.pk).update(created_at=three_hours, desired_changed_at=three_hours, **moments)
    instance.refresh_from_db()
    return instance


def sample(instance: Instance, seconds_ago: float, running: float, waiting: float) -> None:
    InstanceSample.objects.create(
        instance=instance,
        at=NOW - timedelta(seconds=seconds_ago),
        state="ready",
        requests_running=running,
        requests_waiting=waiting,
    )


@pytest.fixture
def pool() -> Pool:
    """Sleep mode on, idle 5 min sleeps, idle 15 min stops, one instance kept serving."""
    item = make_pool(
        "chat-s", tier="S", isolation="exclusive", min_instances=1, idle_minimize_after_s=300, idle_stop_after_s=900
    )
    item.model_profile.enable_sleep_mode = True
    item.model_profile.save(update_fields=["enable_sleep_mode"])
    return item


def test_each_instance_on_its_pools_clock(pool: Pool) -> None:
    """Read at 15:00:00 (NOW); fresh reports are those of the last 120 s up to NOW:

    - quiet: last request 200 s ago; its report 150 s ago (3 running) is stale, the one 60 s ago
      has none running or waiting: idle 200 s, sleeps in 300 - 200 = 100 s, stops in 900 - 200 = 700 s.
    - queued: its report 30 s ago has 2 waiting (one 10 s after NOW with none is not read yet): busy, no clock.
    - asleep: told to sleep, last request 1,000 s ago, no report: idle 1,000 s, no sleep stage,
      stops in max(900 - 1,000, 0) = 0 s.
    - an instance of a disabled pool is not in it.
    """
    node = make_node("rack1")
    gpus = [make_gpu(node, index, H100) for index in range(3)]
    three_hours = NOW - timedelta(hours=3)
    quiet = dated(
        make_instance(pool, gpus[0], actual_state="ready"),
        ready_at=three_hours,
        last_request_at=NOW - timedelta(seconds=200),
    )
    queued = dated(
        make_instance(pool, gpus[1], actual_state="ready"),
        ready_at=three_hours,
        last_request_at=NOW - timedelta(seconds=400),
    )
    asleep = dated(
        make_instance(pool, gpus[2], desired_state="sleeping", actual_state="sleeping"),
        ready_at=three_hours,
        last_request_at=NOW - timedelta(seconds=1000),
    )
    off = make_pool("off", enabled=False)
    make_instance(off)
    sample(quiet, 150, running=3, waiting=0)
    sample(quiet, 60, running=0, waiting=0)
    sample(queued, 30, running=0, waiting=2)
    sample(queued, -10, running=0, waiting=0)

    snapshot = selectors.idle_snapshot(now=NOW)

    assert [view.id for view in snapshot.pools] == [pool.pk]
    view = snapshot.pool(pool.pk)
    assert (view.min_instances, view.idle_minimize_after_s, view.idle_stop_after_s, view.enable_sleep_mode) == (
        1,
        300,
        900,
        True,
    )
    views = {item.id: item for item in snapshot.instances}
    assert set(views) == {quiet.pk, queued.pk, asleep.pk}
    assert (views[quiet.pk].requests_running, views[quiet.pk].requests_waiting) == (0, 0)
    assert (views[queued.pk].requests_running, views[queued.pk].requests_waiting) == (0, 2)
    assert (views[asleep.pk].requests_running, views[asleep.pk].requests_waiting) == (None, None)
    assert idle_clock(view, views[quiet.pk], NOW) == IdleClock(idle_s=200, sleeps_in_s=100, stops_in_s=700)
    assert idle_clock(view, views[queued.pk], NOW) is None
    assert idle_clock(view, views[asleep.pk], NOW) == IdleClock(idle_s=1000, sleeps_in_s=None, stops_in_s=0)
    # As the policy sees them: the same instances, and the same pool settings the clock reads.
    full = selectors.fleet_snapshot(now=NOW)
    assert snapshot.instances == full.instances
    [policy_view] = full.pools
    assert [getattr(view, f) for f in CLOCK_FIELDS] == [getattr(policy_view, f) for f in CLOCK_FIELDS]


CLOCK_FIELDS = ("id", "name", "min_instances", "idle_minimize_after_s", "idle_stop_after_s", "enable_sleep_mode")


def test_the_instances_page_reads_no_gpu_samples(pool: Pool) -> None:
    """The idle clock needs no GPU: the page must not read the fleet's GPU telemetry for it."""
    node = make_node("rack1")
    dated(make_instance(pool, make_gpu(node, 0, H100), actual_state="ready"), ready_at=NOW - timedelta(hours=3))
    with CaptureQueriesContext(connection) as captured:
        page = instances_page(now=NOW)
    table = GpuSample._meta.db_table
    assert not [query["sql"] for query in captured if table in query["sql"]]
    [row] = page.rows
    assert row.idle == IdleClock(idle_s=3 * 3600, sleeps_in_s=0, stops_in_s=0)
    assert row.idle_note == "kept: the pool is at its minimum of 1 serving"
