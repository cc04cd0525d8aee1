"""The whole deploy/ layout on one machine, started once, with processes a test kills and brings back.

Every service is started from its shipped systemd unit (``tests.support.deploy_site``): two
panel replicas (ASGI), two report replicas (gunicorn WSGI), two gateways, two Celery workers
and two beats, on a private PostgreSQL and a private Redis, behind nginx with the shipped site.

nginx terminates TLS with a self-signed certificate made by ``openssl``, which every client
(agents, the ``openai`` client, the test's own requests) verifies as its CA file. Each process
runs in a process group of its own, as a unit's control group, so a SIGKILL takes
its children too (gunicorn's workers, the gateway's database process, Celery's pool).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from agents import protocol
from agents.config import AgentConfig
from tests.agents.test_reconcile import FakeRuntime
from tests.faults.test_database_faults import INTERVAL_S, HostGpus, RecordingAgent
from tests.support.deploy_site import (
    DEPLOY,
    GATEWAY_PORTS,
    PANEL_PORTS,
    REPORT_PORTS,
    ROOT,
    env_file,
    nginx_binary,
    nginx_conf,
    site_render,
    unit_command,
)
from tests.support.private_postgres import PrivatePostgres, postgres_bin
from tests.support.private_redis import PrivateRedis
from tests.support.processes import process_stop
from tests.support.require import require
from tests.support.vllm_server import free_port

T = TypeVar("T")

# Beat's lock, short for a test: a standby takes over within TTL + one retry of the holder's death.
BEAT_LOCK_TTL_S = 4.0
BEAT_LOCK_RETRY_S = 0.5
# The periodic task the test counts: due every second, cheap (nothing is past retention).
EVERY_SECOND = "every-second"
EVERY_SECOND_TASK = "fleet.telemetry.prune"
SENT = f"Sending due task {EVERY_SECOND} ({EVERY_SECOND_TASK})"
SUCCEEDED = re.compile(rf"Task {re.escape(EVERY_SECOND_TASK)}\[([0-9a-f-]+)\] succeeded")

UNITS = {
    "panel": "gpufleet-panel@.service",
    "reports": "gpufleet-reports@.service",
    "gateway": "gpufleet-gateway@.service",
    "worker": "gpufleet-worker.service",
    "beat": "gpufleet-beat.service",
}


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, *, every_s: float = 0.1) -> T:
    """Poll ``check`` until it gives a true value, which is returned; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(every_s)


@dataclass
class Unit:
    """One running instance of a shipped unit: its process group, log and port (HTTP units)."""

    kind: str
    name: str
    port: int | None
    log: Path
    process: subprocess.Popen[bytes]
    # Where this start's output begins in the log (a restart appends to it).
    offset: int


class Layout:
    """The layout's processes by name (``panel-8010``, ``worker-1`` ...) and how to kill and start them."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.units: dict[str, Unit] = {}
        self.url = ""
        # The layout's certificate, which clients verify nginx's against (it signs itself).
        self.ca = root / "tls" / "cert.pem"
        # When each unit was first started (a restart keeps it).
        self.began: dict[str, float] = {}

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def shell(self, code: str) -> Any:
        """Run ``code`` in ``manage.py shell`` on the layout's database; the JSON it prints last."""
        return json.loads(self.manage("shell", "--no-imports", "-c", code).strip().splitlines()[-1])

    def start(self, kind: str, name: str, port: int | None = None) -> Unit:
        """Start ``name`` as its unit runs it (``port`` for ``%i``); returns once it serves.

        A unit of the same name started before is started again with its port and log: a
        restart, as systemd's ``Restart=always`` does.
        """
        unit = self.spawn(kind, name, port)
        self.ready(unit)
        return unit

    def spawn(self, kind: str, name: str, port: int | None = None) -> Unit:
        """Start ``name`` as its unit runs it, without waiting for it to serve (``ready``)."""
        var = self.root / "var"
        if kind == "beat":
            # A beat per host in production: each keeps its own schedule file.
            var = self.root / f"var-{name}"
            var.mkdir(exist_ok=True)
        command, environment = unit_command(UNITS[kind], port or 0, self.env, var)
        log = self.root / f"{name}.log"
        log.touch()
        offset = log.stat().st_size
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=output, stderr=output, start_new_session=True
            )
        unit = self.units[name] = Unit(kind, name, port, log, process, offset)
        self.began.setdefault(name, time.monotonic())
        return unit

    def ready(self, unit: Unit, timeout_s: float = 120) -> None:
        """Until the unit serves: its probe answers (HTTP units), its log says so (worker, beat)."""
        start = unit.offset

        def serving() -> bool:
            assert unit.process.poll() is None, f"{unit.name} exited: {unit.log.read_text()[-3000:]}"
            if unit.port is None:
                text = unit.log.read_bytes()[start:].decode(errors="replace")
                return ("ready." in text) if unit.kind == "worker" else ("beat: Starting" in text)
            probe = "/v1/models" if unit.kind == "gateway" else "/admin/login/"
            try:
                httpx.get(f"http://127.0.0.1:{unit.port}{probe}", timeout=3)
                return True
            except httpx.HTTPError:
                return False

        wait_for(f"{unit.name} serving", serving, timeout_s, every_s=0.3)

    def kill(self, name: str) -> float:
        """SIGKILL to the unit's process group, as ``systemctl kill -s KILL``; the monotonic time of the kill."""
        unit = self.units[name]
        os.killpg(unit.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        unit.process.wait(10)
        return killed

    def restart(self, name: str) -> Unit:
        unit = self.units[name]
        return self.start(unit.kind, name, unit.port)

    def log(self, name: str) -> str:
        return self.units[name].log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to every unit at once, as ``systemctl stop gpufleet.target``; SIGKILL to what is left after 15 s."""
        for unit in self.units.values():
            if unit.process.poll() is None:
                unit.process.terminate()
        deadline = time.monotonic() + 15
        for unit in self.units.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                unit.process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(unit.process.pid, signal.SIGKILL)
            unit.process.wait(10)

    @property
    def verify(self) -> ssl.SSLContext:
        """What a client verifies nginx's certificate with: the layout's own, as a CA file."""
        return ssl.create_default_context(cafile=str(self.ca))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path`` through nginx over HTTPS, verifying its certificate."""
        return httpx.get(f"{self.url}{path}", verify=self.verify, **kwargs)

    def access_log(self) -> list[str]:
        return (self.root / "access.log").read_text().splitlines()

    def sends(self) -> dict[str, int]:
        """How many times each beat sent the every-second task (its log)."""
        return {name: self.log(name).count(SENT) for name, unit in self.units.items() if unit.kind == "beat"}

    def runs(self) -> dict[str, list[str]]:
        """The every-second task's runs each worker finished: task ids, in order."""
        return {name: SUCCEEDED.findall(self.log(name)) for name, unit in self.units.items() if unit.kind == "worker"}


@contextmanager
def private_services(root: Path) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    """A private PostgreSQL cluster (an empty ``fleet`` database) and Redis, for the layout's whole life."""
    bindir = postgres_bin()
    require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server is not installed")
    assert bindir is not None and binary is not None
    cluster_root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    cluster = PrivatePostgres(bindir, cluster_root)
    (root / "redis").mkdir()
    redis_server = PrivateRedis(binary, root / "redis")
    try:
        cluster.init()
        cluster.start()
        cluster.psql("CREATE DATABASE fleet", database="postgres")
        redis_server.start()
        yield cluster, redis_server
    finally:
        redis_server.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(cluster_root, ignore_errors=True)


# Done on the layout's database before any service starts: beat reads its schedule at start.
SCHEDULE_SETUP = f"""
import json
from django_celery_beat.models import IntervalSchedule, PeriodicTask
# Only the counted task: the policies' tick would act on the test's pools on its own clock.
PeriodicTask.objects.update(enabled=False)
every, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
PeriodicTask.objects.create(name={EVERY_SECOND!r}, task={EVERY_SECOND_TASK!r}, interval=every)
print(json.dumps(PeriodicTask.objects.filter(enabled=True).count()))
"""


def tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with ``openssl`` (what an operator's CA would sign)."""
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl is not installed")
    assert openssl is not None
    directory.mkdir()
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return certificate, key


@contextmanager
def deploy_layout(root: Path) -> Iterator[tuple[Layout, PrivatePostgres, PrivateRedis]]:
    """The layout started from deploy/, served by nginx on a loopback port (``layout.url``)."""
    nginx = nginx_binary()
    require(nginx is not None, "nginx is not installed (apt-get install nginx)")
    assert nginx is not None
    with private_services(root) as (cluster, redis_server):
        (root / "var").mkdir()
        listen = free_port()
        # nginx terminates TLS as shipped, with a certificate of the test's own.
        tls = tls_certificate(root / "tls")
        url = f"https://127.0.0.1:{listen}"
        base = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
        env = {
            **base,
            **env_file(DEPLOY / "gpufleet.env.example"),
            "DATABASE_URL": cluster.url,
            "REDIS_URL": redis_server.url,
            "SECRET_KEY": "deploy-layout-test-key-" + "x" * 32,
            "ALLOWED_HOSTS": "127.0.0.1",
            "CSRF_TRUSTED_ORIGINS": url,
            "PANEL_URL": url,
            "STATIC_ROOT": str(root / "static"),
            "FLEET_VAR_DIR": str(root / "var"),
            "AGENT_WHEELHOUSE": str(root / "var" / "wheelhouse"),
            # Agents here report every 0.2 s, past the per-node bound; they test delivery, not the bound.
            "AGENT_REPORTS_PER_MINUTE": "60000",
            # One worker per report replica on a small machine; the kill takes the whole replica.
            "GPUFLEET_REPORT_WORKERS": "1",
            "BEAT_LOCK_TTL_S": str(BEAT_LOCK_TTL_S),
            "BEAT_LOCK_RETRY_S": str(BEAT_LOCK_RETRY_S),
            "PYTHONPATH": str(ROOT),
        }
        layout = Layout(root, env)
        layout.url = url
        nginx_process = None
        try:
            layout.manage("migrate", "--noinput", "-v0")
            layout.manage("collectstatic", "--noinput", "-v0")
            checked = layout.manage("deploycheck", "--before-start")
            assert "ok   FLEET_ENV: production" in checked and "ok   static files: collected" in checked, checked
            assert layout.shell(SCHEDULE_SETUP) == 1
            ports = {shipped: free_port() for shipped in (*PANEL_PORTS, *REPORT_PORTS, *GATEWAY_PORTS)}
            # All at once, as systemctl start gpufleet.target does; then each until it serves.
            for kind, shipped_ports in (("panel", PANEL_PORTS), ("reports", REPORT_PORTS), ("gateway", GATEWAY_PORTS)):
                for shipped in shipped_ports:
                    layout.spawn(kind, f"{kind}-{shipped}", ports[shipped])
            for kind in ("worker", "beat"):
                for n in (1, 2):
                    layout.spawn(kind, f"{kind}-{n}")
            for unit in list(layout.units.values()):
                layout.ready(unit, timeout_s=180)
            site = root / "gpufleet.conf"
            site.write_text(site_render(ports, listen, tls=tls))
            (root / "nginx.conf").write_text(nginx_conf(root, site))
            test = subprocess.run([nginx, "-t", "-c", str(root / "nginx.conf")], capture_output=True, text=True)
            assert test.returncode == 0, test.stderr
            with (root / "nginx.out").open("wb") as output:
                nginx_process = subprocess.Popen(
                    [nginx, "-c", str(root / "nginx.conf"), "-g", "daemon off;"], stdout=output, stderr=output
                )

            def nginx_serves() -> bool:
                assert nginx_process is not None and nginx_process.poll() is None, (root / "nginx.out").read_text()
                try:
                    return layout.get("/admin/login/", timeout=3).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for("nginx serving the panel", nginx_serves, 60, every_s=0.3)
            yield layout, cluster, redis_server
        finally:
            if nginx_process is not None:
                process_stop(nginx_process, grace_s=10)
            layout.stop()


class TimedAgent(RecordingAgent):
    """The real agent, noting when each reply acknowledged its reports, and each failed delivery."""

    acked_at: list[float]
    failed_at: list[float]

    @classmethod
    def started(cls, url: str, root: Path, name: str, join: str, *, verify: ssl.SSLContext | None = None) -> TimedAgent:
        """A registered agent of host ``name`` reporting every 0.2 s; ``verify`` checks the panel's certificate."""
        config = AgentConfig(panel_url=url, state_dir=root / name, node_name=name, interval_s=INTERVAL_S)
        config.state_dir.mkdir()
        trust = verify if verify is not None else True
        agent = cls(
            config,
            gpus=HostGpus(name),
            runtime=FakeRuntime(),
            http=httpx.Client(verify=trust),
            wait_http=httpx.Client(verify=trust),
        )
        agent.acked, agent.acked_at, agent.failed_at = {}, [], []
        agent.register(join)
        return agent

    def deliver(self) -> protocol.Reply | None:
        try:
            reply = super().deliver()
        except Exception:
            self.failed_at.append(time.monotonic())
            raise
        if reply is not None:
            self.acked_at.append(time.monotonic())
        return reply


class CountingTransport(httpx.HTTPTransport):
    """Every attempt the client makes (the ``openai`` client retries through it) and what came of it."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(verify=verify)
        self.attempts: list[tuple[float, int, str]] = []  # (when, retry number, status or error)
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        retry = int(request.headers.get("x-stainless-retry-count", "0"))
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            with self.lock:
                self.attempts.append((time.monotonic(), retry, type(exc).__name__))
            raise
        with self.lock:
            self.attempts.append((time.monotonic(), retry, str(response.status_code)))
        return response


@dataclass
class Call:
    """One completion the client asked for: when, how it ended, and how many retries it took."""

    started: float
    finished: float
    ok: bool
    retries: int
    error: str = ""
    instance: str = ""


def openai_client(url: str, key: str, transport: CountingTransport, *, timeout_s: float = 90) -> Any:
    """The official client through nginx, retrying as it does by default but more times (a kill takes seconds)."""
    import openai

    return openai.OpenAI(
        base_url=f"{url}/v1",
        api_key=key,
        max_retries=8,
        timeout=timeout_s,
        # The client takes an httpx client (its own types name httpx2's, which it also takes).
        http_client=cast(Any, httpx.Client(transport=transport, timeout=timeout_s)),
    )


def completion(client: Any, transport: CountingTransport, model: str) -> Call:
    """One chat completion with the client's own retries; the call's record."""
    import openai

    started = time.monotonic()
    before = len(transport.attempts)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        raw.parse()
        ok, error, instance = True, "", raw.headers.get("x-fleet-instance", "")
    except openai.OpenAIError as exc:
        ok, error, instance = False, f"{type(exc).__name__}: {str(exc)[:200]}", ""
    retries = sum(1 for _when, retry, _what in transport.attempts[before:] if retry > 0)
    return Call(started, time.monotonic(), ok, retries, error, instance)


@dataclass
class GatewayLoad:
    """Clients asking for completions through nginx without a pause, each with its own ``openai`` client."""

    url: str
    key: str
    model: str
    verify: ssl.SSLContext | bool = True
    clients: int = 2
    calls: list[Call] = field(default_factory=list)
    transports: list[CountingTransport] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        for _ in range(self.clients):
            transport = CountingTransport(self.verify)
            self.transports.append(transport)
            thread = threading.Thread(target=self._loop, args=(transport,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _loop(self, transport: CountingTransport) -> None:
        client = openai_client(self.url, self.key, transport)
        while not self.stop.is_set():
            self.calls.append(completion(client, transport, self.model))
            time.sleep(0.05)

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def served_since(self, since: float) -> Call | None:
        """The first call started after ``since`` that was answered, if any."""
        return next((call for call in list(self.calls) if call.started > since and call.ok), None)

    def retries_between(self, start: float, end: float) -> int:
        return sum(
            1
            for transport in self.transports
            for when, retry, _what in list(transport.attempts)
            if retry > 0 and start <= when <= end
        )


class SimulatedHost:
    """``python -m agents`` on simulated A100s with the process runtime (the demo's engines), through nginx.

    It reports every second, so a wake-up the gateway decides reaches it within a second; each
    engine it starts takes ``cold_start_s`` to load, the window in which requests are held.
    """

    def __init__(self, panel: str, directory: Path, *, gpus: int, cold_start_s: float, ca: Path) -> None:
        from fleet.demo.runner import SIMULATED_LAUNCHER

        self.name = "sim-host"
        self.state = directory / "sim-host-state"
        self.log = directory / "sim-host.log"
        self.launcher = f"{SIMULATED_LAUNCHER} --cold-start-s {cold_start_s:g}"
        self.panel = panel
        self.gpus = gpus
        self.ca = ca
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, join_token: str) -> None:
        from fleet.demo.runner import SIMULATED_IMAGE

        low = free_port()
        argv = [
            sys.executable, "-m", "agents",
            "--panel", self.panel,
            "--name", self.name,
            "--state-dir", str(self.state),
            "--interval", "1",
            "--port-range", f"{low + 1}-{low + 40}",
            "--simulated-gpus", f"A100x{self.gpus}",
            "--runtime", "process",
            "--launcher", self.launcher,
            "--allow-image", SIMULATED_IMAGE,
        ]  # fmt: skip
        # The agent's HTTP client verifies the panel's certificate against the CA file it is given.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUFLEET_JOIN_TOKEN": join_token, "SSL_CERT_FILE": str(self.ca)}
        self.process = subprocess.Popen(argv, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        from agents.processes import Launcher, ProcessRuntime

        if self.process is not None:
            process_stop(self.process, grace_s=20)
        # The engines outlive their agent by design (a restarted agent adopts them): stop them by its records.
        if self.state.exists():
            ProcessRuntime(self.state, self.name, [Launcher.parse(self.launcher)]).stop_all()


KEYS_SETUP = """
import json
from fleet.decide.services import api_key_create, join_token_create
from fleet.models import Team
_key, key = api_key_create(team=Team.objects.create(name="Load", slug="load"), name="load")
_token, join = join_token_create(name="layout", max_uses=None, expires_at=None)
print(json.dumps({"key": key, "join": join}))
"""

# Two pools of the simulated model on the host's GPUs: "chat" with an instance serving (the load's),
# "cold" with none (woken by the gateways). Exclusive, so a second instance would take a GPU of its
# own; on the host's GPU model, so never on the reporting agents' recorded H100s (they run nothing).
POOLS_SETUP = """
import json
from fleet.demo.runner import SIMULATED_IMAGE
from fleet.models import Gpu, Instance, ModelProfile, Pool
from fleet.presets import profile_presets
preset = next(p for p in profile_presets() if p["quantization"] == "")
gpu = Gpu.objects.filter(node__name=%r).order_by("index")[0]
ids = {}
for name in ("chat", "cold"):
    profile = ModelProfile.objects.create(**{**preset, "name": f"{name}-sim", "image": SIMULATED_IMAGE,
        "served_name": f"{name}-sim", "max_num_seqs": 64, "gpu_memory_utilization": 0.9})
    ids[name] = Pool.objects.create(name=name, tier="L", isolation="exclusive", model_profile=profile,
        min_instances=0, max_instances=3, gpu_model=gpu.model_name).pk
ids["instance"] = Instance.objects.create(pool_id=ids["chat"], gpu=gpu).pk
print(json.dumps(ids))
"""
