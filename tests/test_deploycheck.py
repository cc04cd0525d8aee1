"""``manage.py deploycheck``: one line per check, a clear FAIL line and a non-zero exit for each thing missing."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from fleet.project.settings import DEFAULT_SECRET_KEY
from fleet.schedules import PERIODIC_TASKS, schedules_install
from tests.support.private_redis import PrivateRedis, private_redis

__all__ = ["private_redis"]

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k" * 40


def deploycheck(*args: str) -> tuple[bool, str]:
    """Run the command in this process: whether it passed, and what it printed."""
    out = StringIO()
    try:
        call_command("deploycheck", *args, stdout=out)
    except CommandError as exc:
        return False, out.getvalue() + str(exc)
    return True, out.getvalue()


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python manage.py ...`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def deployed(db, settings):  # type: ignore[no-untyped-def]
    """A deployment that passes: a real key, the schedule installed, no Redis (its checks are tested apart)."""
    settings.SECRET_KEY = GOOD_KEY
    settings.REDIS_URL = ""
    schedules_install(PeriodicTask=PeriodicTask, IntervalSchedule=IntervalSchedule)
    return settings


def test_the_all_clear_prints_one_ok_line_per_check(deployed) -> None:  # type: ignore[no-untyped-def]
    passed, out = deploycheck()
    assert passed, out
    assert "ok   SECRET_KEY: set" in out
    assert "ok   database: reachable" in out
    assert "ok   migrations: all applied" in out
    assert f"ok   beat schedule: {len(PERIODIC_TASKS)} periodic tasks present" in out
    assert "ok   static files: collected" in out
    assert "FAIL" not in out
    assert out.rstrip().endswith("all checks passed")


@pytest.mark.parametrize(
    ("key", "line"),
    [
        (DEFAULT_SECRET_KEY, "FAIL SECRET_KEY: the built-in default"),
        ("s" * 31, "FAIL SECRET_KEY: 31 characters: set at least 32"),
    ],
)
def test_a_default_or_short_secret_key_fails(deployed, key: str, line: str) -> None:  # type: ignore[no-untyped-def]
    deployed.SECRET_KEY = key
    passed, out = deploycheck()
    assert not passed
    assert line in out
    assert "1 check(s) failed" in out


def test_a_missing_periodic_task_fails_and_names_it(deployed) -> None:  # type: ignore[no-untyped-def]
    PeriodicTask.objects.filter(task="fleet.telemetry.prune").delete()
    passed, out = deploycheck()
    assert not passed
    assert "FAIL beat schedule: missing fleet.telemetry.prune: run manage.py fleet_schedule" in out


def test_a_disabled_periodic_task_is_a_note_not_a_failure(deployed) -> None:  # type: ignore[no-untyped-def]
    PeriodicTask.objects.filter(task="fleet.costs_evaluate").update(enabled=False)
    passed, out = deploycheck()
    assert passed, out
    assert "note beat schedule: disabled in the admin: fleet.costs_evaluate" in out


def test_static_files_not_collected_fail(deployed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    deployed.STATIC_ROOT = tmp_path / "empty"
    passed, out = deploycheck()
    assert not passed
    assert "FAIL static files: STATIC_ROOT is empty: run manage.py collectstatic --noinput" in out


def test_production_storage_without_its_manifest_fails(deployed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Production's storage serves hashed names from staticfiles.json: files alone are not enough."""
    (tmp_path / "app.js").write_text("1")
    deployed.STATIC_ROOT = tmp_path
    deployed.STORAGES = {
        **deployed.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    passed, out = deploycheck()
    assert not passed
    assert "FAIL static files: no staticfiles.json in STATIC_ROOT" in out
    (tmp_path / "staticfiles.json").write_text('{"paths": {}, "version": "1.1"}')
    passed, out = deploycheck()
    assert passed, out


def test_an_unreachable_redis_fails(deployed) -> None:  # type: ignore[no-untyped-def]
    deployed.REDIS_URL = "redis://127.0.0.1:1/0"
    passed, out = deploycheck("--before-start")
    assert not passed
    assert "FAIL Redis: unreachable" in out
    assert "fix REDIS_URL" in out


def test_no_beat_holding_the_lock_fails_unless_before_start(  # type: ignore[no-untyped-def]
    deployed, private_redis: PrivateRedis
) -> None:
    deployed.REDIS_URL = private_redis.url
    deployed.FLEET_INPROCESS_SCHEDULER = False
    passed, out = deploycheck()
    assert not passed
    assert "ok   Redis: reachable" in out
    assert "FAIL beat: no Celery beat holds the beat lock: start celery -A fleet.project beat" in out
    passed, out = deploycheck("--before-start")
    assert passed, out


def test_an_unreachable_database_fails_with_a_non_zero_exit(tmp_path: Path) -> None:
    env = dict(os.environ, DATABASE_URL="postgresql://fleet@127.0.0.1:1/fleet", SECRET_KEY=GOOD_KEY)
    env.pop("REDIS_URL", None)
    result = manage("deploycheck", "--before-start", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL database: unreachable (postgresql)" in result.stdout
    assert "fix DATABASE_URL" in result.stdout


def test_a_fresh_database_fails_until_migrated_then_all_clear(tmp_path: Path) -> None:
    """On an empty database the check says to migrate and exits 1; after ``migrate`` (which installs
    the schedule) it exits 0."""
    env = dict(os.environ, FLEET_VAR_DIR=str(tmp_path), SECRET_KEY=GOOD_KEY)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    result = manage("deploycheck", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not applied: run manage.py migrate" in result.stdout
    assert "1 check(s) failed" in result.stderr
    assert manage("migrate", "-v0", env=env).returncode == 0
    result = manage("deploycheck", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
