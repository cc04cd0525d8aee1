"""A dead or failing instance costs a retry, not an error, and sits out a cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.gateway.conftest import LiveGateway, chat, client, make_ready, make_routed_pool
from tests.support.openai_stub import OpenAIStub
from tests.support.vllm_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_dead_instance_fails_over_and_is_cooled_down(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    pool = make_routed_pool("chat-l")
    dead = make_ready(pool, f"http://127.0.0.1:{free_port()}")
    alive = make_ready(pool, stub.base_url)
    live = live_gateway(cooldown_s=60)

    with client(live, api_key) as http:
        statuses = [http.post("/v1/chat/completions", json=chat()).status_code for _ in range(6)]

    assert statuses == [200] * 6
    assert live.gateway.picker.cooldown[dead.pk] > time.monotonic()
    assert stub.requests == 6
    logs = live.logs()
    assert {log.instance_id for log in logs} == {alive.pk}
    # Round-robin tried the dead instance once; after that it was out of rotation.
    assert sum(log.retried for log in logs) == 1


def test_a_5xx_before_the_first_byte_is_retried_on_another_instance(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    failing = OpenAIStub(fail_status=503).start()
    try:
        pool = make_routed_pool("chat-l")
        broken = make_ready(pool, failing.base_url)
        make_ready(pool, stub.base_url)
        live = live_gateway(cooldown_s=60)
        with client(live, api_key) as http:
            statuses = [http.post("/v1/chat/completions", json=chat(stream=True)).status_code for _ in range(4)]
    finally:
        failing.stop()

    assert statuses == [200] * 4
    assert failing.requests == 1
    assert broken.pk in live.gateway.picker.cooldown


def test_when_every_instance_fails_the_client_gets_a_502_and_the_attempt_is_logged(
    live_gateway: Callable[..., LiveGateway], api_key: str
) -> None:
    pool = make_routed_pool("chat-l")
    make_ready(pool, f"http://127.0.0.1:{free_port()}")
    make_ready(pool, f"http://127.0.0.1:{free_port()}")
    live = live_gateway()

    with client(live, api_key) as http:
        response = http.post("/v1/chat/completions", json=chat())

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream"
    (log,) = live.logs()
    assert (log.status, log.retried) == (502, True)
    assert len(live.gateway.picker.cooldown) == 2
