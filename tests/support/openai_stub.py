"""A fast OpenAI-compatible stand-in for vLLM, on loopback, for gateway tests and the benchmark.

It answers /v1/chat/completions and /v1/completions in microseconds (plain JSON, or a
short SSE stream with a usage event when asked for one), so what a test or benchmark
measures is the gateway, not a model. It can also be told to fail with a status, to
exercise failover, or to open chat streams as vLLM does, with an empty role chunk sent
before the first token is ready. Only the standard library, so any virtualenv can run it:
``python tests/support/openai_stub.py --port 9000`` serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from collections import deque
from typing import Any

CONTENT = "ok"
COMPLETION_TOKENS = 3


def _prompt_tokens(payload: dict[str, Any]) -> int:
    text = json.dumps(payload.get("messages") or payload.get("prompt") or "")
    return max(1, len(text) // 4)


def _chat_body(model: str, prompt_tokens: int, endpoint: str) -> bytes:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": prompt_tokens + COMPLETION_TOKENS,
    }
    if endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": CONTENT}}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": CONTENT}
        kind = "text_completion"
    choice["finish_reason"] = "length"
    body = {"id": "cmpl-stub", "object": kind, "created": 0, "model": model, "choices": [choice], "usage": usage}
    return json.dumps(body, separators=(",", ":")).encode()


def _event(model: str, choices: list[dict[str, Any]]) -> bytes:
    chunk = {"id": "cmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def role_event(model: str) -> bytes:
    """vLLM's first chat chunk: the role, with empty content, before any token is generated."""
    return _event(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])


def _stream_events(model: str, prompt_tokens: int, endpoint: str, include_usage: bool) -> list[bytes]:
    events = []
    for index in range(COMPLETION_TOKENS):
        if endpoint == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": CONTENT[index % len(CONTENT)]}}
        else:
            choice = {"index": 0, "text": CONTENT[index % len(CONTENT)]}
        choice["finish_reason"] = "length" if index == COMPLETION_TOKENS - 1 else None
        events.append(_event(model, [choice]))
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": prompt_tokens + COMPLETION_TOKENS,
        }
        chunk = {"id": "cmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": []}
        chunk["usage"] = usage
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class OpenAIStub:
    """The stub server; ``start()`` runs it on a thread of its own, ``serve()`` in the caller's loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        fail_status: int | None = None,
        first_token_after_s: float | None = None,
    ) -> None:
        """``first_token_after_s``: chat streams open with ``role_event`` at once, tokens follow that much later."""
        self.host = host
        self.port = port
        self.fail_status = fail_status
        self.first_token_after_s = first_token_after_s
        self.requests = 0
        self.bodies: deque[dict[str, Any]] = deque(maxlen=100)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> OpenAIStub:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="openai-stub")
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.serve()

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                path = head.split(b" ", 2)[1]
                self.requests += 1
                for index, part in enumerate(self._answer(path, body)):
                    if index:
                        await asyncio.sleep(self.first_token_after_s or 0)
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, path: bytes, body: bytes) -> list[bytes]:
        """The response in the parts it is written in, a ``first_token_after_s`` pause between them."""
        if self.fail_status is not None:
            error = b'{"error":{"message":"stub told to fail"}}'
            status = f"HTTP/1.1 {self.fail_status} Failing\r\n".encode()
            return [status + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(error) + error]
        payload = json.loads(body or b"{}")
        self.bodies.append(payload)
        endpoint = "chat" if path.endswith(b"/chat/completions") else "completions"
        model = str(payload.get("model", ""))
        prompt_tokens = _prompt_tokens(payload)
        if payload.get("stream"):
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            events = _stream_events(model, prompt_tokens, endpoint, include_usage)
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            if self.first_token_after_s is not None and endpoint == "chat":
                role = role_event(model)
                return [head + b"%x\r\n%s\r\n" % (len(role), role), chunks + b"0\r\n\r\n"]
            return [head + chunks + b"0\r\n\r\n"]
        answer = _chat_body(model, prompt_tokens, endpoint)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer)
        return [head + answer]


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stub upstream on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:
        from asyncio import run
    run(OpenAIStub(args.host, args.port).serve())


if __name__ == "__main__":
    main()
