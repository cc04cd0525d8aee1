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
from typing import Any

from celery import shared_task
from django.db import connection, connections

from fleet.costs.alerts import alerts_evaluate
from fleet.costs.budgets import budgets_evaluate
from fleet.decide.evaluate import policies_evaluate
from fleet.decide.tuning import tuning_run_execute
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


TUNING_THREAD_PREFIX = "fleet-tuning-run-"


def tuning_run_queue(*, run_id: int) -> None:
    """Hand a queued run to what runs it, without waiting for it: a Celery worker; in the embedded default,
    where Celery is eager and would run it inside the request that asked, a daemon thread of this process
    (as ``fleet.project.scheduler`` runs the periodic tasks). A server stopped mid-run takes the thread with
    it; the run's heartbeat stops and it is failed as lost."""
    if not tuning_run.app.conf.task_always_eager:
        tuning_run.delay(run_id)
        return
    threading.Thread(
        target=_tuning_run_in_thread, args=(run_id,), name=f"{TUNING_THREAD_PREFIX}{run_id}", daemon=True
    ).start()


def _tuning_run_in_thread(run_id: int) -> None:
    try:
        tuning_run.apply(args=(run_id,))
    except Exception:
        log.exception("tuning run %s: its thread failed before the run could record why", run_id)
    finally:
        connections.close_all()  # this thread's own connections
