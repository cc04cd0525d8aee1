"""Start the demo's SIMULATED vLLM server (``fleet.demo.engine_server``) as its own process for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.vllm_server import free_port

SERVED = "sim-qwen3-4b"
READY_TIMEOUT_S = 30.0


class SimEngine:
    """One simulated engine on 127.0.0.1 with no cold start, ready when ``start`` returns."""

    def __init__(self, log_dir: Path, *, env: Mapping[str, str] | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"sim-engine-{self.port}.log"
        self.env = dict(env or {})
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SimEngine:
        argv = [
            sys.executable, "-m", "fleet.demo.engine_server",
            "--model", "Qwen/Qwen3-4B-Instruct-2507", "--served-model-name", SERVED,
            "--port", str(self.port), "--cold-start-s", "0", "--max-model-len", "8192", *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"simulated engine not ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> SimEngine:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def process_running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
