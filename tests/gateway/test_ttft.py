"""Time to first token is the time to the first generated token, as the ``openai`` client sees it.

vLLM opens a chat stream with an empty role chunk before any token is computed; counting
from that event gave a TTFT of about 1 ms beside a latency of seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from fleet.gateway.protocol import SseRelay
from tests.gateway.conftest import STUB_MODEL, LiveGateway, make_ready, make_routed_pool
from tests.support.openai_stub import OpenAIStub, role_event

FIRST_TOKEN_AFTER_S = 0.3
# The client's figure also holds its own request building, the connection and the relay back to
# it; on loopback that is milliseconds, so 100 ms is slack for a busy 2-core machine.
TOLERANCE_MS = 100


def event(choice: dict[str, Any], **extra: Any) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": STUB_MODEL, "choices": [choice], **extra}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@pytest.fixture
def slow_first_token() -> Iterator[OpenAIStub]:
    server = OpenAIStub(first_token_after_s=FIRST_TOKEN_AFTER_S).start()
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_the_logged_ttft_agrees_with_the_openai_clients_first_content_chunk(
    live_gateway: Callable[..., LiveGateway], slow_first_token: OpenAIStub, api_key: str
) -> None:
    make_ready(make_routed_pool("chat-l"), slow_first_token.base_url)
    live = live_gateway()
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_key, max_retries=0, timeout=30)
    ask = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True}
    # A first request pays the client's lazy imports and the connections, which are not time to first token.
    list(client.chat.completions.create(**ask))

    started = time.perf_counter()
    stream = client.chat.completions.create(**ask)
    chunks, first_content = [], None
    for chunk in stream:
        chunks.append(chunk)
        if first_content is None and chunk.choices and chunk.choices[0].delta.content:
            first_content = time.perf_counter()
    assert first_content is not None
    client_ttft_ms = (first_content - started) * 1000

    _warm_up, log = live.logs()
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    assert log.ttft_ms is not None and log.ttft_ms >= FIRST_TOKEN_AFTER_S * 1000
    assert log.ttft_ms == pytest.approx(client_ttft_ms, abs=TOLERANCE_MS)
    assert log.ttft_ms <= log.latency_ms


@pytest.mark.parametrize(
    ("first_output", "generated"),
    [
        ({"index": 0, "delta": {"content": "ok"}}, True),
        ({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "spend"}}]}}, True),
        ({"index": 0, "delta": {"reasoning_content": "Hm"}}, True),
        ({"index": 0, "delta": {"reasoning": "Hm"}}, True),
        ({"index": 0, "text": "GPU"}, True),  # /v1/completions
        ({"index": 0, "delta": {"content": None, "tool_calls": []}}, False),
        ({"index": 0, "text": "", "finish_reason": "length"}, False),
    ],
)
def test_the_first_token_is_the_first_chunk_carrying_output(first_output: dict[str, Any], generated: bool) -> None:
    relay = SseRelay(strip_usage=False)
    opening = role_event(STUB_MODEL) + b": keep-alive\n\n"
    assert relay.feed(opening) == opening
    assert not relay.generated
    relay.feed(event(first_output))
    assert relay.generated is generated
    relay.feed(b"data: [DONE]\n\n")
    assert relay.generated is generated


def test_a_usage_only_chunk_is_not_a_token_and_a_token_in_the_last_unended_event_counts() -> None:
    relay = SseRelay(strip_usage=True)
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":0}}\n\n'
    assert relay.feed(usage) == b""
    assert not relay.generated
    assert relay.feed(event({"index": 0, "delta": {"content": "ok"}})[:-2]) == b""
    assert not relay.generated
    relay.finish()
    assert relay.generated


def test_an_event_read_a_byte_at_a_time_is_relayed_whole_in_linear_time() -> None:
    """200 KB in 1-byte reads: re-joining the partial event on each read copies about
    200,000^2 / 2 = 2e10 bytes (some 10 s); joining it once takes well under a second."""
    relay = SseRelay(strip_usage=False)
    whole = role_event(STUB_MODEL) + event({"index": 0, "delta": {"content": "x" * 200_000}})
    began = time.perf_counter()
    out = [relay.feed(whole[i : i + 1]) for i in range(len(whole))]
    elapsed = time.perf_counter() - began
    assert b"".join([*out, relay.finish()]) == whole
    assert out[len(role_event(STUB_MODEL)) - 1] == role_event(STUB_MODEL)  # out as soon as its blank line came
    assert elapsed < 2.0
    assert relay.generated
