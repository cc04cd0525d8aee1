"""Run a real vLLM OpenAI-compatible server on the CPU for the test suite.

The agents start vLLM servers in production, so the tests talk to a real one instead
of a mock: same API, same streaming, same /metrics. vLLM lives in its own virtualenv
(.venv-vllm, made by .ci/install-vllm.sh) because it drags in torch and ~150 packages
the panel never imports; this module only starts that venv's python as a subprocess,
so it needs nothing beyond the standard library and pytest.

Use the session-scoped ``vllm_server`` fixture (one server for the whole run, since a
start costs about half a minute) or ``VllmServer`` directly as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.support import tiny_model
from tests.support.require import require

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_ENV_VAR = "FLEET_VLLM_PYTHON"
DEFAULT_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
MODEL_BUILD_TIMEOUT_S = 600.0
LOG_TAIL_LINES = 60

# Keep a test server off the network and inside this small (2-core) machine.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


class VllmServerError(RuntimeError):
    """The server or its model could not be made ready."""


def vllm_python() -> Path:
    """The python of the vLLM virtualenv: ``$FLEET_VLLM_PYTHON`` or ``.venv-vllm``."""
    override = os.environ.get(PYTHON_ENV_VAR)
    return Path(override) if override else DEFAULT_PYTHON


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; the kernel picks it so parallel runs differ."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_tiny_model(python: Path) -> Path:
    """Return the tiny model's directory, building it with the vLLM venv's python.

    The project venv has no torch, so the build runs in a subprocess; when the cache
    already holds the current build (as after .ci/install-vllm.sh) nothing runs.
    """
    target = tiny_model.model_dir()
    if target.is_dir():
        return target
    result = subprocess.run(
        [str(python), tiny_model.__file__],
        capture_output=True,
        text=True,
        timeout=MODEL_BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise VllmServerError(f"building the tiny model failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process on 127.0.0.1.

    ``start()`` returns only once /health answers and /v1/models lists the served
    name, so a test never races the model load; ``stop()`` sends SIGTERM to the
    server's process group (API server and engine core) and SIGKILL if it lingers.
    """

    def __init__(
        self,
        model_dir: Path,
        log_dir: Path,
        *,
        python: Path | None = None,
        served_model: str = tiny_model.SERVED_MODEL,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 2048,
        max_num_seqs: int = 4,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_dir / "vllm-server.log"
        self.python = python or vllm_python()
        self.served_model = served_model
        self.host = host
        self.port = port or free_port(host)
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Server root, e.g. http://127.0.0.1:PORT (the OpenAI API is under /v1)."""
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint that the agents scrape."""
        return f"{self.base_url}/metrics"

    def command(self) -> list[str]:
        """The server's command line; the ``vllm`` CLI of vllm-cpu fails, ``-m`` works."""
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_model_len),
            "--seed",
            "0",
            "--enforce-eager",
        ]

    def environment(self) -> dict[str, str]:
        """The caller's environment, offline, without the project's PYTHONPATH."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(SERVER_ENV)
        return env

    def start(self) -> None:
        """Start the server and block until it serves the model, or raise with its log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Poll /health, then /v1/models, until the served name is listed."""
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise VllmServerError(f"vLLM server exited with code {code} before it was ready\n{self.log_tail()}")
            if self._serves_model():
                return
            time.sleep(0.5)
        raise VllmServerError(f"vLLM server not ready after {self.ready_timeout_s:.0f} s\n{self.log_tail()}")

    def _serves_model(self) -> bool:
        """Whether /health answers 200 and /v1/models lists the served name."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                if response.status != 200:
                    return False
            with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=2) as response:
                models = json.load(response)
        except (OSError, ValueError):
            return False
        return any(entry.get("id") == self.served_model for entry in models.get("data", []))

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        # The engine core may outlive the API server for a moment; leave no orphan.
        _signal_group(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log, to put in an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class _SharedServer:
    """The one server of a pytest session, counted by the fixtures that hold it.

    A fixture imported into both conftest.py and a test module is registered twice
    and pytest would set it up twice; counting users keeps that to one server.
    """

    def __init__(self) -> None:
        self.server: VllmServer | None = None
        self.users = 0

    def acquire(self, python: Path, tmp_path_factory: pytest.TempPathFactory) -> VllmServer:
        if self.server is None:
            log_dir = tmp_path_factory.mktemp("vllm")
            server = VllmServer(ensure_tiny_model(python), log_dir, python=python)
            server.start()
            self.server = server
        self.users += 1
        return self.server

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.server is not None:
            self.server.stop()
            self.server = None


_shared = _SharedServer()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """One real vLLM server serving the tiny Qwen3 model, shared by the whole session.

    Skips (fails under CI=true) when .venv-vllm is missing; the server log is kept in
    pytest's temporary directory and quoted in the error when the server won't start.
    """
    python = vllm_python()
    require(
        python.is_file() and os.access(python, os.X_OK),
        f"no vLLM virtualenv python at {python}: run .ci/install-vllm.sh or set {PYTHON_ENV_VAR}",
    )
    server = _shared.acquire(python, tmp_path_factory)
    try:
        yield server
    finally:
        _shared.release()
