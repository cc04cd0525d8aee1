"""A write of policies that moves the batch image bound tells the nodes running batch jobs, reading the fleet's
co-location policy once (``ingest.batch_image_bound_watch``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.models import BatchJob, Node, Policy
from fleet.telemetry import ingest
from tests.factories import make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db

# The co-location policy's settings as seeded; its image bound, 200 MB, is also its kind's default.
SEEDED = {"min_free_memory_gib": 4.0, "max_duty_cycle_pct": 30, "max_image_mb": 200}


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    calls: list[set[int]] = []
    monkeypatch.setattr(ingest, "node_desired_changed", lambda *, node_ids, why: calls.append(set(node_ids)))
    return calls


@pytest.fixture
def node() -> Node:
    """A node running a batch job: its reply carries the bound."""
    node = make_node("batch-a")
    BatchJob.objects.create(name="clean", image="cleaner:1", memory_bytes=2**30, state="running", gpu=make_gpu(node))
    return node


def fleet_policy() -> Policy:
    return Policy.objects.get(kind=Policy.Kind.COLOCATE, pool=None)


def saved(policy: Policy, capture: Any) -> list[str]:
    """Save ``policy`` inside the watch, commit, and return the SQL of the policy reads it made."""
    with (
        CaptureQueriesContext(connection) as captured,
        capture(execute=True),
        ingest.batch_image_bound_watch(saving=[policy]),
    ):
        policy.save()
    table = Policy._meta.db_table
    return [query["sql"] for query in captured if query["sql"].startswith("SELECT") and table in query["sql"]]


def test_a_new_bound_tells_the_nodes_running_batch_jobs_reading_the_policy_once(
    node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    policy = fleet_policy()
    policy.settings = {**SEEDED, "max_image_mb": 500}
    assert len(saved(policy, django_capture_on_commit_callbacks)) == 1
    assert told == [{node.pk}]
    assert ingest.batch_image_max_bytes() == 500 * 1_000_000


def test_another_setting_tells_nobody(
    node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    policy = fleet_policy()
    policy.settings = {**SEEDED, "max_duty_cycle_pct": 40}
    saved(policy, django_capture_on_commit_callbacks)
    assert told == []


def test_a_pools_own_bound_tells_nobody(
    node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    """Replies carry the fleet's bound only."""
    policy = Policy(kind=Policy.Kind.COLOCATE, pool=make_pool(), settings={**SEEDED, "max_image_mb": 500})
    saved(policy, django_capture_on_commit_callbacks)
    assert told == []


def test_the_fleets_policy_given_to_a_pool_leaves_the_default_bound(
    node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    """Stored at 500 MB, then moved to a pool: the fleet has none, its default 200 MB applies, a change."""
    Policy.objects.filter(pk=fleet_policy().pk).update(settings={**SEEDED, "max_image_mb": 500})
    policy = fleet_policy()
    policy.pool = make_pool()
    saved(policy, django_capture_on_commit_callbacks)
    assert told == [{node.pk}]
    assert ingest.batch_image_max_bytes() == 200 * 1_000_000


def test_a_fleet_policy_where_there_was_none_sets_the_bound(
    node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    fleet_policy().delete()
    saved(
        Policy(kind=Policy.Kind.COLOCATE, pool=None, settings={**SEEDED, "max_image_mb": 300}),
        django_capture_on_commit_callbacks,
    )
    assert told == [{node.pk}]
    assert ingest.batch_image_max_bytes() == 300 * 1_000_000


def test_deleting_the_fleets_policy_among_others_in_the_admin_tells_once(
    admin_client: Client, node: Node, told: list[set[int]], django_capture_on_commit_callbacks: Any
) -> None:
    """The delete action on the fleet's co-location policy (500 MB) and a routing policy: the default
    200 MB applies, one tell; deleting the routing policy alone tells nobody."""
    Policy.objects.filter(pk=fleet_policy().pk).update(settings={**SEEDED, "max_image_mb": 500})
    routing = Policy.objects.get(kind=Policy.Kind.ROUTING, pool=None)
    idle = Policy.objects.get(kind=Policy.Kind.IDLE_RECLAIM, pool=None)
    changelist = reverse("admin:fleet_policy_changelist")

    def delete(*policies: Policy) -> None:
        data = {"action": "delete_selected", "_selected_action": [p.pk for p in policies], "post": "yes"}
        with django_capture_on_commit_callbacks(execute=True):
            assert admin_client.post(changelist, data).status_code == 302

    delete(routing)
    assert told == []
    delete(fleet_policy(), idle)
    assert told == [{node.pk}]
    assert not Policy.objects.filter(kind__in=[Policy.Kind.COLOCATE, Policy.Kind.IDLE_RECLAIM], pool=None).exists()
    assert ingest.batch_image_max_bytes() == 200 * 1_000_000
