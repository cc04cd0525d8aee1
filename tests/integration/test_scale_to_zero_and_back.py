"""The method's loop on real parts: an idle pool is stopped by a policy evaluated on a real
Celery worker (Redis broker), through the agent and Docker; traffic then returns through the
gateway, which holds it, wakes the pool, and sends it once the agent's new vLLM is ready.

Real here: PostgreSQL, Redis, a Celery worker process, the agent process, Docker, the vLLM
server in its container, the gateway under uvicorn, the openai client. Replayed: the GPU
readings (idle H100 recordings; this machine has no GPU).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import openai
import pytest
from celery import Celery
from django.utils import timezone

from fleet.decide.services import api_key_create
from fleet.models import (
    Decision,
    Gpu,
    Instance,
    JoinToken,
    ModelProfile,
    RequestLog,
    Team,
)
from tests.factories import make_instance, make_pool
from tests.gateway.conftest import LiveGateway
from tests.integration.test_agent_vllm_docker import AgentProcess, containers_of, wait_for
from tests.support.celery_workers import WORKER_ARGS, celery_processes, shared_database_url
from tests.support.vllm_container import SERVED_NAME, host_allows, remove_node_containers

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(transactional_db: None, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A Celery worker process on the test database (so it must come after the database fixture)."""
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=shared_database_url(), FLEET_VAR_DIR=str(tmp_path))
    with celery_processes([WORKER_ARGS], env=env, log_dir=tmp_path):
        yield redis_url


@pytest.fixture
def node_name(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield name
    remove_node_containers(docker_client, name)


def test_idle_pool_stops_and_traffic_brings_it_back(
    live_server: Any,
    docker_client: docker.DockerClient,
    vllm_container_profile: dict[str, Any],
    worker: str,
    node_name: str,
    tmp_path: Path,
) -> None:
    token = JoinToken(name="e2e", max_uses=1)
    secret = token.issue_token()
    token.save()
    agent = AgentProcess(live_server.url, tmp_path / "state", node_name, tmp_path / "agent.log")
    agent.start(join_token=secret, nvml="*-idle-*.json", extra=host_allows(vllm_container_profile))
    gateway: LiveGateway | None = None
    try:
        gpu = wait_for(
            "the node's first report", lambda: Gpu.objects.filter(node__name=node_name).first(), 60, agent.log_tail
        )
        profile = ModelProfile.objects.create(name="tiny-qwen3-e2e", **vllm_container_profile)
        pool = make_pool("e2e-chat", model_profile=profile, min_instances=0)
        instance = make_instance(pool, gpu)

        def actual(state: str) -> bool:
            instance.refresh_from_db()
            return instance.actual_state == state

        wait_for("the first start", lambda: actual("ready"), 300, agent.log_tail)

        # Eleven idle minutes pass (the pool stops after ten): move the clocks back.
        long_ago = timezone.now() - timedelta(minutes=11)
        Instance.objects.filter(pk=instance.pk).update(
            ready_at=long_ago, desired_changed_at=long_ago, last_request_at=long_ago
        )
        Celery("probe", broker=worker).send_task("fleet.policies_evaluate", kwargs={"kinds": ["idle_reclaim"]})
        wait_for(
            "the idle instance to be stopped and its container removed",
            lambda: actual("stopped") and not containers_of(docker_client, node_name, instance),
            120,
            lambda: "--- worker log ---\n" + (tmp_path / "celery-0.log").read_text()[-3000:] + agent.log_tail(),
        )
        stop = Decision.objects.get(instance=instance, policy_kind="idle_reclaim")
        assert stop.action == "stop" and "idle for 11 min" in stop.reason

        _key, api_key = api_key_create(team=Team.objects.create(name="Docs", slug="docs"), name="e2e")
        from fleet.gateway.app import Gateway, GatewayConfig

        gateway = LiveGateway(Gateway(config=GatewayConfig(refresh_s=0.5, hold_timeout_s=300))).start()
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0, timeout=360)

        def ask(n: int) -> int:
            reply = client.chat.completions.create(
                model=SERVED_NAME, messages=[{"role": "user", "content": f"question {n}"}], max_tokens=8
            )
            return reply.usage.completion_tokens if reply.usage else 0

        with ThreadPoolExecutor(3) as pool_executor:
            answers = list(pool_executor.map(ask, range(3)))
        assert all(tokens > 0 for tokens in answers)

        wake = Decision.objects.get(instance=instance, policy_kind="gateway")
        assert wake.action == "start"
        assert len(containers_of(docker_client, node_name, instance)) == 1
        logs = gateway.logs()
        assert len(logs) == 3
        assert all(log.cold_start and log.status == 200 and log.instance_id == instance.pk for log in logs)
        assert RequestLog.objects.filter(pool=pool, team__slug="docs").count() == 3
    finally:
        if gateway is not None:
            gateway.stop()
        agent.stop()
