"""Celery tasks of the fleet domain.

The periodic ones are registered with django-celery-beat by ``fleet.schedules`` (a data
migration installs them; ``manage.py fleet_schedule`` puts them back). In the embedded
default, where Celery is eager and there is no beat, ``fleet.project.scheduler`` runs the same
task functions from a thread in the server process. ``fleet.alert_deliver`` lives with the
alerts it delivers (``fleet.costs.alerts``), which this module imports, so it registers with the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import shared_task
from django.db import DatabaseError, connection, connections

from fleet.costs.alerts import alerts_evaluate
from fleet.costs.budgets import budgets_evaluate
from fleet.decide.evaluate import policies_evaluate
from fleet.decide.tuning import tuning_run_execute, tuning_run_oldest_queued
from fleet.policies.registry import ORDER
from fleet.telemetry import rollups

log = logging.getLogger(__name__)


@shared_task(name="fleet.ping")
def ping() -> dict[str, str]:
    """Answer with the worker's database vendor: proves a worker is up and sees the database."""
    return {"pong": "ok", "database": connection.vendor}


@shared_task(name="fleet.policies_evaluate")
def policies_evaluate_task(kinds: list[str] | None = None) -> dict[str, Any]:
    """Evaluate the policies once; any number of workers may run it at once (applies are claims)."""
    evaluation = policies_evaluate(kinds=kinds or ORDER)
    return {
        "applied": [decision.pk for decision in evaluation.applied],
        "stale": len(evaluation.stale),
        "failed": evaluation.failed,
    }


@shared_task(name="fleet.costs_evaluate")
def costs_evaluate() -> dict[str, int]:
    """Budgets first, so budget alerts see this minute's spend; then every alert rule."""
    results = budgets_evaluate()
    counts = alerts_evaluate()
    return {"budgets": len(results), **counts}


@shared_task(name="fleet.telemetry.rollup_minutes")
def rollup_minutes() -> dict[str, Any]:
    """Minute rollups up to the last finished minute; safe to run twice (it recomputes whole windows)."""
    return rollups.rollup_minutes_run()


@shared_task(name="fleet.telemetry.rollup_hours")
def rollup_hours() -> dict[str, Any]:
    """Hour rollups from the minute rollups, including the hour in progress."""
    return rollups.rollup_hours_run()


@shared_task(name="fleet.telemetry.prune")
def telemetry_prune() -> dict[str, int]:
    """Enforce the retention settings on raw samples and rollups."""
    return rollups.telemetry_prune()


# ``reject_on_worker_lost`` stays off: a run that killed its worker (out of memory on a long log) would kill
# every worker it was delivered to again. The lost run is failed by its silent heartbeat instead
# (``tuning_runs_fail_lost``), and a redelivery (a worker's host gone, acks_late) finds it no longer queued.
@shared_task(name="fleet.tuning_run", acks_late=True, reject_on_worker_lost=False)
def tuning_run(run_id: int) -> dict[str, Any]:
    """Search a pool's settings on its request log (``fleet.decide.tuning``): minutes of simulation, so it
    runs on a worker; the run ends done or failed with its reason, and the task itself never fails."""
    run = tuning_run_execute(run_id)
    return {"run": run_id, "state": None if run is None else run.state}


TUNING_THREAD_NAME = "fleet-tuning-runs"
# How many times in a row the tuning thread tries again after a database error (SQLite takes one writer at a
# time; a server's database restarting), waiting 1, 2, 4 ... s, before it stops and leaves the runs queued.
TUNING_DB_RETRIES = 5
_tuning_lock = threading.Lock()
_tuning_thread: threading.Thread | None = None


def tuning_run_queue(*, run_id: int) -> None:
    """Hand a queued run to what runs it, without waiting for it: a Celery worker; in the embedded default,
    where Celery is eager and would run it inside the request that asked, this process's tuning thread
    (``tuning_runs_embedded``)."""
    if not tuning_run.app.conf.task_always_eager:
        tuning_run.delay(run_id)
        return
    tuning_runs_embedded()


def tuning_runs_embedded() -> None:
    """Start this process's tuning thread, unless it runs: a daemon thread (as ``fleet.project.scheduler``
    runs the periodic tasks) that runs the queued runs one at a time, oldest first, and ends when none is
    left. Each is minutes of simulation on the server's own CPU: tuning every pool at once takes one
    core, not all of them from serving. A run an earlier server queued and never ran is run too (the
    embedded scheduler starts the thread with the server). A server stopped mid-run takes the thread
    with it; the run's heartbeat stops and it is failed as lost."""
    global _tuning_thread
    with _tuning_lock:
        if _tuning_thread is not None and _tuning_thread.is_alive():
            return
        _tuning_thread = threading.Thread(target=_tuning_runs_in_thread, name=TUNING_THREAD_NAME, daemon=True)
        _tuning_thread.start()


def _tuning_runs_in_thread() -> None:
    global _tuning_thread
    failures = 0
    try:
        while True:
            try:
                # The check and the thread's end under the lock ``tuning_runs_embedded`` takes: a run queued
                # (committed) as the thread ends is either seen here or finds the thread gone and starts one.
                with _tuning_lock:
                    run_id = tuning_run_oldest_queued()
                    if run_id is None:
                        _tuning_thread = None
                        return
                tuning_run.apply(args=(run_id,))
                failures = 0
            except DatabaseError:
                # A run not yet taken is still queued (one taken records its own failure, or is failed as lost).
                failures += 1
                if failures > TUNING_DB_RETRIES:
                    raise
                log.warning("tuning runs: database error, trying again (%s of %s)", failures, TUNING_DB_RETRIES)
                connections.close_all()
                time.sleep(2.0 ** (failures - 1))
    except Exception:
        # The database gone for good: the runs stay queued for the next run queued or the next server.
        log.exception("tuning runs: the embedded thread stopped; queued runs wait for the next one")
    finally:
        connections.close_all()  # this thread's own connections
