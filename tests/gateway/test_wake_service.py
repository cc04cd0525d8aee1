"""``pool_wake_request``: what the gateway calls for a pool with no ready instance."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.decide import services
from fleet.decide.evaluate import pool_wake_request
from fleet.events import FLEET_GROUP, pool_group
from fleet.models import Decision, Instance, Node, Pool
from tests.factories import make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db


def online_node(name: str = "gpu-host-1") -> Node:
    node = make_node(name)
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    node.refresh_from_db()
    return node


def test_a_sleeping_instance_is_preferred_over_a_stopped_one() -> None:
    pool = make_pool()
    stopped = Instance.objects.create(pool=pool, desired_state="stopped", actual_state="stopped")
    sleeping = Instance.objects.create(pool=pool, desired_state="sleeping", actual_state="sleeping")

    (decision,) = pool_wake_request(pool_id=pool.pk, reason="held")

    assert decision.instance == sleeping
    assert Instance.objects.get(pk=sleeping.pk).desired_state == "running"
    assert Instance.objects.get(pk=stopped.pk).desired_state == "stopped"


def test_nothing_is_done_while_an_instance_is_already_coming() -> None:
    pool = make_pool()
    Instance.objects.create(pool=pool, desired_state="running", actual_state="starting")
    Instance.objects.create(pool=pool, desired_state="stopped", actual_state="stopped")

    assert pool_wake_request(pool_id=pool.pk, reason="held") == []
    assert not Decision.objects.exists()


def test_placement_skips_busy_gpus_other_models_and_offline_nodes() -> None:
    make_gpu(make_node("offline-host"), 0)
    node = online_node()
    busy = make_gpu(node, 0)
    make_gpu(node, 1, model_name="NVIDIA A10G")
    free = make_gpu(node, 2)
    Instance.objects.create(pool=make_pool("other"), gpu=busy)
    pool = make_pool(gpu_model="NVIDIA L4")

    (decision,) = pool_wake_request(pool_id=pool.pk, reason="held")

    created = Instance.objects.get(pool=pool)
    assert (created.gpu, created.desired_state, decision.action) == (free, "running", "launch")
    assert decision.policy_kind == "gateway" and decision.reason.startswith("held")


def test_a_mig_pool_gets_a_free_slice_of_its_profile() -> None:
    gpu = make_gpu(online_node(), 0, model_name="NVIDIA H100 80GB HBM3", mig_mode="enabled")
    gib = 1024**3
    gpu.mig_devices.create(uuid="MIG-a", profile="1g.10gb", gpu_instance_id=1, memory_total_bytes=10 * gib)
    wanted = gpu.mig_devices.create(uuid="MIG-b", profile="3g.40gb", gpu_instance_id=2, memory_total_bytes=40 * gib)
    pool = make_pool(isolation="mig", tier="M", gpu_model="NVIDIA H100 80GB HBM3", mig_profile="3g.40gb")

    pool_wake_request(pool_id=pool.pk, reason="held")

    assert Instance.objects.get(pool=pool).mig_device == wanted


def test_no_free_gpu_is_a_logged_decision_and_no_instance() -> None:
    pool = make_pool()

    (decision,) = pool_wake_request(pool_id=pool.pk, reason="held")

    assert decision.action == "wake_failed"
    assert "fits nowhere" in decision.reason and "144 KiB/token" in decision.reason
    assert not Instance.objects.exists()


def test_a_refused_wake_is_applied_and_published_live_like_any_decision(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """A refusal is a decision the panel made now: the decisions page shows it applied, and the
    live feed gets it with its reason, on the fleet's and the pool's groups."""
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "event_publish", lambda **event: published.append(event))
    pool = make_pool()

    with django_capture_on_commit_callbacks(execute=True):
        (decision,) = pool_wake_request(pool_id=pool.pk, reason="held", inputs={"held": 3})

    assert decision.action == "wake_failed" and decision.applied_at is not None
    assert decision.inputs == {"held": 3}
    (event,) = published
    assert (event["kind"], event["groups"]) == ("decision", (FLEET_GROUP, pool_group(pool.pk)))
    payload = event["payload"]
    assert (payload["decision"], payload["pool"], payload["action"], payload["policy_kind"]) == (
        decision.pk,
        pool.pk,
        "wake_failed",
        "gateway",
    )
    assert payload["reason"] == decision.reason and "fits nowhere" in payload["reason"]


def test_an_instance_being_stopped_or_put_to_sleep_gets_no_new_requests_and_a_request_wakes_it() -> None:
    from fleet.gateway.table import routing_table_load

    pool = make_pool()
    draining = Instance.objects.create(
        pool=pool, desired_state="stopped", actual_state="ready", endpoint="http://127.0.0.1:9"
    )
    dozing = Instance.objects.create(
        pool=pool, desired_state="sleeping", actual_state="ready", endpoint="http://127.0.0.1:10"
    )
    serving = Instance.objects.create(
        pool=pool, desired_state="running", actual_state="ready", endpoint="http://127.0.0.1:11"
    )
    assert [u.instance_id for u in routing_table_load().pools[pool.pk].upstreams] == [serving.pk]

    Instance.objects.filter(pk=serving.pk).update(desired_state="stopped")
    assert routing_table_load().pools[pool.pk].upstreams == ()
    (decision,) = pool_wake_request(pool_id=pool.pk, reason="held")
    assert decision.instance in {draining, dozing}
    assert Instance.objects.get(pk=decision.instance.pk).desired_state == "running"


def test_a_wake_up_lost_to_another_gateways_claim_is_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gateways hold requests for the same empty pool and both ask: the second's claim is stale
    because the first's instance is on its way. Nothing failed, so nothing is logged as failed."""
    from fleet.decide import evaluate
    from fleet.policies.placement import PlacementRefused

    pool = make_pool()

    def beaten(*, pool: Pool, reason: str, kind: str) -> PlacementRefused:
        # The other gateway's launch committed between this one's check and its claim.
        Instance.objects.create(pool=pool, desired_state="running", actual_state="starting")
        return PlacementRefused(pool_id=pool.pk, message="another writer changed pool first")

    monkeypatch.setattr(evaluate, "pool_wake", beaten)

    assert pool_wake_request(pool_id=pool.pk, reason="held") == []
    assert not Decision.objects.exists()
