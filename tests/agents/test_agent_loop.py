"""The agent loop against a real panel on loopback: register, report, buffer, reconcile."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import protocol
from agents.agent import MAX_BACKOFF_S, Agent, AgentConfig, AgentState, ReportBuffer
from agents.nvml import NvmlBackend
from fleet.models import Gpu, GpuSample, Instance, JoinToken, ModelProfile, Node
from tests.agents.test_reconcile import FakeRuntime
from tests.factories import make_instance, make_pool
from tests.support.agent_process import RecordedGpus

pytestmark = pytest.mark.django_db(transaction=True)


def join_token() -> str:
    token = JoinToken(name="test", max_uses=None)
    secret = token.issue_token()
    token.save()
    return secret


def make_agent(panel_url: str, tmp_path: Path, name: str = "h100-a", **config: Any) -> Agent:
    settings = AgentConfig(panel_url=panel_url, state_dir=tmp_path, node_name=name, **config)
    return Agent(settings, gpus=RecordedGpus(), runtime=FakeRuntime(), http=httpx.Client())


def registered_agent(live_server: Any, tmp_path: Path, **config: Any) -> Agent:
    agent = make_agent(live_server.url, tmp_path, **config)
    agent.register(join_token())
    return agent


def test_register_keeps_the_token_in_a_private_state_file(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    path = tmp_path / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = AgentState(path)
    assert reloaded.node_name == "h100-a" and reloaded.node_token == agent.state.node_token
    assert Node.objects.filter(name="h100-a").exists()


def test_a_tick_reports_real_h100_readings_to_the_panel(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    reply = agent.tick()
    assert reply is not None and reply.desired == []
    gpu = Gpu.objects.get(node__name="h100-a")
    assert gpu.model_name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid.startswith("GPU-")
    sample = GpuSample.objects.get(gpu=gpu)
    assert sample.power_watts is not None and sample.power_watts > 0
    assert len(agent.buffer) == 0


def test_reports_buffered_while_the_panel_is_away_arrive_in_order(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    real_url = agent.config.panel_url
    object.__setattr__(agent.config, "panel_url", "http://127.0.0.1:9")  # discard port: nothing listens
    for _ in range(5):
        agent.next_delivery = 0.0  # skip the backoff wait: the test controls time
        assert agent.tick() is None
    assert len(agent.buffer) == 5 and agent.failures == 5
    seqs = [report.seq for report in agent.buffer.oldest(10)]
    object.__setattr__(agent.config, "panel_url", real_url)
    agent.next_delivery = 0.0
    assert agent.tick() is not None
    assert len(agent.buffer) == 0
    stored = list(GpuSample.objects.order_by("id").values_list("at", flat=True))
    assert len(stored) == 6 and stored == sorted(stored)
    assert Node.objects.get(name="h100-a").last_seq == max(seqs) + (agent.state.last_seq - max(seqs))


def test_a_ten_minute_outage_at_the_default_interval_loses_nothing_and_ends_within_one_backoff(
    live_server: Any, tmp_path: Path
) -> None:
    """Ten minutes of the agent's own clock at its default 5 s interval, with the panel unreachable."""
    now = [time.time() - 3600.0]
    config = AgentConfig(panel_url=live_server.url, state_dir=tmp_path, node_name="h100-a")
    agent = Agent(config, gpus=RecordedGpus(), runtime=FakeRuntime(), http=httpx.Client(), clock=lambda: now[0])
    agent.register(join_token())
    interval, outage = config.interval_s, 600.0
    object.__setattr__(agent.config, "panel_url", "http://127.0.0.1:9")
    tries = 0
    for _ in range(int(outage / interval)):
        before = agent.failures
        agent.tick()
        tries += agent.failures - before
        now[0] += interval
    assert (len(agent.buffer), agent.buffer.dropped) == (int(outage / interval), 0)
    # It backs off: a try every MAX_BACKOFF_S at most once the doubling reaches it, not one per tick.
    assert tries <= 7 + outage / MAX_BACKOFF_S

    object.__setattr__(agent.config, "panel_url", live_server.url)
    waited = 0.0
    while agent.tick() is None:
        now[0] += interval
        waited += interval
        assert waited <= MAX_BACKOFF_S, "the agent did not come back within one backoff"
    assert len(agent.buffer) == 0
    stored = list(GpuSample.objects.order_by("id").values_list("at", flat=True))
    assert stored == sorted(stored) and len(stored) == int(outage / interval) + int(waited / interval) + 1
    assert Node.objects.get(name="h100-a").reports_dropped == 0


def test_buffer_overflow_drops_the_oldest_and_the_panel_learns_how_many(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path, buffer_size=3)
    real_url = agent.config.panel_url
    object.__setattr__(agent.config, "panel_url", "http://127.0.0.1:9")
    for _ in range(7):
        agent.next_delivery = 0.0
        agent.tick()
    assert (len(agent.buffer), agent.buffer.dropped) == (3, 4)
    object.__setattr__(agent.config, "panel_url", real_url)
    agent.next_delivery = 0.0
    agent.tick()
    node = Node.objects.get(name="h100-a")
    assert node.reports_dropped == 5  # the 8th report pushed one more out before delivery
    assert GpuSample.objects.count() == 3


def test_a_refused_batch_is_dropped_not_retried_forever() -> None:
    buffer = ReportBuffer(10)
    host = protocol.HostInfo(hostname="h", agent_version="0", nvml_available=False)
    reports = [protocol.Report(seq=n, sampled_at=time.time(), host=host) for n in (1, 2, 3)]
    for report in reports:
        buffer.add(report)
    buffer.discard(reports[:2])
    assert [r.seq for r in buffer.oldest(10)] == [3] and buffer.dropped == 2


def place(agent: Agent, image: str | None = None) -> Instance:
    """Report once so the panel knows the GPU, then place an instance of a chat pool on it."""
    agent.tick()
    pool = make_pool()
    if image is not None:
        ModelProfile.objects.filter(pk=pool.model_profile_id).update(image=image)
    return make_instance(pool, Gpu.objects.get(node__name=agent.config.node_name))


def test_the_agent_starts_what_the_panel_wants_and_reports_it(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    instance = place(agent)
    agent.tick()
    runtime: FakeRuntime = agent.runtime  # type: ignore[assignment]
    assert runtime.calls == [("start", str(instance.pk), 1)]
    started = runtime.list_managed()[0]
    assert started.labels["gpufleet.port"] == "8100"
    agent.tick()
    instance.refresh_from_db()
    assert instance.actual_state == "starting"  # no /health answers on the fake: not ready
    assert instance.endpoint == "http://127.0.0.1:8100"


def test_an_image_outside_the_allowlist_is_refused_and_reported(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    instance = place(agent, image="evil/miner:latest")
    agent.tick()
    runtime: FakeRuntime = agent.runtime  # type: ignore[assignment]
    assert runtime.calls == []
    report = agent.sense()
    refusal = report.action_results[0]
    assert (refusal.instance_id, refusal.action, refusal.ok) == (instance.pk, "refuse", False)
    assert "not in this agent's allowlist" in refusal.error


def test_a_host_without_nvml_reports_why_and_invents_no_gpu(live_server: Any, tmp_path: Path) -> None:
    agent = registered_agent(live_server, tmp_path)
    agent.gpus = NvmlBackend()
    if agent.gpus.read().available:
        pytest.skip("this host has an NVIDIA driver; the no-driver path is covered on machines without one")
    agent.tick()
    node = Node.objects.get(name="h100-a")
    assert node.nvml_available is False
    assert "NVML" in node.nvml_reason
    assert not Gpu.objects.filter(node=node).exists()


def test_the_agent_reports_again_as_soon_as_the_panel_asks(live_server: Any, tmp_path: Path) -> None:
    """At its 5 s interval the agent reports once in 2 s. Once its instance is on its way (the fake never
    turns ready), the panel asks for the next report in 0.5 s: the report that learns of the instance (by
    5 s), then about four in the next 2 s (at least three, on a busy machine): 4 or more in 7.5 s."""
    agent = registered_agent(live_server, tmp_path, interval_s=5.0)
    ticks: list[float] = []
    tick = agent.tick

    def counted() -> protocol.Reply | None:
        ticks.append(time.monotonic())
        return tick()

    agent.tick = counted  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    time.sleep(2.0)
    assert len(ticks) == 1 and agent.report_again_s is None, "nothing on its way: the interval"
    place_at = time.monotonic()
    make_instance(make_pool(), Gpu.objects.get(node__name=agent.config.node_name))
    time.sleep(5.5 + 2.0)  # the next report at 5 s learns of it; then every 0.5 s
    stop.set()
    runner.join(10)
    after = [at for at in ticks if at > place_at]
    assert agent.report_again_s == 0.5
    assert len(after) >= 4, after
