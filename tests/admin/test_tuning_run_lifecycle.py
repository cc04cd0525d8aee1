"""A tuning run never holds the request that asked for it, and never stays running once the process running
it is gone: in the embedded mode the admin action returns at once and a thread of the server runs it, its
state on its page; a run whose heartbeat fell silent is failed as lost when its list or page is read."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import fleet.tasks
from fleet.decide import tuning
from fleet.decide.tuning import tuning_heartbeat, tuning_run_create, tuning_run_execute, tuning_runs_fail_lost
from fleet.models import Pool, TuningRun
from fleet.sim.headroom import DEFAULT_HEADROOM
from fleet.tasks import tuning_runs_embedded
from tests.factories import make_pool
from tests.support.tuning import finish_runs, log_requests, tune_action

pytestmark = pytest.mark.usefixtures("eager_tasks")


@pytest.mark.django_db(transaction=True)
def test_the_action_returns_while_the_run_runs_in_the_background_and_its_page_shows_it(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search is held until the test has read the page: the action answered meanwhile, and the page
    showed the run running; let go, the run ends done in the thread."""
    pool = make_pool(min_instances=1, max_instances=1)
    log_requests(pool, 600, start=timezone.now() - timedelta(hours=1))
    searching, go_on = threading.Event(), threading.Event()
    real_tune = tuning.tune

    def held_tune(**arguments: Any) -> Any:
        searching.set()
        assert go_on.wait(60), "the test never let the search go on"
        return real_tune(**arguments)

    monkeypatch.setattr(tuning, "tune", held_tune)

    try:
        text = tune_action(admin_client, pool, days=1, max_evaluations=1, headroom=0, tune="Tune").content.decode()

        assert "queued for chat-l on its last 1 days" in text
        assert searching.wait(60), "the run never started"
        run = TuningRun.objects.get()
        page = admin_client.get(reverse("admin:fleet_tuningrun_change", args=[run.pk])).content.decode()
    finally:
        go_on.set()
    assert (run.state, run.requests, run.finished_at) == ("running", 600, None) and run.heartbeat_at is not None
    assert "(running)" in page and "600" in page and run.engine in page  # what it read shows while it runs
    finish_runs()
    run.refresh_from_db()
    assert (run.state, run.evaluations, run.finished_at is not None) == ("done", 1, True)


def running_run(pool: Pool, *, heartbeat_at: Any, created_at: Any = None) -> TuningRun:
    run = TuningRun.objects.create(
        pool=pool,
        requested_by="admin",
        traffic_from=timezone.now() - timedelta(days=3),
        traffic_to=timezone.now(),
        max_evaluations=3,
        state=TuningRun.State.RUNNING,
        heartbeat_at=heartbeat_at,
    )
    if created_at is not None:
        TuningRun.objects.filter(pk=run.pk).update(created_at=created_at)
    return run


@pytest.mark.django_db
def test_a_run_silent_past_the_limit_shows_failed_as_lost_and_a_redelivered_task_leaves_it(
    admin_client: Client,
) -> None:
    """The limit (``TUNING_LOST_AFTER``) is 5 minutes: a heartbeat 6 minutes old is a lost process, one 4
    minutes old a live one; a run from before heartbeats counts from its creation (10 minutes ago: lost).
    A queued run has no process yet and waits for one."""
    pool = make_pool()
    now = timezone.now()
    lost = running_run(pool, heartbeat_at=now - timedelta(minutes=6))
    alive = running_run(pool, heartbeat_at=now - timedelta(minutes=4))
    old = running_run(pool, heartbeat_at=None, created_at=now - timedelta(minutes=10))
    queued = TuningRun.objects.create(
        pool=pool, requested_by="admin", traffic_from=now - timedelta(days=3), traffic_to=now, max_evaluations=3
    )
    TuningRun.objects.filter(pk=queued.pk).update(created_at=now - timedelta(hours=1))

    listing = admin_client.get(reverse("admin:fleet_tuningrun_changelist"))

    assert listing.status_code == 200
    states = dict(TuningRun.objects.values_list("pk", "state"))
    assert states == {lost.pk: "failed", alive.pk: "running", old.pk: "failed", queued.pk: "queued"}
    lost.refresh_from_db()
    assert lost.error.startswith("worker lost: no heartbeat for over 5 minutes") and lost.finished_at is not None
    page = admin_client.get(reverse("admin:fleet_tuningrun_change", args=[lost.pk])).content.decode()
    assert "worker lost" in page
    assert tuning_run_execute(lost.pk) is None  # a second delivery of its task does not run it again
    assert tuning_runs_fail_lost(now=now + timedelta(minutes=1, seconds=1)) == 1  # the live one, a minute on


@pytest.mark.django_db
def test_a_run_failed_as_lost_while_it_ran_stays_failed_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its process was only silent, and ends the search: what the page said last (lost) stands, and no
    settings appear on a run declared failed."""
    pool = make_pool(min_instances=1, max_instances=1)
    log_requests(pool, 600, start=timezone.now() - timedelta(hours=1))
    run = tuning.tuning_run_create(pool=pool, user="admin", days=1, max_evaluations=1)
    real_tune = tuning.tune

    def silent_tune(**arguments: Any) -> Any:
        TuningRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=6))
        assert tuning_runs_fail_lost() == 1
        return real_tune(**arguments)

    monkeypatch.setattr(tuning, "tune", silent_tune)

    ended = tuning_run_execute(run.pk)

    run.refresh_from_db()
    assert ended is not None and ended.state == "failed"
    assert (run.state, run.error.startswith("worker lost"), run.settings, run.base_paid_gpu_hours) == (
        "failed",
        True,
        {},
        None,
    )


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_beats_from_its_own_thread_while_the_run_holds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat every 50 ms while the run's thread sleeps 0.5 s (a long simulation): the heartbeat an hour old
    is now; a run no longer running is not beaten."""
    pool = make_pool()
    hour_ago = timezone.now() - timedelta(hours=1)
    run = running_run(pool, heartbeat_at=hour_ago)
    done = running_run(pool, heartbeat_at=hour_ago)
    TuningRun.objects.filter(pk=done.pk).update(state=TuningRun.State.DONE)
    monkeypatch.setattr(tuning, "TUNING_HEARTBEAT_S", 0.05)

    with tuning_heartbeat(run_id=run.pk), tuning_heartbeat(run_id=done.pk):
        time.sleep(0.5)

    run.refresh_from_db()
    done.refresh_from_db()
    assert run.heartbeat_at is not None and timezone.now() - run.heartbeat_at < timedelta(seconds=5)
    assert done.heartbeat_at == hour_ago


@pytest.mark.django_db(transaction=True)
def test_runs_queued_together_run_one_at_a_time_oldest_first(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tuning three pools in one action queues three runs; the embedded server runs them on its one tuning
    thread, one after the other in the order queued, so they take one core from serving, not three."""
    pools = [make_pool(name, min_instances=1, max_instances=1) for name in ("a-l", "b-l", "c-l")]
    for pool in pools:
        log_requests(pool, 600, start=timezone.now() - timedelta(hours=1))
    running, most, calls = [0], [0], [0]
    lock = threading.Lock()
    real_tune = tuning.tune

    def counted_tune(**arguments: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls[0] += 1
        time.sleep(0.2)  # long enough for a second thread, were there one, to start its own
        try:
            return real_tune(**arguments)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(tuning, "tune", counted_tune)
    data = {"action": "tune_settings", "_selected_action": [pool.pk for pool in pools]}
    form = {"days": 1, "max_evaluations": 1, "headroom": 0, "tune": 1}
    admin_client.post(reverse("admin:fleet_pool_changelist"), {**data, **form})
    finish_runs()

    runs = list(TuningRun.objects.order_by("pk"))
    assert [run.state for run in runs] == ["done"] * 3
    assert (most[0], calls[0]) == (1, 3)
    ends = [run.finished_at for run in runs if run.finished_at is not None]
    assert len(ends) == 3 and ends == sorted(ends)  # queued first, ended first


@pytest.mark.django_db(transaction=True)
def test_a_run_an_earlier_server_queued_and_never_ran_is_run_when_the_next_one_starts() -> None:
    """A server stopped with a run still queued (its thread gone before it took it): the next server's
    embedded scheduler starts the tuning thread, which runs it."""
    pool = make_pool(min_instances=1, max_instances=1)
    log_requests(pool, 600, start=timezone.now() - timedelta(hours=1))
    left = tuning_run_create(pool=pool, user="admin", days=1, max_evaluations=1)

    tuning_runs_embedded()  # what ``scheduler_start`` calls as the server starts
    finish_runs()

    left.refresh_from_db()
    assert (left.state, left.evaluations) == ("done", 2)  # its settings, then again at the default headroom
    assert (left.headroom, left.holds_headroom) == (DEFAULT_HEADROOM, True)


@pytest.mark.django_db(transaction=True)
def test_a_database_error_before_a_run_is_taken_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite takes one writer at a time (the request that queued the run may still be writing): the thread
    waits a second and tries again rather than leaving the run queued until the next one is."""
    pool = make_pool(min_instances=1, max_instances=1)
    log_requests(pool, 600, start=timezone.now() - timedelta(hours=1))
    run = tuning_run_create(pool=pool, user="admin", days=1, max_evaluations=1)
    calls = [0]

    def locked_once() -> int | None:
        calls[0] += 1
        if calls[0] == 1:
            raise OperationalError("database table is locked")
        return tuning.tuning_run_oldest_queued()

    monkeypatch.setattr(fleet.tasks, "tuning_run_oldest_queued", locked_once)
    tuning_runs_embedded()
    finish_runs()

    run.refresh_from_db()
    assert (run.state, calls[0]) == ("done", 3)  # refused, then the run, then none left
