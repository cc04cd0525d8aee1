"""/metrics: valid exposition (promtool and prometheus_client agree), right values, access control."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from fleet import metrics
from fleet.models import GpuSample, InstanceEvent, Node, PriceRate
from tests.api.test_agent_api import H100, Agent, batch, gpu_reading, report
from tests.factories import make_gpu, make_instance, make_pool
from tests.support.require import require

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(client: Client) -> Agent:
    """One host with an H100 reporting, an instance serving on it, and an H100 price."""
    agent = Agent(client)
    gpu = make_gpu(agent.node, 0, H100)
    gpu.uuid = "GPU-aaaa-0"
    gpu.save()
    instance = make_instance(make_pool("chat-l"), gpu)
    InstanceEvent.objects.create(instance=instance, at=timezone.now() - timedelta(minutes=10), state="ready", gpu=gpu)
    PriceRate.objects.filter(gpu_model=H100).delete()
    PriceRate.objects.create(
        gpu_model=H100, price_per_gpu_hour=Decimal("3.00"), currency="USD", effective_from=date(2020, 1, 1)
    )
    histogram = {"bounds": [0.1, 0.5, 1.0], "counts": [2, 6, 8], "count": 10}
    sample = {
        "instance_id": instance.pk,
        "generation": 1,
        "state": "ready",
        "requests_waiting": 3,
        "requests_running": 5,
        "e2e_p95_s": 0.42,
        "e2e_histogram": histogram,
    }
    now = timezone.now().timestamp()
    body = batch("gpu-a", report(1, [gpu_reading(util=42.0)], [sample]))
    body["reports"][0]["sampled_at"] = now
    response = agent.post(body)
    assert response.status_code == 200, response.content
    return agent


@pytest.fixture(autouse=True)
def fresh_spend_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test computes spend from its own history, not a previous test's cached rows."""
    monkeypatch.setattr(metrics, "_spend_cache", None)


def scrape(client: Client, **headers: Any) -> Any:
    return client.get(reverse("metrics"), **headers)


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(parsed: dict[str, Any], name: str, **labels: str) -> float:
    family_name = name.removesuffix("_total")
    matches = [
        s.value
        for s in parsed[family_name].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, parsed[family_name].samples)
    return matches[0]


def test_metrics_report_latest_state_in_base_units(client: Client, fleet: Agent) -> None:
    response = scrape(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    parsed = families(response.content.decode())
    gpu = {"node": "gpu-a", "gpu": "0", "uuid": "GPU-aaaa-0"}
    assert value(parsed, "gpufleet_gpu_utilization_ratio", **gpu) == pytest.approx(0.42)
    assert value(parsed, "gpufleet_gpu_sm_activity_ratio", **gpu) == pytest.approx(0.21)
    assert value(parsed, "gpufleet_gpu_memory_used_bytes", **gpu) == 1_000_000_000
    assert value(parsed, "gpufleet_gpu_memory_total_bytes", **gpu) == 85_520_809_984
    assert value(parsed, "gpufleet_gpu_power_watts", **gpu) == 250.5
    assert value(parsed, "gpufleet_gpu_temperature_celsius", **gpu) == 45
    assert value(parsed, "gpufleet_gpu_energy_joules_total", **gpu) == 1.0e9
    assert value(parsed, "gpufleet_node_up", node="gpu-a") == 1
    assert value(parsed, "gpufleet_pool_instances", pool="chat-l", state="ready") == 1
    assert value(parsed, "gpufleet_instance_requests_waiting", pool="chat-l") == 3
    assert value(parsed, "gpufleet_instance_latency_p95_seconds", metric="e2e") == 0.42
    # ready for ten minutes on an H100 at 3.00 USD per GPU-hour: 0.50, from the cost module's arithmetic
    assert value(parsed, "gpufleet_spend_total", currency="USD", pool="chat-l") == pytest.approx(0.5, abs=0.01)


def test_promtool_finds_nothing_to_object_to(client: Client, fleet: Agent) -> None:
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package prometheus)")
    text = scrape(client).content
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == b"" and checked.stderr.strip() == b""


def test_a_host_that_stopped_reporting_is_down_and_its_gpus_leave_the_exposition(client: Client, fleet: Agent) -> None:
    Node.objects.filter(pk=fleet.node.pk).update(last_seen_at=timezone.now() - timedelta(minutes=10))
    GpuSample.objects.update(at=timezone.now() - timedelta(minutes=10))
    parsed = families(scrape(client).content.decode())
    assert value(parsed, "gpufleet_node_up", node="gpu-a") == 0
    assert parsed["gpufleet_gpu_utilization_ratio"].samples == []


def test_access_needs_the_token_or_an_allowed_address(client: Client, settings: Any) -> None:
    assert scrape(client).status_code == 200  # the test client is 127.0.0.1, allowed by default
    assert scrape(client, REMOTE_ADDR="10.1.2.3").status_code == 403
    settings.METRICS_ALLOWED_IPS = ["10.1.0.0/16"]
    assert scrape(client, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert scrape(client).status_code == 403
    settings.METRICS_TOKEN = "s3cret-token"
    assert scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert scrape(client, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_the_grafana_dashboard_charts_only_metrics_the_panel_exports(client: Client, fleet: Agent) -> None:
    exported = {s.name for family in families(scrape(client).content.decode()).values() for s in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana/gpufleet.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"gpufleet_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
