"""The control plane as several processes, as deploy/ runs it: replicas die, no acknowledged report is lost.

Everything is started from the shipped files: each process from its systemd unit's ``ExecStart``
(deploy/systemd, the instance's port for ``%i``) with the environment of
``deploy/gpufleet.env.example`` (test database, Redis and ports filled in), and nginx from
``deploy/nginx/gpufleet.conf`` with its upstream ports mapped to this test's and TLS left out
(the agents here speak plain HTTP). Behind nginx: two panel replicas (ASGI), two report replicas
(WSGI), one gateway, a private PostgreSQL and Redis. Real agent loops report through nginx every
0.2 s; one report replica and one panel replica are killed with SIGKILL. Every report a reply
acknowledged must be stored once, and pages, static files, the socket path and the gateway must
still answer through nginx.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.faults.test_database_faults import Fleet, RecordingAgent, join_token_issue
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
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.private_redis import PrivateRedis, private_redis
from tests.support.processes import process_stop
from tests.support.require import require
from tests.support.vllm_server import free_port

__all__ = ["private_postgres", "private_redis"]

pytestmark = pytest.mark.services


def http_wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    """Until ``url`` answers anything over HTTP."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"{process.args} exited: {log.read_text()[-3000:]}"
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"{url} did not answer: {log.read_text()[-3000:]}"
            time.sleep(0.3)


class Layout:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[int, int] = {}

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def unit_start(self, unit: str, port: int, shipped: int) -> None:
        """Start ``unit`` as the shipped instance ``shipped`` would run, on this test's ``port``."""
        command, environment = unit_command(unit, port, self.env, self.root / "var")
        name = f"{unit.split('@')[0]}-{shipped}"
        log = self.root / f"{name}.log"
        with log.open("wb") as output:
            # A process group of its own, as a unit's control group: a kill takes its children too.
            self.processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=output, stderr=output, start_new_session=True
            )
        probe = "/v1/models" if "gateway" in unit else "/admin/login/"
        http_wait(f"http://127.0.0.1:{port}{probe}", self.processes[name], log)

    def kill(self, name: str) -> None:
        """SIGKILL to the unit's whole process group (gunicorn's arbiter and workers), as ``systemctl kill -s KILL``."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process_stop(process, grace_s=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def deploy_layout(cluster: PrivatePostgres, redis_server: PrivateRedis, root: Path) -> Iterator[tuple[str, Layout]]:
    nginx = nginx_binary()
    require(nginx is not None, "nginx is not installed (apt-get install nginx)")
    assert nginx is not None
    (root / "var").mkdir()
    listen = free_port()
    url = f"http://127.0.0.1:{listen}"
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
        "AGENT_REPORTS_PER_MINUTE": "6000",
        # One worker per report replica on a small machine; the kill takes the whole replica.
        "GPUFLEET_REPORT_WORKERS": "1",
    }
    layout = Layout(root, env)
    nginx_process = None
    try:
        layout.manage("migrate", "--noinput", "-v0")
        layout.manage("collectstatic", "--noinput", "-v0")
        # The operator's check before starting the services: production settings, hashed static files.
        checked = layout.manage("deploycheck", "--before-start")
        assert "ok   FLEET_ENV: production" in checked and "ok   static files: collected" in checked, checked
        ports = layout.ports = {shipped: free_port() for shipped in (*PANEL_PORTS, *REPORT_PORTS, *GATEWAY_PORTS)}
        for shipped in PANEL_PORTS:
            layout.unit_start("gpufleet-panel@.service", ports[shipped], shipped)
        for shipped in REPORT_PORTS:
            layout.unit_start("gpufleet-reports@.service", ports[shipped], shipped)
        layout.unit_start("gpufleet-gateway@.service", ports[GATEWAY_PORTS[0]], GATEWAY_PORTS[0])
        site = root / "gpufleet.conf"
        site.write_text(site_render(ports, listen))
        (root / "nginx.conf").write_text(nginx_conf(root, site))
        test = subprocess.run([nginx, "-t", "-c", str(root / "nginx.conf")], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr
        with (root / "nginx.out").open("wb") as output:
            nginx_process = subprocess.Popen(
                [nginx, "-c", str(root / "nginx.conf"), "-g", "daemon off;"], stdout=output, stderr=output
            )
        http_wait(f"{url}/admin/login/", nginx_process, root / "error.log")
        yield url, layout
    finally:
        if nginx_process is not None:
            process_stop(nginx_process, grace_s=10)
        layout.stop()


def upstreams(lines: list[str], prefix: str) -> set[str]:
    """The replica that answered 200 to each request nginx logged whose path starts with ``prefix``.

    A request nginx first sent to a dead replica logs both, ``A, B``: B answered.
    """
    answered = set()
    for line in lines:
        _method, path, status, tried = line.split(" ", 3)
        if path.startswith(prefix) and status == "200":
            answered.add(tried.split(", ")[-1])
    return answered


def access_log(root: Path) -> list[str]:
    return (root / "access.log").read_text().splitlines()


def test_killing_a_report_replica_and_a_panel_replica_loses_no_acknowledged_report(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """3 agents report every 0.2 s through nginx for about 3 s (some 45 reports), then one report
    replica and one panel replica are killed and they go on for 4 s more (some 60). Before the kill
    nginx spreads reports over both report replicas; after it, the survivor takes them all. Every
    acknowledged report is in the database once (``Fleet.assert_nothing_lost``), and the login
    page, a static file, the socket path (403 from the socket consumer: not signed in, where a
    404 would mean nginx did not pass the upgrade on) and the gateway still answer through nginx.
    """
    with deploy_layout(private_postgres, private_redis, tmp_path) as (url, layout):
        join = join_token_issue(private_postgres.url)
        agents = [RecordingAgent.started(url, tmp_path, f"h100-{n}", join) for n in range(3)]
        fleet = Fleet(url=url, cluster=private_postgres, agents=agents)
        try:
            fleet.run()
            time.sleep(3)
            ports = layout.ports
            before = upstreams(access_log(tmp_path), "/api/agent/v1/report")
            assert before == {f"127.0.0.1:{ports[port]}" for port in REPORT_PORTS}, before
            acked_before = sum(len(agent.acked) for agent in fleet.agents)
            layout.kill("gpufleet-reports-8020")
            layout.kill("gpufleet-panel-8010")
            killed_at = len(access_log(tmp_path))
            time.sleep(4)

            for _ in range(4):
                page = httpx.get(f"{url}/admin/login/", timeout=10)
                assert page.status_code == 200 and "csrfmiddlewaretoken" in page.text
            assert httpx.get(f"{url}/static/admin/css/base.css", timeout=10).status_code == 200
            socket = httpx.get(
                f"{url}/ws/fleet/",
                headers={
                    "connection": "upgrade",
                    "upgrade": "websocket",
                    "sec-websocket-version": "13",
                    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "origin": url,
                },
                timeout=10,
            )
            assert socket.status_code == 403, (socket.status_code, socket.text[:200])
            models = httpx.get(f"{url}/v1/models", timeout=10)
            assert models.status_code in {200, 401}, (models.status_code, models.text[:200])

            assert fleet.drained(within_s=40), [len(agent.buffer) for agent in fleet.agents]
        finally:
            fleet.halt()
        total = fleet.assert_nothing_lost()
        assert total > acked_before >= 10, (acked_before, total)
        # Past the requests in flight at the kill, only the surviving replica answers reports.
        reports_after = upstreams(access_log(tmp_path)[killed_at + 5 :], "/api/agent/v1/report")
        assert reports_after == {f"127.0.0.1:{ports[8021]}"}, reports_after
        print(f"{total} acknowledged reports stored once; {acked_before} before the kill")
