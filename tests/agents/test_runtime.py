"""The Docker runtime against a real local engine, plus the pure spec builders.

Containers run a statically linked busybox (``httpd`` stands in for a vLLM server)
with host networking, bound to 127.0.0.1, so reaching them proves they really run.
Every container created here carries the test labels and is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.types
import pytest

from agents.reconcile import DesiredInstance, ReportOrphan, Restart, Start, Stop, apply, reconcile
from agents.runtime import (
    ContainerSpec,
    ContainerState,
    DockerRuntime,
    ImageMissing,
    RuntimeFailure,
    Volume,
    docker_create_kwargs,
    gpu_devices_of,
    spec_digest,
    vllm_container_spec,
)
from tests.support.docker_engine import INDEX_BODY, free_port

# No proxy: the containers listen on this machine's loopback only.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(port: int, timeout_s: float = 10.0) -> bytes:
    """GET / on 127.0.0.1:port, retrying while the server comes up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with _LOOPBACK.open(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
                return bytes(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def runtime(docker_client: docker.DockerClient, node_name: str) -> DockerRuntime:
    return DockerRuntime(docker_client, node_name)


@pytest.fixture
def make_spec(test_image: str, node_name: str, docker_test_labels: dict[str, str]) -> Callable[..., ContainerSpec]:
    """Specs on the test image; instance ids are unique because names are engine-wide."""
    suffix = uuid.uuid4().hex[:8]

    def build(
        name: str = "web", generation: int = 1, port: int | None = None, command: Sequence[str] | None = None
    ) -> ContainerSpec:
        port = port or free_port()
        return ContainerSpec(
            instance_id=f"{name}-{suffix}",
            generation=generation,
            image=test_image,
            node_name=node_name,
            port=port,
            command=command or ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
            labels=docker_test_labels,
        )

    return build


def by_name(client: docker.DockerClient, name: str) -> list[str]:
    return [c.id for c in client.containers.list(all=True, filters={"name": f"^/{name}$"})]


@pytest.mark.services
def test_start_runs_a_labelled_container_reachable_on_loopback(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], node_name: str
) -> None:
    spec = make_spec()

    state = runtime.start(spec)

    assert state.status == "running"
    assert (state.instance_id, state.generation, state.name) == (spec.instance_id, 1, spec.container_name)
    assert state.started_at is not None and state.exit_code is None
    assert {k: state.labels[k] for k in ("gpufleet.managed", "gpufleet.instance", "gpufleet.generation")} == {
        "gpufleet.managed": "true",
        "gpufleet.instance": spec.instance_id,
        "gpufleet.generation": "1",
    }
    assert state.labels["gpufleet.node"] == node_name
    assert fetch(spec.port) == INDEX_BODY


@pytest.mark.services
def test_second_start_adopts_instead_of_duplicating(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec()
    first = runtime.start(spec)
    second = runtime.start(spec)
    assert second.container_id == first.container_id
    assert by_name(docker_client, spec.container_name) == [first.container_id]


@pytest.mark.services
def test_concurrent_starts_create_one_container(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], docker_client: docker.DockerClient
) -> None:
    """Racing starts hit Docker's 409 name conflict; the losers adopt the winner."""
    spec = make_spec()
    with ThreadPoolExecutor(max_workers=4) as pool:
        states = list(pool.map(lambda _: runtime.start(spec), range(4)))
    assert len({s.container_id for s in states}) == 1
    assert by_name(docker_client, spec.container_name) == [states[0].container_id]
    assert fetch(spec.port) == INDEX_BODY


@pytest.mark.services
def test_restarted_agent_lists_and_adopts_what_runs(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], node_name: str
) -> None:
    spec = make_spec()
    started = runtime.start(spec)

    fresh_client = docker.from_env()
    try:
        restarted = DockerRuntime(fresh_client, node_name)
        assert [s.container_id for s in restarted.list_managed()] == [started.container_id]
        assert restarted.start(spec).container_id == started.container_id
        assert DockerRuntime(fresh_client, "some-other-node").list_managed() == []
    finally:
        fresh_client.close()


@pytest.mark.services
def test_start_starts_a_stopped_container_of_the_same_generation(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec]
) -> None:
    spec = make_spec()
    first = runtime.start(spec)
    runtime.stop(spec.instance_id, timeout_s=5)
    again = runtime.start(spec)
    assert (again.container_id, again.status) == (first.container_id, "running")
    assert fetch(spec.port) == INDEX_BODY


@pytest.mark.services
def test_stop_is_graceful(runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec]) -> None:
    """SIGTERM reaches the server through the init process and it exits well before the timeout."""
    spec = make_spec()
    runtime.start(spec)
    fetch(spec.port)

    began = time.monotonic()
    runtime.stop(spec.instance_id, timeout_s=20)
    elapsed = time.monotonic() - began

    [state] = runtime.list_managed()
    assert (state.status, state.exit_code) == ("exited", 143)  # 128 + SIGTERM
    assert elapsed < 10


@pytest.mark.services
def test_stop_kills_a_server_that_ignores_sigterm(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec]
) -> None:
    spec = make_spec(command=["/bin/sh", "-c", 'trap "" TERM; while true; do /bin/busybox sleep 1; done'])
    runtime.start(spec)

    began = time.monotonic()
    runtime.stop(spec.instance_id, timeout_s=1)
    elapsed = time.monotonic() - began

    [state] = runtime.list_managed()
    assert (state.status, state.exit_code) == ("exited", 137)  # 128 + SIGKILL
    assert 1 <= elapsed < 10


@pytest.mark.services
def test_stop_and_remove_tolerate_a_container_already_gone(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], docker_client: docker.DockerClient
) -> None:
    spec = make_spec()
    state = runtime.start(spec)
    docker_client.containers.get(state.container_id).remove(force=True)

    runtime.stop(spec.instance_id, timeout_s=1)
    runtime.stop(spec.instance_id, timeout_s=1, generation=7)
    runtime.remove(spec.instance_id)
    runtime.remove("never-existed")
    assert runtime.list_managed() == []


@pytest.mark.services
def test_remove_refuses_a_running_container(runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec]) -> None:
    spec = make_spec()
    runtime.start(spec)
    with pytest.raises(RuntimeFailure, match=rf"removing {spec.instance_id} on node .*running"):
        runtime.remove(spec.instance_id)
    runtime.stop(spec.instance_id, timeout_s=5)
    runtime.remove(spec.instance_id)
    assert runtime.list_managed() == []


@pytest.mark.services
def test_missing_image_fails_clearly_without_pulling(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], docker_client: docker.DockerClient
) -> None:
    spec = dataclasses.replace(make_spec(), image="gpufleet-test/not-built-here:0")
    with pytest.raises(ImageMissing, match=r"image 'gpufleet-test/not-built-here:0' is not present locally"):
        runtime.start(spec)
    assert by_name(docker_client, spec.container_name) == []
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(spec.image)


@pytest.mark.services
def test_a_foreign_container_holding_the_name_is_not_adopted(
    runtime: DockerRuntime,
    make_spec: Callable[..., ContainerSpec],
    docker_client: docker.DockerClient,
    docker_test_labels: dict[str, str],
) -> None:
    spec = make_spec()
    docker_client.containers.create(
        spec.image,
        ["/bin/busybox", "true"],
        name=spec.container_name,
        labels={**docker_test_labels, "gpufleet.managed": "true", "gpufleet.instance": "someone-else"},
    )
    with pytest.raises(RuntimeFailure, match=r"taken by a container with different labels"):
        runtime.start(spec)


@pytest.mark.services
def test_crash_is_reported_with_exit_code_and_logs(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec]
) -> None:
    spec = make_spec(
        command=["/bin/sh", "-c", "echo oops >&2; /bin/busybox sleep 0.5; echo one; echo two; echo three; exit 3"]
    )
    runtime.start(spec)
    wait_for(lambda: runtime.list_managed()[0].status == "exited")

    [state] = runtime.list_managed()
    assert state.exit_code == 3
    assert runtime.logs_tail(spec.instance_id, lines=2) == "two\nthree\n"
    # stderr is included; it is written well before stdout because the log driver
    # orders the two streams only by when it happened to read each line.
    assert runtime.logs_tail(spec.instance_id, lines=10) == "oops\none\ntwo\nthree\n"
    with pytest.raises(RuntimeFailure, match="no such container"):
        runtime.logs_tail("never-existed")


def test_unreachable_engine_is_a_runtime_failure(tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=f"unix://{tmp_path / 'no-engine.sock'}", version="1.41", timeout=2)
    with pytest.raises(RuntimeFailure, match="listing managed containers on node n1: "):
        DockerRuntime(client, "n1").list_managed()


def test_spec_for_another_node_is_refused(tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=f"unix://{tmp_path / 'no-engine.sock'}", version="1.41", timeout=2)
    spec = ContainerSpec(instance_id="a", generation=1, image="i", node_name="n2", port=8000)
    with pytest.raises(RuntimeFailure, match="targets node 'n2'"):
        DockerRuntime(client, "n1").start(spec)


@pytest.mark.services
def test_reconcile_and_apply_converge_a_real_engine(
    runtime: DockerRuntime, make_spec: Callable[..., ContainerSpec], docker_client: docker.DockerClient
) -> None:
    port = free_port()
    v1 = make_spec("llm", 1, port)
    # A changed server (its environment): the same one under a new generation is kept (a sleep, a wake).
    v2 = dataclasses.replace(make_spec("llm", 2, port), env={"GPUFLEET_TEST_CHANGED": "1"})
    orphan = runtime.start(make_spec("stray"))

    def step(desired: list[DesiredInstance]) -> list[type]:
        results = apply(reconcile(desired, runtime.list_managed(), stop_timeout_s=5), runtime)
        assert all(r.ok for r in results), [r.error for r in results]
        return [type(r.action) for r in results]

    def live() -> list[tuple[str, int, str]]:
        return [(s.instance_id, s.generation, s.status) for s in runtime.list_managed()]

    running_v1 = [DesiredInstance(v1.instance_id, 1, "running", v1)]
    assert step(running_v1) == [ReportOrphan, Start]
    assert fetch(port) == INDEX_BODY
    assert step(running_v1) == [ReportOrphan]

    # Same port for both generations: only works because the old one is stopped first.
    running_v2 = [DesiredInstance(v2.instance_id, 2, "running", v2)]
    assert step(running_v2) == [ReportOrphan, Stop, Start]
    assert live() == [(v2.instance_id, 2, "running"), (orphan.instance_id, 1, "running")]
    assert fetch(port) == INDEX_BODY
    assert step(running_v2) == [ReportOrphan]

    docker_client.containers.get(by_name(docker_client, v2.container_name)[0]).kill()
    assert step(running_v2) == [ReportOrphan, Restart]
    assert fetch(port) == INDEX_BODY

    stopped = [DesiredInstance(v2.instance_id, 2, "stopped")]
    assert step(stopped) == [ReportOrphan, Stop]
    assert live() == [(orphan.instance_id, 1, "running")]
    assert step(stopped) == [ReportOrphan]


def test_docker_kwargs_without_gpus_request_no_device() -> None:
    spec = ContainerSpec(instance_id="a", generation=3, image="img:1", node_name="n1", port=8000, command=["x"])
    kwargs = docker_create_kwargs(spec)
    assert "device_requests" not in kwargs
    assert kwargs["name"] == "gpufleet-a-g3"
    assert kwargs["network_mode"] == "host" and "ports" not in kwargs
    assert kwargs["labels"] == {
        "gpufleet.managed": "true",
        "gpufleet.instance": "a",
        "gpufleet.generation": "3",
        "gpufleet.node": "n1",
        "gpufleet.spec": spec_digest(spec),
    }
    assert spec_digest(spec) == spec_digest(dataclasses.replace(spec, generation=4))
    assert spec_digest(spec) != spec_digest(dataclasses.replace(spec, image="img:2"))
    assert kwargs["init"] is True and kwargs["command"] == ["x"]


@pytest.mark.parametrize(
    ("selector", "ids"),
    [
        ("gpu_uuids", ["GPU-1111", "GPU-2222"]),
        ("mig_uuids", ["MIG-aaaa"]),
    ],
)
def test_docker_kwargs_request_exactly_the_given_devices(selector: str, ids: list[str]) -> None:
    spec = ContainerSpec(
        instance_id="a",
        generation=1,
        image="img:1",
        node_name="n1",
        port=8000,
        host_network=False,
        mem_limit="8g",
        shm_size="2g",
        volumes={"/models": Volume("/models"), "/cache": Volume("/hf-cache", read_only=False)},
        **{selector: ids},
    )
    kwargs = docker_create_kwargs(spec)
    assert kwargs["device_requests"] == [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    assert kwargs["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}
    assert "network_mode" not in kwargs
    assert (kwargs["mem_limit"], kwargs["shm_size"]) == ("8g", "2g")
    assert kwargs["volumes"] == {
        "/models": {"bind": "/models", "mode": "ro"},
        "/cache": {"bind": "/hf-cache", "mode": "rw"},
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpu_uuids": ["GPU-1"], "mig_uuids": ["MIG-1"]}, "not both"),
        ({"gpu_uuids": ["MIG-1"]}, "is not a GPU UUID"),
        ({"mig_uuids": ["GPU-1"]}, "is not a MIG device UUID"),
        ({"instance_id": "has space"}, "becomes part of the container name"),
        ({"port": 0}, "port must be"),
        ({"generation": -1}, "generation must be"),
        ({"labels": {"gpufleet.node": "x"}}, "set by the runtime"),
    ],
)
def test_invalid_specs_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"instance_id": "a", "generation": 1, "image": "i", "node_name": "n", "port": 8000}
    with pytest.raises(ValueError, match=message):
        ContainerSpec(**{**fields, **changes})  # type: ignore[arg-type]


BF16_CHAT = {
    "image": "vllm/vllm-openai:v0.11.0",
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "served_name": "qwen-7b-chat",
    "max_model_len": 8192,
    "max_num_seqs": 64,
    "quantization": None,
    "kv_cache_dtype": "auto",
    "enable_prefix_caching": True,
    "gpu_memory_utilization": 0.9,
    "dtype": "bfloat16",
    "enable_sleep_mode": False,
    "extra_args": [],
    "env": {"HF_HUB_OFFLINE": "1"},
    "volumes": {"/srv/models": "/models"},
}

AWQ_FP8 = {
    "image": "vllm/vllm-openai:v0.11.0",
    "model": "/models/Qwen2.5-32B-Instruct-AWQ",
    "served_name": "qwen-32b-awq",
    "max_model_len": 16384,
    "max_num_seqs": 32,
    "quantization": "awq",
    "kv_cache_dtype": "fp8",
    "enable_prefix_caching": False,
    "gpu_memory_utilization": 0.85,
    "dtype": "float16",
    "enable_sleep_mode": True,
    "extra_args": ["--enforce-eager"],
    "env": {},
    "volumes": {"/srv/models": {"bind": "/models", "mode": "ro"}},
}


def test_vllm_spec_for_a_bf16_chat_profile() -> None:
    spec = vllm_container_spec(
        instance_id="qwen7b", generation=4, profile=BF16_CHAT, port=8101, node_name="gpu-01", gpu_uuids=["GPU-abc"]
    )
    assert list(spec.command) == [
        "--model", "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name", "qwen-7b-chat",
        "--host", "127.0.0.1",
        "--port", "8101",
        "--max-model-len", "8192",
        "--max-num-seqs", "64",
        "--kv-cache-dtype", "auto",
        "--enable-prefix-caching",
        "--gpu-memory-utilization", "0.9",
        "--dtype", "bfloat16",
    ]  # fmt: skip
    assert "--disable-log-stats" not in spec.command
    assert dict(spec.env) == {"HF_HUB_OFFLINE": "1"}
    assert dict(spec.volumes) == {"/srv/models": Volume("/models", read_only=True)}
    assert (spec.image, spec.port, spec.node_name, spec.device_ids) == (
        "vllm/vllm-openai:v0.11.0",
        8101,
        "gpu-01",
        ("GPU-abc",),
    )
    assert spec.host_network and spec.container_name == "gpufleet-qwen7b-g4"


def test_vllm_spec_for_an_awq_profile_with_fp8_kv_cache_and_sleep_mode() -> None:
    spec = vllm_container_spec(
        instance_id="qwen32b",
        generation=1,
        profile=AWQ_FP8,
        port=8102,
        node_name="gpu-01",
        mig_uuids=["MIG-0f1e"],
        host_network=False,
    )
    assert list(spec.command) == [
        "--model", "/models/Qwen2.5-32B-Instruct-AWQ",
        "--served-model-name", "qwen-32b-awq",
        "--host", "0.0.0.0",
        "--port", "8102",
        "--max-model-len", "16384",
        "--max-num-seqs", "32",
        "--quantization", "awq",
        "--kv-cache-dtype", "fp8",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization", "0.85",
        "--dtype", "float16",
        "--enable-sleep-mode",
        "--enforce-eager",
    ]  # fmt: skip
    assert dict(spec.env) == {"VLLM_SERVER_DEV_MODE": "1"}
    assert docker_create_kwargs(spec)["ports"] == {"8102/tcp": ("127.0.0.1", 8102)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--disable-log-stats"], "empties /metrics"),
        (["--port=9000"], "the agent sets it"),
        (["--host", "0.0.0.0"], "the agent sets it"),
    ],
)
def test_vllm_spec_refuses_flags_that_break_the_agent(extra: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vllm_container_spec(
            instance_id="a", generation=1, profile={**BF16_CHAT, "extra_args": extra}, port=8000, node_name="n"
        )


def test_vllm_spec_leaves_out_unset_flags() -> None:
    spec = vllm_container_spec(
        instance_id="a", generation=1, profile={"image": "img", "model": "m"}, port=8000, node_name="n"
    )
    assert list(spec.command) == ["--model", "m", "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8000"]
    assert spec.device_ids == ()


def test_container_state_running_covers_restarting() -> None:
    def state(status: str) -> ContainerState:
        return ContainerState("a", 1, "c", status, None, None, {})

    assert [state(s).running for s in ("running", "restarting", "exited", "created")] == [True, True, False, False]


@pytest.mark.services
def test_foreign_gpu_containers_are_listed_and_left_alone(
    docker_client: docker.DockerClient, test_image: str, docker_test_labels: dict[str, str], node_name: str
) -> None:
    """Someone's own container holding GPUs is reported; containers without GPUs are not."""
    common = dict(labels=docker_test_labels, network_mode="host", detach=True, command=["/bin/busybox", "sleep", "300"])
    foreign = docker_client.containers.run(test_image, environment={"NVIDIA_VISIBLE_DEVICES": "GPU-1,GPU-2"}, **common)
    plain = docker_client.containers.run(test_image, **common)
    try:
        runtime = DockerRuntime(docker_client, node_name)
        users = {user.container_id: user for user in runtime.list_foreign_gpu_users()}
        assert users[foreign.id].gpus == ("GPU-1", "GPU-2")
        assert users[foreign.id].image == test_image
        assert plain.id not in users
        desired: list[DesiredInstance] = []
        apply(reconcile(desired, runtime.list_managed()), runtime)
        foreign.reload()
        assert foreign.status == "running"
    finally:
        for container in (foreign, plain):
            container.remove(force=True)


def test_gpu_devices_of_reads_device_requests_and_the_nvidia_variable() -> None:
    attrs = {
        "HostConfig": {
            "DeviceRequests": [{"Driver": "", "Count": 0, "DeviceIDs": ["GPU-a"], "Capabilities": [["gpu"]]}]
        },
        "Config": {"Env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=GPU-b"]},
    }
    assert gpu_devices_of(attrs) == ("GPU-a", "GPU-b")
    assert gpu_devices_of({"HostConfig": {"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}}) == ("all",)
    assert gpu_devices_of({"Config": {"Env": ["NVIDIA_VISIBLE_DEVICES=void"]}}) == ()
    assert gpu_devices_of({}) == ()
