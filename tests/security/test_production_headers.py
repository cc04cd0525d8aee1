"""Production mode: HSTS and a content security policy that no page of the panel needs to break."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "FLEET_ENV": "production",
    "DATABASE_URL": "postgresql://fleet@db.invalid:5432/fleet",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "SECRET_KEY": "x" * 50,
    "ALLOWED_HOSTS": "testserver",
    "SECURE_HSTS_SECONDS": "",
}
NAMES = ["SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "MIDDLEWARE", "CONTENT_SECURITY_POLICY"]


def production_settings() -> dict[str, Any]:
    """The settings production mode chooses, read in a process of its own (they are read once, at start)."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{name: getattr(settings, name, None) for name in {NAMES!r}}}))"
    )
    env = {**os.environ, **PRODUCTION_ENV, "DJANGO_SETTINGS_MODULE": "fleet.project.settings"}
    env.pop("SECURE_HSTS_SECONDS")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def production(settings: Any) -> dict[str, Any]:
    chosen = production_settings()
    for name, value in chosen.items():
        setattr(settings, name, value)
    return chosen


def test_production_mode_sends_hsts_and_a_strict_csp(production: dict[str, Any], admin_client: Client) -> None:
    assert production["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    response = admin_client.get(reverse("dashboard:index"), secure=True)
    assert response.status_code == 200
    assert response["Strict-Transport-Security"].startswith("max-age=")
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";") if part.strip())
    assert policy["script-src"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]


EXECUTABLE = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.IGNORECASE)


@pytest.mark.parametrize("page", ["dashboard:index", "dashboard:hosts-add", "admin:index", "admin:fleet_node_add"])
def test_pages_have_no_inline_script_the_policy_would_block(page: str, admin_client: Client) -> None:
    html = admin_client.get(reverse(page)).content.decode()
    assert EXECUTABLE.findall(html) == []
    assert not re.search(r"\son[a-z]+=\"", html), "an inline event handler"


def test_the_page_after_creating_a_join_token_has_no_inline_script(admin_client: Client) -> None:
    html = admin_client.post(reverse("dashboard:hosts-add"), {"name": "rack 4", "max_uses": "1", "valid_hours": "1"})
    assert EXECUTABLE.findall(html.content.decode()) == []
