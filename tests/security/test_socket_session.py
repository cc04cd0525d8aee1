"""A live WebSocket ends when the session that opened it ends: logout, expiry or a password change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from dashboard.routing import websocket_urlpatterns
from fleet.events import event_publish

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in() -> Client:
    User.objects.create_superuser("ops", "ops@example.com", "a-long-password-1")
    browser = Client()
    browser.force_login(User.objects.get(username="ops"))
    return browser


def socket_for(browser: Client) -> WebsocketCommunicator:
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    app = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    return WebsocketCommunicator(app, "/ws/fleet/", headers=[(b"cookie", cookie.encode()), (b"host", b"testserver")])


def closed_after(end_session: Any, browser: Client, *, publish: bool) -> dict[str, Any]:
    """What the socket gets after ``end_session``: an event, or a close."""

    async def run() -> dict[str, Any]:
        socket = socket_for(browser)
        connected, _ = await socket.connect()
        assert connected
        await sync_to_async(end_session)()
        if publish:
            await sync_to_async(event_publish)(kind="node", payload={"node": "rack1", "status": "online"})
        output = await socket.receive_output(timeout=5)
        await socket.disconnect()
        return output

    return async_to_sync(run)()


def test_logout_closes_the_socket_before_the_next_event(in_memory_channel_layer: None, settings: Any) -> None:
    settings.FLEET_SOCKET_SESSION_CHECK_S = 0
    browser = signed_in()
    output = closed_after(browser.logout, browser, publish=True)
    assert output == {"type": "websocket.close", "code": 4401}


def test_an_expired_session_closes_an_idle_socket(in_memory_channel_layer: None, settings: Any) -> None:
    settings.FLEET_SOCKET_SESSION_CHECK_S = 0.2
    browser = signed_in()

    def expire() -> None:
        Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))

    output = closed_after(expire, browser, publish=False)
    assert output == {"type": "websocket.close", "code": 4401}


def test_a_password_change_elsewhere_closes_the_socket(in_memory_channel_layer: None, settings: Any) -> None:
    settings.FLEET_SOCKET_SESSION_CHECK_S = 0
    browser = signed_in()

    def change_password() -> None:
        user = User.objects.get(username="ops")
        user.set_password("another-long-password-2")
        user.save()

    output = closed_after(change_password, browser, publish=True)
    assert output == {"type": "websocket.close", "code": 4401}
