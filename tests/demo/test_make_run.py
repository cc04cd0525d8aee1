"""The README's first command, ``make run``, from a clean copy of the repository: the demo comes up.

The copy has a fresh ``var/`` (no database); ``VENV`` points at this test run's virtualenv
and ``make -o`` keeps make from reinstalling into it, which is what installing would
otherwise cost. The dashboard is reached over HTTP with the printed login, the WebSocket
delivers fleet updates, the replayed trace is answered through the gateway by simulated
engines, and Ctrl-C leaves no process behind, simulated engines included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.require import require
from tests.support.sim_engine import process_running
from tests.support.vllm_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45.0
EVENT_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.services


def clean_copy(target: Path) -> Path:
    """The working tree as git sees it (tracked and new files, nothing ignored): no var/, no venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target / "var").exists()
    return target


class Output:
    """Lines of the demo's output, read on a thread so the pipe never fills."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, process: subprocess.Popen[str]) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            assert process.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, Path, int]]:
    require(shutil.which("make") is not None, "make is not installed")
    repo = clean_copy(tmp_path / "repo")
    port = free_port()
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "FLEET_VAR_DIR"}}
    process = subprocess.Popen(
        [
            "make",
            "run",
            f"VENV={venv}",
            f"PORT={port}",
            "DEMO_ARGS=--hosts 1 --gpus-per-host 2 --engine-cold-start 1",
            "-o",
            f"{venv}/.runtime",
        ],
        cwd=repo,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    try:
        yield process, output, repo, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def login(base: str, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=10)
    page = client.get("/admin/login/", params={"next": "/"})
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text
    response = client.post(
        "/admin/login/?next=/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1), "next": "/"},
    )
    assert response.status_code == 302, response.text
    return client


def engine_pids(repo: Path) -> list[int]:
    records = (repo / "var" / "demo" / "hosts").glob("*/processes/*.json")
    return [json.loads(path.read_text())["pid"] for path in records]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace") if entry.name.isdigit() else ""
        except OSError:
            continue
        if text in command and process_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_make_run_serves_a_live_simulated_fleet_and_stops_cleanly(
    demo: tuple[subprocess.Popen[str], Output, Path, int],
) -> None:
    process, output, repo, port = demo
    started = time.monotonic()
    credentials = output.wait_for(r"Login:\s+(\S+) / (\S+)", process)
    output.wait_for(r"Demo running", process)
    base = f"http://127.0.0.1:{port}"
    client = login(base, credentials.group(1), credentials.group(2))

    deadline = time.monotonic() + 20
    while 'class="badge sim">simulated' not in (page := client.get("/")).text:
        assert time.monotonic() < deadline, page.text
        time.sleep(0.5)
    assert page.status_code == 200 and "simulated-host-1" in page.text

    headers = {"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": base}
    with connect(f"ws://127.0.0.1:{port}/ws/fleet/", additional_headers=headers, open_timeout=5) as socket:
        asked = time.monotonic()
        event = json.loads(socket.recv(timeout=EVENT_TIMEOUT_S))
        assert time.monotonic() - asked < EVENT_TIMEOUT_S
    assert event["kind"] in {"fleet", "node", "instances", "decision"}, event

    served = output.wait_for(r"replay: .* ok ([1-9]\d*),", process)  # requests answered through the gateway
    assert int(served.group(1)) > 0
    deadline = time.monotonic() + 15
    while not (pids := engine_pids(repo)):  # the replayer's first requests make the gateway wake pools
        assert time.monotonic() < deadline, "no simulated engine was started"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    process.wait(STOP_TIMEOUT_S)
    output.thread.join(5)
    assert "Demo stopped." in "".join(output.lines)
    assert [pid for pid in pids if process_running(pid)] == []
    assert processes_mentioning(str(repo)) == [], "agents, panel or replayer left behind"
    assert time.monotonic() - started < 60
