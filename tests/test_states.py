"""One home for instance and batch job states and for the set of them that holds a GPU."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest

from agents import protocol
from fleet import selectors, states
from fleet.costs.selectors import fleet_window
from fleet.models import BatchJob, GpuSample, Instance, InstanceEvent
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

ROOT = Path(__file__).resolve().parent.parent

# By hand: a container holds its device's memory from starting until its process has exited
# (stopping included); a sleeping vLLM has handed its weights and KV cache back.
HOLDS_MEMORY = {"starting", "ready", "stopping"}


def test_the_models_store_the_values_of_the_states_module() -> None:
    assert Instance.Desired.values == ["running", "sleeping", "stopped"] == list(states.DESIRED_STATES)
    assert (
        Instance.Actual.values
        == ["pending", "starting", "ready", "sleeping", "stopping", "stopped", "failed", "unknown"]
        == list(states.ACTUAL_STATES)
    )
    assert BatchJob.State.values == ["queued", "running", "preempted", "done", "failed"] == list(states.JOB_STATES)
    assert InstanceEvent._meta.get_field("state").choices == Instance.Actual.choices


def test_the_agents_wire_states_are_states_the_panel_stores() -> None:
    assert set(get_args(protocol.InstanceState)) <= set(states.ACTUAL_STATES)
    assert get_args(protocol.DesiredState) == states.DESIRED_STATES


@pytest.mark.django_db
def test_placement_foreign_memory_and_billing_count_the_same_states_as_holding_a_gpu() -> None:
    """One instance per actual state, each told to stop, on a GPU of its own that reports its budget used."""
    node, pool = make_node(), make_pool()
    start, end = datetime(2025, 3, 1, 8, tzinfo=UTC), datetime(2025, 3, 1, 9, tzinfo=UTC)
    on_gpu = {}
    for index, state in enumerate(states.ACTUAL_STATES):
        gpu = make_gpu(node, index=index)
        instance = make_instance(pool, gpu, desired_state="stopped", actual_state=state)
        InstanceEvent.objects.create(instance=instance, at=start, state=state, gpu=gpu)
        # The chat preset's budget: 0.9 x 24 GiB.
        GpuSample.objects.create(gpu=gpu, at=end, memory_used_bytes=int(24 * GIB * 0.9))
        on_gpu[gpu.pk] = state

    snapshot = selectors.fleet_snapshot(now=end)
    promised = {on_gpu[gpu_id] for gpu_id in on_gpu if snapshot.gpu_instances(gpu_id)}
    ours = {on_gpu[gpu.id] for gpu in snapshot.gpus if gpu.foreign_memory_bytes == 0}
    billed = {row.state for row in fleet_window(start=start, end=end, sleeping_holds_gpu=False).allocations}
    billed_with_sleep = {row.state for row in fleet_window(start=start, end=end, sleeping_holds_gpu=True).allocations}

    assert promised == ours == billed == HOLDS_MEMORY
    assert billed_with_sleep == HOLDS_MEMORY | {"sleeping"}


def _state_like(node: ast.expr, names: set[str], constants: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in names
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Attribute):
        return node.attr in constants
    return False


def _state_collections(tree: ast.AST, names: set[str], constants: set[str]) -> list[int]:
    """Lines where a set, tuple or list of two or more state names is assigned or passed by keyword."""
    values: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.keyword) and node.value is not None:
            values.append(node.value)
    lines = []
    for value in values:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.args:
            value = value.args[0]
        if (
            isinstance(value, ast.Set | ast.Tuple | ast.List)
            and len(value.elts) >= 2
            and all(_state_like(element, names, constants) for element in value.elts)
        ):
            lines.append(value.lineno)
    return lines


def test_no_module_but_the_states_module_defines_a_set_of_states() -> None:
    names = set(states.ACTUAL_STATES) | set(states.DESIRED_STATES) | set(states.JOB_STATES)
    constants = {name.upper() for name in names} | {
        key for key, value in vars(states).items() if isinstance(value, str) and value in names
    }
    home = ROOT / "fleet" / "states.py"
    found = {}
    for package in ("fleet", "dashboard"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if path == home or relative.parts[1] in ("migrations", "models"):
                continue
            lines = _state_collections(ast.parse(path.read_text(encoding="utf-8")), names, constants)
            if lines:
                found[str(relative)] = lines
    assert found == {}
