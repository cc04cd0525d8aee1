"""The periodic tasks the panel needs, as django-celery-beat rows (editable in the admin).

``schedules_install`` takes the model classes as arguments so the data migration can pass
its historical models and the management command the real ones. It only creates what is
missing, so an interval an operator changed in the admin is kept.
"""

from __future__ import annotations

from typing import Any

EVALUATE_TASK = "fleet.policies_evaluate"

# task name (also the row's name), every N seconds, description
PERIODIC_TASKS: tuple[tuple[str, int, str], ...] = (
    (EVALUATE_TASK, 30, "Run the enabled policies (reap, idle reclaim, autoscale, pre-warm, co-location) once."),
    ("fleet.costs_evaluate", 60, "Evaluate budgets, then every alert rule."),
    ("fleet.telemetry.rollup_minutes", 60, "Roll raw samples up into per-minute aggregates."),
    ("fleet.telemetry.rollup_hours", 300, "Roll minute aggregates up into per-hour aggregates."),
    ("fleet.telemetry.prune", 600, "Delete samples and rollups past their retention."),
)


def schedules_install(*, PeriodicTask: Any, IntervalSchedule: Any) -> int:
    """Create any missing periodic task; return how many were created."""
    created = 0
    for task, every, description in PERIODIC_TASKS:
        if PeriodicTask.objects.filter(task=task).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        PeriodicTask.objects.create(name=task, task=task, interval=interval, description=description)
        created += 1
    return created
