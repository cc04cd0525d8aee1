"""The panel as its own process (uvicorn serving ``fleet.project.asgi``) on a database the test chooses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.processes import process_stop
from tests.support.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def panel_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    # Agents here report every 0.2 s, 300 requests a minute, past the per-node bound (60) that
    # tests/security/test_host_ports_and_rate.py tests; they test delivery, not the bound.
    env["AGENT_REPORTS_PER_MINUTE"] = "6000"
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="fleet.project.settings",
        FLEET_INPROCESS_SCHEDULER="0",
        ALLOWED_HOSTS="127.0.0.1",
        **extra,
    )
    return env


def panel_manage(database_url: str, *args: str) -> str:
    """Run ``manage.py`` against the panel's database; returns its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=panel_env(database_url),
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout


@contextmanager
def panel_process(database_url: str, log: Path, *, port: int | None = None, **env: str) -> Iterator[str]:
    """Serve the panel on ``port`` (a free loopback port by default) for the block; yields its URL."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "fleet.project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*command, "--lifespan", "off"], cwd=ROOT, env=panel_env(database_url, **env), stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the panel exited: {log.read_text()[-2000:]}"
            try:
                httpx.get(f"{url}/agent/install.sh", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the panel did not start"
                time.sleep(0.2)
        yield url
    finally:
        process_stop(process, grace_s=10)
