"""The real vLLM server the suite runs on the CPU behaves like the ones the agents start.

These tests pin down what the panel relies on: the OpenAI API (plain and streamed)
reports token usage, /metrics exposes ``vllm:`` counters that grow with traffic, and an
over-long prompt is refused with a 400 rather than truncated. The official ``openai``
client is used because it is what users point at the fleet.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import vllm_server as vllm_support
from tests.support.vllm_server import VllmServer

# Re-exported here so the module runs on its own; sharing with conftest.py's import
# still yields one server per session (see vllm_support._SharedServer).
vllm_server = vllm_support.vllm_server
pytestmark = pytest.mark.services

MAX_TOKENS = 8
METRICS_WAIT_S = 10.0


def _client(server: VllmServer) -> openai.OpenAI:
    """A client that fails fast: a retry would hide a broken server behind a slow test."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _sample_totals(server: VllmServer) -> dict[str, float]:
    """Every ``vllm:`` sample on /metrics, summed over its labels."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("vllm:"):
                totals[sample.name] += sample.value
    return totals


def test_chat_completion_returns_text_and_usage(vllm_server: VllmServer) -> None:
    response = _client(vllm_server).chat.completions.create(
        model=vllm_server.served_model,
        messages=_messages("How much did the fleet spend today?"),
        max_tokens=MAX_TOKENS,
        temperature=0,
    )

    assert response.model == vllm_server.served_model
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in {"stop", "length"}
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 1 <= usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_chat_completion_returns_text_and_usage(vllm_server: VllmServer) -> None:
    stream = _client(vllm_server).chat.completions.create(
        model=vllm_server.served_model,
        messages=_messages("Which hosts are idle?"),
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )

    pieces: list[str] = []
    usages = []
    for chunk in stream:
        pieces.extend(choice.delta.content or "" for choice in chunk.choices)
        if chunk.usage is not None:
            usages.append(chunk.usage)

    assert "".join(pieces)
    assert len(usages) == 1
    assert usages[0].prompt_tokens > 0
    assert 1 <= usages[0].completion_tokens <= MAX_TOKENS


def test_metrics_counters_grow_with_requests(vllm_server: VllmServer) -> None:
    before = _sample_totals(vllm_server)
    assert "vllm:request_success_total" in before
    client = _client(vllm_server)
    requests = 2
    for _ in range(requests):
        client.chat.completions.create(
            model=vllm_server.served_model,
            messages=_messages("Report the GPU hours."),
            max_tokens=MAX_TOKENS,
            temperature=0,
        )

    # The API server records stats just after it answers, so give it a moment.
    deadline = time.monotonic() + METRICS_WAIT_S
    after = _sample_totals(vllm_server)
    while (
        after["vllm:request_success_total"] < before["vllm:request_success_total"] + requests
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
        after = _sample_totals(vllm_server)

    assert after["vllm:request_success_total"] >= before["vllm:request_success_total"] + requests
    assert after["vllm:prompt_tokens_total"] > before["vllm:prompt_tokens_total"]
    assert after["vllm:generation_tokens_total"] >= (before["vllm:generation_tokens_total"] + requests)


def test_prompt_longer_than_max_model_len_is_rejected(vllm_server: VllmServer) -> None:
    too_long = "hello " * (vllm_server.max_model_len + 100)

    with pytest.raises(openai.BadRequestError) as caught:
        _client(vllm_server).chat.completions.create(
            model=vllm_server.served_model,
            messages=_messages(too_long),
            max_tokens=MAX_TOKENS,
        )

    assert caught.value.status_code == 400
    assert str(vllm_server.max_model_len) in caught.value.message
