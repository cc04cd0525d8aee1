"""A team's API key reaches only the models and pools it was given, at the rate it was given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleet.decide.services import api_key_create
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
