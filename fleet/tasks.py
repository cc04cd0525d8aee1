"""Celery tasks of the fleet domain."""

from celery import shared_task
from django.db import connection


@shared_task(name="fleet.ping")
def ping() -> dict[str, str]:
    """Answer with the worker's database vendor: proves a worker is up and sees the database."""
    return {"pong": "ok", "database": connection.vendor}
