"""A team's API key reaches only the models and pools it was given, at the rate it was given."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from fleet.decide.services import api_key_create
from fleet.gateway.limits import SharedKeyLimiter
from fleet.gateway.protocol import ApiError
from fleet.gateway.table import ApiKeyRoute
from fleet.models import ApiKey, Team
from tests.gateway.conftest import (
    STUB_MODEL,
    LiveGateway,
    api_key,
    chat,
    client,
    live_gateway,
    make_profile,
    make_ready,
    make_routed_pool,
    stub,
)
from tests.support.openai_stub import OpenAIStub

__all__ = ["api_key", "live_gateway", "stub"]
pytestmark = pytest.mark.django_db(transaction=True)

ERROR_FIELDS = {"message", "type", "param", "code"}


def limited_key(**limits: Any) -> str:
    team = Team.objects.create(name="Interns", slug="interns")
    key, secret = api_key_create(team=team, name="intern")
    pools = limits.pop("allowed_pools", [])
    ApiKey.objects.filter(pk=key.pk).update(**limits)
    ApiKey.objects.get(pk=key.pk).allowed_pools.set(pools)
    return secret


def test_requests_over_the_keys_rate_get_429_with_retry_after(
    live_gateway: Callable[..., LiveGateway], stub: OpenAIStub, api_key: str
) -> None:
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    limited = limited_key(requests_per_minute=3)
    live = live_gateway()
    with client(live, limited) as http:
        answers = [http.post("/v1/chat/completions", json=chat()) for _ in range(5)]
    with client(live, api_key) as http:
        other = http.post("/v1/chat/completions", json=chat())

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    refused = answers[-1]
    assert set(refused.json()["error"]) == ERROR_FIELDS
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 200, "another team's key is not limited by this one"


def test_tokens_over_the_keys_rate_get_429(live_gateway: Callable[..., LiveGateway], stub: OpenAIStub) -> None:
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    limited = limited_key(tokens_per_minute=300)
    live = live_gateway()
    with client(live, limited) as http:
        first = http.post("/v1/chat/completions", json=chat(max_tokens=200))
        second = http.post("/v1/chat/completions", json=chat(max_tokens=200))

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert second.json()["error"]["type"] == "tokens"
    assert 1 <= int(second.headers["retry-after"]) <= 60


def test_a_model_the_key_was_not_given_is_not_served_to_it(
    live_gateway: Callable[..., LiveGateway], stub: OpenAIStub
) -> None:
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    make_routed_pool("other-l", profile=make_profile("other-model"))
    limited = limited_key(allowed_models="other-model")
    live = live_gateway()
    with client(live, limited) as http:
        refused = http.post("/v1/chat/completions", json=chat())
        listed = [model["id"] for model in http.get("/v1/models").json()["data"]]

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert listed == ["other-model"]


def test_a_pool_the_key_was_not_given_is_not_used_for_it(
    live_gateway: Callable[..., LiveGateway], stub: OpenAIStub
) -> None:
    """The key may use only a pool with no ready instance: it waits for that one, never borrows the other."""
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    private = make_routed_pool("chat-private", profile=make_profile(STUB_MODEL, max_model_len=8192))
    limited = limited_key(allowed_pools=[private])
    live = live_gateway(hold_timeout_s=0.5)
    with client(live, limited) as http:
        refused = http.post("/v1/chat/completions", json=chat())

    assert refused.status_code == 503
    assert stub.requests == 0


# -- several gateway processes count one key together ------------------------------------------


def test_two_gateways_on_one_redis_give_a_key_its_rate_once_not_once_each(
    live_gateway: Callable[..., LiveGateway], stub: OpenAIStub, redis_url: str
) -> None:
    """Three requests a minute: two through one gateway, one through another, then both refuse.
    Each counting alone would have allowed six."""
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    limited = limited_key(requests_per_minute=3)
    first, second = live_gateway(redis_url=redis_url), live_gateway(redis_url=redis_url)
    with client(first, limited) as a, client(second, limited) as b:
        answers = [a.post("/v1/chat/completions", json=chat()).status_code for _ in range(2)]
        answers += [b.post("/v1/chat/completions", json=chat()).status_code]
        answers += [b.post("/v1/chat/completions", json=chat()).status_code]
        answers += [a.post("/v1/chat/completions", json=chat()).status_code]
    assert answers == [200, 200, 200, 429, 429]


def shared_limiter_admits(url: str, key: ApiKeyRoute, calls: list[tuple[int, float]]) -> list[str]:
    """Each (tokens, wall time) admitted or refused by one ``SharedKeyLimiter``: 'ok' or the 429's
    type and Retry-After."""

    async def run() -> list[str]:
        limiter = SharedKeyLimiter(url, prefix=f"test-key-rate-{secrets.token_hex(4)}")
        answers = []
        try:
            for tokens, wall in calls:
                try:
                    await limiter.admit(key, tokens=tokens, now=wall, wall=wall)
                    answers.append("ok")
                except ApiError as refused:
                    answers.append(f"{refused.type} {dict(refused.headers)[b'retry-after'].decode()}")
        finally:
            await limiter.close()
        return answers

    return asyncio.run(run())


def route_with(**limits: int | None) -> ApiKeyRoute:
    return ApiKeyRoute(key_id=1, team_id=1, models=frozenset(), pool_ids=frozenset(), **limits)


def test_the_shared_window_refuses_with_the_seconds_until_its_oldest_bucket_leaves(redis_url: str) -> None:
    """10 s buckets, six to the minute. Two requests at 10,003 s (bucket 1,000, 3 s old), limit 2: the
    third is refused until bucket 1,000 leaves the window, when bucket 1,006 begins at 10,060 s: 57 s.
    Tokens, 100 a minute: 60 at 10,003 s, 30 at 10,021 s (bucket 1,002); 20 more at 10,025 s is over
    (110): the first 60 leave at 10,060 s, 35 s later."""
    assert shared_limiter_admits(redis_url, route_with(requests_per_minute=2), [(1, 10_003.0)] * 3) == [
        "ok",
        "ok",
        "requests 57",
    ]
    tokens = [(60, 10_003.0), (30, 10_021.0), (20, 10_025.0), (10, 10_025.0)]
    assert shared_limiter_admits(redis_url, route_with(tokens_per_minute=100), tokens) == [
        "ok",
        "ok",
        "tokens 35",
        "ok",
    ]


def test_without_redis_each_gateway_counts_alone_and_keeps_limiting() -> None:
    """Redis unreachable: the process's own sliding window takes over (one request a minute)."""
    key = route_with(requests_per_minute=1)
    assert shared_limiter_admits("redis://127.0.0.1:1/0", key, [(1, 100.0), (1, 101.0)]) == ["ok", "requests 59"]
