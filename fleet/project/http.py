"""uvicorn's httptools protocol with deadlines for receiving a request (slow-client protection).

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a
client takes to send one: a client that trickles a header a byte at a time, or a body
slower than any real client, holds a connection and its buffers for as long as it likes
(the "slowloris" pattern), and an ASGI middleware cannot help, since the app sees a request
only once its headers are in. Here each request must have its headers within
``HTTP_HEADER_TIMEOUT_S`` of its first byte (or of the connection, for the first request),
and its whole body within ``HTTP_BODY_TIMEOUT_S`` of its headers; else the connection is
closed (with a 408 when nothing of a response was sent yet). Responses, however long a
stream runs, and WebSocket connections are not bounded here.

Every uvicorn the README starts uses it: ``make run`` and ``make serve`` (``--http
fleet.project.http:ReadDeadlineProtocol``) and the dedicated gateway (its protocol derives
from this one). Servers that are not uvicorn (gunicorn for the report pool) sit behind a
proxy that bounds reads (nginx's ``client_header_timeout`` and ``client_body_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gpufleet.http")


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        seconds = float(value) if value else default
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: expected a number of seconds") from exc
    if seconds <= 0:
        raise ValueError(f"{name}={value!r}: expected a number of seconds above 0")
    return seconds


HEADER_TIMEOUT_S = _seconds("HTTP_HEADER_TIMEOUT_S", 10.0)
BODY_TIMEOUT_S = _seconds("HTTP_BODY_TIMEOUT_S", 30.0)
TIMEOUT_BODY = b"The request was not sent in time.\n"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n\r\n" + TIMEOUT_BODY
)


# After the 408, how long the connection stays half-open, its input read and dropped: closing
# at once with the client's bytes unread makes the kernel reset it, and a reset can destroy
# the 408 before the client reads it.
LINGER_S = 1.0


class ReadDeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes a connection whose request does not arrive in time."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    _read_deadline: asyncio.TimerHandle | None = None
    _timed_out = False

    def data_received(self, data: bytes) -> None:
        if self._timed_out:
            return  # the request was cut off: what the client still sends is dropped
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._deadline(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._deadline(self.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline(None)

    def handle_websocket_upgrade(self) -> None:
        self._deadline(None)
        super().handle_websocket_upgrade()

    def _deadline(self, seconds: float | None) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        if seconds is not None:
            self._read_deadline = self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        log.warning("closing the connection from %s: its request did not arrive in time", self.client or "a client")
        self._timed_out = True
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(TIMEOUT_RESPONSE)
            if cycle is not None:
                cycle.response_complete = True
                cycle.disconnected = True
                cycle.message_event.set()
        flush = getattr(self.transport, "flush", None)  # the gateway's coalescing transport holds writes
        if flush is not None:
            flush()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
