"""End to end on real parts: the panel tells the agent to run an instance; the agent starts a
Docker container running a real vLLM server, waits for health, reports its real metrics, and
stops it when told. The agent is killed mid-way and restarted: no duplicate container."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import openai
import pytest

from fleet.decide.services import instance_desire
from fleet.models import Gpu, Instance, InstanceSample, JoinToken, ModelProfile, Node
from tests.factories import make_instance, make_pool
from tests.support.vllm_container import IMAGE, SERVED_NAME, host_allows, remove_node_containers

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")


class AgentProcess:
    def __init__(self, panel: str, state_dir: Path, name: str, log_path: Path) -> None:
        self.panel, self.state_dir, self.name, self.log_path = panel, state_dir, name, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, join_token: str | None = None, nvml: str = "*-load-*.json", extra: Sequence[str] = ()) -> None:
        command = [
            sys.executable,
            "-m",
            "tests.support.agent_process",
            "--panel",
            self.panel,
            "--state-dir",
            str(self.state_dir),
            "--name",
            self.name,
            "--allow-image",
            "gpufleet-test/*",
            "--nvml",
            nvml,
            *extra,
        ]
        if join_token:
            command += ["--join-token", join_token]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return "--- agent log ---\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def node_name(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"it-{uuid.uuid4().hex[:8]}"
    yield name
    remove_node_containers(docker_client, name)


def containers_of(client: docker.DockerClient, node: str, instance: Instance) -> list[Any]:
    filters = {"label": [f"gpufleet.node={node}", f"gpufleet.instance={instance.pk}"]}
    return client.containers.list(all=True, filters=filters)


def test_agent_runs_a_real_vllm_container_reports_its_metrics_and_stops_it(
    live_server: Any,
    docker_client: docker.DockerClient,
    vllm_container_profile: dict[str, Any],
    node_name: str,
    tmp_path: Path,
) -> None:
    token = JoinToken(name="it", max_uses=1)
    secret = token.issue_token()
    token.save()
    agent = AgentProcess(live_server.url, tmp_path / "state", node_name, tmp_path / "agent.log")
    agent.start(join_token=secret, extra=host_allows(vllm_container_profile))
    try:
        gpu = wait_for(
            "the node's first report", lambda: Gpu.objects.filter(node__name=node_name).first(), 60, agent.log_tail
        )
        profile = ModelProfile.objects.create(name="tiny-qwen3-cpu", **vllm_container_profile)
        instance = make_instance(make_pool("it-chat", model_profile=profile), gpu)

        wait_for(
            "the container to be created", lambda: containers_of(docker_client, node_name, instance), 60, agent.log_tail
        )
        agent.kill()  # mid-start: the container is up, the server not yet ready
        agent.start(extra=host_allows(vllm_container_profile))  # the node token is kept: no join token needed

        def ready() -> Instance | None:
            instance.refresh_from_db()
            return instance if instance.actual_state == "ready" else None

        wait_for("the instance to turn ready", ready, 300, agent.log_tail)
        found = containers_of(docker_client, node_name, instance)
        assert len(found) == 1, f"duplicate containers after the agent restart: {[c.name for c in found]}"
        container = found[0]
        assert container.image.tags == [IMAGE]
        assert container.labels["gpufleet.generation"] == "1"
        assert instance.endpoint.startswith("http://127.0.0.1:")

        client = openai.OpenAI(base_url=f"{instance.endpoint}/v1", api_key="unused", max_retries=0)
        for _ in range(3):
            reply = client.chat.completions.create(
                model=SERVED_NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0

        def metrics_arrived() -> InstanceSample | None:
            return (
                InstanceSample.objects.filter(instance=instance, request_rate__gt=0, e2e_histogram__isnull=False)
                .order_by("-at")
                .first()
            )

        sample = wait_for("the requests to show in the reported metrics", metrics_arrived, 60, agent.log_tail)
        assert sample.e2e_histogram["count"] >= 1
        assert sample.state == "ready"

        instance_desire(instance=instance, state="stopped", reason="test: stop", action="stop", kind="manual")

        def stopped() -> bool:
            instance.refresh_from_db()
            return instance.actual_state == "stopped" and not containers_of(docker_client, node_name, instance)

        wait_for("the container to be stopped and removed", stopped, 90, agent.log_tail)
        assert Node.objects.get(name=node_name).status == "online"
    finally:
        agent.stop()
