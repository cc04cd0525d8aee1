"""The README's ``make run`` from a clean copy of the repository, for the tests that look at it.

The copy has a fresh ``var/`` and no collected static files, as a clone has. The command is
the README's own (``make run``, the product's own server, no test wrapper around it); the
test sets only what it must: ``PORT`` (a free port) and ``VENV`` (this test run's
virtualenv, which holds what ``make run`` would install; ``make -o`` keeps make from
reinstalling into it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0


def clean_copy(target: Path) -> Path:
    """The working tree as git sees it (tracked and new files, nothing ignored): no var/, no venv, no static."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target / "var").exists() and not (target / "staticfiles").exists()
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

    def wait_for(self, pattern: str, process: subprocess.Popen[str], timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            assert process.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: Output
    repo: Path
    port: int
    started: float = field(default_factory=time.monotonic)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running_s(self) -> float:
        return time.monotonic() - self.started

    def credentials(self) -> tuple[str, str]:
        match = self.output.wait_for(r"Login:\s+(\S+) / (\S+)", self.process)
        self.output.wait_for(r"Demo running", self.process)
        return match.group(1), match.group(2)

    def engines(self) -> list[dict[str, Any]]:
        """The simulated hosts' agents' records of the engine processes they started."""
        records = []
        for path in (self.repo / "var" / "demo" / "hosts").glob("*/processes/*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # a record being replaced as it is read
                continue
        return records


def make_run(repo: Path, port: int, *args: str, sigint_ignored: bool = False) -> subprocess.Popen[str]:
    """``make run`` as a person starts it; ``sigint_ignored``: as a shell starts a script's background
    job (``make run &``), with SIGINT ignored, which the demo must still stop on."""
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "FLEET_VAR_DIR"}}
    command = ["make", "run", f"VENV={venv}", f"PORT={port}", *args, "-o", f"{venv}/.runtime"]
    return subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command] if sigint_ignored else command,
        cwd=repo,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


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


def sign_in(page: Any, demo: Demo) -> None:
    """Sign in in the browser as a person does, with the login the demo printed."""
    username, password = demo.credentials()
    page.goto(f"{demo.base}/admin/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{demo.base}/")


class Problems:
    """Everything a person would see go wrong in the browser: failed requests, errors in the console."""

    def __init__(self, page: Any) -> None:
        self.seen: list[str] = []
        self.where = ""
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._add(f"page error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self._add(f"console: {message.text} {message.location}")

    def _failed(self, request: Any) -> None:
        # Aborted: the page moved on (a navigation, a download) before the request ended, as
        # a favicon still loading when the next page is opened; nothing a person would see.
        if request.failure != "net::ERR_ABORTED":
            self._add(f"failed: {request.url} ({request.failure})")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self._add(f"{response.status}: {response.url}")

    def _add(self, text: str) -> None:
        self.seen.append(f"{self.where}: {text}")
