"""Put the panel's periodic tasks back into django-celery-beat's schedule if any are missing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from fleet.schedules import schedules_install


class Command(BaseCommand):
    help = "Create the panel's periodic tasks (rollups, retention) in the beat schedule; idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        created = schedules_install(PeriodicTask=PeriodicTask, IntervalSchedule=IntervalSchedule)
        self.stdout.write(f"{created} periodic task(s) created")
