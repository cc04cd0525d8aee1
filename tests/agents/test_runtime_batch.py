"""Batch job containers and stop-by-id on a real local engine (busybox containers, host networking)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from agents.runtime import BatchSpec, ContainerGone, DockerRuntime, ImageMissing
from tests.support.vllm_container import remove_node_containers

LOOP = "while true; do sleep 0.2; done"


@pytest.fixture
def runtime(docker_client: docker.DockerClient, node_name: str) -> Iterator[DockerRuntime]:
    yield DockerRuntime(docker_client, node_name)
    remove_node_containers(docker_client, node_name)


def job(runtime: DockerRuntime, image: str, script: str, job_id: int = 1, generation: int = 1) -> BatchSpec:
    return BatchSpec(
        job_id=job_id,
        generation=generation,
        image=image,
        node_name=runtime.node_name,
        command=["sh", "-c", script],
        gpu_memory_bytes=2**30,
        host_memory_bytes=64 * 2**20,
    )


def test_a_job_runs_with_its_limits_is_listed_apart_from_instances_and_adopted(
    runtime: DockerRuntime, docker_client: docker.DockerClient, test_image: str
) -> None:
    spec = job(runtime, test_image, LOOP)
    started = runtime.batch_start(spec)
    assert (started.job_id, started.generation, started.status) == (1, 1, "running")
    assert runtime.list_managed() == []
    restarted = DockerRuntime(docker_client, runtime.node_name)
    assert [c.container_id for c in restarted.batch_list()] == [started.container_id]
    assert restarted.batch_start(spec).container_id == started.container_id
    attrs = docker_client.containers.get(started.container_id).attrs
    assert attrs["HostConfig"]["Memory"] == 64 * 2**20
    assert attrs["HostConfig"]["NetworkMode"] == "host"


def test_stop_is_graceful_then_kills_a_job_that_ignores_sigterm(runtime: DockerRuntime, test_image: str) -> None:
    polite = runtime.batch_start(job(runtime, test_image, LOOP, job_id=1))
    stubborn = runtime.batch_start(job(runtime, test_image, f"trap '' TERM; {LOOP}", job_id=2))
    assert runtime.stop_managed(polite.container_id, 10) == 143
    began = time.monotonic()
    assert runtime.stop_managed(stubborn.container_id, 1) == 137
    assert time.monotonic() - began >= 1
    assert runtime.batch_list() == []


def test_an_exited_job_keeps_its_exit_code(runtime: DockerRuntime, test_image: str) -> None:
    runtime.batch_start(job(runtime, test_image, "exit 3"))
    deadline = time.monotonic() + 10
    while (states := runtime.batch_list())[0].status != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert states[0].exit_code == 3


def test_stop_by_id_touches_only_this_nodes_managed_containers(
    runtime: DockerRuntime, docker_client: docker.DockerClient, test_image: str, docker_test_labels: dict[str, str]
) -> None:
    other = docker_client.containers.run(
        test_image, ["sh", "-c", LOOP], labels=docker_test_labels, network_mode="host", detach=True
    )
    try:
        with pytest.raises(ContainerGone):
            runtime.stop_managed(other.id, 1)
        with pytest.raises(ContainerGone):
            runtime.stop_managed(other.id[:12], 1)
        other.reload()
        assert other.status == "running"
    finally:
        other.remove(force=True)


def test_image_size_is_what_the_engine_stores_and_a_missing_image_is_not_pulled(
    runtime: DockerRuntime, docker_client: docker.DockerClient, test_image: str
) -> None:
    assert runtime.image_size(test_image) == docker_client.images.get(test_image).attrs["Size"] > 0
    with pytest.raises(ImageMissing, match="never pulls"):
        runtime.image_size("gpufleet-test/absent:1")
