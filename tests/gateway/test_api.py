"""The gateway's OpenAI surface against a stub upstream: keys, errors, routing, streams, the log."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fleet.models import ApiKey, RequestLog
from tests.gateway.conftest import STUB_MODEL, LiveGateway, chat, client, make_profile, make_ready, make_routed_pool
from tests.support.openai_stub import OpenAIStub

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture
def routed(live_gateway: Callable[..., LiveGateway], stub: OpenAIStub, api_key: str) -> LiveGateway:
    """A gateway that has loaded the key and one ready L pool (a key works from the next refresh)."""
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    return live_gateway()


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic Zm9vOmJhcg==", "Bearer gfk_not-a-key", "Bearer sk-openai-style", "gfk_without_scheme"],
)
def test_missing_or_unknown_keys_get_an_openai_401(routed: LiveGateway, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    with client(routed, None) as http:
        response = http.post("/v1/chat/completions", json=chat(), headers=headers)

    assert response.status_code == 401
    assert set(response.json()["error"]) == ERROR_FIELDS
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_stops_working_after_the_next_refresh(routed: LiveGateway, api_key: str) -> None:
    with client(routed, api_key) as http:
        assert http.post("/v1/chat/completions", json=chat()).status_code == 200
        key = ApiKey.objects.get()
        key.revoke()
        key.save()
        routed.settle()
        response = http.post("/v1/chat/completions", json=chat())

    assert response.status_code == 401
    assert set(response.json()["error"]) == ERROR_FIELDS


def test_models_lists_the_served_names(routed: LiveGateway, api_key: str) -> None:
    with client(routed, api_key) as http:
        body = http.get("/v1/models").json()
    assert [model["id"] for model in body["data"]] == [STUB_MODEL]


def test_chat_and_completions_are_relayed_and_logged_with_usage(
    routed: LiveGateway, api_key: str, stub: OpenAIStub
) -> None:
    with client(routed, api_key) as http:
        answer = http.post("/v1/chat/completions", json=chat("How busy is the fleet?"))
        completion = http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "GPU", "max_tokens": 4})

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert answer.headers["x-fleet-pool"] == "chat-l"
    assert completion.json()["choices"][0]["text"] == "ok"
    chat_log, completion_log = routed.logs()
    assert (chat_log.endpoint, chat_log.status, chat_log.tier, chat_log.pool.name) == ("chat", 200, "L", "chat-l")
    assert (chat_log.prompt_tokens, chat_log.output_tokens, chat_log.tokens_from_usage) == (
        answer.json()["usage"]["prompt_tokens"],
        3,
        True,
    )
    assert chat_log.team.slug == "research"
    assert chat_log.instance is not None
    assert not chat_log.cold_start and not chat_log.stream
    assert chat_log.ttft_ms is None and chat_log.latency_ms > 0
    assert completion_log.endpoint == "completions"
    assert ApiKey.objects.get().last_used_at is not None


def test_a_stream_gets_usage_from_upstream_without_showing_it_to_a_client_that_did_not_ask(
    routed: LiveGateway, api_key: str, stub: OpenAIStub
) -> None:
    with client(routed, api_key) as http:
        plain = http.post("/v1/chat/completions", json=chat(stream=True)).text
        asked = http.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})).text

    assert stub.bodies[0]["stream_options"] == {"include_usage": True}
    events = [line[6:] for line in plain.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(event) for event in events[:-1])
    assert "usage" in asked
    logs = routed.logs()
    assert [(log.stream, log.output_tokens, log.tokens_from_usage) for log in logs] == [(True, 3, True)] * 2
    assert all(log.ttft_ms is not None and 0 < log.ttft_ms <= log.latency_ms for log in logs)


def test_a_prompt_longer_than_every_pool_is_refused_before_any_upstream_sees_it(
    routed: LiveGateway, api_key: str, stub: OpenAIStub
) -> None:
    long_text = "word " * 4000  # 20,000 characters: 5,000 estimated tokens > 4,096
    with client(routed, api_key) as http:
        response = http.post("/v1/chat/completions", json=chat(long_text))
        too_many = http.post("/v1/chat/completions", json=chat(max_tokens=5000))

    for refused in (response, too_many):
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "4096" in error["message"]
    assert stub.requests == 0
    assert routed.logs() == []


def test_a_request_skips_a_pool_whose_context_it_exceeds(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    short = make_routed_pool("chat-short", tier="L", profile=make_profile(max_model_len=1024))
    long = make_routed_pool("chat-long", tier="S", profile=make_profile(max_model_len=8192))
    make_ready(short, stub.base_url)
    make_ready(long, stub.base_url)
    live = live_gateway()

    with client(live, api_key) as http:
        small = http.post("/v1/chat/completions", json=chat("hi"))
        big = http.post("/v1/chat/completions", json=chat("word " * 1000, max_tokens=16))

    # Both are tier L by RCF; the 1,000-word prompt (~1,250 tokens) only fits the S pool.
    assert (small.headers["x-fleet-tier"], small.headers["x-fleet-pool"]) == ("L", "chat-short")
    assert (big.headers["x-fleet-tier"], big.headers["x-fleet-pool"]) == ("L", "chat-long")


def test_complex_requests_go_to_the_s_pool_and_fall_back_when_it_has_no_capacity(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    profile = make_profile()
    light, heavy = make_routed_pool("chat-l", "L", profile), make_routed_pool("chat-s", "S", profile)
    make_ready(light, stub.base_url)
    make_ready(heavy, stub.base_url)
    live = live_gateway()
    code = "```python\ndef integral(f):\n    return sum(f(x) for x in range(100))\n```\n∫ α β " * 30

    with client(live, api_key) as http:
        assert http.post("/v1/chat/completions", json=chat(code, max_tokens=512)).headers["x-fleet-pool"] == "chat-s"
        assert http.post("/v1/chat/completions", json=chat("hi")).headers["x-fleet-pool"] == "chat-l"
        heavy.instances.update(actual_state="stopped")
        live.settle()
        fallback = http.post("/v1/chat/completions", json=chat(code, max_tokens=512))

    assert (fallback.headers["x-fleet-tier"], fallback.headers["x-fleet-pool"]) == ("S", "chat-l")
    assert [log.tier for log in live.logs()] == ["S", "L", "S"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": STUB_MODEL, "messages": []}).encode(), 400, "messages"),
        (json.dumps(chat(max_tokens=0)).encode(), 400, "max_tokens"),
        (json.dumps(chat(stream="yes")).encode(), 400, "stream"),
        (json.dumps({**chat(), "model": "gpt-4"}).encode(), 404, "model"),
    ],
)
def test_malformed_requests_get_openai_errors_and_leave_no_log(
    routed: LiveGateway, api_key: str, stub: OpenAIStub, body: bytes, status: int, param: str | None
) -> None:
    with client(routed, api_key) as http:
        response = http.post("/v1/chat/completions", content=body)

    assert response.status_code == status
    assert response.json()["error"]["param"] == param
    assert stub.requests == 0
    assert not RequestLog.objects.exists()


def test_unknown_paths_and_methods_are_refused(routed: LiveGateway, api_key: str) -> None:
    with client(routed, api_key) as http:
        assert http.post("/v1/embeddings", json={}).status_code == 404
        assert http.get("/v1/chat/completions").status_code == 405
        assert http.post("/v1/models").status_code == 405


def test_a_body_over_the_limit_is_refused(live_gateway: Callable[..., LiveGateway], api_key: str) -> None:
    live = live_gateway(max_body_bytes=1000)
    with client(live, api_key) as http:
        response = http.post("/v1/chat/completions", json=chat("x" * 2000))
    assert response.status_code == 413


def test_a_team_past_its_hard_budget_is_refused_until_the_block_is_lifted(routed: LiveGateway, api_key: str) -> None:
    from decimal import Decimal

    from django.utils import timezone

    from fleet.costs.budgets import budget_block_lift
    from fleet.costs.selectors import period_bounds
    from fleet.models import Budget, Team

    first, _ = period_bounds(period="month", now=timezone.now())
    budget = Budget.objects.create(
        name="research monthly",
        team=Team.objects.get(),
        period="month",
        amount=Decimal("100.00"),
        blocked_period_start=first,
    )
    routed.settle()
    with client(routed, api_key) as http:
        refused = http.post("/v1/chat/completions", json=chat())
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert set(error) == ERROR_FIELDS
        assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
        assert "reached the hard limit" in error["message"] and "research monthly" in error["message"]
        assert not RequestLog.objects.exists()

        assert budget_block_lift(budget=budget)
        routed.settle()
        assert http.post("/v1/chat/completions", json=chat()).status_code == 200
