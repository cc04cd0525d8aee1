"""Whatever an agent (or anyone) sends to the agent API: 2xx or 4xx, never 5xx, and a refusal writes nothing.

Bodies start from valid registrations and reports and are mutated at random paths
(values replaced by arbitrary JSON, keys dropped or added), plus raw bytes, broken gzip
and odd headers. After every refusal the fleet's tables hold exactly what they held.
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from typing import Any

import pytest
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import protocol
from fleet.decide.services import join_token_create, node_create
from fleet.models import (
    Gpu,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    JoinToken,
    MigDevice,
    Node,
    OrphanContainer,
)
from tests.factories import make_gpu, make_instance, make_pool

pytestmark = pytest.mark.django_db

FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
OK = {200, 201}
REFUSED = {400, 401, 403, 409, 413, 415}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "gpu-a", "ready", "GPU-aaaa-0", "1e309", "NaN", "-1", 2**63, -(2**63) - 1])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=10,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def similar(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same JSON type as ``value``, extremes included: what a buggy agent would send."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 2**31, 2**62, 2**63, 2**64])
    if isinstance(value, float):
        return st.floats() | st.integers(-(2**70), 2**70)
    if isinstance(value, str):
        return st.text(max_size=300) | st.sampled_from(
            ["", "\x00", "a\x00b", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
        )
    return json_values


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with one to three edits: a value replaced by one of its type or by anything, a key
    or item removed, or a key added."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)[1:]))
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        edit = draw(st.sampled_from(["similar", "similar", "similar", "replace", "drop", "add"]))
        if edit == "similar":
            parent[path[-1]] = draw(similar(parent[path[-1]]))
        elif edit == "replace":
            parent[path[-1]] = draw(json_values)
        elif edit == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return value


@st.composite
def bodies(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """Mostly near-valid bodies (they reach the deepest code), some valid ones, some junk."""
    kind = draw(st.sampled_from(["mutated"] * 7 + ["valid", "bytes", "json"]))
    if kind == "mutated":
        return encode(draw(mutated(base)))
    if kind == "valid":
        return encode(base)
    return draw(st.binary(max_size=200)) if kind == "bytes" else encode(draw(json_values))


def fleet_state() -> tuple[Any, ...]:
    """Every table the agent API writes, and the counters it bumps."""
    models = [Node, Gpu, GpuSample, Instance, InstanceEvent, InstanceSample, MigDevice, OrphanContainer]
    rows = tuple(model.objects.count() for model in models)
    nodes = tuple(Node.objects.order_by("pk").values_list("last_seq", "reports_dropped", "address"))
    instances = tuple(Instance.objects.order_by("pk").values_list("actual_state", "endpoint"))
    return rows, nodes, instances, tuple(JoinToken.objects.order_by("pk").values_list("uses", flat=True))


def gpu(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-gpu-a-{index}",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 85_520_809_984,
        "memory_used_bytes": 1_000_000_000,
        "utilization_gpu_pct": 42.0,
        "power_watts": 250.5,
        "temperature_c": 45,
        "throttle_reasons": ["idle"],
        "mig_enabled": True,
        "mig_devices": [{"uuid": f"MIG-{index}", "profile": "1g.10gb", "gpu_instance_id": 1, "memory_total_bytes": 1}],
    }


def valid_batch(instance_id: int, seq: int) -> dict[str, Any]:
    sample = {
        "instance_id": instance_id,
        "generation": 1,
        "state": "ready",
        "endpoint": "http://127.0.0.1:8100",  # in the default --port-range, which a host made by node_create has
        "request_rate": 1.5,
        "ttft_histogram": {"bounds": [0.1, 1.0], "counts": [1, 2], "count": 3},
    }
    container = {"container_id": "abc", "name": "x", "managed": True, "instance_id": instance_id, "gpu_uuids": []}
    report = {
        "seq": seq,
        "sampled_at": time.time(),
        "host": {"hostname": "gpu-a.local", "agent_version": "0.1.0", "nvml_available": True},
        "gpus": [gpu(0), gpu(1)],
        "instances": [sample],
        "containers": [container],
        "action_results": [{"instance_id": instance_id, "generation": 1, "action": "start", "ok": True}],
    }
    return {"version": 1, "node": "gpu-a", "reports": [report], "dropped": 0}


def post(client: Client, path: str, body: bytes, headers: dict[str, str]) -> int:
    return client.post(path, body, content_type="application/json", **headers).status_code


def check(client: Client, path: str, body: bytes, headers: dict[str, str]) -> int:
    before = fleet_state()
    status = post(client, path, body, headers)
    assert status in OK | REFUSED, status
    if status in REFUSED:
        assert fleet_state() == before
    return status


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# Hundreds of reports from one node in seconds: far past the report rate bound, which is not fuzzed here.
@override_settings(AGENT_REPORTS_PER_MINUTE=10**6)
def test_fuzzed_reports_get_2xx_or_4xx_and_refusals_write_nothing(client: Client) -> None:
    node, token = node_create(name="gpu-a")
    instance = make_instance(make_pool(), make_gpu(node))
    _other, other_token = node_create(name="gpu-b")
    statuses: list[int] = []
    seqs = iter(range(1, 10**6))

    @FUZZ
    @given(
        data=st.data(),
        gzipped=st.booleans(),
        auth=st.sampled_from(["node"] * 6 + ["other", "none", "garbage"]),
        encoding=st.sampled_from([""] * 6 + ["gzip", "br", "GZIP", "gzip, gzip"]),
    )
    def run(data: st.DataObject, gzipped: bool, auth: str, encoding: str) -> None:
        # An accepted mutation may be a card swap (a new UUID at an index), which unplaces
        # the instance every valid body names; each example starts with it placed again.
        if not Instance.objects.filter(pk=instance.pk, gpu__node=node).exists():
            card = Gpu.objects.filter(node=node).order_by("index").first() or make_gpu(node, 99)
            Instance.objects.filter(pk=instance.pk).update(gpu=card)
        base = valid_batch(instance.pk, next(seqs))
        raw = data.draw(bodies(base))
        headers = {
            "node": {"HTTP_AUTHORIZATION": f"Bearer {token}"},
            "other": {"HTTP_AUTHORIZATION": f"Bearer {other_token}"},
            "none": {},
            "garbage": {"HTTP_AUTHORIZATION": data.draw(st.text(max_size=30).map(lambda t: f"Bearer {t}x"))},
        }[auth]
        if gzipped:
            raw = gzip.compress(raw)
            headers["HTTP_CONTENT_ENCODING"] = "gzip"
        elif encoding:
            headers["HTTP_CONTENT_ENCODING"] = encoding
        statuses.append(check(client, "/api/agent/v1/report", raw, headers))

    run()
    assert statuses.count(200) >= 20, "too few accepted reports: the fuzzer did not reach the storing code"
    assert 200 in statuses and len(set(statuses)) >= 4, sorted(set(statuses))


def test_fuzzed_registrations_get_2xx_or_4xx_and_refusals_write_nothing(client: Client) -> None:
    _token, secret = join_token_create(name="rollout", max_uses=None, expires_at=None)
    names = iter(f"host-{n}" for n in range(10**6))
    statuses: list[int] = []

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        base = {
            "join_token": secret,
            "name": next(names),
            "hostname": "h.local",
            "agent_version": "0.1.0",
            "labels": {"rack": "4"},
        }
        raw = data.draw(bodies(base))
        statuses.append(check(client, "/api/agent/v1/register", raw, {}))

    run()
    assert 201 in statuses and 400 in statuses


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("containers", 0, "instance_id"), 2**63),
        (("instances", 0, "generation"), 2**63),
        (("seq",), 2**63),
        (("host", "hostname"), "gpu\x00a"),
        (("instances", 0, "error"), "\ud800"),
    ],
)
def test_values_no_column_can_hold_are_refused_whole(client: Client, where: tuple[Any, ...], value: Any) -> None:
    """Found by the fuzzer on PostgreSQL: these were server errors halfway through storing a report."""
    node, token = node_create(name="gpu-a")
    instance = make_instance(make_pool(), make_gpu(node))
    body = valid_batch(instance.pk, 1)
    parent = body["reports"][0]
    for step in where[:-1]:
        parent = parent[step]
    parent[where[-1]] = value

    status = check(client, "/api/agent/v1/report", encode(body), {"HTTP_AUTHORIZATION": f"Bearer {token}"})

    assert status == 400
    assert Node.objects.get(pk=node.pk).last_seq == 0


@pytest.mark.parametrize(("label", "expected"), [("7", 7), ("0", None), (str(2**63), None), ("²", None), ("x", None)])
def test_agent_reads_only_storable_instance_ids_from_container_labels(label: str, expected: int | None) -> None:
    assert protocol.id_or_none(label) == expected
