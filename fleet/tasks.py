"""Celery tasks of the fleet domain.

The periodic ones are registered with django-celery-beat by ``fleet.schedules`` (a data
migration installs them; ``manage.py fleet_schedule`` puts them back). In the embedded
default, where Celery is eager and there is no beat, ``fleet.scheduler`` runs the same
task functions from a thread in the server process.
"""

from typing import Any

from celery import shared_task
from django.db import connection

from fleet import rollups


@shared_task(name="fleet.ping")
def ping() -> dict[str, str]:
    """Answer with the worker's database vendor: proves a worker is up and sees the database."""
    return {"pong": "ok", "database": connection.vendor}


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
