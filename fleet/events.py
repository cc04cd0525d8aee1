"""Real-time events: one place that puts fleet changes on the Channels group."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

FLEET_GROUP = "fleet"


def event_publish(*, kind: str, payload: dict[str, Any]) -> None:
    """Send a small event to every browser watching the fleet."""
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(FLEET_GROUP, {"type": "fleet.event", "event": {"kind": kind, **payload}})
