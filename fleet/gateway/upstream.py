"""A small HTTP/1.1 client with keep-alive, for talking to vLLM servers on the hot path.

General-purpose clients (httpx, aiohttp) spend hundreds of microseconds a request on
features a gateway to a handful of known upstreams never uses; this one writes the
request in one go, parses a status line and a few headers, and hands the body over as it
arrives (Content-Length, chunked, or until close), which keeps the added latency well
under a millisecond. Connections are reused per upstream; a reused connection that the
server closed while idle is retried once on a fresh one, before any response byte,
which is what every keep-alive client does.

An upstream is not trusted: a response body larger than ``max_body_bytes`` (declared or
streamed) or one that takes longer than ``response_timeout_s`` in all is cut off as
broken, so a hostile or broken server holds neither the gateway's memory nor a client.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEADER_END = b"\r\n\r\n"
CRLF = b"\r\n"
WRITE_HIGH_WATER = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
# A completion's whole body, or a stream's: a 128k-token answer as server-sent events is
# about 30 MB; more is a server misbehaving.
MAX_BODY_BYTES = 64 * 1024 * 1024
# A response's whole time, head to last byte: a long generation at a slow rate, with room.
RESPONSE_TIMEOUT_S = 1800.0


class UpstreamUnavailable(Exception):
    """No response came back: connection refused or reset, or no headers in time."""


class UpstreamBroken(Exception):
    """The response started but its body ended early or stalled."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one instance listens, parsed once when the routing table is built."""

    host: str
    port: int
    tls: bool
    authority: bytes
    base_path: str = ""

    @classmethod
    def parse(cls, url: str) -> Target:
        """``http://host:port`` or ``https://host[:port][/prefix]``; ``/v1`` paths are appended to it."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            authority=parts.netloc.encode("idna"),
            base_path=parts.path.rstrip("/"),
        )


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass(slots=True)
class UpstreamResponse:
    """Status, lower-cased headers, and a body to read whole or piece by piece, once."""

    status: int
    headers: dict[bytes, bytes]
    _connection: _Connection
    _pool: UpstreamPool
    _target: Target
    _keep_alive: bool
    _read_timeout_s: float
    _deadline: float
    _max_bytes: int
    _received: int = field(default=0)
    _done: bool = field(default=False)

    def _timeout(self) -> asyncio.Timeout:
        """The next read's bound: the idle read timeout, or what is left of the response's time."""
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError("the response took longer than the gateway allows in all")
        return asyncio.timeout(min(self._read_timeout_s, left))

    def _count(self, size: int) -> None:
        self._received += size
        if self._received > self._max_bytes:
            raise ValueError(f"the response is larger than the gateway takes ({self._max_bytes} bytes)")

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the server sends it: each HTTP chunk as soon as it arrives."""
        reader = self._connection.reader
        try:
            length = self.headers.get(b"content-length")
            if self.headers.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
                async for piece in self._chunked(reader):
                    yield piece
            elif length is not None:
                if not length.isdigit():
                    raise ValueError(f"bad content-length {length[:40]!r}")
                self._count(int(length))
                async with self._timeout():
                    body = await reader.readexactly(int(length))
                if body:
                    yield body
            else:
                self._keep_alive = False
                while True:
                    async with self._timeout():
                        piece = await reader.read(65536)
                    if not piece:
                        break
                    self._count(len(piece))
                    yield piece
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            self.close()
            if isinstance(exc, TimeoutError) and asyncio.get_running_loop().time() >= self._deadline:
                exc = TimeoutError("the response took longer than the gateway allows in all")
            raise UpstreamBroken(f"response body from {self._target.host}:{self._target.port} broke: {exc!r}") from exc
        self._finish()

    async def _chunked(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while True:
            async with self._timeout():
                line = await reader.readuntil(CRLF)
                size = int(line.split(b";", 1)[0], 16)
                if size < 0:
                    raise ValueError(f"bad chunk size {line[:40]!r}")
                if size == 0:
                    while (await reader.readuntil(CRLF)) != CRLF:
                        pass
                    return
                self._count(size)
                piece = await reader.readexactly(size + 2)
            yield piece[:-2]

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._keep_alive:
            self._pool.release(self._target, self._connection)
        else:
            self._connection.close()

    def close(self) -> None:
        """Drop the connection without reading the rest: the server sees the client leave."""
        if not self._done:
            self._done = True
            self._connection.close()


class UpstreamPool:
    """Idle keep-alive connections per upstream, and the request/response exchange."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        header_timeout_s: float = 600.0,
        read_timeout_s: float = 600.0,
        response_timeout_s: float = RESPONSE_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_idle_per_target: int = 64,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.header_timeout_s = header_timeout_s
        self.read_timeout_s = read_timeout_s
        self.response_timeout_s = response_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_idle_per_target = max_idle_per_target
        self._idle: dict[Target, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def _open(self, target: Target) -> _Connection:
        context = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        async with asyncio.timeout(self.connect_timeout_s):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=context, limit=MAX_HEADER_BYTES
            )
        return _Connection(reader, writer)

    def _take(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.close()
        return None

    def release(self, target: Target, connection: _Connection) -> None:
        idle = self._idle.setdefault(target, [])
        if len(idle) < self.max_idle_per_target and not connection.writer.is_closing():
            idle.append(connection)
        else:
            connection.close()

    async def request(self, target: Target, method: bytes, path: bytes, body: bytes) -> UpstreamResponse:
        """Send one request; raise ``UpstreamUnavailable`` if no response head came back."""
        head = b"".join(
            (
                method,
                b" ",
                target.base_path.encode() + path,
                b" HTTP/1.1\r\nhost: ",
                target.authority,
                b"\r\ncontent-type: application/json\r\naccept: */*\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
            )
        )
        for attempt in range(2):
            connection = self._take(target)
            reused = connection is not None
            try:
                if connection is None:
                    connection = await self._open(target)
                connection.writer.write(head + body if len(body) < WRITE_HIGH_WATER else head)
                if len(body) >= WRITE_HIGH_WATER:
                    connection.writer.write(body)
                    await connection.writer.drain()
                async with asyncio.timeout(self.header_timeout_s):
                    raw = await connection.reader.readuntil(HEADER_END)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                if connection is not None:
                    connection.close()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    continue
                raise UpstreamUnavailable(f"{target.host}:{target.port}: {exc!r}") from exc
            return self._response(raw, connection, target)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _response(self, raw: bytes, connection: _Connection, target: Target) -> UpstreamResponse:
        lines = raw[:-4].split(CRLF)
        try:
            version, code = lines[0].split(b" ", 2)[:2]
            status = int(code)
        except ValueError as exc:
            connection.close()
            raise UpstreamUnavailable(f"{target.host}:{target.port}: bad status line {lines[0][:80]!r}") from exc
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        deadline = asyncio.get_running_loop().time() + self.response_timeout_s
        return UpstreamResponse(
            status, headers, connection, self, target, keep_alive, self.read_timeout_s, deadline, self.max_body_bytes
        )

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
