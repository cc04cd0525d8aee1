"""Install the panel's periodic tasks in the beat schedule, or run them in-process where there is no broker."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from fleet.project.celery import app
from fleet.schedules import schedules_install


class Command(BaseCommand):
    help = "Create missing periodic tasks (policies, costs, rollups, retention); with --loop, run due ones here."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help="Embedded default (no broker): run due periodic tasks here, eagerly, until interrupted.",
        )
        parser.add_argument("--once", action="store_true", help="With --loop: one pass, then exit.")

    def handle(self, *args: Any, loop: bool, once: bool, **options: Any) -> None:
        created = schedules_install(PeriodicTask=PeriodicTask, IntervalSchedule=IntervalSchedule)
        self.stdout.write(f"{created} periodic task(s) created")
        while loop:
            self.run_due()
            if once:
                return
            time.sleep(1)

    def run_due(self) -> None:
        """Run each enabled interval task whose interval has passed, as beat would, and record the run."""
        now = timezone.now()
        app.loader.import_default_modules()
        for task in PeriodicTask.objects.filter(enabled=True, interval__isnull=False).select_related("interval"):
            every = timedelta(**{task.interval.period: task.interval.every})
            if task.last_run_at is not None and now - task.last_run_at < every:
                continue
            result = app.tasks[task.task].apply(
                args=json.loads(task.args or "[]"), kwargs=json.loads(task.kwargs or "{}")
            )
            PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=now, total_run_count=F("total_run_count") + 1)
            self.stdout.write(f"{task.name}: {result.result}")
