"""Co-location and reaping end to end: the panel's policies decide, the agent acts on real Docker.

A batch job is placed by the co-location policy on an idle GPU and runs as a container; the
agent restarts onto a GPU under load (replayed H100 readings), adopts the running job, and
the policy preempts it: the agent stops it, the panel requeues it. Back on an idle GPU it
runs again, as a new generation, and finishes. Separately, a container nobody wants is
reported, stopped once the reaper's grace has passed, and containers the reaper did not
name are left running.

Real here: the panel (live server), the agent process, the Docker engine, the containers
(busybox), the policy functions and services. Replayed: the GPU readings.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from fleet.decide.evaluate import policies_evaluate
from fleet.models import BatchJob, Decision, Gpu, GpuSample, JoinToken, Node, OrphanContainer, Policy
from fleet.telemetry.ingest import batch_jobs_for
from tests.integration.test_agent_vllm_docker import AgentProcess, wait_for
from tests.support.docker_engine import TEST_LABEL, free_port
from tests.support.vllm_container import remove_node_containers

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

IDLE, LOAD = "*-idle-*.json", "*-load-*.json"
BATCH_IMAGES = ["--allow-batch-image", "gpufleet-test/*"]


@pytest.fixture
def node_name(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    yield name
    remove_node_containers(docker_client, name)


@pytest.fixture
def agent(live_server: Any, node_name: str, tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(live_server.url, tmp_path / "state", node_name, tmp_path / "agent.log")
    yield process
    process.stop()


def register(agent: AgentProcess, nvml: str) -> Gpu:
    token = JoinToken(name=agent.name, max_uses=1)
    secret = token.issue_token()
    token.save()
    agent.start(join_token=secret, nvml=nvml, extra=BATCH_IMAGES)
    return wait_for(
        "the node's first report", lambda: Gpu.objects.filter(node__name=agent.name).first(), 60, agent.log_tail
    )


def policy(kind: str, **settings: Any) -> None:
    """Enable the fleet-wide policy of ``kind`` (the migrations seed one per kind) with ``settings``."""
    row, _ = Policy.objects.get_or_create(kind=kind, pool=None)
    row.settings, row.enabled = settings, True
    row.full_clean()
    row.save()


def job_containers(client: docker.DockerClient, node: str, job: BatchJob) -> list[Any]:
    filters = {"label": [f"gpufleet.node={node}", f"gpufleet.batch-job={job.pk}"]}
    return client.containers.list(all=True, filters=filters)


def evaluate_until(what: str, kind: str, action: str, agent: AgentProcess) -> Decision:
    """Evaluate the policy until it applies ``action``: samples of a new recording take a report or two to land."""

    def applied() -> Decision | None:
        return next((d for d in policies_evaluate(kinds=[kind]).applied if d.action == action), None)

    return wait_for(what, applied, 60, agent.log_tail)


class DoneSignal:
    """A loopback HTTP server whose mere presence tells the test job to finish (exit 0)."""

    def __init__(self, port: int) -> None:
        class Ok(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Ok)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_colocated_job_is_preempted_when_load_rises_requeued_and_finishes_later(
    docker_client: docker.DockerClient, test_image: str, node_name: str, agent: AgentProcess
) -> None:
    gpu = register(agent, IDLE)
    policy("colocate")
    done_port = free_port()
    job = BatchJob.objects.create(
        name="clean-text",
        image=test_image,
        # Runs until the test's signal server answers: the job's length is the test's to choose.
        command=["sh", "-c", f"until wget -q -O /dev/null http://127.0.0.1:{done_port}/; do sleep 0.2; done"],
        memory_bytes=2 * 1024**3,
    )

    decision = evaluate_until("the co-location policy to place the job", "colocate", "colocate", agent)
    assert "duty cycle 0% < 30%" in decision.reason
    job.refresh_from_db()
    assert (job.state, job.gpu_id) == ("running", gpu.pk)

    def job_running() -> bool:
        job.refresh_from_db()
        return job.actual_state == "running"

    wait_for("the job's container to run", job_running, 60, agent.log_tail)
    [container] = job_containers(docker_client, node_name, job)
    assert container.status == "running"
    assert container.name == f"gpufleet-{node_name}-batch-{job.pk}-g{job.generation}"
    assert container.attrs["HostConfig"]["Memory"] > 0
    assert f"GPUFLEET_GPU_MEMORY_BYTES={2 * 1024**3}" in container.attrs["Config"]["Env"]

    # The agent restarts onto a GPU under inference load: it adopts the job, it does not rerun it.
    agent.stop()
    agent.start(nvml=LOAD, extra=BATCH_IMAGES)
    wait_for(
        "the restarted agent's first report under load",
        lambda: GpuSample.objects.filter(gpu=gpu, utilization_gpu_pct__gte=30).exists(),
        60,
        agent.log_tail,
    )
    [adopted] = job_containers(docker_client, node_name, job)
    assert (adopted.id, adopted.status) == (container.id, "running"), "the job was adopted, not started again"
    decision = evaluate_until("the policy to preempt the job under load", "colocate", "preempt", agent)
    assert "inference load rose" in decision.reason
    job.refresh_from_db()
    assert (job.state, job.preemptions) == ("preempted", 1)

    def stopped() -> bool:
        job.refresh_from_db()
        return job.actual_state == "stopped" and not job_containers(docker_client, node_name, job)

    wait_for("the agent to stop the preempted job", stopped, 60, agent.log_tail)
    assert job.exit_code == 143, "SIGTERM ends the job gracefully within the stop timeout"
    assert batch_jobs_for(Node.objects.get(name=node_name)) == []
    assert BatchJob.objects.get(pk=job.pk).state == "preempted", "requeued, waiting for a GPU"

    # Idle again: the requeued job starts as a new generation and, once signalled, finishes.
    signal = DoneSignal(done_port)
    try:
        agent.stop()
        agent.start(nvml=IDLE, extra=BATCH_IMAGES)
        generation = job.generation
        evaluate_until("the requeued job to be placed again", "colocate", "colocate", agent)

        def finished() -> bool:
            job.refresh_from_db()
            return job.state == "done"

        wait_for("the job to finish", finished, 60, agent.log_tail)
    finally:
        signal.close()
    assert (job.exit_code, job.actual_state) == (0, "finished")
    assert job.generation > generation
    wait_for(
        "the agent to remove the finished job's container",
        lambda: not job_containers(docker_client, node_name, job),
        30,
        agent.log_tail,
    )
    assert list(Decision.objects.filter(batch_job=job).values_list("action", flat=True).order_by("pk")) == [
        "colocate",
        "preempt",
        "colocate",
    ]


def test_an_unwanted_container_is_reaped_after_its_grace_and_nothing_else_is_touched(
    docker_client: docker.DockerClient,
    test_image: str,
    node_name: str,
    agent: AgentProcess,
    docker_test_labels: dict[str, str],
) -> None:
    register(agent, IDLE)
    policy("reap", orphan_grace_s=5)

    def run(name: str, labels: dict[str, str]) -> Any:
        return docker_client.containers.run(
            test_image,
            ["sh", "-c", "while true; do sleep 1; done"],
            name=f"{node_name}-{name}",
            labels={**docker_test_labels, **labels},
            network_mode="host",
            init=True,
            detach=True,
        )

    managed = {"gpufleet.managed": "true", "gpufleet.node": node_name, "gpufleet.generation": "1"}
    # Unmanaged: the agent neither reports nor touches it; cleaned up by its test label.
    foreign = run("foreign", {TEST_LABEL: docker_test_labels[TEST_LABEL]})
    try:
        orphan = run("orphan", {**managed, "gpufleet.instance": "999001"})

        def recorded(container_id: str) -> Any:
            return lambda: OrphanContainer.objects.filter(container_id=container_id).first()

        row = wait_for("the orphan to be reported", recorded(orphan.id), 60, agent.log_tail)
        assert row.instance_id == 999001
        within_grace = policies_evaluate(kinds=["reap"], now=row.first_seen_at + timedelta(seconds=2))
        assert within_grace.applied == []
        decision = evaluate_until("the reaper to ask for the orphan", "reap", "reap", agent)
        assert orphan.name in decision.reason

        # Unwanted too, but seen after the reaper decided: nobody names it, so it keeps running.
        unnamed = run("unnamed", {**managed, "gpufleet.instance": "999002"})
        wait_for("the second orphan to be reported", recorded(unnamed.id), 60, agent.log_tail)

        def reaped() -> OrphanContainer | None:
            row = OrphanContainer.objects.get(container_id=orphan.id)
            return row if row.stopped_at is not None else None

        row = wait_for("the agent to stop the orphan", reaped, 60, agent.log_tail)
        assert row.stop_outcome.startswith("stopped")
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(orphan.id)
        for survivor in (unnamed, foreign):
            survivor.reload()
            assert survivor.status == "running", survivor.name
        assert OrphanContainer.objects.get(container_id=unnamed.id).stop_requested_at is None
    finally:
        foreign.remove(force=True)
