"""Whatever a client sends, the gateway answers 2xx or 4xx, never 5xx, and logs only what it routed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.models import RequestLog
from tests.gateway.conftest import STUB_MODEL, LiveGateway, client, make_ready, make_routed_pool
from tests.support.openai_stub import OpenAIStub

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"])},
        optional={"content": st.none() | st.text(max_size=200) | json_values},
    )
    | json_values,
    max_size=3,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([STUB_MODEL, "", "other"]) | json_values,
        "messages": messages,
        "prompt": st.text(max_size=200) | st.lists(st.integers(0, 50_000), max_size=5) | json_values,
        "max_tokens": st.integers(-5, 10_000) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values}) | json_values,
    },
)
valid = st.fixed_dictionaries(
    {
        "model": st.just(STUB_MODEL),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=300)}), min_size=1, max_size=3
        ),
        "max_tokens": st.integers(1, 64),
        "stream": st.booleans(),
    }
)
bodies = (
    valid.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=300)
    | json_values.map(lambda value: json.dumps(value).encode())
    | near_valid.map(lambda value: json.dumps(value).encode())
    | st.dictionaries(st.sampled_from(FIELDS), json_values).map(lambda value: json.dumps(value).encode())
)
# h11 refuses header values with surrounding whitespace before they leave the client.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)


def test_fuzzed_bodies_and_headers_get_2xx_or_4xx_and_rejections_leave_nothing(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    live = live_gateway()
    routed = 0

    with client(live, None) as http:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/x"]),
            method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
            body=bodies,
            authorization=st.sampled_from([f"Bearer {api_key}"] * 4 + [f"bearer  {api_key}"])
            | header_text
            | header_text.map(lambda text: f"Bearer gfk_{text}"),
            extra=st.dictionaries(st.sampled_from(["content-type", "x-request-id", "accept"]), header_text),
        )
        def check(path: str, method: str, body: bytes, authorization: str, extra: dict[str, Any]) -> None:
            nonlocal routed
            before = stub.requests
            headers = {**extra, "authorization": authorization}
            response = http.request(method, path, content=body, headers=headers)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
                assert stub.requests == before
            elif path != "/v1/models":
                routed += 1

        check()

    assert routed > 0
    assert len(live.logs()) == routed
    assert not RequestLog.objects.exclude(status=200).exists()
