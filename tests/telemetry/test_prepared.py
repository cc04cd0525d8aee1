"""Queries compiled once and run again with new values return what the ORM itself returns."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Q

from fleet.models import Instance, Node
from fleet.telemetry.prepared import PreparedValues
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


def instances(*, node: int, pks: Any = ()) -> Any:
    wanted = Q(gpu__node_id=node)
    if pks:
        wanted &= Q(pk__in=pks)
    return (
        Instance.objects.filter(wanted)
        .order_by("pk")
        .values("pk", "gpu__uuid", "last_request_at", "pool__model_profile__extra_args", "pool__model_profile__env")
    )


def test_rows_match_the_orm_for_every_value_and_shape() -> None:
    pool = make_pool()
    placed = {}
    for name in ("a", "b"):
        node = make_node(name)
        gpu = make_gpu(node, 0, "NVIDIA H100 80GB HBM3")
        placed[node.pk] = [make_instance(pool, gpu).pk for _ in range(3)]
    prepared = PreparedValues(instances, dicts=True)
    for node, pks in placed.items():
        assert prepared.rows(node=node) == list(instances(node=node))
        for chosen in (pks[:1], pks[1:], {pks[0], pks[2]}):
            assert prepared.rows(node=node, pks=chosen) == list(instances(node=node, pks=chosen))
    assert prepared.rows(node=-1) == []


def test_values_list_rows_are_tuples_with_converted_values() -> None:
    node = make_node("a")
    Node.objects.filter(pk=node.pk).update(nvml_available=True, labels={"zone": "b"})
    prepared = PreparedValues(
        lambda *, name: Node.objects.filter(name=name).values_list("nvml_available", "labels", "created_at"),
        dicts=False,
    )
    assert prepared.rows(name="a") == list(
        Node.objects.filter(name="a").values_list("nvml_available", "labels", "created_at")
    )
    assert prepared.rows(name="a")[0][:2] == (True, {"zone": "b"})


def test_a_parameter_the_query_does_not_use_is_refused() -> None:
    prepared = PreparedValues(lambda *, node, unused: Node.objects.filter(pk=node).values_list("pk"), dicts=False)
    with pytest.raises(ValueError, match="unused"):
        prepared.rows(node=1, unused=2)
