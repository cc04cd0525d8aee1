"""``manage.py deploycheck``: what a deployment still lacks, one line per check, non-zero exit on any failure.

Run it with the deployment's environment (``deploy/gpufleet.env``) after ``migrate``, ``collectstatic``
and starting the services; ``--before-start`` leaves out what needs running services (Celery beat).
Each check prints ``ok``, ``FAIL`` (with what to do) or ``note`` (worth a look, not a failure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django_celery_beat.models import PeriodicTask

from fleet.project.beat import beat_lock_holder
from fleet.project.settings import DEFAULT_SECRET_KEY
from fleet.schedules import PERIODIC_TASKS

OK, FAIL, NOTE = "ok", "FAIL", "note"


@dataclass(frozen=True)
class Result:
    status: str
    name: str
    text: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.text}"


def secret_key_check() -> Iterator[Result]:
    if settings.SECRET_KEY == DEFAULT_SECRET_KEY:
        yield Result(FAIL, "SECRET_KEY", "the built-in default: set SECRET_KEY to at least 32 random characters")
    elif len(settings.SECRET_KEY) < 32:
        yield Result(FAIL, "SECRET_KEY", f"{len(settings.SECRET_KEY)} characters: set at least 32 random characters")
    else:
        yield Result(OK, "SECRET_KEY", "set")


def mode_check() -> Iterator[Result]:
    if not settings.PRODUCTION:
        yield Result(NOTE, "FLEET_ENV", "embedded mode: set FLEET_ENV=production for a deployment")
        return
    yield Result(OK, "FLEET_ENV", f"production, answering {', '.join(settings.ALLOWED_HOSTS)}")
    if not settings.TRUSTED_PROXIES:
        yield Result(
            NOTE, "TRUSTED_PROXIES", "empty: behind a reverse proxy, list its address so client addresses are believed"
        )


def database_check() -> Iterator[Result]:
    vendor = connection.vendor
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        yield Result(FAIL, "database", f"unreachable ({vendor}): {first}: start it or fix DATABASE_URL")
        return
    yield Result(OK, "database", f"reachable ({vendor})")
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        yield Result(FAIL, "migrations", f"{len(plan)} not applied: run manage.py migrate")
        return
    yield Result(OK, "migrations", "all applied")
    yield from schedule_check()


def schedule_check() -> Iterator[Result]:
    """Every periodic task of ``fleet.schedules`` has its beat row (the migration or ``fleet_schedule`` made it)."""
    rows = {task: enabled for task, enabled in PeriodicTask.objects.values_list("task", "enabled")}
    missing = [task for task, _, _ in PERIODIC_TASKS if task not in rows]
    disabled = [task for task, _, _ in PERIODIC_TASKS if rows.get(task) is False]
    if missing:
        yield Result(FAIL, "beat schedule", f"missing {', '.join(missing)}: run manage.py fleet_schedule")
    else:
        yield Result(OK, "beat schedule", f"{len(PERIODIC_TASKS)} periodic tasks present")
    if disabled:
        yield Result(NOTE, "beat schedule", f"disabled in the admin: {', '.join(disabled)}")


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=3)


def redis_check() -> Iterator[Result]:
    if not settings.REDIS_URL:
        yield Result(NOTE, "Redis", "REDIS_URL not set: in-memory channel layer, tasks run in the panel process")
        return
    try:
        redis_client().ping()
    except redis.RedisError as exc:
        yield Result(FAIL, "Redis", f"unreachable: {exc}: start it or fix REDIS_URL")
        return
    yield Result(OK, "Redis", "reachable")


def beat_check() -> Iterator[Result]:
    """Exactly one Celery beat schedules: it holds the beat lock (fleet/project/beat.py)."""
    if not settings.REDIS_URL:
        return
    if settings.FLEET_INPROCESS_SCHEDULER:
        yield Result(NOTE, "beat", "FLEET_INPROCESS_SCHEDULER is on: the ASGI app runs the periodic tasks, not beat")
        return
    try:
        holder = beat_lock_holder(redis_client())
    except redis.RedisError:
        return  # redis_check said why
    if holder is None:
        yield Result(FAIL, "beat", "no Celery beat holds the beat lock: start celery -A fleet.project beat")
        return
    name, ttl_ms = holder
    yield Result(OK, "beat", f"one beat schedules ({name}, lock renewed {ttl_ms / 1000:.0f} s ahead)")


def static_check() -> Iterator[Result]:
    root = Path(settings.STATIC_ROOT)
    if isinstance(staticfiles_storage, ManifestFilesMixin):
        manifest = root / staticfiles_storage.manifest_name
        if not manifest.is_file():
            text = f"no {manifest.name} in STATIC_ROOT: run manage.py collectstatic --noinput"
            yield Result(FAIL, "static files", text)
            return
    elif not root.is_dir() or not any(root.iterdir()):
        yield Result(FAIL, "static files", "STATIC_ROOT is empty: run manage.py collectstatic --noinput")
        return
    yield Result(OK, "static files", "collected")


class Command(BaseCommand):
    help = "Check what a deployment lacks: settings, database, Redis, static files, beat's schedule and beat."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before-start", action="store_true", help="Leave out checks of running services (Celery beat)."
        )

    def handle(self, *args: Any, before_start: bool, **options: Any) -> None:
        checks: list[Callable[[], Iterator[Result]]] = [
            mode_check,
            secret_key_check,
            database_check,
            redis_check,
            static_check,
        ]
        if not before_start:
            checks.append(beat_check)
        failed = 0
        for check in checks:
            for result in check():
                failed += result.status == FAIL
                self.stdout.write(result.line())
        if failed:
            raise CommandError(f"{failed} check(s) failed")
        self.stdout.write("all checks passed")
