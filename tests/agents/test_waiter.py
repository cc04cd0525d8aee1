"""The agent's long poll: told at once of a change, backing off (never looping) when the wait fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import protocol
from agents.waiter import ABSENT_RETRY_S, MAX_BACKOFF_S, MIN_BACKOFF_S, Waiter

CURRENT = 7


def waiter_on(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[Waiter, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    waiter = Waiter(
        panel_url="http://panel.test", http=httpx.Client(transport=httpx.MockTransport(record)), nudge=threading.Event()
    )
    return waiter, seen


def answer(changed: bool) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: httpx.Response(200, json={"changed": changed})


def test_nothing_is_asked_before_a_reply_was_applied() -> None:
    waiter, seen = waiter_on(answer(False))
    waiter.poll()
    assert seen == []


def test_the_wait_names_the_applied_generation_and_the_node_token() -> None:
    waiter, seen = waiter_on(answer(False))
    waiter.applied(token="node-secret", generation=CURRENT)
    waiter.poll()
    assert seen[0].url.path == protocol.WAIT_PATH and seen[0].url.params["generation"] == str(CURRENT)
    assert seen[0].headers["authorization"] == "Bearer node-secret"


def test_a_change_nudges_the_loop_and_the_next_wait_waits_for_the_reply() -> None:
    waiter, _seen = waiter_on(answer(True))
    waiter.applied(token="t", generation=CURRENT)
    assert waiter.poll() == 0.0
    assert waiter.nudge.is_set()
    assert not waiter._fresh.is_set(), "no second wait until the reply that answers the change is applied"


def test_failures_back_off_doubling_to_the_cap_and_a_good_answer_resets() -> None:
    failing = True

    def handler(_request: httpx.Request) -> httpx.Response:
        if failing:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"changed": False})

    waiter, _seen = waiter_on(handler)
    waiter.applied(token="t", generation=CURRENT)
    pauses = [waiter.poll() for _ in range(9)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    failing = False
    waiter.poll()
    failing = True
    assert waiter.poll() == MIN_BACKOFF_S


@pytest.mark.parametrize("status", [401, 500, 502, 503, 504])
def test_an_error_status_backs_off(status: int) -> None:
    waiter, _seen = waiter_on(lambda _request: httpx.Response(status, json={"error": {"message": "no"}}))
    waiter.applied(token="t", generation=CURRENT)
    assert [waiter.poll(), waiter.poll()] == [MIN_BACKOFF_S, 2 * MIN_BACKOFF_S]
    assert not waiter.nudge.is_set()


def test_a_panel_without_the_endpoint_is_asked_again_rarely() -> None:
    waiter, _seen = waiter_on(lambda _request: httpx.Response(404))
    waiter.applied(token="t", generation=CURRENT)
    assert waiter.poll() == ABSENT_RETRY_S


def test_an_instant_no_change_does_not_loop() -> None:
    """A proxy or panel that answers without holding: about one wait a second, not thousands."""
    waiter, _seen = waiter_on(answer(False))
    waiter.applied(token="t", generation=CURRENT)
    assert waiter.poll() > 0.5 * MIN_BACKOFF_S


def test_a_change_that_changed_nothing_backs_off() -> None:
    """The panel says "changed" but the reply that follows has the same generation: the two sides
    disagree; the waiter backs off instead of reporting in a loop."""
    waiter, seen = waiter_on(answer(True))
    waiter.applied(token="t", generation=CURRENT)
    waiter.poll()
    waiter.applied(token="t", generation=CURRENT)
    assert waiter.poll() == MIN_BACKOFF_S and len(seen) == 1
    waiter.poll()
    waiter.applied(token="t", generation=CURRENT)
    assert waiter.poll() == 2 * MIN_BACKOFF_S


def test_the_running_waiter_of_an_unreachable_panel_makes_few_requests() -> None:
    waiter, seen = waiter_on(lambda _request: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    waiter.applied(token="t", generation=CURRENT)
    stop = threading.Event()
    thread = threading.Thread(target=waiter.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(2.5)
    stop.set()
    thread.join(5)
    assert 1 <= len(seen) <= 3, "pauses of 1 s then 2 s: two or three attempts in 2.5 s, no tight loop"


# -- against the panel's ASGI app ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_memory_channel_layer")
def test_an_agent_told_by_the_long_poll_acts_long_before_its_interval(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interval 60 s: the instance placed after the agent's first report starts within seconds,
    because the panel answers the agent's wait and the agent reports at once."""
    from django.db import connections

    from fleet.decide.services import instance_add
    from fleet.gateway.app import Gateway
    from fleet.models import Gpu, Instance, Node
    from fleet.project.asgi import application_build
    from fleet.telemetry import agent_api
    from tests.agents.test_agent_loop import join_token, make_agent
    from tests.factories import make_pool
    from tests.support.asgi_server import asgi_serve

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    # The server's request threads close their connections, so none is left on the test database.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    monkeypatch.setattr(agent_api, "WAIT_S", 2.0)  # held waits end soon after the test, so the server stops
    with asgi_serve(application_build(gateway=Gateway()), lifespan="off") as url:
        agent = make_agent(url, tmp_path, name="waiting-host", interval_s=60.0)
        agent.register(join_token())
        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while not (agent.waiter and agent.waiter._fresh.is_set()):
                assert time.monotonic() < deadline, "the agent never applied its first reply"
                time.sleep(0.05)
            node = Node.objects.get(name="waiting-host")
            assert protocol.desired_generation([], []) == agent_api.node_desired_generations(node=node)[0]
            gpu = Gpu.objects.filter(node=node).order_by("index").first()
            instance = Instance(pool=make_pool(), gpu=gpu)
            placed = time.monotonic()
            instance_add(instance=instance, reason="test: placed", kind="manual")
            runtime: Any = agent.runtime
            while ("start", str(instance.pk)) not in [call[:2] for call in runtime.calls]:
                assert time.monotonic() - placed < 20, "not started: the agent was not told"
                time.sleep(0.02)
            print(f"\ninstance started by the agent {time.monotonic() - placed:.2f} s after it was placed")
            applied = agent.waiter._applied if agent.waiter else None
            assert applied is not None
            assert applied.generation == agent_api.node_desired_generations(node=node)[0], "agent and panel agree"
        finally:
            stop.set()
            runner.join(10)
