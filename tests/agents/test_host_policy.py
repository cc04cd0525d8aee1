"""The host has the last word on what runs on it, whatever the panel asks (agents/host_policy.py).

Written as the attacker: a panel (or a staff user who may only edit model profiles) asks
for the host's root filesystem, its Docker socket, the loader's environment or a vLLM flag
that loads code, spelled every way vLLM's own parser would still read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from agents import protocol
from agents.agent import Agent, AgentConfig
from agents.host_policy import HostPolicy, Refused, vllm_flag_name
from agents.runtime import NODE_LABEL, DockerRuntime
from tests.support.agent_process import RecordedGpus
from tests.support.specs import instance_spec

POLICY = HostPolicy(volume_prefixes=("/models",))


@pytest.mark.parametrize(
    ("token", "read_as"),
    [
        ("--max_num_batched_tokens=512", "--max-num-batched-tokens"),
        ("--compilation_config.level", "--compilation-config"),
        ("--trust_remote_code", "--trust-remote-code"),
        ("--disable-log-stats", "--disable-log-stats"),
    ],
)
def test_flag_names_are_read_as_vllms_parser_reads_them(token: str, read_as: str) -> None:
    assert vllm_flag_name(token) == read_as


@pytest.mark.parametrize(
    "args",
    [
        ["--trust-remote-code"],
        ["--trust_remote_code"],
        ["--trust-remote"],  # an abbreviation argparse would accept
        ["--middleware", "evil.module"],
        ["--chat-template=/etc/shadow"],
        ["--config", "/models/more-flags.yaml"],
        ["--disable_log_stats"],
        ["-O3"],
        ["--seed", "0", "--model", "/elsewhere"],
    ],
)
def test_flags_outside_the_allowlist_are_refused_however_spelled(args: list[str]) -> None:
    with pytest.raises(Refused, match="refused"):
        POLICY.check_flags(args)


def test_allowed_flags_and_their_values_pass() -> None:
    POLICY.check_flags(
        ["--max_num_batched_tokens=512", "--enforce-eager", "--seed", "-1", "--compilation-config.level", "3"]
    )
    wider = HostPolicy(vllm_flags=POLICY.vllm_flags | {vllm_flag_name("--max_loras")})
    wider.check_flags(["--max-loras", "4"])


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "PATH", "VLLM_PLUGINS", "AWS_SECRET_ACCESS_KEY"])
def test_environment_outside_the_allowlist_or_that_loads_code_is_refused(name: str) -> None:
    with pytest.raises(Refused, match=name):
        HostPolicy(env_patterns=("*",) if name == "LD_PRELOAD" else POLICY.env_patterns).check_env({name: "x"})


def test_the_environment_vllm_and_hugging_face_read_passes() -> None:
    POLICY.check_env({"HF_TOKEN": "hf_x", "VLLM_LOGGING_LEVEL": "INFO", "NCCL_DEBUG": "WARN"})


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/var/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/root/.ssh",
        "/proc/1",
        "models",
        "/models/../etc",
    ],
)
def test_host_paths_that_reach_the_host_are_refused_even_when_allowed(path: str) -> None:
    everything = HostPolicy(volume_prefixes=("/", "/var", "/run", "/sys", "/proc", "/models"))
    with pytest.raises(Refused, match="refused"):
        everything.check_volumes({path: "/data"})


def test_a_symlink_under_an_allowed_path_to_the_docker_socket_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights").symlink_to("/var/run/docker.sock")
    with pytest.raises(Refused, match="never mounted"):
        HostPolicy(volume_prefixes=(str(tmp_path),)).check_volumes({str(tmp_path / "weights"): "/data"})


def test_only_paths_under_the_hosts_own_prefixes_are_mounted(tmp_path: Path) -> None:
    (tmp_path / "qwen3").mkdir()
    HostPolicy(volume_prefixes=(str(tmp_path),)).check_volumes({str(tmp_path / "qwen3"): "/models/qwen3"})
    with pytest.raises(Refused, match="--allow-volume"):
        HostPolicy().check_volumes({str(tmp_path / "qwen3"): "/models/qwen3"})


# -- against the real Docker engine ----------------------------------------------------------


@pytest.fixture
def docker_agent(docker_client: docker.DockerClient, node_name: str, tmp_path: Path) -> Iterator[Agent]:
    config = AgentConfig(
        panel_url="http://127.0.0.1:9", state_dir=tmp_path, node_name=node_name, image_allowlist=("gpufleet-test/*",)
    )
    yield Agent(config, gpus=RecordedGpus(), runtime=DockerRuntime(docker_client, node_name), http=httpx.Client())
    for container in docker_client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node_name}"}):
        container.remove(force=True)


@pytest.mark.services
def test_the_agent_refuses_what_its_host_does_not_allow_whatever_the_panel_says(
    docker_agent: Agent, docker_client: docker.DockerClient, node_name: str, test_image: str
) -> None:
    asked = {
        1: instance_spec(image=test_image, volumes={"/": "/host"}),
        2: instance_spec(image=test_image, volumes={"/var/run/docker.sock": "/var/run/docker.sock"}),
        3: instance_spec(image=test_image, extra_args=["--trust_remote_code"]),
        4: instance_spec(image=test_image, env={"LD_PRELOAD": "/tmp/evil.so"}),
        5: instance_spec(image=test_image),  # nothing beyond what the host allows
    }
    desired = [protocol.DesiredInstance(instance_id=i, generation=1, state="running", spec=s) for i, s in asked.items()]
    docker_agent.act(protocol.Reply(ack_seq=0, desired=desired, report_interval_s=5.0))

    refused = {r.instance_id: r.error for r in docker_agent._results if r.action == "refuse"}
    assert sorted(refused) == [1, 2, 3, 4], refused
    assert "refused" in refused[2] and "--trust-remote-code" in refused[3] and "LD_PRELOAD" in refused[4]
    made = docker_client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node_name}"})
    assert [c.labels["gpufleet.instance"] for c in made] == ["5"], "only the allowed instance got a container"
    host_config = made[0].attrs["HostConfig"]
    assert host_config["IpcMode"] != "host" and host_config["ShmSize"] == 8 * 1024**3
    assert not host_config.get("Binds")
