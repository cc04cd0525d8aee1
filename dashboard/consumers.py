"""WebSocket consumers: the browser's live feed of fleet events."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from fleet.events import FLEET_GROUP


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """Relays events published on the ``fleet`` group to signed-in users."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)

    async def fleet_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
