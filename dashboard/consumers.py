"""WebSocket consumers: the browser's live feed of fleet events."""

from __future__ import annotations

import asyncio
import re
import time
from importlib import import_module
from types import SimpleNamespace
from typing import Any, cast

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib import auth
from django.http import HttpRequest

from fleet.events import FLEET_GROUP

GROUP_NAME = re.compile(r"^(fleet|pool\.\d{1,12}|node\.\d{1,12})$")
MAX_GROUPS = 32
SESSION_ENDED = 4401


def session_user_pk(session_key: str | None) -> Any:
    """The pk of the user whose session this is now, read afresh; None once it is gone, expired or outdated.

    ``auth.get_user`` refuses a session whose password hash no longer matches, so changing
    the password elsewhere ends it too.
    """
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(cast(HttpRequest, SimpleNamespace(session=store)))
    return user.pk if user.is_authenticated else None


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Relays events published on the ``fleet`` group, and the groups a page subscribes to, to signed-in users.

    A page sends ``{"subscribe": ["pool.3", "node.7"]}`` for what it shows; anything but
    ``fleet``, ``pool.<id>`` or ``node.<id>`` is refused, and a socket holds at most
    ``MAX_GROUPS`` groups, so a client cannot make the server join arbitrary groups.

    The socket lives only as long as the session that opened it: the session is read again
    before a send and on a timer while idle, at most every ``FLEET_SOCKET_SESSION_CHECK_S``,
    and once it has ended (logout, expiry, a password change) the socket is closed with 4401.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined: set[str] = {FLEET_GROUP}
        self.session_checked = time.monotonic()
        self.session_ended = False
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()
        self.session_watch = asyncio.create_task(self.session_watch_loop())

    async def session_alive(self) -> bool:
        """Whether the session still signs in the socket's user; closes the socket (4401) once it does not."""
        if self.session_ended:
            return False
        if time.monotonic() - self.session_checked < settings.FLEET_SOCKET_SESSION_CHECK_S:
            return True
        session = self.scope.get("session")
        if session is not None:  # the app's routing always has one (AuthMiddlewareStack)
            pk = await database_sync_to_async(session_user_pk)(session.session_key)
            if pk is None or pk != self.scope["user"].pk:
                self.session_ended = True
                await self.close(code=SESSION_ENDED)
                return False
        self.session_checked = time.monotonic()
        return True

    async def session_watch_loop(self) -> None:
        while await self.session_alive():
            await asyncio.sleep(max(settings.FLEET_SOCKET_SESSION_CHECK_S, 0.05))

    async def disconnect(self, code: int) -> None:
        watch = getattr(self, "session_watch", None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        for group in getattr(self, "groups_joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not await self.session_alive():
            return
        wanted = content.get("subscribe") if isinstance(content, dict) else None
        if not isinstance(wanted, list) or not all(isinstance(g, str) and GROUP_NAME.match(g) for g in wanted):
            await self.send_json({"kind": "error", "error": 'send {"subscribe": ["fleet", "pool.<id>", "node.<id>"]}'})
            return
        for group in wanted:
            if group not in self.groups_joined and len(self.groups_joined) < MAX_GROUPS:
                self.groups_joined.add(group)
                await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"kind": "subscribed", "groups": sorted(self.groups_joined)})

    async def fleet_event(self, message: dict[str, Any]) -> None:
        if await self.session_alive():
            await self.send_json(message["event"])
