"""Celery tasks of the fleet domain.

The periodic ones are registered with django-celery-beat by ``fleet.schedules`` (a data
migration installs them; ``manage.py fleet_schedule`` puts them back). In the embedded
default, where Celery is eager and there is no beat, ``fleet.scheduler`` runs the same
task functions from a thread in the server process.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import connection

from fleet import rollups
from fleet.models import AlertDelivery
from fleet.policies.evaluate import ORDER, policies_evaluate

ALERT_RETRY_BASE_S = 15


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
    from fleet.costs.alerts import alerts_evaluate
    from fleet.costs.budgets import budgets_evaluate

    results = budgets_evaluate()
    counts = alerts_evaluate()
    return {"budgets": len(results), **counts}


@shared_task(bind=True, name="fleet.alert_deliver", max_retries=5)
def alert_deliver(self, delivery_id: int) -> object:  # type: ignore[no-untyped-def]
    """Deliver one alert notice; on failure retry after 15 s, 30 s, 60 s... then give up.

    Any exception counts as a failed attempt (a receiver answering 500, a refused connection,
    an SMTP error): the receiver may be down for a while, and the attempt is recorded on the
    delivery row so the admin shows why. In the embedded mode retries run at once, in-process.
    """
    from fleet.costs.alerts import alert_delivery_give_up, alert_delivery_send

    delivery = AlertDelivery.objects.get(pk=delivery_id)
    if delivery.status != AlertDelivery.Status.PENDING:
        return delivery.status
    try:
        alert_delivery_send(delivery=delivery)
    except Exception as exc:
        if self.request.retries >= self.max_retries:
            alert_delivery_give_up(delivery_id=delivery_id)
            return AlertDelivery.Status.FAILED
        countdown = ALERT_RETRY_BASE_S * 2**self.request.retries
        if self.request.is_eager:
            # Eager Celery propagates a raised Retry to the caller instead of retrying; a returned
            # one it runs again at once, in-process (the embedded mode's retry, without the wait).
            return self.retry(exc=exc, countdown=countdown, throw=False)
        raise self.retry(exc=exc, countdown=countdown) from exc
    return AlertDelivery.Status.SENT


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
