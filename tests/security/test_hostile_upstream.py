"""A hostile upstream, as an attacker would run one: a real server on loopback feeding the gateway.

An engine the gateway routes to is not trusted. It may declare a body of gigabytes, stream
without end, drip one event at a time just under the read timeout, or report token counts
that are not numbers a request can have. The gateway bounds what it takes (size and time,
streamed or whole), ignores such counts, and logs every other request as before.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator

import httpx
import pytest

from tests.gateway.conftest import STUB_MODEL, LiveGateway, api_key, chat, client, live_gateway, make_ready
from tests.gateway.conftest import make_routed_pool as routed_pool

__all__ = ["api_key", "live_gateway"]

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 256 * 1024  # the largest response the gateway under test takes
WHOLE_TIME_S = 2.0  # the longest


class Hostile:
    """A raw HTTP/1.1 server on loopback whose every answer is ``answer(writer)``."""

    def __init__(self, answer: Callable[[asyncio.StreamWriter], object]) -> None:
        self.answer = answer
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                await self.answer(writer)  # type: ignore[misc]
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration, asyncio.CancelledError):
            writer.close()

    def start(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close the server and cancel the answers still running, then stop the loop."""

        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def hostile() -> Iterator[Callable[..., str]]:
    started: list[Hostile] = []

    def start(answer: Callable[[asyncio.StreamWriter], object]) -> str:
        server = Hostile(answer)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def sse(payload: dict[str, object]) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
TOKEN = {
    "id": "c",
    "object": "chat.completion.chunk",
    "model": STUB_MODEL,
    "choices": [{"index": 0, "delta": {"content": "x" * 200}}],
}


def bounded(live_gateway: Callable[..., LiveGateway]) -> LiveGateway:
    """A gateway that takes at most ``LIMIT`` bytes and ``WHOLE_TIME_S`` of a response."""
    return live_gateway(upstream_max_body_bytes=LIMIT, upstream_response_timeout_s=WHOLE_TIME_S)


def endless(*, pause_s: float) -> Callable[[asyncio.StreamWriter], Coroutine[None, None, None]]:
    """An answer that streams tokens and never ends, ``pause_s`` between them."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        while True:
            writer.write(sse(TOKEN))
            await writer.drain()
            await asyncio.sleep(pause_s)

    return answer


def streamed(gateway: LiveGateway, key: str) -> tuple[int, int]:
    """A streamed chat request read to its end, or to where the gateway cut it off: status and bytes."""
    received = 0
    with client(gateway, key).stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
        try:
            for piece in response.iter_bytes():
                received += len(piece)
        except httpx.HTTPError:
            pass  # the gateway cut the stream off
    return response.status_code, received


def test_a_declared_body_of_gigabytes_is_refused_before_it_is_read(
    live_gateway: Callable[..., LiveGateway], hostile: Callable[..., str], api_key: str
) -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(30)

    make_ready(routed_pool("chat-l"), hostile(answer))
    gateway = bounded(live_gateway)
    started = time.monotonic()
    response = client(gateway, api_key).post("/v1/chat/completions", json=chat())
    assert response.status_code == 502 and time.monotonic() - started < 5
    [log] = gateway.logs()
    assert log.status == 502 and "larger than the gateway takes" in log.error


def test_a_stream_without_end_is_cut_at_the_size_bound(
    live_gateway: Callable[..., LiveGateway], hostile: Callable[..., str], api_key: str
) -> None:
    make_ready(routed_pool("chat-l"), hostile(endless(pause_s=0)))
    gateway = bounded(live_gateway)
    status, received = streamed(gateway, api_key)
    assert status == 200
    assert received <= LIMIT + 64 * 1024, received
    [log] = gateway.logs()
    assert log.status == 502 and "larger than the gateway takes" in log.error


def test_a_stream_dripping_under_the_read_timeout_is_cut_at_the_whole_time_bound(
    live_gateway: Callable[..., LiveGateway], hostile: Callable[..., str], api_key: str
) -> None:
    make_ready(routed_pool("chat-l"), hostile(endless(pause_s=0.2)))
    gateway = bounded(live_gateway)
    started = time.monotonic()
    streamed(gateway, api_key)
    assert WHOLE_TIME_S <= time.monotonic() - started < WHOLE_TIME_S + 3
    [log] = gateway.logs()
    assert log.status == 502 and "longer than the gateway allows" in log.error


@pytest.mark.parametrize("prompt_tokens", [1e30, -5, "12", True, 10**12, None])
def test_token_counts_no_request_can_have_are_ignored_and_other_requests_still_logged(
    live_gateway: Callable[..., LiveGateway], hostile: Callable[..., str], api_key: str, prompt_tokens: object
) -> None:
    answers = iter([prompt_tokens, 7])

    async def answer(writer: asyncio.StreamWriter) -> None:
        usage = {"prompt_tokens": next(answers), "completion_tokens": 3, "total_tokens": 10}
        body = json.dumps({"id": "c", "object": "chat.completion", "model": STUB_MODEL, "choices": [], "usage": usage})
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body.encode()
        )
        await writer.drain()

    make_ready(routed_pool("chat-l"), hostile(answer))
    gateway = bounded(live_gateway)
    http = client(gateway, api_key)
    assert [http.post("/v1/chat/completions", json=chat()).status_code for _ in range(2)] == [200, 200]
    bad, good = gateway.logs()
    # A count no request can have is not believed: the gateway's own count of the prompt stands.
    assert bad.status == 200 and not bad.tokens_from_usage
    assert bad.prompt_tokens is not None and bad.prompt_tokens != prompt_tokens and bad.prompt_tokens < 100
    assert good.tokens_from_usage and (good.prompt_tokens, good.output_tokens) == (7, 3)
