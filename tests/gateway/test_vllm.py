"""The gateway in front of a real vLLM server, driven by the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from fleet.models import RequestLog
from tests.gateway.conftest import LiveGateway, make_profile, make_ready, make_routed_pool
from tests.support import tiny_model
from tests.support import vllm_server as vllm_support
from tests.support.vllm_server import VllmServer, free_port

vllm_server = vllm_support.vllm_server
pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

MAX_TOKENS = 8


@pytest.fixture
def gateway_client(
    live_gateway: Callable[..., LiveGateway], api_key: str, vllm_server: VllmServer
) -> tuple[openai.OpenAI, LiveGateway]:
    """A gateway routing the fixture's model (counted with its own tokenizer) to the fixture."""
    profile = make_profile(
        served_name=vllm_server.served_model,
        max_model_len=vllm_server.max_model_len,
        tokenizer=str(tiny_model.model_dir() / "tokenizer.json"),
    )
    pool = make_routed_pool("tiny-l", "L", profile)
    make_ready(pool, f"http://127.0.0.1:{free_port()}")  # a dead instance: failover must hide it
    make_ready(pool, vllm_server.base_url)
    live = live_gateway(cooldown_s=300)
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_key, max_retries=0, timeout=60), live


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_and_completions_plain_and_streamed(
    gateway_client: tuple[openai.OpenAI, LiveGateway], vllm_server: VllmServer
) -> None:
    client, live = gateway_client
    model = vllm_server.served_model

    chat = client.chat.completions.create(
        model=model, messages=messages("Which GPUs idle?"), max_tokens=MAX_TOKENS, temperature=0
    )
    stream = client.chat.completions.create(
        model=model, messages=messages("Stream the spend."), max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    chunks = list(stream)
    completion = client.completions.create(model=model, prompt="The fleet", max_tokens=MAX_TOKENS, temperature=0)
    streamed = list(
        client.completions.create(model=model, prompt="GPU hours", max_tokens=MAX_TOKENS, temperature=0, stream=True)
    )

    assert chat.choices[0].message.content
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= MAX_TOKENS
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert all(chunk.usage is None for chunk in chunks), "usage the client did not ask for leaked into the stream"
    assert completion.choices[0].text
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)

    logs = live.logs()
    assert [(log.endpoint, log.stream, log.status) for log in logs] == [
        ("chat", False, 200),
        ("chat", True, 200),
        ("completions", False, 200),
        ("completions", True, 200),
    ]
    assert all(log.tokens_from_usage and log.prompt_tokens and 1 <= log.output_tokens <= MAX_TOKENS for log in logs)
    assert logs[0].prompt_tokens == chat.usage.prompt_tokens
    assert all(log.ttft_ms is not None and log.ttft_ms <= log.latency_ms for log in logs if log.stream)
    # The dead instance cost one retry, then sat out its cool-down.
    assert sum(log.retried for log in logs) == 1
    assert {log.instance.endpoint for log in logs} == {vllm_server.base_url}


def test_the_gateway_counts_with_the_model_tokenizer_and_refuses_over_long_prompts_itself(
    gateway_client: tuple[openai.OpenAI, LiveGateway], vllm_server: VllmServer
) -> None:
    client, live = gateway_client
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=vllm_server.served_model, messages=messages("hello " * 3000), max_tokens=MAX_TOKENS
        )

    assert caught.value.code == "context_length_exceeded"
    assert "2048" in caught.value.message
    assert not RequestLog.objects.exists()
    answer = client.chat.completions.create(
        model=vllm_server.served_model, messages=messages("hello " * 50), max_tokens=MAX_TOKENS
    )
    (log,) = live.logs()
    assert answer.usage is not None
    # The gateway's own count (tokenizer + ChatML overhead) is what it routed on; vLLM's is logged.
    assert log.prompt_tokens == answer.usage.prompt_tokens
