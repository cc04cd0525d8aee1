"""A malicious agent: it holds a valid node token and posts real reports to the real endpoint.

Whatever it sends, it can touch only its own node's hardware, endpoints on its own
address, GPUs the catalogue believes, readings from the last buffer's worth of time, and
it never sees another node's instance settings.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from django.test import Client

from fleet.models import Gpu, GpuSample, Instance, MigDevice
from tests.api.test_agent_api import H100, Agent, batch, gpu_reading, instance_sample, report
from tests.factories import make_gpu, make_instance, make_pool

pytestmark = pytest.mark.django_db

GB = 1_000_000_000


@pytest.fixture
def victim() -> Agent:
    return Agent(Client(REMOTE_ADDR="10.0.0.1"), "victim")


@pytest.fixture
def attacker() -> Agent:
    return Agent(Client(REMOTE_ADDR="10.0.0.66"), "attacker")


def post(agent: Agent, *reports: dict[str, Any]) -> Any:
    return agent.post(batch(agent.node.name, *reports))


def test_a_host_cannot_take_another_hosts_mig_device(victim: Agent, attacker: Agent) -> None:
    gpu = make_gpu(victim.node, 0, H100, mig_mode="enabled")
    MigDevice.objects.create(gpu=gpu, uuid="MIG-victim-0", profile="1g.10gb", gpu_instance_id=1, memory_total_bytes=GB)
    own = gpu_reading(uuid="GPU-attacker-0") | {"mig_enabled": True}
    own["mig_devices"] = [
        {"uuid": "MIG-victim-0", "profile": "7g.80gb", "gpu_instance_id": 0, "memory_total_bytes": GB}
    ]
    response = post(attacker, report(1, [own]))
    assert response.status_code == 403, response.content
    assert "MIG-victim-0" in response.json()["error"]["details"]
    device = MigDevice.objects.get(uuid="MIG-victim-0")
    assert (device.gpu_id, device.profile) == (gpu.pk, "1g.10gb")
    assert not Gpu.objects.filter(node=attacker.node).exists()


def test_a_conflicting_gpu_claim_is_refused_recorded_and_the_owner_keeps_it(
    victim: Agent, attacker: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    assert post(victim, report(1, [gpu_reading(uuid="GPU-shared")])).status_code == 200
    with caplog.at_level(logging.WARNING, logger="fleet.telemetry.ingest"):
        response = post(attacker, report(1, [gpu_reading(uuid="GPU-shared")]))
    assert response.status_code == 403
    assert Gpu.objects.get(uuid="GPU-shared").node == victim.node
    assert any("GPU-shared" in r.getMessage() and "attacker" in r.getMessage() for r in caplog.records)
    assert post(victim, report(2, [gpu_reading(uuid="GPU-shared")])).status_code == 200


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://203.0.113.9:8100",  # another machine
        "http://10.0.0.1:8100",  # the victim's own address
        "http://10.0.0.66:22",  # its own address, a port no agent serves vLLM on
        "http://user@10.0.0.66:8100",
        "file:///etc/passwd",
        "http://10.0.0.66",
    ],
)
def test_an_endpoint_off_the_hosts_own_address_and_ports_is_refused(attacker: Agent, endpoint: str) -> None:
    assert post(attacker, report(1)).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=attacker.node))
    response = post(attacker, report(2, instances=[instance_sample(instance, endpoint=endpoint)]))
    assert response.status_code == 400, response.content
    assert "endpoint" in response.json()["error"]["message"]
    instance.refresh_from_db()
    assert instance.endpoint == ""


def test_an_advertised_address_in_a_report_cannot_move_the_host_elsewhere(attacker: Agent) -> None:
    assert post(attacker, report(1)).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=attacker.node))
    body = report(2, instances=[instance_sample(instance, endpoint="http://203.0.113.9:8100")])
    body["host"]["advertise_address"] = "203.0.113.9"
    assert post(attacker, body).status_code == 400
    attacker.node.refresh_from_db()
    instance.refresh_from_db()
    assert (attacker.node.address, instance.endpoint) == ("10.0.0.66", "")


def test_an_endpoint_on_the_hosts_own_address_is_taken(attacker: Agent) -> None:
    assert post(attacker, report(1)).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=attacker.node))
    response = post(attacker, report(2, instances=[instance_sample(instance, endpoint="http://10.0.0.66:8123")]))
    assert response.status_code == 200, response.content
    instance.refresh_from_db()
    assert instance.endpoint == "http://10.0.0.66:8123"


@pytest.mark.parametrize(
    ("name", "memory"),
    [(H100, 800 * GB), ("H100", 800 * GB), ("NVIDIA L4", 96 * GB)],
)
def test_a_gpu_larger_than_the_catalogue_says_is_refused(attacker: Agent, name: str, memory: int) -> None:
    reading = gpu_reading(uuid="GPU-big") | {"name": name, "memory_total_bytes": memory}
    response = post(attacker, report(1, [reading]))
    assert response.status_code == 400, response.content
    assert "catalogue" in response.json()["error"]["message"]
    assert not Gpu.objects.exists()


def test_a_mig_device_larger_than_its_gpu_is_refused(attacker: Agent) -> None:
    reading = gpu_reading(uuid="GPU-mig") | {"mig_enabled": True}
    reading["mig_devices"] = [
        {"uuid": "MIG-x", "profile": "7g.80gb", "gpu_instance_id": 0, "memory_total_bytes": 10**12}
    ]
    assert post(attacker, report(1, [reading])).status_code == 400
    assert not MigDevice.objects.exists()


def test_an_unknown_gpu_model_and_real_cards_are_taken(attacker: Agent) -> None:
    readings = [
        gpu_reading(0, "GPU-real"),  # 85.5 GB, as an H100 80GB HBM3 reports itself
        gpu_reading(1, "GPU-new") | {"name": "NVIDIA Z900", "memory_total_bytes": 500 * GB},
    ]
    assert post(attacker, report(1, readings)).status_code == 200
    assert Gpu.objects.count() == 2


def test_a_reading_from_the_future_is_refused(attacker: Agent) -> None:
    body = report(1)
    body["sampled_at"] = time.time() + 3600
    response = post(attacker, body)
    assert response.status_code == 400, response.content
    assert "future" in response.json()["error"]["message"]
    assert (Gpu.objects.count(), GpuSample.objects.count()) == (0, 0)


def test_a_reading_older_than_the_buffer_holds_is_not_stored(attacker: Agent) -> None:
    assert post(attacker, report(1)).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=attacker.node))
    stale = report(2, instances=[instance_sample(instance, request_rate=5.0)])
    stale["sampled_at"] = time.time() - 3 * 86400
    stale["gpus"][0]["utilization_gpu_pct"] = 100.0
    response = post(attacker, stale)
    assert response.status_code == 200, response.content
    assert response.json()["ack_seq"] == 2
    assert GpuSample.objects.count() == 1
    assert GpuSample.objects.get().utilization_gpu_pct == 42.0
    instance.refresh_from_db()
    assert (instance.actual_state, instance.last_request_at) == ("pending", None)
    attacker.node.refresh_from_db()
    assert attacker.node.reports_dropped == 1


def test_a_profiles_secrets_reach_only_the_node_that_runs_the_instance(victim: Agent, attacker: Agent) -> None:
    secret = "hf_victim_secret_0123456789"
    pool = make_pool()
    pool.model_profile.env = {"HF_TOKEN": secret}
    pool.model_profile.save()
    assert post(victim, report(1, [gpu_reading(uuid="GPU-victim-0")])).status_code == 200
    instance = make_instance(pool, Gpu.objects.get(node=victim.node), desired_state=Instance.Desired.RUNNING)
    mine = post(victim, report(2, [gpu_reading(uuid="GPU-victim-0")]))
    assert [item["spec"]["env"]["HF_TOKEN"] for item in mine.json()["desired"]] == [secret]
    attempts = [
        report(1, [gpu_reading(uuid="GPU-attacker-0")]),
        report(2, [gpu_reading(uuid="GPU-victim-0")]),  # claims the victim's GPU
        report(3, instances=[instance_sample(instance)]),  # claims the victim's instance
    ]
    for body in attempts:
        response = post(attacker, body)
        assert secret not in response.content.decode()
        assert str(instance.pk) not in json.dumps(response.json().get("desired", []))
