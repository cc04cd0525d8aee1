"""The policy schedule, kept in the database as django-celery-beat rows editable in the admin.

Installed by a data migration, so every database has it; ``manage.py fleet_schedule``
puts it back if someone deleted it and never overwrites an edited interval.
"""

from __future__ import annotations

from typing import Any

EVALUATE_TASK = "fleet.policies_evaluate"
EVALUATE_NAME = "Evaluate fleet policies"
EVALUATE_EVERY_S = 30


def schedule_install(*, IntervalSchedule: Any, PeriodicTask: Any) -> bool:
    """Create the evaluation's periodic task unless one exists; True when it was created."""
    if PeriodicTask.objects.filter(name=EVALUATE_NAME).exists():
        return False
    every, _ = IntervalSchedule.objects.get_or_create(every=EVALUATE_EVERY_S, period="seconds")
    PeriodicTask.objects.create(
        name=EVALUATE_NAME,
        task=EVALUATE_TASK,
        interval=every,
        description="Runs the enabled policies (reap, idle reclaim, autoscale, pre-warm, co-location) once.",
    )
    return True
