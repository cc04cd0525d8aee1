"""Level-triggered reconciliation of co-located batch jobs, and the reaping of orphans.

Like ``agents.reconcile``, every decision here is a pure function of what the panel
wants and what the engine shows, so the agent can call it on every tick and after a
restart. Batch jobs differ from instances in three ways. A job that exits stays down:
its exit code is the result (finished or failed), and only the panel may run it again,
as a new generation. A job container nobody asks for is stopped, not just reported:
batch work is preemptible by design and the panel requeues it, so stopping it can cost
time but never an outage. And orphans are stopped only when the panel names them, by
container id, and only while they are still the same unwanted container.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agents import protocol
from agents.runtime import BatchSpec, ContainerGone, ContainerState

DEFAULT_BATCH_STOP_TIMEOUT_S = 10


@dataclass(frozen=True)
class DesiredJob:
    """What the panel wants for one batch job on this node; ``spec`` is needed to run it."""

    job_id: int
    generation: int
    state: Literal["running", "stopped"]
    spec: BatchSpec | None = None

    def __post_init__(self) -> None:
        if self.state == "running" and self.spec is None:
            raise ValueError(f"batch job {self.job_id}: desired running needs a spec")
        if self.spec is not None and (self.spec.job_id, self.spec.generation) != (self.job_id, self.generation):
            raise ValueError(f"batch job {self.job_id}: spec is for job {self.spec.job_id} g{self.spec.generation}")


@dataclass(frozen=True)
class StartJob:
    spec: BatchSpec
    reason: str


@dataclass(frozen=True)
class StopJob:
    """Stop gracefully (SIGTERM, then SIGKILL after ``timeout_s``) and remove one job container."""

    container: ContainerState
    reason: str
    timeout_s: int = DEFAULT_BATCH_STOP_TIMEOUT_S


@dataclass(frozen=True)
class Reap:
    """Stop and remove an orphan the panel named; still unwanted when this was decided."""

    container_id: str
    reason: str
    timeout_s: int = DEFAULT_BATCH_STOP_TIMEOUT_S


@dataclass(frozen=True)
class LeaveAlone:
    """A named orphan the agent does not touch, and why: it is gone, or wanted again."""

    container_id: str
    outcome: Literal["gone", "skipped"]
    reason: str


BatchAction = StartJob | StopJob
ReapAction = Reap | LeaveAlone


def _container_label(c: ContainerState) -> str:
    return f"container {c.name or c.container_id[:12]} (job {c.job_id}, generation {c.generation}, {c.status})"


def batch_reconcile(
    desired: Iterable[DesiredJob],
    actual: Iterable[ContainerState],
    *,
    stop_timeout_s: int = DEFAULT_BATCH_STOP_TIMEOUT_S,
) -> list[BatchAction]:
    """The actions that move the node's job containers toward ``desired``: stops first, then starts.

    ``actual`` is ``DockerRuntime.batch_list()``. A container of the desired generation
    that has exited is left as it is (its exit code is reported); one of any other
    generation, or of a job not desired, is stopped and removed.
    """
    wanted: dict[int, DesiredJob] = {}
    for job in desired:
        if job.job_id in wanted:
            raise ValueError(f"batch job {job.job_id} is desired twice")
        wanted[job.job_id] = job
    stops: list[BatchAction] = []
    current: dict[int, list[ContainerState]] = {}
    for c in sorted(actual, key=lambda c: (c.job_id or 0, c.generation, c.container_id)):
        want = wanted.get(c.job_id) if c.job_id is not None else None
        if want is None:
            why = "no desired batch job"
        elif want.state == "stopped":
            why = f"batch job {want.job_id} desired stopped (generation {want.generation})"
        elif c.generation != want.generation:
            why = f"generation {c.generation} differs from desired generation {want.generation}"
        else:
            current.setdefault(want.job_id, []).append(c)
            continue
        if c.status == "removing":
            continue
        stops.append(StopJob(c, f"{_container_label(c)}: {why}", stop_timeout_s))
    starts: list[BatchAction] = []
    for job_id in sorted(wanted):
        want = wanted[job_id]
        if want.state != "running" or want.spec is None:
            continue
        containers = current.get(job_id, [])
        if not containers:
            starts.append(StartJob(want.spec, f"desired running; no container for generation {want.generation}"))
        elif all(c.status == "created" for c in containers):
            starts.append(StartJob(want.spec, "container was created but never started"))
    return stops + starts


def reap_plan(
    requested: Iterable[str],
    managed: Iterable[ContainerState],
    *,
    wanted_instances: Collection[str],
    wanted_jobs: Collection[int],
    stop_timeout_s: int = DEFAULT_BATCH_STOP_TIMEOUT_S,
) -> list[ReapAction]:
    """Which of the containers the panel named to stop are still this node's unwanted containers.

    ``managed`` is every container labelled for this node (instances and batch jobs). A
    named id that matches none of them exactly is ``gone`` (or never was ours, which the
    agent treats the same: it touches nothing else). One that a desired instance or a
    running batch job owns again is ``skipped``. The rest are reaped.
    """
    by_id = {c.container_id: c for c in managed}
    plan: list[ReapAction] = []
    for container_id in dict.fromkeys(requested):
        c = by_id.get(container_id)
        if c is None:
            plan.append(LeaveAlone(container_id, "gone", "no managed container of this node has this id"))
        elif c.job_id is not None and c.job_id in wanted_jobs:
            plan.append(LeaveAlone(container_id, "skipped", f"batch job {c.job_id} is desired again; left running"))
        elif c.job_id is None and c.instance_id in wanted_instances:
            plan.append(LeaveAlone(container_id, "skipped", f"instance {c.instance_id} is desired again; left running"))
        else:
            plan.append(
                Reap(
                    container_id,
                    f"{c.name or container_id[:12]} ({c.status}) unwanted; the panel asked to stop it",
                    stop_timeout_s,
                )
            )
    return plan


def batch_observe(
    desired: Iterable[DesiredJob],
    actual: Iterable[ContainerState],
    *,
    refused: Mapping[int, str],
    stopped_with: Mapping[tuple[int, int], int | None],
    errors: Mapping[int, str],
) -> list[protocol.BatchJobSample]:
    """What to report of each desired job: its container's state, or its refusal, or that it is stopped.

    ``refused`` holds, per job, why the agent will not run it; ``stopped_with`` the exit
    code of each (job, generation) container the agent stopped, so a preempted job's
    report says how it ended even though its container is gone; ``errors`` why a start
    failed, for a job that has no container yet.
    """
    containers: dict[int, list[ContainerState]] = {}
    for c in actual:
        if c.job_id is not None:
            containers.setdefault(c.job_id, []).append(c)
    samples = []
    for want in sorted(desired, key=lambda w: w.job_id):
        common: dict[str, Any] = {"job_id": want.job_id, "generation": want.generation}
        mine = containers.get(want.job_id, [])
        if want.job_id in refused:
            samples.append(protocol.BatchJobSample(state="refused", error=refused[want.job_id][:2000], **common))
        elif want.state == "stopped":
            live = [c for c in mine if c.running]
            codes = {gen: code for (job, gen), code in stopped_with.items() if job == want.job_id}
            samples.append(
                protocol.BatchJobSample(state="running", container_id=live[0].container_id[:80], **common)
                if live
                else protocol.BatchJobSample(state="stopped", exit_code=codes[max(codes)] if codes else None, **common)
            )
        else:
            current = [c for c in mine if c.generation == want.generation]
            samples.append(
                _running_sample(max(current, key=lambda c: c.running), common)
                if current
                else protocol.BatchJobSample(state="starting", error=errors.get(want.job_id, "")[:2000], **common)
            )
    return samples


def _running_sample(c: ContainerState, common: dict[str, Any]) -> protocol.BatchJobSample:
    """A desired-running job's container: running, or exited with its result, or on its way."""
    state: protocol.BatchJobState
    if c.running:
        state, error = "running", ""
    elif c.status in {"exited", "dead"} and c.exit_code is not None:
        state = "finished" if c.exit_code == 0 and not c.oom_killed else "failed"
        error = "killed for running out of memory" if c.oom_killed else c.error
    else:
        state, error = "starting", c.error
    return protocol.BatchJobSample(
        state=state, container_id=c.container_id[:80], exit_code=c.exit_code, error=error[:2000], **common
    )


def reap_result(
    action: ReapAction, *, exit_code: int | None = None, error: Exception | None = None
) -> protocol.ReapResult:
    """The report line for one reap decision and what came of it."""
    if isinstance(action, LeaveAlone):
        return protocol.ReapResult(container_id=action.container_id, outcome=action.outcome, detail=action.reason)
    if isinstance(error, ContainerGone):
        return protocol.ReapResult(container_id=action.container_id, outcome="gone", detail=str(error)[:2000])
    if error is not None:
        return protocol.ReapResult(container_id=action.container_id, outcome="failed", detail=str(error)[:2000])
    return protocol.ReapResult(
        container_id=action.container_id, outcome="stopped", exit_code=exit_code, detail=action.reason[:2000]
    )
