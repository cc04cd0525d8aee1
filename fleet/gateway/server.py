"""uvicorn's httptools protocol for the dedicated gateway, with each response sent in one piece.

An ASGI server writes a response's head when the app sends ``http.response.start`` and
its body when the app sends ``http.response.body``: two ``send`` calls for every
non-streamed answer, each a system call that sends a segment and wakes the client. Here
the protocol's transport holds what is written within one step of the event loop and
hands it over in one write: at once when the response completes, else (a stream's head
and events) at the end of the step, so nothing waits for more than the current step.
In the gateway benchmark at 500 requests a second this took about 20 us off the median.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from fleet.project.http import ReadDeadlineProtocol

KEEP_ALIVE_S = 75


class CoalescingTransport:
    """A transport whose writes within one event-loop step leave as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Hand everything held to the real transport now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(piece) for piece in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(ReadDeadlineProtocol):
    """The panel's protocol (uvicorn's httptools one with read deadlines) on a ``CoalescingTransport``;
    flow control stays on the real one."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def server_config(app: Any, *, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    """How a gateway process serves: ``GatewayHttpProtocol`` on uvloop, HTTP only, nothing unused per request."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="auto",
        http=GatewayHttpProtocol,
        ws="none",
        # Proxy-header parsing and the Server header cost tens of microseconds a request; unused here.
        proxy_headers=False,
        server_header=False,
        # Longer than the idle timeout of the load balancers in front (60 s is the usual):
        # a server that closes an idle connection first races the balancer's next request
        # on it, which the client then sees fail.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
