"""The live feed: pages subscribe to the groups they show; reports and decisions carry chart numbers."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.test import Client

from fleet import events
from fleet.decide.services import instance_desire
from fleet.events import SummaryThrottle, event_publish, node_group, pool_group
from fleet.models import Gpu, Instance, Node
from tests.api.test_agent_api import Agent, batch, gpu_reading, report
from tests.factories import make_gpu, make_instance, make_node, make_pool
from tests.test_dashboard import connect


def listen(group: str) -> tuple[Any, str]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return layer, channel


@pytest.mark.django_db(transaction=True)
def test_a_signed_in_page_receives_the_groups_it_subscribed_to_and_no_others(in_memory_channel_layer: None) -> None:
    async def scenario() -> list[dict[str, Any]]:
        communicator = connect(User(username="ops", is_active=True))
        assert (await communicator.connect())[0]
        await communicator.send_json_to({"subscribe": ["pool.3", "node.7"]})
        received = [await communicator.receive_json_from(timeout=5)]
        await sync_to_async(event_publish)(kind="decision", payload={"decision": 1}, groups=("pool.4",))
        await sync_to_async(event_publish)(kind="decision", payload={"decision": 2}, groups=("pool.3",))
        await sync_to_async(event_publish)(kind="gpus", payload={"gpus": []}, groups=("node.7",))
        received += [await communicator.receive_json_from(timeout=5) for _ in range(2)]
        assert await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()
        return received

    subscribed, decision, gpus = async_to_sync(scenario)()
    assert subscribed == {"kind": "subscribed", "groups": ["fleet", "node.7", "pool.3"]}
    assert decision == {"kind": "decision", "decision": 2}
    assert gpus == {"kind": "gpus", "gpus": []}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("message", [{"subscribe": ["specific.channel!"]}, {"subscribe": "fleet"}, ["fleet"]])
def test_subscriptions_to_anything_but_fleet_pool_or_node_groups_are_refused(
    in_memory_channel_layer: None, message: Any
) -> None:
    async def scenario() -> dict[str, Any]:
        communicator = connect(User(username="ops", is_active=True))
        await communicator.connect()
        await communicator.send_json_to(message)
        answer = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return answer

    assert async_to_sync(scenario)()["kind"] == "error"


def test_the_summary_carries_each_gpus_newest_numbers_bounded() -> None:
    sent: list[dict[str, Any]] = []
    now = [0.0]
    throttle = SummaryThrottle(interval_s=1.0, publish=sent.append, claim=lambda _s: True, clock=lambda: now[0])
    throttle.add(node="a", reports=1, gpu_samples=1, gpus=({"gpu": 1, "utilization": 10.0},))
    now[0] = 0.5
    throttle.add(node="a", reports=1, gpu_samples=1, gpus=({"gpu": 1, "utilization": 20.0},))
    throttle.add(
        node="b", reports=1, gpu_samples=300, gpus=tuple({"gpu": 100 + i, "utilization": 1.0} for i in range(300))
    )
    now[0] = 1.5
    throttle.add(node="a", reports=1, gpu_samples=1, gpus=({"gpu": 1, "utilization": 30.0},))
    assert sent[0]["gpus"] == [{"gpu": 1, "utilization": 10.0}]
    assert len(sent[1]["gpus"]) == events.SUMMARY_GPUS_LISTED
    assert sent[1]["gpus"][0] == {"gpu": 1, "utilization": 30.0}


@pytest.mark.django_db
def test_a_report_sends_its_gpu_numbers_to_the_node_group_and_the_fleet_summary(
    client: Client, in_memory_channel_layer: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.REDIS_URL = ""
    monkeypatch.setattr(events, "_throttle", None)
    agent = Agent(client, name="rack1")
    fleet_layer, fleet_channel = listen("fleet")
    _, node_channel = listen(node_group(agent.node.pk))
    reading = gpu_reading(util=63.0)
    assert agent.post(batch("rack1", report(1, [gpu_reading(util=10.0)]), report(2, [reading]))).status_code == 200
    gpu = Gpu.objects.get()
    node_event = async_to_sync(fleet_layer.receive)(node_channel)["event"]
    assert node_event["kind"] == "gpus" and node_event["node"] == "rack1"
    (live,) = node_event["gpus"]
    assert (live["gpu"], live["label"], live["utilization"]) == (gpu.pk, "rack1/0", 63.0)
    assert live["memory_used"] == reading["memory_used_bytes"] and live["power"] == reading["power_watts"]
    summary = async_to_sync(fleet_layer.receive)(fleet_channel)["event"]
    assert summary["kind"] == "fleet" and summary["gpus"] == [live]


@pytest.mark.django_db
def test_live_readings_of_a_simulated_node_say_so(client: Client, in_memory_channel_layer: None) -> None:
    agent = Agent(client, name="demo-l4")
    Node.objects.filter(pk=agent.node.pk).update(simulated=True)
    layer, channel = listen(node_group(agent.node.pk))
    assert agent.post(batch("demo-l4", report(1, [gpu_reading()]))).status_code == 200
    assert async_to_sync(layer.receive)(channel)["event"]["gpus"][0]["label"] == "demo-l4/0 (simulated)"


@pytest.mark.django_db(transaction=True)
def test_a_decision_reaches_the_fleet_and_its_pools_group(in_memory_channel_layer: None) -> None:
    pool = make_pool("chat-l")
    instance = make_instance(pool, make_gpu(make_node("rack1"), 0))
    layer, fleet_channel = listen("fleet")
    _, pool_channel = listen(pool_group(pool.pk))
    decision = instance_desire(
        instance=instance,
        state=Instance.Desired.SLEEPING,
        reason="idle for 10 min",
        action="sleep",
        kind="idle",
    )
    for channel in (fleet_channel, pool_channel):
        event = async_to_sync(layer.receive)(channel)["event"]
        assert (event["kind"], event["decision"], event["pool"], event["policy_kind"]) == (
            "decision",
            decision.pk,
            pool.pk,
            "idle",
        )
        assert event["reason"] == "idle for 10 min" and event["at"].startswith(str(decision.created_at.date()))
