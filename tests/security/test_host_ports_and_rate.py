"""A malicious host with a valid token: it may point the gateway only at its own agent's ports, and
post reports only so often.

The agent tells the panel its ``--port-range`` when it registers; an endpoint on the host's own
address but another port (its database, the panel itself) is refused as an endpoint on another
address is. Each node's token may post ``AGENT_REPORTS_PER_MINUTE`` report requests a minute;
beyond that it gets a 429 with ``Retry-After``, nothing is stored, other nodes go on, and the
agent keeps its reports buffered and backs off.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from django.test import Client
from django.urls import reverse

from agents import protocol
from agents.agent import Agent as HostAgent
from agents.agent import AgentState
from agents.config import AgentConfig
from fleet.gateway.table import routing_table_load
from fleet.models import Gpu, GpuSample, Instance, JoinToken, Node
from fleet.telemetry import agent_api
from tests.agents.test_reconcile import FakeRuntime
from tests.api.test_agent_api import Agent, batch, gpu_reading, instance_sample, report
from tests.factories import make_instance, make_pool
from tests.support.agent_process import RecordedGpus

pytestmark = pytest.mark.django_db

ATTACKER = "10.0.0.66"


def join_token() -> str:
    token = JoinToken(name="rollout", max_uses=None)
    secret = token.issue_token()
    token.save()
    return secret


def register(client: Client, name: str, **extra: Any) -> Any:
    body = {"join_token": join_token(), "name": name, "hostname": f"{name}.local", "agent_version": "0.1.0", **extra}
    return client.post(reverse("agent-register"), json.dumps(body), content_type="application/json")


def post(client: Client, token: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        reverse("agent-report"), data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


# -- endpoints bound to the agent's port range ---------------------------------------------------


def test_registration_stores_the_agents_port_range_and_an_older_agent_gets_the_default() -> None:
    client = Client(REMOTE_ADDR=ATTACKER)
    assert register(client, "told", port_range=[18100, 18109]).status_code == 201
    assert register(client, "older").status_code == 201  # an agent from before the field
    ranges = dict(Node.objects.values_list("name", "port_low").order_by("name"))
    highs = dict(Node.objects.values_list("name", "port_high").order_by("name"))
    assert (ranges["told"], highs["told"]) == (18100, 18109)
    # The agent's own default, --port-range 8100-8199.
    assert (ranges["older"], highs["older"]) == (8100, 8199)


def test_the_protocols_default_range_is_the_agents() -> None:
    """An agent that sends no range runs on its default one: the panel assumes the same."""
    assert AgentConfig.__dataclass_fields__["port_range"].default == protocol.DEFAULT_PORT_RANGE


@pytest.mark.parametrize(
    "port_range",
    [[0, 8199], [8100, 65536], [8200, 8100], [8100], [8100, 8150, 8199], "8100-8199", [-1, 5]],
)
def test_a_port_range_that_is_not_one_is_refused_and_the_join_token_keeps_its_use(port_range: Any) -> None:
    response = register(Client(REMOTE_ADDR=ATTACKER), "bad-range", port_range=port_range)
    assert response.status_code == 400, response.content
    assert "port_range" in json.dumps(response.json())
    assert not Node.objects.exists()
    assert JoinToken.objects.get().uses == 0


@pytest.fixture
def attacker() -> tuple[Client, str, Instance]:
    """A host registered with --port-range 18100-18109 from 10.0.0.66, one GPU reported, one
    instance of a routed pool placed on it (wanted running, not yet reported)."""
    client = Client(REMOTE_ADDR=ATTACKER)
    token = register(client, "attacker", port_range=[18100, 18109]).json()["node_token"]
    assert post(client, token, batch("attacker", report(1))).status_code == 200
    gpu = Gpu.objects.get(node__name="attacker")
    return client, token, make_instance(make_pool(), gpu, desired_state=Instance.Desired.RUNNING)


def routed(instance: Instance) -> list[tuple[str, int]]:
    """Where the gateway's routing table sends the instance's pool."""
    pool = routing_table_load().pools[instance.pool_id]
    return [(upstream.target.host, upstream.target.port) for upstream in pool.upstreams]


@pytest.mark.parametrize(
    "port",
    [
        5432,  # PostgreSQL on the host
        8000,  # the panel's own port, where the panel runs on a GPU host
        18099,  # one below the range
        18110,  # one above it
        22,
    ],
)
def test_an_endpoint_on_the_hosts_address_but_outside_its_port_range_is_refused(
    attacker: tuple[Client, str, Instance], port: int
) -> None:
    client, token, instance = attacker
    sample = instance_sample(instance, endpoint=f"http://{ATTACKER}:{port}")
    response = post(client, token, batch("attacker", report(2, instances=[sample])))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert "endpoint" in error["message"]
    assert error["details"] == [f"{instance.pk}: port {port} outside this host's port range 18100-18109"]
    instance.refresh_from_db()
    assert (instance.endpoint, instance.actual_state) == ("", Instance.Actual.PENDING)
    assert GpuSample.objects.count() == 1  # report 1's only: the refused report stored nothing
    assert Node.objects.get(name="attacker").last_seq == 1
    assert routed(instance) == []


@pytest.mark.parametrize("port", [18100, 18109])  # both ends of the range
def test_an_endpoint_inside_the_port_range_is_taken_and_routed(
    attacker: tuple[Client, str, Instance], port: int
) -> None:
    client, token, instance = attacker
    sample = instance_sample(instance, endpoint=f"http://{ATTACKER}:{port}")
    response = post(client, token, batch("attacker", report(2, instances=[sample])))
    assert response.status_code == 200, response.content
    instance.refresh_from_db()
    assert instance.endpoint == f"http://{ATTACKER}:{port}"
    assert routed(instance) == [(ATTACKER, port)]


def test_a_host_that_registered_privileged_ports_still_gets_no_endpoint_below_1024() -> None:
    """The range narrows the unprivileged ports, never widens them: 80-1100 takes 1024-1100 only."""
    client = Client(REMOTE_ADDR=ATTACKER)
    token = register(client, "low", port_range=[80, 1100]).json()["node_token"]
    assert post(client, token, batch("low", report(1))).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node__name="low"))
    refused = post(
        client, token, batch("low", report(2, instances=[instance_sample(instance, endpoint=f"http://{ATTACKER}:80")]))
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == [f"{instance.pk}: port 80 outside this host's port range 1024-1100"]
    taken = post(
        client,
        token,
        batch("low", report(3, instances=[instance_sample(instance, endpoint=f"http://{ATTACKER}:1100")])),
    )
    assert taken.status_code == 200, taken.content


def test_a_host_that_registered_only_privileged_ports_gets_no_endpoint_and_is_told_why() -> None:
    client = Client(REMOTE_ADDR=ATTACKER)
    token = register(client, "low", port_range=[80, 443]).json()["node_token"]
    assert post(client, token, batch("low", report(1))).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node__name="low"))
    sample = instance_sample(instance, endpoint=f"http://{ATTACKER}:443")
    refused = post(client, token, batch("low", report(2, instances=[sample])))
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == [
        f"{instance.pk}: port 443: this host registered no port range from 1024 up"
    ]


# -- a per-node report rate bound -----------------------------------------------------------------

# A moment 45.5 s into a minute of the clock (1_800_000_000 is a whole minute: 30,000,000 x 60),
# so a refused request is told to wait ceil(60 - 45.5) = 15 s, until the next minute.
FROZEN = 1_800_000_045.5


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch, settings: Any) -> SimpleNamespace:
    """The report endpoint's clock, stopped at ``FROZEN``; three reports a minute per node."""
    settings.AGENT_REPORTS_PER_MINUTE = 3
    clock = SimpleNamespace(now=FROZEN)
    monkeypatch.setattr(agent_api, "time", SimpleNamespace(time=lambda: clock.now))
    return clock


def test_a_host_posting_faster_than_the_bound_gets_429_and_stores_nothing(frozen_clock: SimpleNamespace) -> None:
    attacker = Agent(Client(REMOTE_ADDR=ATTACKER), "attacker")
    victim = Agent(Client(REMOTE_ADDR="10.0.0.1"), "victim")
    for seq in (1, 2, 3):  # the bound: three requests this minute
        assert attacker.post(batch("attacker", report(seq))).status_code == 200
    for seq in (4, 5):
        refused = attacker.post(batch("attacker", report(seq)))
        assert refused.status_code == 429, refused.content
        assert refused["Retry-After"] == "15"
        assert "nothing stored" in refused.json()["error"]["message"]
    # Refused before the body is read: a body that is not a report gets the same answer.
    assert attacker.post(None, raw=b"not json").status_code == 429
    assert GpuSample.objects.filter(gpu__node=attacker.node).count() == 3
    assert Node.objects.get(name="attacker").last_seq == 3

    # Another node is counted on its own.
    assert victim.post(batch("victim", report(1, [gpu_reading(uuid="GPU-victim-0")]))).status_code == 200
    assert GpuSample.objects.filter(gpu__node=victim.node).count() == 1

    # The next minute the attacker may report again; seq 4 was never stored, so it is now.
    frozen_clock.now = FROZEN + 15
    assert attacker.post(batch("attacker", report(4))).status_code == 200
    assert Node.objects.get(name="attacker").last_seq == 4


def test_the_bound_holds_across_panel_processes(redis_url: str) -> None:
    """Two panel processes on one Redis (two gunicorn workers): the first spends the node's three
    requests of the minute, the second then refuses the fourth: the count lives in the shared
    cache, not in either process."""
    script = (
        "import django; django.setup()\n"
        "from fleet.models import Node\n"
        "from fleet.telemetry.agent_api import report_rate_wait\n"
        f"node = Node(pk=1, name='attacker', token_hash={secrets.token_hex(32)!r})\n"
        "import sys\n"
        f"print([report_rate_wait(node, now={FROZEN!r}) for _ in range(int(sys.argv[1]))])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"} | {
        "DJANGO_SETTINGS_MODULE": "fleet.project.settings",
        "AGENT_REPORTS_PER_MINUTE": "3",
        "REDIS_URL": redis_url,
    }

    def worker(requests: int) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, str(requests)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    assert worker(3) == "[0, 0, 0]"
    # Frozen 45.5 s into the minute: 14.5 s left, rounded up.
    assert worker(1) == "[15]"


# -- the agent keeps its reports on a 429 ----------------------------------------------------------


def host_agent(tmp_path: Path, answer: Any, **config: Any) -> tuple[HostAgent, list[httpx.Request], list[float]]:
    """An agent whose panel is ``answer`` (a request -> response function), on a clock the test moves."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    clock = [1_800_000_000.0]
    state = AgentState(tmp_path / "state.json")
    state.node_name, state.node_token = "gpu-a", "gfn_test-token"
    agent = HostAgent(
        AgentConfig(panel_url="http://panel.test", state_dir=tmp_path, node_name="gpu-a", **config),
        gpus=RecordedGpus(),
        runtime=FakeRuntime(),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        state=state,
        clock=lambda: clock[0],
    )
    return agent, seen, clock


def delivered_seqs(request: httpx.Request) -> list[int]:
    return [item["seq"] for item in json.loads(gzip.decompress(request.content))["reports"]]


def test_the_agent_keeps_its_reports_on_429_and_backs_off(tmp_path: Path) -> None:
    """A 429 is "panel busy": the agent already handles it as a 5xx or an unreachable panel.
    ``deliver`` drops a batch only on a 4xx other than 401, 408 and 429; ``tick`` then waits
    the interval times 2 to the number of failures (at most 60 s). It does not read Retry-After."""
    busy = [True]

    def panel(request: httpx.Request) -> httpx.Response:
        if busy[0]:
            return httpx.Response(429, headers={"Retry-After": "15"}, json={"error": {"message": "busy"}})
        last = delivered_seqs(request)[-1]
        return httpx.Response(200, json={"ack_seq": last, "desired": [], "report_interval_s": 5.0})

    agent, seen, clock = host_agent(tmp_path, panel)
    assert agent.tick() is None  # t=0: one report, posted, 429
    first = [report.seq for report in agent.buffer.oldest(10)]
    assert (len(seen), len(first), agent.failures) == (1, 1, 1)
    # Backoff after the first failure: the interval times 2**1, 5 x 2 = 10 s.
    assert agent.next_delivery == clock[0] + 10

    clock[0] += 5  # t=5: within the backoff, the report is buffered and nothing is posted
    assert agent.tick() is None
    assert (len(seen), len(agent.buffer)) == (1, 2)

    busy[0] = False
    clock[0] += 5  # t=10: the backoff is over; the two kept and a third new one go in one batch
    kept = [report.seq for report in agent.buffer.oldest(10)]
    assert kept[0] == first[0]
    assert agent.tick() is not None
    assert len(seen) == 2
    delivered = delivered_seqs(seen[1])
    assert delivered[:2] == kept and len(delivered) == 3
    assert len(agent.buffer) == 0 and agent.buffer.dropped == 0


def test_the_agent_tells_the_panel_its_port_range_when_it_registers(tmp_path: Path) -> None:
    def panel(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"node": "gpu-a", "node_token": "gfn_new", "report_interval_s": 5.0})

    agent, seen, _ = host_agent(tmp_path, panel, port_range=(18100, 18109))
    agent.state.node_token = None
    agent.register("gfj_join-token")
    sent = json.loads(seen[0].content)
    assert sent["port_range"] == [18100, 18109]
    assert protocol.Registration.model_validate(sent).port_range == (18100, 18109)
    assert agent.state.node_token == "gfn_new"
