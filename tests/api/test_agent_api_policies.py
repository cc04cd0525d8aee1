"""What ingest records for the policies, and what the reply carries back for them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.utils import timezone

from agents import protocol
from fleet.models import BatchJob, Gpu, Instance, OrphanContainer
from fleet.services import orphan_stop_request
from tests.api.test_agent_api import Agent, agent, batch, instance_sample, report
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
