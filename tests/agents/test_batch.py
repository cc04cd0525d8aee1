"""Batch jobs and reaping on the agent, decided by pure functions and applied through a fake engine.

The fake keeps what Docker keeps for the calls the agent makes (a container per name,
adopted on a second start, an exit code once stopped, gone once removed); the same flows
run against a real engine and a real panel in tests/integration/test_batch_docker.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import protocol
from agents.agent import Agent, AgentConfig
from agents.batch import (
    DesiredJob,
    LeaveAlone,
    Reap,
    StartJob,
    batch_observe,
    batch_reconcile,
    reap_plan,
)
from agents.nvml import HostReading
from agents.plan import MB
from agents.runtime import (
    GPU_MEMORY_ENV,
    BatchSpec,
    ContainerGone,
    ContainerState,
    ImageMissing,
    RuntimeFailure,
    batch_create_kwargs,
    managed_labels,
)
from tests.agents.test_reconcile import FakeRuntime, spec

NODE = "node-a"
IMAGE = "batch/cleaner:1"


def job_spec(job_id: int, generation: int = 1) -> BatchSpec:
    return BatchSpec(job_id=job_id, generation=generation, image=IMAGE, node_name=NODE, command=["clean"])


def run(job_id: int, generation: int = 1) -> DesiredJob:
    return DesiredJob(job_id, generation, "running", job_spec(job_id, generation))


def stop(job_id: int, generation: int = 1) -> DesiredJob:
    return DesiredJob(job_id, generation, "stopped")


class FakeEngine(FakeRuntime):
    """The instance fake plus batch containers, image sizes and stop-by-id."""

    def __init__(self, images: dict[str, int] | None = None) -> None:
        super().__init__()
        self.jobs: dict[str, ContainerState] = {}
        self.images = images if images is not None else {IMAGE: 5 * MB}
        self.stopped: list[str] = []
        self._job_ids = itertools.count(1)

    def add_job(self, job_id: int, generation: int, status: str = "running", exit_code: int | None = None) -> str:
        s = job_spec(job_id, generation)
        self.jobs[s.container_name] = ContainerState(
            instance_id="",
            generation=generation,
            container_id=f"j{next(self._job_ids)}",
            status=status,
            exit_code=exit_code,
            started_at=datetime(2025, 1, 1, tzinfo=UTC),
            labels=s.labels,
            name=s.container_name,
            node_name=NODE,
        )
        return self.jobs[s.container_name].container_id

    def batch_list(self) -> list[ContainerState]:
        return sorted(self.jobs.values(), key=lambda c: (c.job_id or 0, c.generation))

    def batch_start(self, spec: BatchSpec) -> ContainerState:
        self.calls.append(("batch_start", str(spec.job_id), spec.generation))
        existing = self.jobs.get(spec.container_name)
        if existing is not None:
            self.jobs[spec.container_name] = dataclasses.replace(existing, status="running")
        else:
            self.add_job(spec.job_id, spec.generation)
        return self.jobs[spec.container_name]

    def image_size(self, image: str) -> int:
        if image not in self.images:
            raise ImageMissing(f"image {image!r} is not present on node {NODE}; the agent never pulls")
        return self.images[image]

    def stop_managed(self, container_id: str, timeout_s: int) -> int | None:
        for table in (self.jobs, self.containers):
            for name, c in list(table.items()):
                if c.container_id == container_id:
                    self.stopped.append(container_id)
                    del table[name]
                    return 143 if c.running else c.exit_code
        raise ContainerGone(f"no managed container {container_id} on node {NODE}")


def apply_batch(desired: list[DesiredJob], engine: FakeEngine) -> None:
    for action in batch_reconcile(desired, engine.batch_list()):
        if isinstance(action, StartJob):
            engine.batch_start(action.spec)
        else:
            engine.stop_managed(action.container.container_id, action.timeout_s)


# -- batch_reconcile, table-driven -----------------------------------------------------------

# (desired, containers as (job, generation, status, exit code), expected actions as (kind, job, generation))
CASES = [
    ("missing job container is started", [run(1)], [], [("start", 1, 1)]),
    ("running job needs nothing", [run(1)], [(1, 1, "running", None)], []),
    ("finished job is left down", [run(1)], [(1, 1, "exited", 0)], []),
    ("failed job is not restarted", [run(1)], [(1, 1, "exited", 3)], []),
    ("created container is started", [run(1)], [(1, 1, "created", None)], [("start", 1, 1)]),
    ("preempted job is stopped", [stop(1, 2)], [(1, 1, "running", None)], [("stop", 1, 1)]),
    ("stopped job without container needs nothing", [stop(1, 2)], [], []),
    (
        "old generation stopped before new starts",
        [run(1, 3)],
        [(1, 2, "running", None)],
        [("stop", 1, 2), ("start", 1, 3)],
    ),
    ("job nobody wants is stopped", [], [(7, 1, "exited", 0)], [("stop", 7, 1)]),
    ("container being removed is left to Docker", [], [(7, 1, "removing", None)], []),
]


@pytest.mark.parametrize(("desired", "containers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_batch_reconcile(desired: list[DesiredJob], containers: list[tuple], expected: list[tuple]) -> None:  # type: ignore[type-arg]
    engine = FakeEngine()
    for job_id, generation, status, code in containers:
        engine.add_job(job_id, generation, status, code)
    actions = batch_reconcile(desired, engine.batch_list())
    got = [
        ("start", a.spec.job_id, a.spec.generation)
        if isinstance(a, StartJob)
        else ("stop", a.container.job_id, a.container.generation)
        for a in actions
    ]
    assert got == expected


def test_a_job_desired_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="desired twice"):
        batch_reconcile([run(1), stop(1)], [])
    with pytest.raises(ValueError, match="needs a spec"):
        DesiredJob(1, 1, "running")


JOBS = [1, 2, 3]


@st.composite
def job_scenarios(draw: st.DrawFn) -> tuple[list[DesiredJob], FakeEngine]:
    desired = [
        run(j, g) if draw(st.booleans()) else stop(j, g)
        for j in draw(st.lists(st.sampled_from(JOBS), unique=True))
        for g in [draw(st.integers(1, 3))]
    ]
    engine = FakeEngine()
    for job_id, generation in draw(
        st.lists(st.tuples(st.sampled_from([*JOBS, 9]), st.integers(1, 4)), unique=True, max_size=6)
    ):
        status = draw(st.sampled_from(["running", "created", "exited", "dead", "restarting"]))
        engine.add_job(
            job_id, generation, status, None if status in {"running", "created"} else draw(st.integers(0, 2))
        )
    return desired, engine


@settings(max_examples=300, deadline=None)
@given(job_scenarios())
def test_batch_passes_converge_and_then_stay_empty(scenario: tuple[list[DesiredJob], FakeEngine]) -> None:
    """One pass converges; after it, nothing but desired-running jobs of the desired generation remains."""
    desired, engine = scenario
    apply_batch(desired, engine)
    assert batch_reconcile(desired, engine.batch_list()) == []
    running = {(d.job_id, d.generation) for d in desired if d.state == "running"}
    left = {(c.job_id, c.generation) for c in engine.batch_list()}
    assert left == running


# -- what is reported ------------------------------------------------------------------------


def test_observe_reports_running_finished_failed_stopped_and_refused() -> None:
    engine = FakeEngine()
    running = engine.add_job(1, 1)
    engine.add_job(2, 1, "exited", 0)
    engine.add_job(3, 1, "exited", 137)
    samples = batch_observe(
        [run(1), run(2), run(3), stop(4, 2), run(5), run(6)],
        engine.batch_list(),
        refused={5: "image 'x' is not in this agent's batch image allowlist"},
        stopped_with={(4, 1): 143},
        errors={6: "engine down"},
    )
    assert [(s.job_id, s.state, s.exit_code) for s in samples] == [
        (1, "running", None),
        (2, "finished", 0),
        (3, "failed", 137),
        (4, "stopped", 143),
        (5, "refused", None),
        (6, "starting", None),
    ]
    assert samples[0].container_id == running
    assert "allowlist" in samples[4].error
    assert samples[5].error == "engine down"


def test_a_job_still_stopping_is_reported_running() -> None:
    engine = FakeEngine()
    engine.add_job(1, 1)
    [sample] = batch_observe([stop(1, 2)], engine.batch_list(), refused={}, stopped_with={}, errors={})
    assert (sample.state, sample.generation) == ("running", 2)


# -- reaping ----------------------------------------------------------------------------------


def test_reap_plan_stops_only_named_containers_still_unwanted() -> None:
    engine = FakeEngine()
    orphan = engine.add("9", 1).container_id
    wanted_again = engine.add("4", 1).container_id
    job = engine.add_job(2, 1)
    managed = engine.list_managed() + engine.batch_list()
    plan = reap_plan([orphan, wanted_again, job, "deadbeef", orphan], managed, wanted_instances={"4"}, wanted_jobs={2})
    assert [(type(a), a.container_id) for a in plan] == [
        (Reap, orphan),
        (LeaveAlone, wanted_again),
        (LeaveAlone, job),
        (LeaveAlone, "deadbeef"),
    ]
    assert [a.outcome for a in plan if isinstance(a, LeaveAlone)] == ["skipped", "skipped", "gone"]


# -- the agent applying a reply -------------------------------------------------------------


class NoGpus:
    def read(self) -> HostReading:
        return HostReading(False, "no NVML in this test", 1.8e9, None, None, None, [])


def make_agent(engine: FakeEngine, tmp_path: Path, **config: object) -> Agent:
    settings_ = dict(panel_url="http://127.0.0.1:1", state_dir=tmp_path, node_name=NODE, attach_gpus=True)
    settings_.update(batch_image_allowlist=("batch/*",), **config)
    return Agent(AgentConfig(**settings_), gpus=NoGpus(), runtime=engine, http=httpx.Client())  # type: ignore[arg-type]


def desired_job(job_id: int, generation: int = 1, state: str = "running", **fields: object) -> protocol.DesiredBatchJob:
    body: dict[str, object] = dict(
        job_id=job_id,
        generation=generation,
        state=state,
        image=IMAGE,
        command=["clean"],
        memory_bytes=2**30,
        gpu_uuids=["GPU-1"],
    )
    body.update(fields)
    return protocol.DesiredBatchJob.model_validate(body)


def observed(agent: Agent) -> list[tuple[int, str]]:
    """The jobs as the agent's next report states them."""
    return [(s.job_id, s.state) for s in agent.sense().batch_jobs]


@pytest.mark.parametrize(
    ("fields", "images", "agent_limit_mb", "why"),
    [
        ({"image": "evil/miner:1"}, None, 200, "not in this agent's batch image allowlist"),
        ({}, {IMAGE: 250 * MB}, 200, "250.0 MB, over the 200 MB limit"),
        ({"max_image_bytes": 4 * MB}, None, 200, "5.0 MB, over the 4 MB limit"),
        ({}, {IMAGE: 5 * MB}, 4, "5.0 MB, over the 4 MB limit"),
        ({}, {}, 200, "never pulls"),
    ],
    ids=["not allowlisted", "over the agent limit", "over the policy limit", "over a tighter agent limit", "missing"],
)
def test_a_job_the_agent_will_not_run_is_refused_with_the_reason(
    fields: dict[str, object], images: dict[str, int] | None, agent_limit_mb: int, why: str, tmp_path: Path
) -> None:
    engine = FakeEngine(images)
    agent = make_agent(engine, tmp_path, batch_max_image_mb=agent_limit_mb)
    agent.act_batch([desired_job(1, **fields)])
    assert engine.jobs == {}
    assert [c for c in engine.calls if c[0] == "batch_start"] == []
    [sample] = agent.sense().batch_jobs
    assert (sample.job_id, sample.state) == (1, "refused")
    assert why in sample.error


def test_the_agent_starts_with_the_gpu_and_limits_preempts_and_reports_the_exit_code(tmp_path: Path) -> None:
    engine = FakeEngine()
    agent = make_agent(engine, tmp_path, batch_host_memory_bytes=2 * 2**30)
    agent.act_batch([desired_job(1)])
    assert observed(agent) == [(1, "running")]
    [started] = engine.batch_list()
    assert started.name == f"gpufleet-{NODE}-batch-1-g1"

    agent.act_batch([desired_job(1, 2, "stopped")])
    assert engine.batch_list() == []
    [sample] = agent.sense().batch_jobs
    assert (sample.state, sample.exit_code, sample.generation) == ("stopped", 143, 2)


def test_batch_create_kwargs_carry_the_gpu_the_memory_limit_and_the_budget() -> None:
    kwargs = batch_create_kwargs(
        BatchSpec(
            job_id=3,
            generation=2,
            image=IMAGE,
            node_name=NODE,
            command=["clean", "--all"],
            gpu_uuids=["GPU-1"],
            gpu_memory_bytes=2**30,
            host_memory_bytes=2**31,
        )
    )
    assert kwargs["name"] == f"gpufleet-{NODE}-batch-3-g2"
    assert kwargs["device_requests"][0]["DeviceIDs"] == ["GPU-1"]
    assert (kwargs["mem_limit"], kwargs["memswap_limit"]) == (2**31, 2**31)
    assert kwargs["environment"] == {GPU_MEMORY_ENV: str(2**30)}
    assert kwargs["labels"]["gpufleet.batch-job"] == "3"
    assert "gpufleet.instance" not in kwargs["labels"]


def test_the_agent_reaps_each_named_orphan_once_and_leaves_the_rest(tmp_path: Path) -> None:
    engine = FakeEngine()
    orphan = engine.add("9", 1).container_id
    unnamed = engine.add("8", 1).container_id
    agent = make_agent(engine, tmp_path)
    agent.act_reap([orphan, "gone-id"], wanted_instances=set())
    assert engine.stopped == [orphan]
    assert [(r.container_id, r.outcome) for r in agent._reaped] == [(orphan, "stopped"), ("gone-id", "gone")]
    assert [c.container_id for c in engine.list_managed()] == [unnamed]
    agent._reaped.clear()
    agent.act_reap([orphan, "gone-id"], wanted_instances=set())
    assert agent._reaped == []
    assert engine.stopped == [orphan]


def test_an_orphan_wanted_again_is_not_reaped(tmp_path: Path) -> None:
    engine = FakeEngine()
    container = engine.add("4", 1).container_id
    assert managed_labels(spec("4"))["gpufleet.instance"] == "4"
    agent = make_agent(engine, tmp_path)
    agent.act_reap([container], wanted_instances={"4"})
    assert engine.stopped == []
    assert [(r.outcome, r.container_id) for r in agent._reaped] == [("skipped", container)]


def test_a_container_of_an_instance_not_placed_here_is_reported_as_an_orphan_only(tmp_path: Path) -> None:
    """The panel refuses samples of instances it did not place on the node; one would block every report."""
    engine = FakeEngine()
    orphan = engine.add("999", 1).container_id
    engine.add_job(5, 1, "exited", 0)
    agent = make_agent(engine, tmp_path)
    report = agent.sense()
    assert report.instances == []
    assert [(c.container_id, c.managed, c.instance_id) for c in report.containers] == [(orphan, True, 999)]


def test_reports_carry_job_states_and_reap_outcomes_once(tmp_path: Path) -> None:
    engine = FakeEngine()
    orphan = engine.add("9", 1).container_id
    agent = make_agent(engine, tmp_path)
    agent.act_batch([desired_job(1)])
    agent.act_reap([orphan], wanted_instances=set())
    report = agent.sense()
    assert [(j.job_id, j.state) for j in report.batch_jobs] == [(1, "running")]
    assert [(r.container_id, r.outcome) for r in report.reaped] == [(orphan, "stopped")]
    assert agent.sense().reaped == []


def test_an_engine_that_cannot_answer_leaves_job_containers_alone(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.add_job(1, 1)
    agent = make_agent(engine, tmp_path)

    def unwell(image: str) -> int:
        raise RuntimeFailure("inspecting image: engine unreachable")

    engine.image_size = unwell  # type: ignore[method-assign]
    agent.act_batch([desired_job(1, 2)])
    assert [(c.job_id, c.generation, c.status) for c in engine.batch_list()] == [(1, 1, "running")]
