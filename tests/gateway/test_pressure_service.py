"""``pool_scale_out_request``: what the gateway's database worker does when the gateway sees pressure."""

from __future__ import annotations

import pytest

from fleet import selectors
from fleet.decide.evaluate import pool_scale_out_request
from fleet.gateway.table import routing_table_load
from fleet.models import Decision, Instance, Node, Policy
from tests.factories import make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db


def pool_with_room() -> tuple[int, Instance]:
    """A pool with one ready instance on an online node's first L4 and a second L4 free."""
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    first, _free = make_gpu(node, 0), make_gpu(node, 1)
    pool = make_pool(isolation="exclusive")
    ready = Instance.objects.create(pool=pool, gpu=first, actual_state="ready", endpoint="http://127.0.0.1:9")
    return pool.pk, ready


def test_one_scale_out_for_the_same_pressure_and_the_tick_shares_its_cool_down() -> None:
    Policy.objects.update_or_create(kind="autoscale", pool=None, defaults={"settings": {"scale_out_cooldown_s": 60}})
    pool_id, ready = pool_with_room()

    (decision,) = pool_scale_out_request(pool_id=pool_id, reason="pressure", inputs={"held": 0})
    # A second gateway asking for the same pressure: an instance is on its way, and the cool-down runs.
    assert pool_scale_out_request(pool_id=pool_id, reason="pressure") == []

    assert (decision.policy_kind, decision.action, decision.inputs["via"]) == ("gateway", "scale_out", "launch")
    assert Instance.objects.filter(pool_id=pool_id).count() == 2
    # The tick's autoscale and every gateway read it as the pool's last scale-out.
    view = next(pool for pool in selectors.fleet_snapshot().pools if pool.id == pool_id)
    assert view.last_scale_out_at == decision.created_at
    route = routing_table_load().pools[pool_id]
    assert (route.serving, route.active, route.scale_out_cooldown_s) == (2, 2, 60.0)
    assert route.last_scale_out_at == decision.created_at.timestamp()
    Instance.objects.exclude(pk=ready.pk).update(actual_state="ready")
    assert pool_scale_out_request(pool_id=pool_id, reason="pressure") == [], "within the 60 s cool-down"


def test_nothing_where_autoscale_is_off_for_the_pool() -> None:
    pool_id, _ready = pool_with_room()
    Policy.objects.create(kind="autoscale", pool_id=pool_id, enabled=False)
    assert routing_table_load().pools[pool_id].scale_out_cooldown_s is None
    assert pool_scale_out_request(pool_id=pool_id, reason="pressure") == []
    assert not Decision.objects.exists()
