"""Every page, spend pages and the admin included, says so while the fleet is simulated, and only then."""

from __future__ import annotations

import pytest
from django.test import Client

from fleet.decide.services import node_decommission
from tests.factories import make_node

pytestmark = pytest.mark.django_db

PAGES = ("/", "/costs/", "/decisions/", "/requests/", "/hosts/add/", "/admin/", "/admin/fleet/pricerate/")
BANNER = 'class="demo-banner"'


def banners(client: Client) -> dict[str, bool]:
    return {path: BANNER in client.get(path).content.decode() for path in PAGES}


def test_the_banner_is_on_every_page_while_a_simulated_host_is_in_the_fleet(admin_client: Client) -> None:
    make_node("real-h100")
    assert not any(banners(admin_client).values()), "a real fleet is not called simulated"

    simulated = make_node("simulated-host-1", simulated=True)
    shown = banners(admin_client)
    assert all(shown.values()), shown
    assert "1 simulated host " in admin_client.get("/costs/").content.decode()

    node_decommission(node=simulated)  # it left the fleet; its history stays, the banner goes
    assert not any(banners(admin_client).values())


def test_signed_out_visitors_see_no_banner(client: Client) -> None:
    make_node("simulated-host-1", simulated=True)
    assert BANNER not in client.get("/admin/login/").content.decode()
