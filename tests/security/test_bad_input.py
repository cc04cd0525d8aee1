"""Bad input, as an attacker sends it, gets a 4xx with a message and changes nothing.

The agent protocol's limits are the database's: every stored field of ``agents/protocol.py``
is checked against the column it lands in, and a report one character (or one unit) over a
column is refused by name before anything is written, on PostgreSQL as on SQLite.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt, MaxLen
from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.test import Client
from pydantic import BaseModel

from agents import protocol
from fleet import models as fleet
from fleet.decide.services import node_create
from fleet.gateway.protocol import ApiError, load_json
from tests.api.test_agent_api_fuzz import fleet_state, valid_batch
from tests.factories import make_gpu, make_instance, make_pool

pytestmark = pytest.mark.django_db

# Each stored protocol field and the column it is stored in.
STORED: list[tuple[type[BaseModel], str, type[models.Model], str]] = [
    (protocol.Registration, "name", fleet.Node, "name"),
    (protocol.Registration, "hostname", fleet.Node, "address"),
    (protocol.Registration, "agent_version", fleet.Node, "agent_version"),
    (protocol.HostInfo, "hostname", fleet.Node, "address"),
    (protocol.HostInfo, "agent_version", fleet.Node, "agent_version"),
    (protocol.HostInfo, "nvml_reason", fleet.Node, "nvml_reason"),
    (protocol.HostInfo, "runtime_reason", fleet.Node, "runtime_reason"),
    (protocol.Report, "seq", fleet.Node, "last_seq"),
    (protocol.GpuSample, "index", fleet.Gpu, "index"),
    (protocol.GpuSample, "uuid", fleet.Gpu, "uuid"),
    (protocol.GpuSample, "name", fleet.Gpu, "model_name"),
    (protocol.GpuSample, "memory_total_bytes", fleet.Gpu, "memory_total_bytes"),
    (protocol.GpuSample, "memory_used_bytes", fleet.GpuSample, "memory_used_bytes"),
    (protocol.GpuSample, "sm_clock_mhz", fleet.GpuSample, "sm_clock_mhz"),
    (protocol.GpuSample, "mem_clock_mhz", fleet.GpuSample, "mem_clock_mhz"),
    (protocol.GpuSample, "pstate", fleet.GpuSample, "pstate"),
    (protocol.GpuSample, "ecc_uncorrected_volatile", fleet.GpuSample, "ecc_uncorrected"),
    (protocol.MigDevice, "uuid", fleet.MigDevice, "uuid"),
    (protocol.MigDevice, "profile", fleet.MigDevice, "profile"),
    (protocol.MigDevice, "gpu_instance_id", fleet.MigDevice, "gpu_instance_id"),
    (protocol.MigDevice, "compute_instance_id", fleet.MigDevice, "compute_instance_id"),
    (protocol.MigDevice, "memory_total_bytes", fleet.MigDevice, "memory_total_bytes"),
    (protocol.InstanceSample, "instance_id", fleet.Instance, "id"),
    (protocol.InstanceSample, "generation", fleet.Instance, "actual_generation"),
    (protocol.InstanceSample, "container_id", fleet.Instance, "container_id"),
    (protocol.InstanceSample, "endpoint", fleet.Instance, "endpoint"),
    (protocol.ForeignContainer, "container_id", fleet.OrphanContainer, "container_id"),
    (protocol.ForeignContainer, "name", fleet.OrphanContainer, "name"),
    (protocol.ForeignContainer, "instance_id", fleet.OrphanContainer, "instance_id"),
    (protocol.BatchJobSample, "job_id", fleet.BatchJob, "id"),
    (protocol.BatchJobSample, "generation", fleet.BatchJob, "generation"),
    (protocol.BatchJobSample, "container_id", fleet.BatchJob, "container_id"),
    (protocol.BatchJobSample, "exit_code", fleet.BatchJob, "exit_code"),
    (protocol.ReapResult, "container_id", fleet.OrphanContainer, "container_id"),
]


def _constraints(annotation: Any, metadata: list[Any]) -> dict[str, int]:
    """max_length, lowest and highest allowed value of a field, through ``Annotated`` and ``| None``."""
    found: dict[str, int] = {}
    for item in metadata:
        bound: Any = getattr(item, type(item).__name__.lower(), None)
        if isinstance(item, MaxLen):
            found["max_length"] = item.max_length
        elif isinstance(item, Ge):
            found["low"] = int(bound)
        elif isinstance(item, Gt):
            found["low"] = int(bound) + 1
        elif isinstance(item, Le):
            found["high"] = int(bound)
        elif isinstance(item, Lt):
            found["high"] = int(bound) - 1
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        nested = [m for field in extra for m in getattr(field, "metadata", [field])]
        return {**_constraints(inner, nested), **found}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = {**_constraints(arg, []), **found}
    return found


def _limits(model: type[BaseModel], name: str) -> dict[str, int]:
    field = model.model_fields[name]
    return _constraints(field.annotation, list(field.metadata))


@pytest.mark.parametrize(("schema", "name", "model", "column"), STORED, ids=lambda v: getattr(v, "__name__", v))
def test_protocol_limits_fit_the_columns(
    schema: type[BaseModel], name: str, model: type[models.Model], column: str
) -> None:
    field = model._meta.get_field(column)
    limits = _limits(schema, name)
    annotation = schema.model_fields[name].annotation
    if isinstance(field, models.CharField):
        assert field.max_length is not None
        assert "max_length" in limits, (
            f"{schema.__name__}.{name} has no max_length; the column takes {field.max_length}"
        )
        assert limits["max_length"] <= field.max_length, f"{schema.__name__}.{name}: {limits} > {field.max_length}"
    elif isinstance(field, models.IntegerField | models.AutoField):
        low, high = BaseDatabaseOperations.integer_field_ranges[field.get_internal_type()]
        assert "low" in limits and "high" in limits, f"{schema.__name__}.{name} ({annotation}) is unbounded: {limits}"
        assert low <= limits["low"] and limits["high"] <= high, (
            f"{schema.__name__}.{name}: {limits} not in [{low}, {high}]"
        )
    else:
        pytest.fail(f"{model.__name__}.{column} is a {type(field).__name__}: add a rule for it")


@pytest.fixture
def reporting(client: Client) -> tuple[dict[str, str], int]:
    node, token = node_create(name="gpu-a")
    instance = make_instance(make_pool(), make_gpu(node))
    return {"Authorization": f"Bearer {token}"}, instance.pk


# A report with one value one past its column, the path to it and the field the answer names.
OVER_A_COLUMN: list[tuple[str, tuple[Any, ...], Any]] = [
    ("uuid", ("gpus", 0, "uuid"), "G" * (fleet.Gpu._meta.get_field("uuid").max_length or 0) + "X"),
    ("name", ("gpus", 0, "name"), "N" * (fleet.Gpu._meta.get_field("model_name").max_length or 0) + "X"),
    (
        "uuid",
        ("gpus", 0, "mig_devices", 0, "uuid"),
        "M" * (fleet.MigDevice._meta.get_field("uuid").max_length or 0) + "X",
    ),
    ("endpoint", ("instances", 0, "endpoint"), "http://127.0.0.1:18100/" + "e" * 200),
    ("sm_clock_mhz", ("gpus", 0, "sm_clock_mhz"), 2**31),
    ("mem_clock_mhz", ("gpus", 0, "mem_clock_mhz"), 2**31),
]


@pytest.mark.parametrize(("field", "path", "value"), OVER_A_COLUMN, ids=[str(case[1]) for case in OVER_A_COLUMN])
def test_a_report_one_past_a_column_is_refused_by_name_and_stores_nothing(
    client: Client, reporting: tuple[dict[str, str], int], field: str, path: tuple[Any, ...], value: Any
) -> None:
    headers, instance_id = reporting
    body = copy.deepcopy(valid_batch(instance_id, seq=1))
    target: Any = body["reports"][0]
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    before = fleet_state()
    response = client.post("/api/agent/v1/report", json.dumps(body), content_type="application/json", headers=headers)
    assert response.status_code == 400, response.content[:500]
    assert field in response.content.decode()
    assert fleet_state() == before


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [200, 10_000])
@pytest.mark.parametrize("path", ["/api/agent/v1/register", "/api/agent/v1/report"])
def test_deeply_nested_json_is_refused_with_a_message(
    client: Client, reporting: tuple[dict[str, str], int], path: str, depth: int
) -> None:
    headers, _ = reporting
    body = b'{"version": 1, "reports": [' + nested(depth) + b"]}"
    before = fleet_state()
    response = client.post(path, body, content_type="application/json", headers=headers)
    assert response.status_code == 400, response.content[:500]
    assert response.json()["error"]["message"]
    assert fleet_state() == before


@pytest.mark.parametrize("depth", [200, 10_000])
def test_the_gateway_refuses_deeply_nested_json_with_a_message(depth: int) -> None:
    with pytest.raises(ApiError) as refused:
        load_json(b'{"model": "m", "messages": [' + nested(depth) + b"]}")
    assert refused.value.status == 400 and "deep" in str(refused.value.message)


def test_a_staff_user_posting_deeply_nested_json_gets_the_form_back_with_a_message(admin_client: Client) -> None:
    node, _ = node_create(name="gpu-a")
    page = f"/admin/fleet/node/{node.pk}/change/"
    for depth in (10_000, 200):
        labels = "[" * depth + "]" * depth
        response = admin_client.post(page, {"name": "gpu-a", "labels": labels})
        assert response.status_code == 200
        assert "nested more than" in response.content.decode()
        node.refresh_from_db()
        assert node.labels == {}


def test_a_staff_user_posting_a_number_out_of_a_columns_range_gets_the_form_back(admin_client: Client) -> None:
    node, _ = node_create(name="gpu-a")
    gpu = make_gpu(node)
    response = admin_client.post(
        "/admin/fleet/batchjob/add/",
        {"name": "job", "image": "busybox", "command": "[]", "memory_bytes": 2**63, "priority": 2**40, "gpu": gpu.pk},
    )
    assert response.status_code == 200
    assert "Ensure this value is less than or equal to" in response.content.decode()
    assert not fleet.BatchJob.objects.exists()
