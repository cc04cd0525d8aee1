"""Wake from zero: held requests go through when an instance turns ready, or get a 503 in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest
from django.db import OperationalError

from fleet.models import Decision, Instance
from tests.factories import make_gpu, make_node
from tests.gateway.conftest import LiveGateway, chat, client, make_routed_pool
from tests.support.openai_stub import OpenAIStub

T = TypeVar("T")

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not unlocked(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def unlocked(query: Callable[[], T]) -> T:
    """Run a query, again while SQLite's shared in-memory test database has the table locked.

    The gateway's database thread reads the same tables (routing refresh, request log);
    in-memory SQLite answers a clash with "table is locked" at once instead of waiting.
    """
    for _ in range(100):
        try:
            return query()
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.02)
    return query()


def post_all(live: LiveGateway, key: str, count: int) -> tuple[ThreadPoolExecutor, list]:  # type: ignore[type-arg]
    pool = ThreadPoolExecutor(count)

    def send() -> httpx.Response:
        with client(live, key) as http:
            return http.post("/v1/chat/completions", json=chat())

    return pool, [pool.submit(send) for _ in range(count)]


def test_held_requests_go_through_when_the_stopped_instance_turns_ready(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub
) -> None:
    pool = make_routed_pool("chat-l")
    node = make_node()
    node.status = "online"
    node.save()
    instance = Instance.objects.create(
        pool=pool, gpu=make_gpu(node, 0), desired_state="stopped", actual_state="stopped"
    )
    live = live_gateway(hold_timeout_s=10)

    executor, futures = post_all(live, api_key, 3)
    wait_for(lambda: Instance.objects.get(pk=instance.pk).desired_state == "running")
    decision = Decision.objects.get(instance=instance)
    assert (decision.policy_kind, decision.action) == ("gateway", "start")
    assert all(not future.done() for future in futures)
    wait_for(lambda: live.gateway.held == 3)  # all three are in, not one still on its way
    # The agent would report this; the gateway sees it at its next table refresh.
    unlocked(lambda: Instance.objects.filter(pk=instance.pk).update(actual_state="ready", endpoint=stub.base_url))
    responses = [future.result(timeout=10) for future in futures]
    executor.shutdown()

    assert [response.status_code for response in responses] == [200] * 3
    logs = live.logs()
    assert [(log.cold_start, log.instance_id, log.status) for log in logs] == [(True, instance.pk, 200)] * 3
    assert Decision.objects.filter(policy_kind="gateway").count() == 1


def test_a_pool_without_instances_gets_one_on_a_free_gpu(
    live_gateway: Callable[..., LiveGateway], api_key: str
) -> None:
    node = make_node()
    node.status = "online"
    node.save()
    busy, free = make_gpu(node, 0), make_gpu(node, 1)
    other = make_routed_pool("other")
    Instance.objects.create(pool=other, gpu=busy)
    pool = make_routed_pool("chat-l")
    live = live_gateway(hold_timeout_s=0.5)

    with client(live, api_key) as http:
        response = http.post("/v1/chat/completions", json=chat())

    assert response.status_code == 503
    created = Instance.objects.get(pool=pool)
    assert (created.gpu_id, created.desired_state) == (free.pk, "running")
    assert Decision.objects.get(instance=created).action == "launch"


def test_past_the_bounded_wait_the_client_gets_503_with_retry_after(
    live_gateway: Callable[..., LiveGateway], api_key: str
) -> None:
    make_routed_pool("chat-l")
    live = live_gateway(hold_timeout_s=0.5, retry_after_s=7)

    started = time.monotonic()
    with client(live, api_key) as http:
        response = http.post("/v1/chat/completions", json=chat())
    waited = time.monotonic() - started

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "no_capacity"
    assert 0.5 <= waited < 3
    (log,) = live.logs()
    assert (log.status, log.cold_start, log.instance_id) == (503, True, None)


def test_past_the_bounded_queue_requests_are_refused_at_once(
    live_gateway: Callable[..., LiveGateway], api_key: str
) -> None:
    make_routed_pool("chat-l")
    live = live_gateway(hold_timeout_s=2, max_held=2)

    executor, futures = post_all(live, api_key, 2)
    wait_for(lambda: live.gateway.held == 2)
    started = time.monotonic()
    with client(live, api_key) as http:
        refused = http.post("/v1/chat/completions", json=chat())
    assert refused.status_code == 503
    assert time.monotonic() - started < 1
    assert [future.result(timeout=10).status_code for future in futures] == [503, 503]
    executor.shutdown()
    assert len(live.logs()) == 3


def test_a_wake_up_the_database_refused_is_tried_again_within_the_wait(
    live_gateway: Callable[..., LiveGateway], api_key: str, stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.decide import evaluate

    node = make_node()
    node.status = "online"
    node.save()
    pool = make_routed_pool("chat-l")
    instance = Instance.objects.create(
        pool=pool, gpu=make_gpu(node, 0), desired_state="stopped", actual_state="stopped"
    )
    real_wake, calls = evaluate.pool_wake_request, []

    def flaky_wake(**kwargs: object) -> object:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OperationalError("database table is locked: fleet_instance")
        return real_wake(**kwargs)

    monkeypatch.setattr(evaluate, "pool_wake_request", flaky_wake)
    live = live_gateway(hold_timeout_s=10, wake_retry_s=30)
    executor, futures = post_all(live, api_key, 1)
    wait_for(lambda: Instance.objects.get(pk=instance.pk).desired_state == "running", timeout=5)
    assert len(calls) == 2 and calls[1] - calls[0] < 3  # not a 30 s retry period later
    unlocked(lambda: Instance.objects.filter(pk=instance.pk).update(actual_state="ready", endpoint=stub.base_url))
    assert futures[0].result(timeout=10).status_code == 200
    executor.shutdown()
