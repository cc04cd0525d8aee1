"""The demo's fleet: simulated hosts register and report through the real agent API, demo pools place on them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.core.wsgi import get_wsgi_application

from agents.agent import Agent, AgentConfig
from agents.processes import Launcher, ProcessRuntime
from agents.runtime import ContainerSpec
from agents.simulated import MODELS, SimulatedGpus, gpus_parse, simulated_name
from fleet.decide.evaluate import pool_wake_request
from fleet.demo.runner import DemoFleet, DemoOptions, demo_prepare
from fleet.models import ApiKey, Gpu, GpuSample, Instance, JoinToken, MigDevice, Node, Policy, Pool, PriceRate
from fleet.policies.settings import SCHEMAS
from tests.support.sim_engine import process_running

pytestmark = pytest.mark.django_db(transaction=True)

CARD = "Simulated NVIDIA H100 80GB HBM3"


def simulated_agent(tmp_path: Path, name: str, gpus: str) -> Agent:
    """The real agent with the demo's backends, talking to this test's panel in-process."""
    state = tmp_path / name
    config = AgentConfig(panel_url="http://testserver", state_dir=state, node_name=name, simulated=True)
    http = httpx.Client(transport=httpx.WSGITransport(app=get_wsgi_application()))
    return Agent(
        config,
        gpus=SimulatedGpus(gpus_parse(gpus), node_name=name, state_dir=state),
        runtime=ProcessRuntime(state, name, []),
        http=http,
    )


def test_demo_prepare_makes_the_methods_tiers_on_simulated_cards() -> None:
    options = DemoOptions(speedup=10, hosts=2, gpus_per_host=2)
    setup = demo_prepare(options=options)
    pools = {pool.tier: pool for pool in Pool.objects.filter(name__in=setup.pools)}
    assert {tier: (p.isolation, p.mig_profile, p.sla_latency_ms) for tier, p in pools.items()} == {
        "S": ("exclusive", "", 450),
        "M": ("mig", "2g.20gb", 500),
        "L": ("shared", "", 600),
    }
    assert {p.gpu_model for p in pools.values()} == {CARD}
    assert {(p.idle_minimize_after_s, p.idle_stop_after_s) for p in pools.values()} == {(30, 60)}
    assert {p.model_profile.served_name for p in pools.values()} == {options.served_name}
    assert all("simulated" in p.model_profile.name for p in pools.values())
    rate = PriceRate.objects.get(gpu_model=CARD)
    assert rate.price_per_gpu_hour == PriceRate.objects.get(gpu_model="NVIDIA H100 80GB HBM3").price_per_gpu_hour
    assert set(Policy.objects.filter(pool=None, enabled=True).values_list("kind", flat=True)) == set(SCHEMAS)
    assert "simulated" in rate.source
    assert JoinToken.objects.get(revoked_at__isnull=True).max_uses == 2
    assert options.host_gpus(0) == "H100x2" and options.host_gpus(1) == "H100x1,H100-mig"

    again = demo_prepare(options=options)
    assert again.api_key != setup.api_key
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1, "the previous run's key is revoked"


@pytest.mark.parametrize("gpu", ["H100", "L4"])
def test_simulated_hosts_register_as_simulated_and_the_pools_place_on_their_cards(tmp_path: Path, gpu: str) -> None:
    options = DemoOptions(hosts=2, gpus_per_host=2, gpu=gpu)
    card = simulated_name(MODELS[gpu])
    setup = demo_prepare(options=options)
    agents = [simulated_agent(tmp_path, f"simulated-host-{i + 1}", options.host_gpus(i)) for i in range(2)]
    for agent in agents:
        agent.register(setup.join_token)
        assert agent.tick() is not None, "the report was accepted"
    assert list(Node.objects.values_list("name", "simulated")) == [
        ("simulated-host-1", True),
        ("simulated-host-2", True),
    ]
    assert set(Gpu.objects.values_list("model_name", flat=True)) == {card}
    mig = gpu == "H100"  # the L4 has no MIG: its M pool shares cards
    assert Gpu.objects.filter(mig_mode=Gpu.MigMode.ENABLED).count() == int(mig)
    assert list(MigDevice.objects.values_list("profile", flat=True)) == ["2g.20gb"] * 3 * mig

    for tier in "SML":
        pool = Pool.objects.get(name=f"demo-{tier.lower()}")
        assert pool_wake_request(pool_id=pool.pk, reason="test"), f"pool {pool.name} was not placed"
    placed = {i.pool.tier: i for i in Instance.objects.select_related("pool", "gpu", "mig_device")}
    assert (placed["M"].mig_device is not None) == mig
    assert placed["S"].mig_device is None and placed["S"].gpu != placed["L"].gpu
    assert not placed["L"].gpu.mig_enabled

    samples = GpuSample.objects.count()
    again = demo_prepare(options=options)
    # A new demo starts from an empty live fleet; the earlier hosts stay, decommissioned, with their history.
    assert not Node.objects.filter(decommissioned_at__isnull=True).exists()
    assert set(Node.objects.values_list("status", flat=True)) == {"decommissioned"}
    assert not Instance.objects.exclude(desired_state="stopped", actual_state="stopped").exists()
    assert samples > 0 and GpuSample.objects.count() == samples
    # The same hosts join again, under their names and with their cards' UUIDs, and the pools place on them.
    agents = [simulated_agent(tmp_path / "again", f"simulated-host-{i + 1}", options.host_gpus(i)) for i in range(2)]
    for agent in agents:
        agent.register(again.join_token)
        assert agent.tick() is not None, "the report was accepted"
    live = Gpu.objects.filter(decommissioned_at__isnull=True)
    assert live.count() == Gpu.objects.count() // 2 and not live.filter(node__decommissioned_at__isnull=False)
    for tier in "SML":
        pool = Pool.objects.get(name=f"demo-{tier.lower()}")
        assert pool_wake_request(pool_id=pool.pk, reason="test"), f"pool {pool.name} was not placed again"
    running = Instance.objects.filter(desired_state="running")
    assert running.count() == 3 and not running.exclude(gpu__in=live).exists()


def test_a_new_demo_run_stops_what_an_earlier_one_left_and_forgets_its_hosts(tmp_path: Path) -> None:
    """A demo killed hard leaves engines and agent state (node tokens the database no longer knows)."""
    host = tmp_path / "demo" / "hosts" / "simulated-host-1"
    sleeper = Launcher.parse("test/sleeper:*={python} -c 'import time; time.sleep(600)'")
    left = ProcessRuntime(host, "simulated-host-1", [sleeper]).start(
        ContainerSpec(instance_id="1", generation=1, image="test/sleeper:1", node_name="simulated-host-1", port=1)
    )
    (host / "state.json").write_text('{"node_name": "simulated-host-1", "node_token": "gfn_old"}')
    pid = int(left.container_id.removeprefix("pid-"))

    fleet = DemoFleet(DemoOptions(hosts=1), demo_prepare(options=DemoOptions(hosts=1)), tmp_path)
    fleet._engines_stop()
    assert ProcessRuntime(host, "simulated-host-1", []).list_managed()[0].status == "exited"
    assert not process_running(pid)
