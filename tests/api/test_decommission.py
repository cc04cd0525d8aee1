"""Hosts and cards leave the fleet without taking their history along; the same host may join again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fleet.decide.services import node_decommission
from fleet.models import Gpu, GpuSample, Node
from tests.api.test_agent_api import batch, gpu_reading, join_token, register, report

pytestmark = pytest.mark.django_db


def post(client: Client, token: str, body: dict[str, Any]) -> Any:
    return client.post(
        reverse("agent-report"), json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def test_a_decommissioned_host_joins_again_under_its_name_with_its_cards_and_its_old_history_stays(
    client: Client,
) -> None:
    """A host reinstalled after its decommission registers with the same name and GPU UUIDs."""
    secret = join_token(max_uses=None)
    first = register(client, secret, "gpu-a").json()["node_token"]
    assert post(client, first, batch("gpu-a", report(1, [gpu_reading(uuid="GPU-aaaa-0")]))).status_code == 200
    old_node = Node.objects.get(name="gpu-a")
    old_gpu = Gpu.objects.get(uuid="GPU-aaaa-0")

    node_decommission(node=old_node)
    assert post(client, first, batch("gpu-a", report(2, [gpu_reading(uuid="GPU-aaaa-0")]))).status_code == 401

    joined = register(client, secret, "gpu-a")
    assert joined.status_code == 201, joined.content
    again = joined.json()["node_token"]
    reported = post(client, again, batch("gpu-a", report(1, [gpu_reading(uuid="GPU-aaaa-0", util=7.0)])))
    assert reported.status_code == 200, reported.content

    new_node = Node.objects.get(name="gpu-a", decommissioned_at__isnull=True)
    new_gpu = Gpu.objects.get(uuid="GPU-aaaa-0", decommissioned_at__isnull=True)
    assert new_node.pk != old_node.pk and new_gpu.pk != old_gpu.pk and new_gpu.node_id == new_node.pk
    # The old card keeps its node and its one sample; the new row holds only the new reading.
    old_gpu.refresh_from_db()
    assert (old_gpu.node_id, old_gpu.decommissioned_at is not None) == (old_node.pk, True)
    assert list(GpuSample.objects.filter(gpu=old_gpu).values_list("utilization_gpu_pct", flat=True)) == [42.0]
    assert list(GpuSample.objects.filter(gpu=new_gpu).values_list("utilization_gpu_pct", flat=True)) == [7.0]
    # Only one of the two is live: a second live host of that name is still refused.
    assert register(client, secret, "gpu-a").status_code == 409


def test_a_card_swapped_out_keeps_its_samples(client: Client) -> None:
    secret = join_token()
    token = register(client, secret, "gpu-a").json()["node_token"]
    assert post(client, token, batch("gpu-a", report(1, [gpu_reading(0, "GPU-old-0")]))).status_code == 200
    old = Gpu.objects.get(uuid="GPU-old-0")

    # The card at index 0 was replaced: a new UUID at the same index.
    assert post(client, token, batch("gpu-a", report(2, [gpu_reading(0, "GPU-new-0")]))).status_code == 200

    old.refresh_from_db()
    assert old.decommissioned_at is not None
    assert GpuSample.objects.filter(gpu=old).count() == 1
    live = Gpu.objects.filter(node__name="gpu-a", decommissioned_at__isnull=True)
    assert list(live.values_list("index", "uuid")) == [(0, "GPU-new-0")]
