"""A host cannot move itself or widen its ports; an operator can, in the admin, and only to
values that are an address and a range."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from fleet.models import Node
from fleet.telemetry.claims import endpoint_problem, node_ports
from tests.factories import make_node, node_form

pytestmark = pytest.mark.django_db


def change(admin_client: Client, node: Node, **fields: str) -> str:
    """POST the node's change form with ``fields``; the page's text when it is shown again (an error)."""
    data = node_form(node.name, **{"address": node.address, **fields})
    response = admin_client.post(reverse("admin:fleet_node_change", args=[node.pk]), data)
    return "" if response.status_code == 302 else response.content.decode()


def test_an_operator_moves_a_host_and_its_servers_are_reached_there(admin_client: Client) -> None:
    node = make_node()
    Node.objects.filter(pk=node.pk).update(address="10.0.0.5")
    node.refresh_from_db()
    assert change(admin_client, node, address="10.0.0.7", port_low="9000", port_high="9009") == ""
    node.refresh_from_db()
    assert (node.address, node.port_low, node.port_high) == ("10.0.0.7", 9000, 9009)
    ports = node_ports(node.port_low, node.port_high)
    assert endpoint_problem("http://10.0.0.7:9005", node.address, ports) == ""
    assert endpoint_problem("http://10.0.0.7:8100", node.address, ports) != ""
    assert endpoint_problem("http://10.0.0.5:9005", node.address, ports) != ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"address": "not an address!"}, "not an IP address or a host name"),
        ({"port_low": "9010", "port_high": "9000"}, "the range ends below where it starts (9010)"),
        ({"port_high": "70000"}, "less than or equal to 65535"),
    ],
)
def test_an_address_or_range_that_is_not_one_is_refused_and_nothing_changes(
    admin_client: Client, fields: dict[str, str], message: str
) -> None:
    node = make_node()
    Node.objects.filter(pk=node.pk).update(address="10.0.0.5")
    node.refresh_from_db()
    page = change(admin_client, node, **fields)
    assert message in page
    node.refresh_from_db()
    assert (node.address, node.port_low, node.port_high) == ("10.0.0.5", 8100, 8199)
