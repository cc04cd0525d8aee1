"""A host with several GPUs, built from real H100 recordings: each GPU reported on its own,
load on one never shows on another, and an instance gets exactly the GPU the panel chose.

The recordings come from one H100 (idle, and under a matmul load); a two-GPU host here is
GPU 0 replaying the idle recording and GPU 1 the load one, with UUIDs of their own. What
a real several-GPU host adds (NVML's per-process list on the chosen card) needs a
several-GPU machine and is not shown here.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from agents.agent import gpu_sample
from agents.nvml import convert
from agents.runtime import docker_create_kwargs, vllm_container_spec
from fleet.models import Gpu, GpuSample, Instance
from tests.api.test_agent_api import Agent, batch
from tests.factories import make_pool

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"
UUIDS = ("GPU-00000000-0000-4000-8000-000000000000", "GPU-11111111-1111-4111-8111-111111111111")


def recorded(kind: str) -> list[dict[str, Any]]:
    document = json.loads(sorted(FIXTURES.glob(f"*-{kind}-*.json"))[0].read_text())
    return [sample["raw"] for sample in document["samples"]]


def two_gpu_host(idle: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """One raw NVML read of a host whose GPU 0 is the idle recording and GPU 1 the loaded one."""
    host = copy.deepcopy(idle)
    first, second = copy.deepcopy(idle["devices"][0]), copy.deepcopy(load["devices"][0])
    for index, device in enumerate((first, second)):
        device.update(index=index, uuid=UUIDS[index], pci_bus_id=f"00000000:00:0{6 + index}.0")
    host["devices"] = [first, second]
    return host


@pytest.fixture
def readings() -> list[Any]:
    # The load recording's first read was taken before the matmul started: leave it out.
    loaded = [raw for raw in recorded("load") if raw["devices"][0]["utilization"]["gpu"] > 0]
    return [convert(two_gpu_host(idle, load)) for idle, load in zip(recorded("idle"), loaded, strict=False)]


def test_each_gpu_is_reported_with_its_own_uuid_and_readings(readings: list[Any]) -> None:
    for host in readings:
        idle, busy = host.gpus
        assert (idle.index, idle.uuid, busy.index, busy.uuid) == (0, UUIDS[0], 1, UUIDS[1])
        # Load on GPU 1 shows on GPU 1's duty cycle and power only.
        assert busy.utilization_gpu_pct >= 90 and idle.utilization_gpu_pct == 0
        assert busy.power_watts > 3 * idle.power_watts
        samples = [gpu_sample(gpu) for gpu in host.gpus]
        assert [s.uuid for s in samples if s] == list(UUIDS)


@pytest.mark.django_db
def test_the_panel_stores_each_gpu_apart_and_places_an_instance_on_the_chosen_one(
    client: Client, readings: list[Any]
) -> None:
    agent = Agent(client, name="two-gpu-host")
    reports = []
    shift = time.time() - readings[4].sampled_at  # replayed now: the panel stores no reading older than an hour
    for seq, host in enumerate(readings[:5], start=1):
        gpus = [gpu_sample(gpu).model_dump() for gpu in host.gpus]  # type: ignore[union-attr]
        reports.append(
            {
                "seq": seq,
                "sampled_at": host.sampled_at + shift,
                "host": {"hostname": "two-gpu-host", "agent_version": "test", "nvml_available": True},
                "gpus": gpus,
                "instances": [],
            }
        )
    assert agent.post(batch("two-gpu-host", *reports)).status_code == 200
    gpu0, gpu1 = Gpu.objects.order_by("index")
    assert (gpu0.uuid, gpu1.uuid) == UUIDS
    busy = list(GpuSample.objects.filter(gpu=gpu1).values_list("utilization_gpu_pct", flat=True))
    idle = list(GpuSample.objects.filter(gpu=gpu0).values_list("utilization_gpu_pct", flat=True))
    assert len(busy) == len(idle) == 5 and min(busy) >= 90 and max(idle) == 0

    instance = Instance.objects.create(pool=make_pool(), gpu=gpu1, desired_state="running")
    reply = agent.post(batch("two-gpu-host", {**reports[-1], "seq": 6})).json()
    (desired,) = [d for d in reply["desired"] if d["instance_id"] == instance.pk]
    assert (desired["spec"]["gpu_uuids"], desired["spec"]["mig_uuids"]) == ([UUIDS[1]], [])

    spec = vllm_container_spec(
        instance_id=str(instance.pk),
        generation=desired["generation"],
        profile=desired["spec"],
        port=18000,
        node_name="two-gpu-host",
        gpu_uuids=desired["spec"]["gpu_uuids"],
    )
    (request,) = docker_create_kwargs(spec)["device_requests"]
    assert request["DeviceIDs"] == [UUIDS[1]]
