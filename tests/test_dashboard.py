"""The landing page and the live socket: signed-in users only, showing the real fleet."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client
from django.urls import reverse

from dashboard.consumers import FleetConsumer
from fleet.events import event_publish
from tests.factories import make_gpu, make_instance, make_node, make_pool


@pytest.mark.django_db
def test_landing_page_requires_login(client: Client) -> None:
    response = client.get(reverse("dashboard:index"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_landing_page_lists_nodes_and_pools(admin_client: Client) -> None:
    real = make_node("rack1-h100")
    make_gpu(real, 0, "NVIDIA H100 80GB HBM3")
    make_gpu(real, 1, "NVIDIA H100 80GB HBM3")
    make_node("demo-l4", simulated=True)
    pool = make_pool("chat-l")
    make_instance(pool, real.gpus.first(), actual_state="ready")

    page = admin_client.get(reverse("dashboard:index")).content.decode()

    assert "rack1-h100" in page and "demo-l4" in page
    assert page.count('class="badge sim">simulated') == 1
    assert "48.0\xa0GB" in page  # two 24 GiB GPUs from the factory
    assert "chat-l" in page and "qwen3-4b-chat-bf16" in page
    assert "P95 time to first token &lt;= 500 ms" in page
    assert "1 / 0 / 1" in page


@pytest.mark.django_db
def test_empty_fleet_says_how_to_start(admin_client: Client) -> None:
    page = admin_client.get(reverse("dashboard:index")).content.decode()
    assert "No GPU hosts yet" in page and reverse("admin:fleet_node_add") in page


def connect(user: object) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
    communicator.scope["user"] = user
    return communicator


@pytest.mark.django_db(transaction=True)
def test_socket_refuses_anonymous_users(in_memory_channel_layer: None) -> None:
    async def attempt() -> tuple[bool, int | None]:
        communicator = connect(AnonymousUser())
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    assert async_to_sync(attempt)() == (False, 4401)


@pytest.mark.django_db(transaction=True)
def test_socket_relays_fleet_events_to_signed_in_users(in_memory_channel_layer: None) -> None:
    async def receive() -> dict[str, object]:
        communicator = connect(User(username="ops", is_active=True))
        connected, _ = await communicator.connect()
        assert connected
        await sync_to_async(event_publish)(kind="node", payload={"node": "rack1-h100", "status": "online"})
        message = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return message

    assert async_to_sync(receive)() == {"kind": "node", "node": "rack1-h100", "status": "online"}
