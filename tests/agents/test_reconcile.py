"""reconcile() is pure: these tests drive it and apply() through an in-memory fake runtime.

The fake mimics what Docker does for the calls apply() makes (adopting a container of
the same name, refusing to remove a running one, stop being a no-op when already
stopped), so convergence shown here is the convergence the Docker runtime gets; the
same flows run against a real engine in test_runtime.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.reconcile import (
    ActionResult,
    DesiredInstance,
    ReportOrphan,
    Restart,
    Sleep,
    Start,
    Stop,
    Wake,
    apply,
    reconcile,
)
from agents.runtime import (
    ContainerSpec,
    ContainerState,
    RuntimeFailure,
    container_name,
    managed_labels,
)

NODE = "node-a"
RUNNING_LIKE = {"running", "restarting", "paused"}


def spec(instance_id: str, generation: int = 1, port: int = 8000) -> ContainerSpec:
    return ContainerSpec(
        instance_id=instance_id,
        generation=generation,
        image="vllm/vllm-openai:test",
        node_name=NODE,
        port=port,
        command=["--model", "m"],
    )


def want(instance_id: str, generation: int = 1, state: str = "running", **kwargs: int) -> DesiredInstance:
    return DesiredInstance(
        instance_id=instance_id,
        generation=generation,
        state=state,  # type: ignore[arg-type]
        spec=None if state == "stopped" else spec(instance_id, generation),
        **kwargs,
    )


class FakeRuntime:
    """In-memory ``Runtime`` and ``SleepControl``: containers keyed by name, as on one engine."""

    def __init__(self) -> None:
        self.containers: dict[str, ContainerState] = {}
        self.asleep_names: set[str] = set()
        self.fail_start: set[str] = set()
        self.calls: list[tuple[str, str, int | None]] = []
        self._ids = itertools.count(1)

    def add(
        self, instance_id: str, generation: int, status: str = "running", exit_code: int | None = None, **extra: object
    ) -> ContainerState:
        labels = managed_labels(spec(instance_id, generation))
        state = ContainerState(
            instance_id=instance_id,
            generation=generation,
            container_id=f"c{next(self._ids)}",
            status=status,
            exit_code=exit_code,
            started_at=None if status == "created" else datetime(2025, 1, 1, tzinfo=UTC),
            labels=labels,
            name=container_name(instance_id, generation),
            node_name=NODE,
            **extra,  # type: ignore[arg-type]
        )
        self.containers[state.name] = state
        return state

    def _matching(self, instance_id: str, generation: int | None) -> list[ContainerState]:
        return [
            c
            for c in self.containers.values()
            if c.instance_id == instance_id and (generation is None or c.generation == generation)
        ]

    def list_managed(self) -> list[ContainerState]:
        return sorted(self.containers.values(), key=lambda c: (c.instance_id, c.generation))

    def start(self, spec: ContainerSpec) -> ContainerState:
        self.calls.append(("start", spec.instance_id, spec.generation))
        if spec.instance_id in self.fail_start:
            raise RuntimeFailure(f"starting {spec.container_name}: injected failure")
        existing = self.containers.get(spec.container_name)
        if existing is not None and existing.running:
            return existing
        state = ContainerState(
            instance_id=spec.instance_id,
            generation=spec.generation,
            container_id=existing.container_id if existing else f"c{next(self._ids)}",
            status="running",
            exit_code=None,
            started_at=datetime(2025, 1, 2, tzinfo=UTC),
            labels=managed_labels(spec),
            name=spec.container_name,
            node_name=spec.node_name,
        )
        self.containers[state.name] = state
        return state

    def stop(self, instance_id: str, timeout_s: int, generation: int | None = None) -> None:
        self.calls.append(("stop", instance_id, generation))
        for c in self._matching(instance_id, generation):
            if c.status in RUNNING_LIKE:
                self.containers[c.name] = dataclasses.replace(c, status="exited", exit_code=143)
            self.asleep_names.discard(c.name)

    def remove(self, instance_id: str, generation: int | None = None) -> None:
        self.calls.append(("remove", instance_id, generation))
        for c in self._matching(instance_id, generation):
            if c.status in RUNNING_LIKE:
                raise RuntimeFailure(f"removing {c.name}: container is {c.status}; stop it first")
            del self.containers[c.name]

    def logs_tail(self, instance_id: str, lines: int = 100, generation: int | None = None) -> str:
        found = self._matching(instance_id, generation)
        if not found:
            raise RuntimeFailure(f"reading logs of {instance_id}: no such container")
        return f"last words of {found[-1].name}"

    def _serving(self, instance_id: str) -> str | None:
        """The name of the instance's running server, whatever its generation (it is reached by its port)."""
        return next((c.name for c in self._matching(instance_id, None) if c.running), None)

    def sleep(self, action: Sleep) -> None:
        self.calls.append(("sleep", action.instance_id, action.generation))
        name = self._serving(action.instance_id)
        if name is None:
            raise RuntimeFailure(f"{container_name(action.instance_id, action.generation)} is not running")
        self.asleep_names.add(name)

    def wake_up(self, action: Wake) -> None:
        self.calls.append(("wake", action.instance_id, action.generation))
        self.asleep_names.discard(self._serving(action.instance_id) or "")

    @property
    def asleep(self) -> set[str]:
        return {self.containers[n].instance_id for n in self.asleep_names if n in self.containers}


def converge(desired: list[DesiredInstance], fake: FakeRuntime) -> list[ActionResult]:
    return apply(reconcile(desired, fake.list_managed(), asleep=fake.asleep), fake, sleep_control=fake)


def test_missing_container_is_started() -> None:
    actions = reconcile([want("a")], [])
    assert actions == [Start(spec("a"), "desired running; no container for generation 1")]


def test_running_at_desired_generation_needs_nothing() -> None:
    fake = FakeRuntime()
    fake.add("a", 1)
    assert reconcile([want("a")], fake.list_managed()) == []


def test_generation_bump_with_a_changed_server_stops_old_then_starts_new() -> None:
    fake = FakeRuntime()
    fake.add("a", 1)
    newer = dataclasses.replace(spec("a", 2), image="vllm/vllm-openai:newer")
    desired = [DesiredInstance("a", 2, "running", newer)]

    actions = reconcile(desired, fake.list_managed())

    assert actions == [
        Stop("a", 1, "generation 1 superseded by desired generation 2"),
        Start(newer, "desired running; no container for generation 2"),
    ]
    results = apply(actions, fake)
    assert all(r.ok for r in results)
    assert fake.calls == [("stop", "a", 1), ("remove", "a", 1), ("start", "a", 2)]
    assert [(c.instance_id, c.generation, c.status) for c in fake.list_managed()] == [("a", 2, "running")]
    assert reconcile(desired, fake.list_managed()) == []


def test_newer_generation_than_desired_is_stopped_too() -> None:
    fake = FakeRuntime()
    fake.add("a", 1)
    fake.add("a", 3)
    actions = reconcile([want("a", 1)], fake.list_managed())
    assert actions == [Stop("a", 3, "generation 3 differs from desired generation 1")]


def test_crashed_container_is_restarted_with_its_logs_kept() -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="exited", exit_code=1)

    actions = reconcile([want("a")], fake.list_managed())

    assert actions == [Restart(spec("a"), "desired running but container is down (status exited, exit code 1)")]
    [result] = apply(actions, fake)
    assert result.ok
    assert result.detail == "last words of gpufleet-a-g1"
    assert result.state is not None and result.state.status == "running"
    assert fake.calls == [("stop", "a", 1), ("remove", "a", 1), ("start", "a", 1)]


def test_restart_reason_tells_out_of_memory_and_engine_error() -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="exited", exit_code=137, oom_killed=True)
    fake.add("b", 1, status="dead", exit_code=128, error="device error")
    reasons = [a.reason for a in reconcile([want("a"), want("b")], fake.list_managed())]
    assert reasons == [
        "desired running but container is down (status exited, exit code 137, killed for running out of memory)",
        "desired running but container is down (status dead, exit code 128, error: device error)",
    ]


def test_paused_container_is_restarted_and_converges() -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="paused")
    [action] = reconcile([want("a")], fake.list_managed())
    assert isinstance(action, Restart)
    assert all(r.ok for r in apply([action], fake))
    assert reconcile([want("a")], fake.list_managed()) == []


def test_created_but_never_started_is_started_in_place() -> None:
    fake = FakeRuntime()
    created = fake.add("a", 1, status="created")
    actions = reconcile([want("a")], fake.list_managed())
    assert actions == [Start(spec("a"), "container was created but never started")]
    [result] = apply(actions, fake)
    assert result.state is not None and result.state.container_id == created.container_id


def test_container_being_removed_is_left_alone_until_gone() -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="removing")
    assert reconcile([want("a")], fake.list_managed()) == []


@pytest.mark.parametrize("status", ["running", "exited", "created"])
def test_desired_stopped_removes_every_generation(status: str) -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="exited", exit_code=0)
    fake.add("a", 2, status=status)
    desired = [want("a", 2, "stopped")]

    actions = reconcile(desired, fake.list_managed())

    assert [(type(a), a.generation) for a in actions] == [(Stop, 1), (Stop, 2)]  # type: ignore[union-attr]
    assert actions[1].reason == f"desired stopped; container generation 2 is {status}"
    assert all(r.ok for r in apply(actions, fake))
    assert fake.list_managed() == []
    assert reconcile(desired, fake.list_managed()) == []


def test_desired_stopped_without_container_needs_nothing() -> None:
    assert reconcile([want("a", 1, "stopped")], []) == []


def test_orphan_is_reported_and_never_touched() -> None:
    fake = FakeRuntime()
    orphan = fake.add("ghost", 4)
    fake.add("a", 1)

    actions = reconcile([want("a")], fake.list_managed())

    assert actions == [
        ReportOrphan(
            orphan, "container gpufleet-ghost-g4 (instance ghost, generation 4, running) matches no desired instance"
        )
    ]
    [result] = apply(actions, fake)
    assert result.ok and result.detail == "reported only; left running"
    assert fake.calls == []
    assert fake.containers[orphan.name] == orphan
    # Level-triggered: it is reported on every pass until an operator acts.
    assert reconcile([want("a")], fake.list_managed()) == actions


def test_container_with_malformed_labels_is_an_orphan() -> None:
    broken = ContainerState(
        instance_id="",
        generation=-1,
        container_id="abc123",
        status="exited",
        exit_code=0,
        started_at=None,
        labels={"gpufleet.managed": "true"},
    )
    assert reconcile([], [broken]) == [
        ReportOrphan(broken, "container abc123 (instance ?, generation -1, exited) matches no desired instance")
    ]


def test_awake_server_desired_sleeping_is_put_to_sleep() -> None:
    fake = FakeRuntime()
    fake.add("a", 1)
    desired = [want("a", 1, "sleeping", sleep_level=2)]

    actions = reconcile(desired, fake.list_managed(), asleep=fake.asleep)

    assert actions == [Sleep("a", 1, 8000, 2, "desired sleeping; server is awake, sleep at level 2")]
    assert all(r.ok for r in apply(actions, fake, sleep_control=fake))
    assert reconcile(desired, fake.list_managed(), asleep=fake.asleep) == []


def test_asleep_server_desired_running_is_woken() -> None:
    fake = FakeRuntime()
    fake.add("a", 1)
    fake.asleep_names.add("gpufleet-a-g1")
    actions = reconcile([want("a")], fake.list_managed(), asleep=fake.asleep)
    assert actions == [Wake("a", 1, 8000, "desired running; server is asleep")]
    assert all(r.ok for r in apply(actions, fake, sleep_control=fake))
    assert reconcile([want("a")], fake.list_managed(), asleep=fake.asleep) == []


def test_sleeping_without_container_starts_it_first() -> None:
    fake = FakeRuntime()
    desired = [want("a", 1, "sleeping")]
    assert reconcile(desired, [], asleep=set()) == [Start(spec("a"), "desired sleeping; no container for generation 1")]
    converge(desired, fake)
    assert [type(a) for a in reconcile(desired, fake.list_managed(), asleep=fake.asleep)] == [Sleep]
    converge(desired, fake)
    assert reconcile(desired, fake.list_managed(), asleep=fake.asleep) == []


def test_sleep_without_sleep_control_is_a_captured_error() -> None:
    action = Sleep("a", 1, 8000, 1, "desired sleeping")
    assert apply([action], FakeRuntime()) == [ActionResult(action, ok=False, error="no sleep control given to apply()")]


def test_memory_is_freed_before_it_is_claimed() -> None:
    fake = FakeRuntime()
    fake.add("b", 1)
    fake.add("c", 1, status="exited", exit_code=1)
    fake.add("d", 1)
    fake.asleep_names.add("gpufleet-d-g1")
    fake.add("e", 1)
    desired = [
        want("a"),
        DesiredInstance("b", 2, "running", dataclasses.replace(spec("b", 2), image="vllm/vllm-openai:newer")),
        want("c"),
        want("d"),
        want("e", 1, "sleeping"),
    ]
    kinds = [
        (type(a).__name__, getattr(a, "instance_id", ""))
        for a in reconcile(desired, fake.list_managed(), asleep=fake.asleep)
    ]
    assert kinds == [
        ("Stop", "b"),
        ("Sleep", "e"),
        ("Restart", ""),
        ("Start", ""),
        ("Start", ""),
        ("Wake", "d"),
    ]


def test_one_failing_start_does_not_stop_the_others() -> None:
    fake = FakeRuntime()
    fake.fail_start.add("b")
    results = apply(reconcile([want("a"), want("b"), want("c")], []), fake)
    assert [(r.action.spec.instance_id, r.ok, r.error) for r in results] == [  # type: ignore[union-attr]
        ("a", True, None),
        ("b", False, "RuntimeFailure: starting gpufleet-b-g1: injected failure"),
        ("c", True, None),
    ]
    fake.fail_start.clear()
    converge([want("a"), want("b"), want("c")], fake)
    assert sorted(c.instance_id for c in fake.list_managed()) == ["a", "b", "c"]


def test_desired_list_is_validated() -> None:
    with pytest.raises(ValueError, match="desired twice"):
        reconcile([want("a"), want("a", 2)], [])
    with pytest.raises(ValueError, match="needs a spec"):
        DesiredInstance("a", 1, "running")
    with pytest.raises(ValueError, match="desired generation 2"):
        DesiredInstance("a", 2, "running", spec=spec("a", 1))
    with pytest.raises(ValueError, match="unknown desired state"):
        DesiredInstance("a", 1, "paused", spec=spec("a"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sleep_level"):
        DesiredInstance("a", 1, "sleeping", spec=spec("a"), sleep_level=3)


INSTANCES = ["a", "b", "c", "d"]
STATUSES = ["running", "restarting", "paused", "created", "exited", "dead"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[DesiredInstance], FakeRuntime]:
    desired = [
        want(i, draw(st.integers(1, 3)), draw(st.sampled_from(["running", "sleeping", "stopped"])))
        for i in draw(st.lists(st.sampled_from(INSTANCES), unique=True))
    ]
    fake = FakeRuntime()
    for instance_id, generation in draw(
        st.lists(st.tuples(st.sampled_from([*INSTANCES, "orphan"]), st.integers(0, 4)), unique=True, max_size=8)
    ):
        status = draw(st.sampled_from(STATUSES))
        fake.add(instance_id, generation, status, None if status in {"running", "created"} else 1)
        if status == "running" and draw(st.booleans()):
            fake.asleep_names.add(container_name(instance_id, generation))
    return desired, fake


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_passes_converge_and_then_stay_empty(scenario: tuple[list[DesiredInstance], FakeRuntime]) -> None:
    """Idempotence: once applied, the same desired list yields no actions (orphans aside).

    One pass converges everything except a sleeping instance that had no live server:
    it is started first and put to sleep on the next pass, once it is up.
    """
    desired, fake = scenario
    orphans = [c for c in fake.list_managed() if c.instance_id not in {d.instance_id for d in desired}]

    first = converge(desired, fake)
    second = converge(desired, fake)

    assert all(r.ok for r in first + second), [r.error for r in first + second if not r.ok]
    assert all(isinstance(r.action, Sleep | ReportOrphan) for r in second)
    again = reconcile(desired, fake.list_managed(), asleep=fake.asleep)
    assert [a.container for a in again if isinstance(a, ReportOrphan)] == orphans
    assert [a for a in again if not isinstance(a, ReportOrphan)] == []


def test_a_sleep_and_a_wake_keep_the_running_server_across_generations() -> None:
    """The panel bumps the generation on every change of desired state; a server whose spec is unchanged
    (``SPEC_LABEL``) is put to sleep and woken where it runs, not replaced by a cold start."""
    fake = FakeRuntime()
    fake.add("a", 1)
    asleep = [want("a", 2, "sleeping")]
    assert reconcile(asleep, fake.list_managed(), asleep=fake.asleep) == [
        Sleep("a", 2, 8000, 1, "desired sleeping; server is awake, sleep at level 1")
    ]
    converge(asleep, fake)
    assert reconcile(asleep, fake.list_managed(), asleep=fake.asleep) == []
    assert reconcile([want("a", 3)], fake.list_managed(), asleep=fake.asleep) == [
        Wake("a", 3, 8000, "desired running; server is asleep")
    ]
    converge([want("a", 3)], fake)
    assert reconcile([want("a", 3)], fake.list_managed(), asleep=fake.asleep) == []
    assert [call[0] for call in fake.calls] == ["sleep", "wake"]
    assert [(c.generation, c.status) for c in fake.list_managed()] == [(1, "running")]


def test_a_stopped_server_of_an_older_generation_is_not_kept() -> None:
    fake = FakeRuntime()
    fake.add("a", 1, status="exited", exit_code=0)
    assert reconcile([want("a", 2)], fake.list_managed()) == [
        Stop("a", 1, "generation 1 superseded by desired generation 2"),
        Start(spec("a", 2), "desired running; no container for generation 2"),
    ]
