"""Importing the ASGI module starts nothing; a server starting to serve it starts the embedded scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In a process of its own: the scheduler thread, once started, lives as long as its process.
PROBE = """
import asyncio, json, threading

def threads():
    return sorted(thread.name for thread in threading.enumerate())

from fleet.project.asgi import application
print(json.dumps({"imported": threads()}), flush=True)
sent = []

async def lifespan():
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message["type"])

    await application({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

asyncio.run(lifespan())
print(json.dumps({"sent": sent, "served": threads()}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The embedded default (no Redis, a scratch SQLite), where the scheduler is on."""
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="fleet.project.settings",
        FLEET_VAR_DIR=str(tmp_path_factory.mktemp("var")),
        FLEET_INPROCESS_SCHEDULER="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    seen: dict[str, Any] = {"returncode": result.returncode, "stderr": result.stderr}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            seen.update(json.loads(line))
    return seen


def test_importing_the_asgi_module_starts_no_thread(probe: dict[str, Any]) -> None:
    assert probe.get("imported") == ["MainThread"], probe["stderr"]


def test_the_servers_lifespan_startup_starts_the_scheduler(probe: dict[str, Any]) -> None:
    assert probe["returncode"] == 0, probe["stderr"]
    assert probe["sent"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "fleet-scheduler" in probe["served"]
