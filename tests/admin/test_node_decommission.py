"""In the admin a host is decommissioned, never deleted with its billing history."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.models import GpuSample, InstanceEvent, Node
from tests.costs.history import gpu_samples, states
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


def host_with_history() -> Node:
    node = make_node("rack2-h1")
    gpu = make_gpu(node, 0)
    start = timezone.now() - timedelta(hours=2)
    gpu_samples(gpu, start, start + timedelta(hours=1), every_s=600)  # 6 x 10 min + 1 = 7 samples
    instance = make_instance(make_pool(), gpu, desired_state="stopped", actual_state="stopped")
    states(instance, (start, "ready"), (start + timedelta(hours=1), "stopped"))
    return node


def test_the_admin_cannot_delete_a_host_and_its_history(admin_client: Client) -> None:
    node = host_with_history()
    delete = reverse("admin:fleet_node_delete", args=[node.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = admin_client.get(reverse("admin:fleet_node_changelist")).content.decode()
    assert 'value="delete_selected"' not in changelist
    bulk = {"action": "delete_selected", "_selected_action": [node.pk], "post": "yes"}
    admin_client.post(reverse("admin:fleet_node_changelist"), bulk)
    assert Node.objects.filter(pk=node.pk).exists()
    assert (GpuSample.objects.count(), InstanceEvent.objects.count()) == (7, 2)


def test_the_admin_decommissions_a_host_and_keeps_its_history(admin_client: Client) -> None:
    node = host_with_history()
    changelist = reverse("admin:fleet_node_changelist")
    assert 'value="decommission"' in admin_client.get(changelist).content.decode()
    response = admin_client.post(changelist, {"action": "decommission", "_selected_action": [node.pk]}, follow=True)
    assert response.status_code == 200
    assert "Decommissioned 1 host" in response.content.decode()
    node.refresh_from_db()
    assert node.status == Node.Status.DECOMMISSIONED
    # The 7 samples and the 2 events of its history stay; the instance got no new event, it had stopped.
    assert (GpuSample.objects.count(), InstanceEvent.objects.count()) == (7, 2)
