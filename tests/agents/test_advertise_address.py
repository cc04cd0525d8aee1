"""The agent's side of a reachable address: what it advertises, and where its servers listen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import __main__ as agent_cli
from agents.agent import Agent, AgentConfig
from agents.runtime import ContainerSpec, ContainerState, docker_create_kwargs
from fleet.models import Instance, JoinToken, Node
from tests.agents.test_agent_loop import place
from tests.agents.test_reconcile import FakeRuntime
from tests.support.agent_process import RecordedGpus

COMMON = ["--state-dir", "/tmp/unused", "--name", "gpu-a"]


class RecordingRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.specs: list[ContainerSpec] = []

    def start(self, spec: ContainerSpec) -> ContainerState:
        self.specs.append(spec)
        return super().start(spec)


def config(*argv: str, env: dict[str, str] | None = None, monkeypatch: pytest.MonkeyPatch) -> AgentConfig:
    monkeypatch.delenv("GPUFLEET_ADVERTISE_ADDRESS", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return agent_cli.config_from(agent_cli.parse_args([*COMMON, *argv]))


def test_the_command_line_takes_an_advertised_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config("--panel", "http://10.0.0.1:8000", monkeypatch=monkeypatch).advertise_address == ""
    given = config("--panel", "http://10.0.0.1:8000", "--advertise-address", "10.0.0.5", monkeypatch=monkeypatch)
    assert given.advertise_address == "10.0.0.5"
    from_env = config(
        "--panel", "http://p:8000", env={"GPUFLEET_ADVERTISE_ADDRESS": "gpu7.dc1"}, monkeypatch=monkeypatch
    )
    assert from_env.advertise_address == "gpu7.dc1"
    with pytest.raises(SystemExit):
        config("--panel", "http://p:8000", "--advertise-address", "10.0.0.5:80", monkeypatch=monkeypatch)


@pytest.mark.parametrize(
    ("panel", "advertised", "listen"),
    [
        ("http://127.0.0.1:8000", "", "127.0.0.1"),  # the demo: everything on one machine
        ("http://0.0.0.0:8000", "", "127.0.0.1"),  # the demo serving every interface: still this machine
        ("http://localhost:8000", "127.0.0.1", "127.0.0.1"),
        ("http://panel.example:8000", "", "0.0.0.0"),  # the panel will reach us at our peer address
        ("http://panel.example:8000", "203.0.113.77", "0.0.0.0"),  # not ours to bind (NAT): every interface
        ("http://panel.example:8000", "gpu7.dc1.example", "0.0.0.0"),
        ("http://panel.example:8000", "127.0.0.1", "127.0.0.1"),
    ],
)
def test_servers_listen_where_the_gateway_will_reach_them(
    panel: str, advertised: str, listen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--panel", panel, *(["--advertise-address", advertised] if advertised else [])]
    assert config(*argv, monkeypatch=monkeypatch).listen_host == listen


def test_a_listen_host_reaches_the_docker_port_binding() -> None:
    spec = ContainerSpec(instance_id="1", generation=1, image="i", node_name="n", port=8100, host_network=False)
    assert docker_create_kwargs(spec)["ports"] == {"8100/tcp": ("127.0.0.1", 8100)}
    wide = ContainerSpec(
        instance_id="1", generation=1, image="i", node_name="n", port=8100, host_network=False, listen_host="0.0.0.0"
    )
    assert docker_create_kwargs(wide)["ports"] == {"8100/tcp": ("0.0.0.0", 8100)}


@pytest.mark.django_db(transaction=True)
def test_the_agent_advertises_its_address_and_serves_there(live_server: Any, tmp_path: Path) -> None:
    token = JoinToken(name="test", max_uses=None)
    secret = token.issue_token()
    token.save()
    settings = AgentConfig(
        panel_url=live_server.url,
        state_dir=tmp_path,
        node_name="gpu-a",
        advertise_address="gpu7.dc1.example",
        listen_host="0.0.0.0",
    )
    agent = Agent(settings, gpus=RecordedGpus(), runtime=RecordingRuntime(), http=httpx.Client())
    agent.register(secret)
    assert Node.objects.get().address == "gpu7.dc1.example"
    instance = place(agent)
    agent.tick()
    runtime: RecordingRuntime = agent.runtime  # type: ignore[assignment]
    command = list(runtime.specs[0].command)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    agent.tick()
    assert Instance.objects.get(pk=instance.pk).endpoint == "http://gpu7.dc1.example:8100"
    assert Node.objects.get().address == "gpu7.dc1.example", "reports keep the advertised address"
