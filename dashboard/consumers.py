"""WebSocket consumers: the browser's live feed of fleet events."""

from __future__ import annotations

import re
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from fleet.events import FLEET_GROUP

GROUP_NAME = re.compile(r"^(fleet|pool\.\d{1,12}|node\.\d{1,12})$")
MAX_GROUPS = 32


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Relays events published on the ``fleet`` group, and the groups a page subscribes to, to signed-in users.

    A page sends ``{"subscribe": ["pool.3", "node.7"]}`` for what it shows; anything but
    ``fleet``, ``pool.<id>`` or ``node.<id>`` is refused, and a socket holds at most
    ``MAX_GROUPS`` groups, so a client cannot make the server join arbitrary groups.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined: set[str] = {FLEET_GROUP}
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
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
        await self.send_json(message["event"])
