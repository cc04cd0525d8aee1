"""Celery tasks of the fleet domain."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import connection

from fleet.policies.evaluate import ORDER, policies_evaluate


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
