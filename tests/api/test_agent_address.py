"""Where the gateway reaches a host's servers: the address the host advertises, else the one the panel sees it at."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fleet.models import Gpu, JoinToken, Node
from tests.api.test_agent_api import Agent, batch, instance_sample, join_token, report
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db


def register(client: Client, token: str, peer: str, **fields: Any) -> Any:
    body = {"join_token": token, "name": "gpu-a", "hostname": "gpu-a.local", "agent_version": "0.1.0", **fields}
    return client.post(reverse("agent-register"), json.dumps(body), content_type="application/json", REMOTE_ADDR=peer)


def post_report(client: Client, token: str, body: dict[str, Any]) -> None:
    response = client.post(
        reverse("agent-report"), json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 200, response.content


def test_a_host_without_an_advertised_address_is_recorded_at_the_address_the_panel_sees() -> None:
    client = Client()
    assert register(client, join_token(), "10.1.2.3").status_code == 201
    assert Node.objects.get().address == "10.1.2.3"


def test_an_ipv4_mapped_peer_is_recorded_as_ipv4() -> None:
    assert register(Client(), join_token(), "::ffff:10.1.2.3").status_code == 201
    assert Node.objects.get().address == "10.1.2.3"


@pytest.mark.parametrize("advertised", ["10.9.9.9", "gpu7.dc1.example", "2001:db8::7"])
def test_an_advertised_address_is_used(advertised: str) -> None:
    response = register(Client(), join_token(), "10.1.2.3", advertise_address=advertised)
    assert response.status_code == 201, response.content
    assert Node.objects.get().address == advertised


@pytest.mark.parametrize("advertised", ["127.0.0.1", "localhost", "::1", "0.0.0.0"])
def test_a_loopback_address_advertised_from_another_machine_is_refused(advertised: str) -> None:
    token = join_token(max_uses=1)
    response = register(Client(), token, "10.1.2.3", advertise_address=advertised)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "loopback" in message and "10.1.2.3" in message and "--advertise-address" in message
    assert not Node.objects.exists()
    assert JoinToken.objects.get().uses == 0
    assert register(Client(), token, "10.1.2.3").status_code == 201, "the refused try spent no use"


def test_the_demo_all_on_one_machine_stays_on_loopback() -> None:
    response = register(Client(), join_token(), "127.0.0.1", advertise_address="127.0.0.1")
    assert response.status_code == 201
    node = Node.objects.get()
    assert node.address == "127.0.0.1"
    token = response.json()["node_token"]
    post_report(Client(), token, batch("gpu-a", report(1)))
    instance = make_instance(make_pool(), Gpu.objects.get(node=node))
    post_report(Client(), token, batch("gpu-a", report(2, instances=[instance_sample(instance)])))
    instance.refresh_from_db()
    assert instance.endpoint == "http://127.0.0.1:8100"


@pytest.mark.parametrize("advertised", ["not an address", "-bad.example", "a" * 254, "10.0.0.1:80"])
def test_an_address_that_is_neither_ip_nor_host_name_is_refused(advertised: str) -> None:
    response = register(Client(), join_token(), "10.1.2.3", advertise_address=advertised)
    assert response.status_code == 400
    assert "advertise_address: Value error, not an IP address or a host name" in " ".join(
        response.json()["error"]["details"]
    )
    assert not Node.objects.exists()


def test_reports_keep_the_address_current_and_endpoints_reachable() -> None:
    agent = Agent(Client(REMOTE_ADDR="10.1.2.3"))
    assert agent.post(batch("gpu-a", report(1))).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))
    response = agent.post(batch("gpu-a", report(2, instances=[instance_sample(instance)])))
    assert response.status_code == 200, response.content
    instance.refresh_from_db()
    agent.node.refresh_from_db()
    assert agent.node.address == "10.1.2.3"
    assert instance.endpoint == "http://10.1.2.3:8100"

    agent.client = Client(REMOTE_ADDR="2001:db8::5")
    assert agent.post(batch("gpu-a", report(3, instances=[instance_sample(instance)]))).status_code == 200
    instance.refresh_from_db()
    assert instance.endpoint == "http://[2001:db8::5]:8100"


def test_a_reported_advertised_address_wins_over_the_peer() -> None:
    agent = Agent(Client(REMOTE_ADDR="192.0.2.10"))  # a NAT in between
    body = report(1)
    body["host"]["advertise_address"] = "10.0.0.7"
    assert agent.post(batch("gpu-a", body)).status_code == 200
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))
    body = report(2, instances=[instance_sample(instance, endpoint="http://10.0.0.7:8100")])
    body["host"]["advertise_address"] = "10.0.0.7"
    assert agent.post(batch("gpu-a", body)).status_code == 200
    instance.refresh_from_db()
    agent.node.refresh_from_db()
    assert (agent.node.address, instance.endpoint) == ("10.0.0.7", "http://10.0.0.7:8100")


def test_a_proxy_header_counts_only_when_configured(settings: Any) -> None:
    forwarded = {"HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.1.2.3", "REMOTE_ADDR": "10.0.0.1"}
    assert register(Client(**forwarded), join_token(), "10.0.0.1").status_code == 201
    assert Node.objects.get().address == "10.0.0.1", "an unconfigured header is anyone's to forge"

    Node.objects.all().delete()
    settings.AGENT_ADDRESS_HEADER = "X-Forwarded-For"
    assert register(Client(**forwarded), join_token(), "10.0.0.1").status_code == 201
    assert Node.objects.get().address == "10.1.2.3", "the address the proxy itself appended"
