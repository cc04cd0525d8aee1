"""State changes go through services that claim, log and publish in one place."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from fleet.decide.services import StaleGeneration, api_key_create, instance_desire, node_token_rotate
from fleet.events import FLEET_GROUP
from fleet.models import ApiKey, Decision, Instance
from fleet.tokens import token_hash, token_matches
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db(transaction=True)


def test_desire_bumps_generation_logs_the_decision_and_publishes(in_memory_channel_layer: None) -> None:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(FLEET_GROUP, channel)
    instance = make_instance(make_pool(), make_gpu(make_node()))

    decision = instance_desire(
        instance=instance, state="sleeping", reason="idle for 300 s", action="minimize", kind="idle_reclaim"
    )

    instance.refresh_from_db()
    assert (instance.desired_state, instance.generation) == ("sleeping", 2)
    assert Decision.objects.get() == decision
    assert (decision.action, decision.reason, decision.pool_id) == ("minimize", "idle for 300 s", instance.pool_id)
    event = async_to_sync(layer.receive)(channel)["event"]
    assert event["kind"] == "decision"
    assert (event["instance"], event["generation"], event["desired_state"]) == (instance.pk, 2, "sleeping")


def test_a_second_writer_with_a_stale_generation_applies_nothing() -> None:
    instance = make_instance(make_pool(), make_gpu(make_node()))
    stale = Instance.objects.get(pk=instance.pk)
    instance_desire(instance=instance, state="stopped", reason="idle 600 s", action="stop", kind="idle_reclaim")

    with pytest.raises(StaleGeneration):
        instance_desire(instance=stale, state="running", reason="scale out", action="start", kind="autoscale")

    instance.refresh_from_db()
    assert (instance.desired_state, instance.generation) == ("stopped", 2)
    assert Decision.objects.count() == 1


def test_rotating_a_node_token_invalidates_the_old_one() -> None:
    node = make_node()
    old_hash = node.token_hash
    token = node_token_rotate(node=node)
    node.refresh_from_db()
    assert node.token_hash != old_hash
    assert token_matches(token, node.token_hash)
    assert node.token_prefix == token.split("_", 1)[1][:8]


def test_api_keys_are_stored_as_digests_only(db: None) -> None:
    from fleet.models import Team

    key, secret = api_key_create(team=Team.objects.create(name="Docs", slug="docs"), name="ci")
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in str(stored)
    assert stored["key_hash"] == token_hash(secret)
    assert secret.startswith("gfk_") and len(secret) > 40
