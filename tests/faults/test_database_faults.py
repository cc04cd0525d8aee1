"""The database fails under report load: restarted, or read-only. No acknowledged report is lost.

Real processes on loopback: a private PostgreSQL cluster (never the shared one), the panel
as its own uvicorn process on it, and real agent loops (recorded H100 readings, in-memory
container runtime) reporting every 0.2 s from threads. Every report a reply acknowledged
must be in the database afterwards, once, and every agent must empty its buffer by itself.
The outage lasts seconds, not minutes: the agent's buffer and backoff make a longer one
the same case, only slower.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agents import protocol
from agents.agent import Agent, AgentConfig
from agents.nvml import HostReading
from tests.agents.test_reconcile import FakeRuntime
from tests.support.agent_process import RecordedGpus
from tests.support.panel_process import panel_manage, panel_process
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.require import require

pytestmark = pytest.mark.services

__all__ = ["private_postgres"]
AGENTS = 3
INTERVAL_S = 0.2


class HostGpus:
    """Recorded H100 readings with UUIDs of this host's own, so several hosts can replay one recording."""

    def __init__(self, host: str) -> None:
        self.recorded = RecordedGpus()
        self.host = host

    def read(self) -> HostReading:
        reading = self.recorded.read()
        gpus = [dataclasses.replace(gpu, uuid=f"{gpu.uuid}-{self.host}") for gpu in reading.gpus]
        return dataclasses.replace(reading, gpus=gpus)


class RecordingAgent(Agent):
    """The real agent, noting which reports the panel acknowledged (seq -> sampled_at)."""

    acked: dict[int, float]

    @classmethod
    def started(cls, url: str, root: Path, name: str, join: str) -> RecordingAgent:
        """A registered agent of host ``name`` reporting every INTERVAL_S."""
        config = AgentConfig(panel_url=url, state_dir=root / name, node_name=name, interval_s=INTERVAL_S)
        config.state_dir.mkdir()
        agent = cls(config, gpus=HostGpus(name), runtime=FakeRuntime(), http=httpx.Client())
        agent.acked = {}
        agent.register(join)
        return agent

    def deliver(self) -> protocol.Reply | None:
        sent = self.buffer.oldest(protocol.MAX_REPORTS_PER_BATCH)
        reply = super().deliver()
        if reply is not None:
            self.acked.update({report.seq: report.sampled_at for report in sent if report.seq <= reply.ack_seq})
        return reply


@dataclass
class Fleet:
    url: str
    cluster: PrivatePostgres
    agents: list[RecordingAgent]
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        for agent in self.agents:
            thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def drained(self, within_s: float) -> bool:
        """Wait for every agent to deliver its whole buffer by itself."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if all(len(agent.buffer) <= 1 and agent.failures == 0 for agent in self.agents):
                return True
            time.sleep(0.2)
        return False

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def stored(self, node: str) -> list[float]:
        rows = self.cluster.psql(
            "SELECT extract(epoch FROM s.at) FROM fleet_gpusample s JOIN fleet_gpu g ON g.id = s.gpu_id "
            f"JOIN fleet_node n ON n.id = g.node_id WHERE n.name = '{node}' ORDER BY s.at"
        )
        return [float(value) for value in rows.split()]

    def assert_nothing_lost(self) -> int:
        """Every acknowledged report stored once per GPU; returns how many were acknowledged."""
        total = 0
        for agent in self.agents:
            stored = self.stored(agent.config.node_name)
            gpus = len(agent.gpus.read().gpus)
            micros = {round(at * 1e6) for at in stored}  # the database keeps microseconds
            assert len(stored) == gpus * len(micros), f"{agent.config.node_name}: a report stored twice"
            missing = [seq for seq, at in agent.acked.items() if not {round(at * 1e6) + d for d in (-1, 0, 1)} & micros]
            assert missing == [], f"{agent.config.node_name}: acknowledged reports missing from the database"
            last = self.cluster.psql(f"SELECT last_seq FROM fleet_node WHERE name = '{agent.config.node_name}'")
            assert int(last) == max(agent.acked)
            total += len(agent.acked)
        return total


def join_token_issue(database_url: str) -> str:
    """A join token for any number of hosts, made by the panel's own code on its database."""
    code = (
        "from fleet.decide.services import join_token_create as c; "
        "print(c(name='ci', max_uses=None, expires_at=None)[1])"
    )
    return panel_manage(database_url, "shell", "--no-imports", "-c", code).strip()


@pytest.fixture
def fleet(private_postgres: PrivatePostgres, tmp_path: Path) -> Iterator[Fleet]:
    panel_manage(private_postgres.url, "migrate", "--noinput")
    join = join_token_issue(private_postgres.url)
    with panel_process(private_postgres.url, tmp_path / "panel.log") as url:
        agents = [RecordingAgent.started(url, tmp_path, f"h100-{n}", join) for n in range(AGENTS)]
        fleet = Fleet(url=url, cluster=private_postgres, agents=agents)
        try:
            yield fleet
        finally:
            fleet.halt()


def report_directly(fleet: Fleet) -> httpx.Response:
    """One report of the first agent's, sent by the test itself, to read the panel's answer."""
    agent = fleet.agents[0]
    batch = protocol.Batch(version=1, node=agent.config.node_name, reports=[agent.sense()], dropped=0)
    return httpx.post(
        f"{fleet.url}/api/agent/v1/report",
        content=batch.model_dump_json(),
        headers={"authorization": f"Bearer {agent.state.node_token}", "content-type": "application/json"},
    )


@contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` the cluster's ``postgres`` user owns: a disk that fills up for real."""
    require(os.geteuid() == 0, "mounting a small tmpfs to fill up needs root")
    root = Path(tempfile.mkdtemp(prefix="fleet-disk-"))
    root.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], check=True)
    try:
        shutil.chown(root, "postgres", "postgres")
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()


def assert_refused_then_delivered(fleet: Fleet, refused: httpx.Response, buffered: list[int], *, why: str) -> None:
    """The panel said 503 and why, the agents kept what they could not deliver, then delivered it all."""
    assert refused.status_code == 503
    assert why in json.loads(refused.text)["error"]["message"]
    assert refused.headers["retry-after"].isdigit()
    assert all(count >= 5 for count in buffered), buffered
    assert fleet.drained(within_s=40), [len(agent.buffer) for agent in fleet.agents]
    fleet.halt()
    fleet.assert_nothing_lost()


def test_postgres_restarted_under_report_load_loses_no_acknowledged_report(fleet: Fleet) -> None:
    fleet.run()
    time.sleep(2)
    before = sum(len(agent.acked) for agent in fleet.agents)
    fleet.cluster.stop("fast")
    time.sleep(3)
    buffered = [len(agent.buffer) for agent in fleet.agents]
    fleet.cluster.start()

    assert fleet.drained(within_s=40), [len(agent.buffer) for agent in fleet.agents]
    fleet.halt()
    assert before > 0 and all(count >= 5 for count in buffered), buffered
    assert fleet.assert_nothing_lost() > before


def test_read_only_database_answers_503_and_agents_keep_their_buffer(fleet: Fleet) -> None:
    fleet.run()
    time.sleep(1.5)
    fleet.cluster.psql("ALTER DATABASE fleet SET default_transaction_read_only = on", "postgres")
    fleet.cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'fleet'", "postgres")
    time.sleep(0.5)
    refused = report_directly(fleet)
    time.sleep(2)
    buffered = [len(agent.buffer) for agent in fleet.agents]
    fleet.cluster.psql("ALTER DATABASE fleet SET default_transaction_read_only = off", "postgres")

    assert_refused_then_delivered(fleet, refused, buffered, why="read-only")


def test_a_full_disk_answers_503_and_agents_keep_their_buffer(fleet: Fleet) -> None:
    with small_disk("8m") as disk:
        fleet.cluster.psql(f"CREATE TABLESPACE small LOCATION '{disk}'")
        fleet.cluster.psql("ALTER TABLE fleet_gpusample SET TABLESPACE small")
        fleet.run()
        time.sleep(1.5)
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        deadline = time.monotonic() + 30
        while (refused := report_directly(fleet)).status_code != 503:
            assert time.monotonic() < deadline, "the panel kept storing reports on a full disk"
            time.sleep(0.2)
        time.sleep(2)
        buffered = [len(agent.buffer) for agent in fleet.agents]
        filler.unlink()

        assert_refused_then_delivered(fleet, refused, buffered, why="No space left on device")
        fleet.cluster.stop("fast")  # before the disk goes away
