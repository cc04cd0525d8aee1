"""Settings switch modes from the environment alone, and production refuses unsafe setups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "host": db.get("HOST", ""),
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "layer_hosts": settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", []),
    "broker": settings.CELERY_BROKER_URL, "eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "debug": settings.DEBUG, "secure_cookies": settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE,
    "allowed_hosts": settings.ALLOWED_HOSTS,
}))
"""

CONFIG_VARS = ("DATABASE_URL", "REDIS_URL", "FLEET_ENV", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG")


def run_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in CONFIG_VARS}
    clean.update(DJANGO_SETTINGS_MODULE="fleet.project.settings", FLEET_VAR_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def probe(tmp_path: Path, **env: str) -> dict[str, object]:
    result = run_settings(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_embedded_default_needs_no_services(tmp_path: Path) -> None:
    values = probe(tmp_path)
    assert values["engine"] == "django.db.backends.sqlite3"
    assert values["name"] == str(tmp_path / "fleet.sqlite3")
    assert values["layer"] == "channels.layers.InMemoryChannelLayer"
    assert values["broker"] == "memory://"
    assert values["eager"] is True
    assert values["debug"] is True


def test_database_and_redis_urls_switch_backends(tmp_path: Path) -> None:
    values = probe(
        tmp_path, DATABASE_URL="postgresql://fleet@127.0.0.1:5432/fleet", REDIS_URL="redis://127.0.0.1:6379/3"
    )
    assert values["engine"] == "django.db.backends.postgresql"
    assert (values["name"], values["host"]) == ("fleet", "127.0.0.1")
    assert values["layer"] == "channels_redis.core.RedisChannelLayer"
    assert [host["address"] for host in values["layer_hosts"]] == ["redis://127.0.0.1:6379/3"]
    assert values["broker"] == "redis://127.0.0.1:6379/3"
    assert values["eager"] is False


PRODUCTION = dict(
    FLEET_ENV="production",
    DATABASE_URL="postgresql://fleet@127.0.0.1:5432/fleet",
    REDIS_URL="redis://127.0.0.1:6379/0",
    ALLOWED_HOSTS="fleet.example.internal",
)


def test_production_refuses_the_default_secret_key(tmp_path: Path) -> None:
    result = run_settings(tmp_path, **PRODUCTION)
    assert result.returncode != 0
    assert "refuses the default SECRET_KEY" in result.stderr


def test_production_refuses_a_short_secret_key(tmp_path: Path) -> None:
    result = run_settings(tmp_path, **PRODUCTION, SECRET_KEY="too-short")
    assert result.returncode != 0
    assert "refuses the default SECRET_KEY" in result.stderr


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"])
def test_production_needs_its_services_and_hosts(tmp_path: Path, missing: str) -> None:
    env = {key: value for key, value in PRODUCTION.items() if key != missing}
    result = run_settings(tmp_path, **env, SECRET_KEY="k" * 50)
    assert result.returncode != 0
    assert missing in result.stderr


def test_production_with_a_real_key_is_locked_down(tmp_path: Path) -> None:
    values = probe(tmp_path, **PRODUCTION, SECRET_KEY="x9" * 25)
    assert values["debug"] is False
    assert values["secure_cookies"] is True
    assert values["allowed_hosts"] == ["fleet.example.internal"]


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    result = run_settings(tmp_path, FLEET_ENV="staging")
    assert result.returncode != 0
    assert "FLEET_ENV" in result.stderr


def test_the_suite_runs_on_the_database_the_environment_names(db: None) -> None:
    """CI runs the suite twice: on PostgreSQL (DATABASE_URL set) and on the embedded SQLite."""
    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    assert ("channels_redis" in layer) == bool(os.environ.get("REDIS_URL"))


@pytest.mark.parametrize(("name", "value"), [("BEAT_LOCK_TTL_S", "2"), ("BEAT_LOCK_RETRY_S", "0")])
def test_a_beat_lock_too_short_to_renew_is_refused(tmp_path: Path, name: str, value: str) -> None:
    """The holder renews every third of the TTL: below 3 s a renewal would race the expiry."""
    result = run_settings(tmp_path, **{name: value})
    assert result.returncode != 0
    assert "BEAT_LOCK_TTL_S must be at least 3 and BEAT_LOCK_RETRY_S above 0" in result.stderr
