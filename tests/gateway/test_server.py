"""The gateway's HTTP protocol: a response leaves in one write, a stream's pieces at the end of each step."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.server import ServerState

from fleet.gateway.server import CoalescingTransport, GatewayHttpProtocol, server_config

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-length: 2\r\n\r\n{}"


class RecordingTransport(asyncio.Transport):
    """A connection that keeps every ``write`` it is given, one entry a call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8001)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def whole(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def serve(app: Any, transport: RecordingTransport | None = None) -> RecordingTransport:
    """Feed one request to the protocol on a fresh loop and let the app run to its end."""
    transport = transport or RecordingTransport()

    async def main() -> RecordingTransport:
        config = server_config(app, host="127.0.0.1", port=0)
        config.load()
        protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(transport)
        protocol.data_received(REQUEST)
        for _ in range(10):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    return asyncio.run(main())


def test_a_whole_response_is_one_write() -> None:
    transport = serve(whole)
    assert len(transport.writes) == 1, transport.writes
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_a_streams_pieces_leave_at_the_end_of_each_step_not_at_the_end_of_the_stream() -> None:
    writes_before_last: list[int] = []
    transport = RecordingTransport()

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        # Give the loop a turn, as a stream waiting for its next token does.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        writes_before_last.append(len(transport.writes))
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    serve(streaming, transport)
    # The head and the first event went out together before the second event was sent.
    assert writes_before_last == [1]
    first, last = transport.writes
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"9\r\ndata: 1\n\n\r\n")
    assert last == b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"


def test_close_sends_what_is_held_first() -> None:
    async def main() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        transport.write(b"")
        transport.close()
        await asyncio.sleep(0)
        return real

    real = asyncio.run(main())
    assert real.writes == [b"HTTP/1.1 503 Service Unavailable\r\n\r\n"]
    assert real.closed


def test_writes_after_the_peer_left_are_dropped() -> None:
    async def main() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"late")
        real.closed = True
        await asyncio.sleep(0)
        return real

    assert asyncio.run(main()).writes == []
