"""Events for a shared channel layer leave the request at once, in order, and a failing layer costs only them."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from fleet import events
from fleet.events import Publisher, event_publish, events_flush


class RecordingLayer:
    """A stand-in for a shared (Redis) layer: records what it is sent; fails on request."""

    def __init__(self, *, fail_on: str = "", hold: threading.Event | None = None) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail_on = fail_on
        self.hold = hold

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if self.hold is not None:
            self.hold.wait(5)
        if message["event"]["kind"] == self.fail_on:
            raise ConnectionError("Redis is restarting")
        self.sent.append((group, message["event"]))


def test_events_arrive_in_the_order_published_and_a_failure_skips_only_its_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    layer = RecordingLayer(fail_on="broken")
    monkeypatch.setattr(events, "get_channel_layer", lambda: layer)
    for n in range(200):
        event_publish(kind="broken" if n == 50 else "gpus", payload={"n": n}, groups=("node.1", "fleet"))
    assert events_flush()
    assert [event["n"] for group, event in layer.sent if group == "node.1"] == [n for n in range(200) if n != 50]
    assert [group for group, _ in layer.sent[:2]] == ["node.1", "fleet"]
    assert "fleet event broken not sent" in caplog.text


def test_a_stuck_layer_holds_a_bounded_backlog_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(events, "PUBLISH_BACKLOG", 10)
    hold = threading.Event()
    layer = RecordingLayer(hold=hold)
    publisher = Publisher()
    with caplog.at_level(logging.WARNING):
        for n in range(40):
            publisher.put(layer, ("fleet",), {"event": {"kind": "gpus", "n": n}})
    hold.set()
    assert publisher.idle()
    assert 10 <= len(layer.sent) <= 11  # the backlog, and the one in flight when it filled
    assert [event["n"] for _, event in layer.sent] == sorted(event["n"] for _, event in layer.sent)
    assert "dropped, the channel layer is not keeping up" in caplog.text
