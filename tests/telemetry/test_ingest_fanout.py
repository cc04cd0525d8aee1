"""Ingest at fleet scale: statements per report, and the coalesced fleet summary."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet import events
from fleet.events import FLEET_GROUP, SummaryThrottle
from fleet.models import Gpu, Instance, InstanceSample
from tests.api.test_agent_api import Agent, batch, gpu_reading, instance_sample, report
from tests.factories import make_instance, make_pool


def statements(agent: Agent, body: dict[str, Any]) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert agent.post(body).status_code == 200
    return [query["sql"] for query in captured.captured_queries]


@pytest.mark.django_db
def test_a_steady_report_costs_the_same_statements_for_one_gpu_or_eight(client: Client) -> None:
    counts = {}
    for gpus in (1, 8):
        agent = Agent(client, name=f"host-{gpus}")
        readings = [gpu_reading(index=i, uuid=f"GPU-{gpus}-{i}") for i in range(gpus)]
        statements(agent, batch(agent.node.name, report(1, readings)))
        steady = statements(agent, batch(agent.node.name, report(2, readings), report(3, readings)))
        # One INSERT (on SQLite one executemany of it, logged as "N times: INSERT ...").
        inserts = [sql for sql in steady if re.sub(r"^\d+ times: ", "", sql).startswith("INSERT")]
        assert len(inserts) == 1 and "fleet_gpusample" in inserts[0], inserts
        assert not [sql for sql in steady if sql.startswith('UPDATE "fleet_gpu" ')]
        assert not [sql for sql in steady if 'FROM "fleet_migdevice"' in sql]
        counts[gpus] = len(steady)
    assert counts[1] == counts[8], counts


@pytest.mark.django_db
def test_a_steady_report_of_busy_instances_writes_them_in_one_update_and_skips_idle_tables(client: Client) -> None:
    agent = Agent(client)
    statements(agent, batch("gpu-a", report(1)))
    gpu = Gpu.objects.get(node=agent.node)
    pool = make_pool()
    instances = [make_instance(pool, gpu) for _ in range(3)]

    def busy(seq: int) -> dict[str, Any]:
        return report(seq, instances=[instance_sample(i, "ready", request_rate=2.0) for i in instances])

    statements(agent, batch("gpu-a", busy(2)))
    steady = statements(agent, batch("gpu-a", busy(3)))
    updates = [sql for sql in steady if sql.startswith('UPDATE "fleet_instance"')]
    assert len(updates) == 1, updates
    newest = Instance.objects.filter(pk__in=[i.pk for i in instances]).values_list("last_request_at", flat=True)
    assert len(set(newest)) == 1 and None not in newest
    assert InstanceSample.objects.count() == 6
    apart = [sql for sql in steady if not sql.startswith('SELECT "fleet_node"')]
    assert not [sql for sql in apart if "fleet_orphancontainer" in sql or "fleet_batchjob" in sql]
    assert len([sql for sql in steady if 'FROM "fleet_node"' in sql]) == 1  # the lock; the token was seen before


def test_the_throttle_sends_one_summary_per_interval_and_loses_no_counts() -> None:
    now = [100.0]
    sent: list[dict[str, Any]] = []
    throttle = SummaryThrottle(interval_s=1.0, publish=sent.append, clock=lambda: now[0])
    assert throttle.add(node="a", reports=1, gpu_samples=8) is True  # leading edge: at once
    for i in range(999):
        now[0] += 0.0005
        throttle.add(node=f"h{i % 300}", reports=1, gpu_samples=8)
    assert len(sent) == 1
    now[0] = 101.0
    assert throttle.add(node="a", reports=1, gpu_samples=8) is True
    assert len(sent) == 2
    assert sent[1]["reports"] == 1000 and sent[1]["gpu_samples"] == 8000
    assert sent[1]["nodes_reporting"] == 301
    assert len(sent[1]["nodes"]) == events.SUMMARY_NODES_LISTED


def test_a_process_that_loses_the_fleet_wide_claim_keeps_its_counts() -> None:
    sent: list[dict[str, Any]] = []
    granted = [False]
    now = [0.0]
    throttle = SummaryThrottle(interval_s=1.0, publish=sent.append, claim=lambda _s: granted[0], clock=lambda: now[0])
    assert throttle.add(node="a", reports=2, gpu_samples=16) is False
    granted[0] = True
    now[0] = 0.1
    assert throttle.add(node="b", reports=1, gpu_samples=8) is True
    assert (sent[0]["reports"], sent[0]["gpu_samples"]) == (3, 24)


def test_a_process_that_lost_the_claim_asks_again_after_a_pause_not_on_every_report() -> None:
    asked: list[float] = []
    now = [0.0]

    def claim(_interval: float) -> bool:
        asked.append(now[0])
        return False

    throttle = SummaryThrottle(interval_s=1.0, publish=lambda _summary: None, claim=claim, clock=lambda: now[0])
    for _ in range(1000):  # a thousand reports in one interval
        throttle.add(node="a", reports=1, gpu_samples=8)
        now[0] += 0.001
    assert events.CLAIM_RETRIES_PER_INTERVAL - 1 <= len(asked) <= events.CLAIM_RETRIES_PER_INTERVAL + 1
    assert throttle._reports == 1000


def test_redis_claim_lets_one_of_two_processes_publish(redis_url: str, settings: Any) -> None:
    import redis

    settings.REDIS_URL = redis_url
    redis.Redis.from_url(redis_url).delete("gpufleet:fleet-summary")
    sent: list[dict[str, Any]] = []
    first = SummaryThrottle(interval_s=5.0, publish=sent.append, claim=events._redis_claim)
    second = SummaryThrottle(interval_s=5.0, publish=sent.append, claim=events._redis_claim)
    assert first.add(node="a", reports=1, gpu_samples=1) is True
    assert second.add(node="b", reports=1, gpu_samples=1) is False
    assert len(sent) == 1


@pytest.mark.django_db
def test_reports_reach_the_fleet_group_as_a_coalesced_summary(
    client: Client, in_memory_channel_layer: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.REDIS_URL = ""
    monkeypatch.setattr(events, "_throttle", None)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(FLEET_GROUP, channel)
    agent = Agent(client)
    for seq in (1, 2, 3):
        assert agent.post(batch("gpu-a", report(seq))).status_code == 200
    message = async_to_sync(layer.receive)(channel)["event"]
    assert (message["kind"], message["nodes"], message["gpu_samples"]) == ("fleet", ["gpu-a"], 1)
    assert events._throttle is not None and events._throttle._reports == 2  # waiting for the next interval
