"""What ingest records for the policies, and what the reply carries back for them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.utils import timezone

from agents import protocol
from fleet.decide.services import batch_job_preempt, batch_job_start, orphan_stop_request
from fleet.models import BatchJob, Gpu, Instance, OrphanContainer, Policy
from tests.api.test_agent_api import Agent, agent, batch, gpu_reading, instance_sample, report
from tests.factories import GIB, make_instance, make_pool

__all__ = ["agent"]

pytestmark = pytest.mark.django_db


def test_last_request_at_is_the_newest_sample_with_requests(agent: Agent) -> None:
    agent.post(batch("gpu-a", report(1)))
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))
    reports = [
        report(2, instances=[instance_sample(instance, request_rate=1.5)]),
        report(3, instances=[instance_sample(instance, request_rate=0.0)]),
    ]
    assert agent.post(batch("gpu-a", *reports)).status_code == 200
    instance.refresh_from_db()
    assert instance.last_request_at == datetime.fromtimestamp(reports[0]["sampled_at"], tz=UTC)
    agent.post(batch("gpu-a", report(4, instances=[instance_sample(instance, request_rate=0.0)])))
    assert Instance.objects.get(pk=instance.pk).last_request_at == instance.last_request_at


def _with_containers(seq: int, *containers: dict) -> dict:  # type: ignore[type-arg]
    body = batch("gpu-a", report(seq))
    body["reports"][0]["containers"] = list(containers)
    return body


ORPHAN = {"container_id": "0rph", "name": "gpufleet-77-g1", "managed": True, "instance_id": 77}
FOREIGN = {"container_id": "f00", "name": "notebook", "gpu_uuids": ["GPU-x"]}


def test_orphans_are_recorded_once_with_when_they_were_first_seen(agent: Agent) -> None:
    agent.post(_with_containers(1, ORPHAN, FOREIGN))
    first = OrphanContainer.objects.get()
    agent.post(_with_containers(2, ORPHAN))
    again = OrphanContainer.objects.get()
    assert (again.pk, again.first_seen_at, again.instance_id) == (first.pk, first.first_seen_at, 77)
    assert again.last_seen_at > first.last_seen_at
    agent.post(_with_containers(3))
    assert not OrphanContainer.objects.exists()


def test_the_reply_asks_to_stop_reaped_orphans_and_run_batch_jobs(agent: Agent) -> None:
    agent.post(_with_containers(1, ORPHAN))
    gpu = Gpu.objects.get(node=agent.node)
    orphan_stop_request(orphan=OrphanContainer.objects.get(), reason="unwanted", kind="reap")
    job = BatchJob.objects.create(name="clean", image="cleaner:1", command=["run"], memory_bytes=GIB, gpu=gpu)
    BatchJob.objects.filter(pk=job.pk).update(state="running")
    reply = protocol.Reply.model_validate(agent.post(_with_containers(2, ORPHAN)).json())
    assert reply.stop_containers == ["0rph"]
    assert [(j.job_id, j.state, j.gpu_uuids, j.command) for j in reply.batch_jobs] == [
        (job.pk, "running", [gpu.uuid], ["run"])
    ]


def test_replies_without_batch_jobs_or_orphans_keep_the_first_shape(agent: Agent) -> None:
    """Agents released before these fields parse replies strictly: they must not see new keys."""
    body = agent.post(batch("gpu-a", report(1))).json()
    assert set(body) == {"ack_seq", "desired", "report_interval_s"}


def test_a_reply_with_new_fields_still_validates_for_current_agents(agent: Agent) -> None:
    agent.post(_with_containers(1, ORPHAN))
    OrphanContainer.objects.update(stop_requested_at=timezone.now())
    body = agent.post(_with_containers(2, ORPHAN)).json()
    assert protocol.Reply.model_validate(body).stop_containers == ["0rph"]


def _with_jobs(seq: int, *samples: dict, reaped: list[dict] | None = None) -> dict:  # type: ignore[type-arg]
    body = batch("gpu-a", report(seq))
    body["reports"][0]["batch_jobs"] = list(samples)
    body["reports"][0]["reaped"] = reaped or []
    return body


def _running_job(agent: Agent) -> BatchJob:
    agent.post(batch("gpu-a", report(1)))
    job = BatchJob.objects.create(name="clean", image="cleaner:1", command=["run"], memory_bytes=GIB)
    batch_job_start(job=job, gpu=Gpu.objects.get(node=agent.node), reason="room", kind="colocate")
    job.refresh_from_db()
    return job


def _jobs_in_reply(response: Any) -> list[tuple[int, str]]:
    return [(j.job_id, j.state) for j in protocol.Reply.model_validate(response.json()).batch_jobs]


@pytest.mark.parametrize(
    ("sample", "state", "exit_code", "error"),
    [
        ({"state": "finished", "exit_code": 0}, "done", 0, ""),
        ({"state": "failed", "exit_code": 3, "error": "boom"}, "failed", 3, "boom"),
        (
            {"state": "refused", "error": "image 'cleaner:1' is not in this agent's batch image allowlist"},
            "failed",
            None,
            "allowlist",
        ),
    ],
    ids=["finished", "failed", "refused"],
)
def test_a_job_whose_container_ended_is_done_or_failed_and_leaves_the_reply(
    agent: Agent,
    sample: dict,
    state: str,
    exit_code: int | None,
    error: str,  # type: ignore[type-arg]
) -> None:
    job = _running_job(agent)
    running = {"job_id": job.pk, "generation": job.generation, "state": "running", "container_id": "c1"}
    assert _jobs_in_reply(agent.post(_with_jobs(2, running))) == [(job.pk, "running")]
    assert BatchJob.objects.get(pk=job.pk).actual_state == "running"
    response = agent.post(_with_jobs(3, {"job_id": job.pk, "generation": job.generation, **sample}))
    ended = BatchJob.objects.get(pk=job.pk)
    assert (ended.state, ended.exit_code, ended.generation) == (state, exit_code, job.generation + 1)
    assert error in ended.last_error and ended.finished_at is not None
    assert _jobs_in_reply(response) == []


def test_a_report_of_another_generation_or_another_nodes_job_changes_nothing(agent: Agent, client: Any) -> None:
    job = _running_job(agent)
    agent.post(_with_jobs(2, {"job_id": job.pk, "generation": job.generation - 1, "state": "finished", "exit_code": 0}))
    other = Agent(client, "gpu-b")
    other.post(batch("gpu-b", report(1, [gpu_reading(uuid="GPU-bbbb-0")])))
    other.post(
        {
            **_with_jobs(2, {"job_id": job.pk, "generation": job.generation, "state": "failed", "exit_code": 1}),
            "node": "gpu-b",
        }
    )
    assert BatchJob.objects.get(pk=job.pk).state == "running"


def test_a_preempted_job_reported_stopped_leaves_the_reply_and_a_restart_clears_its_result(agent: Agent) -> None:
    job = _running_job(agent)
    batch_job_preempt(job=job, reason="load", kind="colocate")
    job.refresh_from_db()
    stopped = {"job_id": job.pk, "generation": job.generation, "state": "stopped", "exit_code": 143}
    assert _jobs_in_reply(agent.post(_with_jobs(2))) == [(job.pk, "stopped")]
    assert _jobs_in_reply(agent.post(_with_jobs(3, stopped))) == []
    job.refresh_from_db()
    assert (job.state, job.actual_state, job.exit_code) == ("preempted", "stopped", 143)
    batch_job_start(job=job, gpu=Gpu.objects.get(node=agent.node), reason="room again", kind="colocate")
    job.refresh_from_db()
    assert (job.actual_state, job.exit_code) == ("", None)
    assert _jobs_in_reply(agent.post(_with_jobs(4))) == [(job.pk, "running")]


def test_the_reply_carries_the_colocation_policys_image_bound(agent: Agent) -> None:
    job = _running_job(agent)
    Policy.objects.update_or_create(kind="colocate", pool=None, defaults={"settings": {"max_image_mb": 50}})
    [desired] = protocol.Reply.model_validate(agent.post(_with_jobs(2)).json()).batch_jobs
    assert (desired.job_id, desired.max_image_bytes) == (job.pk, 50_000_000)


def test_a_reaped_orphan_keeps_its_row_as_the_record_and_leaves_the_reply(agent: Agent) -> None:
    agent.post(_with_containers(1, ORPHAN))
    orphan_stop_request(orphan=OrphanContainer.objects.get(), reason="unwanted", kind="reap")
    failed = {"container_id": "0rph", "outcome": "failed", "detail": "engine busy"}
    still_there = _with_jobs(2, reaped=[failed])
    still_there["reports"][0]["containers"] = [ORPHAN]
    reply = protocol.Reply.model_validate(agent.post(still_there).json())
    assert reply.stop_containers == ["0rph"]
    assert OrphanContainer.objects.get().stop_outcome == "failed: engine busy"
    done = {"container_id": "0rph", "outcome": "stopped", "exit_code": 143, "detail": "stopped"}
    reply = protocol.Reply.model_validate(agent.post(_with_jobs(3, reaped=[done])).json())
    assert reply.stop_containers == []
    row = OrphanContainer.objects.get()
    assert row.stopped_at is not None and row.stop_outcome.startswith("stopped")
