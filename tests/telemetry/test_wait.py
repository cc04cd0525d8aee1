"""The agents' long poll (``GET /api/agent/v1/wait``) on the in-process channel layer."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.test import AsyncClient, Client
from django.urls import reverse

from agents import protocol
from fleet.decide.services import instance_desire, node_create
from fleet.events import node_desired_changed, node_desired_group
from fleet.models import Instance, ModelProfile, Node
from fleet.telemetry import agent_api, ingest
from tests.factories import make_gpu, make_instance, make_pool
from tests.support.specs import instance_spec

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]


def node_with_token(name: str) -> tuple[Node, str]:
    return node_create(name=name)


def asking(token: str, generation: int | str) -> Callable[[], Awaitable[Any]]:
    async def ask() -> Any:
        return await AsyncClient().get(
            protocol.WAIT_PATH, {"generation": generation}, headers={"authorization": f"Bearer {token}"}
        )

    return ask


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(scenario)()


async def subscribed(node: Node) -> None:
    """Until a wait of ``node`` has joined its group (the in-process layer's own table)."""
    layer = get_channel_layer()
    deadline = time.monotonic() + 10
    while not layer.groups.get(node_desired_group(node.pk)):
        assert time.monotonic() < deadline, "the wait never subscribed"
        await asyncio.sleep(0.01)


def off_thread(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``function`` on a worker thread (the waiting request holds the test's own), closing the
    database connection it opened there, so none is left when the test database is dropped."""

    def closing(**kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        finally:
            connection.close()

    return sync_to_async(closing, thread_sensitive=False)


def current(node: Node) -> int:
    return agent_api.node_desired_generations(node=node)[0]


def test_a_wait_on_the_current_generation_answers_no_change_after_the_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_api, "WAIT_S", 0.3)
    node, token = node_with_token("wait-a")
    started = time.monotonic()
    response = run(asking(token, current(node)))
    assert response.status_code == 200, response.content
    assert response.json() == {"changed": False}
    assert time.monotonic() - started >= 0.3


def test_a_generation_already_behind_is_answered_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    node, token = node_with_token("wait-a")
    make_instance(make_pool(), make_gpu(node))
    behind = protocol.desired_generation([], [])  # what the agent applied before the instance was placed
    assert current(node) != behind
    started = time.monotonic()
    response = run(asking(token, behind))
    assert response.json() == {"changed": True}
    assert time.monotonic() - started < 10, "answered at once, not after the 30 s hold"


def test_a_change_published_while_waiting_answers_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    node, token = node_with_token("wait-a")
    instance = make_instance(make_pool(), make_gpu(node))

    async def scenario() -> tuple[Any, float]:
        waiting = asyncio.ensure_future(asking(token, await sync_to_async(current)(node))())
        await subscribed(node)
        told = time.monotonic()
        await off_thread(instance_desire)(
            instance=instance, state=Instance.Desired.SLEEPING, reason="test", action="sleep", kind="manual"
        )
        response = await asyncio.wait_for(waiting, 10)
        return response, time.monotonic() - told

    response, answered_s = run(scenario)
    assert response.json() == {"changed": True}
    assert answered_s < 10


def test_a_node_token_waits_on_its_own_node_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node A's token, with A's generation: B's changes neither answer it nor count in it."""
    monkeypatch.setattr(agent_api, "WAIT_S", 0.5)
    node_a, token_a = node_with_token("wait-a")
    node_b, _token_b = node_with_token("wait-b")
    generation_a = current(node_a)
    make_instance(make_pool(), make_gpu(node_b))
    assert current(node_a) == generation_a

    async def scenario() -> Any:
        waiting = asyncio.ensure_future(asking(token_a, generation_a)())
        await subscribed(node_a)
        await off_thread(node_desired_changed)(node_ids=[node_b.pk], why="test")
        return await asyncio.wait_for(waiting, 10)

    assert run(scenario).json() == {"changed": False}


@pytest.mark.parametrize(
    ("generation", "says"),
    [
        (None, "generation is required"),
        ("abc", "generation must be a whole number"),
        ("-1", "generation must be a whole number"),
        ("\u00b2", "generation must be a whole number"),
        (str(2**63), "generation must be a whole number"),
    ],
)
def test_a_bad_generation_is_refused_with_400(generation: str | None, says: str) -> None:
    _node, token = node_with_token("wait-a")

    async def ask() -> Any:
        query = {} if generation is None else {"generation": generation}
        return await AsyncClient().get(protocol.WAIT_PATH, query, headers={"authorization": f"Bearer {token}"})

    response = run(ask)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]


def test_no_or_an_unknown_token_is_refused_with_401() -> None:
    async def ask(headers: dict[str, str]) -> Any:
        return await AsyncClient().get(protocol.WAIT_PATH, {"generation": "1"}, headers=headers)

    assert async_to_sync(ask)({}).status_code == 401
    assert async_to_sync(ask)({"authorization": "Bearer not-a-node-token"}).status_code == 401


def test_a_desired_state_change_tells_its_node_only_once_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Told before the commit, the agent could report, read the old state and wait on it again."""
    from django.db import transaction

    from fleet.decide import services

    told: list[set[int]] = []
    monkeypatch.setattr(services, "node_desired_changed", lambda *, node_ids, why: told.append(set(node_ids)))
    node, _token = node_with_token("wait-a")
    other, _other_token = node_with_token("wait-b")
    make_gpu(other)
    instance = make_instance(make_pool(), make_gpu(node))
    with transaction.atomic():
        instance_desire(
            instance=instance, state=Instance.Desired.SLEEPING, reason="test", action="sleep", kind="manual"
        )
        assert told == []
    assert told == [{node.pk}]


def test_a_launch_tells_the_node_of_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.decide import services

    told: list[set[int]] = []
    monkeypatch.setattr(services, "node_desired_changed", lambda *, node_ids, why: told.append(set(node_ids)))
    node, _token = node_with_token("wait-a")
    pool = make_pool()
    services.instance_launch(
        pool=pool, gpu=make_gpu(node), mig_device=None, active_seen=0, reason="test", action="scale_out", kind="manual"
    )
    assert told == [{node.pk}]


def test_waits_through_the_panels_asgi_app_hold_no_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host holds a wait: through the panel's app (not Django's middleware, some of which
    is sync-only and would run each wait in a thread of its own) they are coroutines, and a
    change answers the one node it concerns."""
    from channels.testing import HttpCommunicator

    from fleet.gateway.app import Gateway
    from fleet.project.asgi import application_build

    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    app = application_build(gateway=Gateway())
    nodes = [node_with_token(f"wait-{i}") for i in range(12)]
    generations = [current(node) for node, _token in nodes]

    async def scenario() -> tuple[int, int, Any]:
        async def ask(token: str, generation: int) -> Any:
            path = f"{protocol.WAIT_PATH}?generation={generation}"
            communicator = HttpCommunicator(app, "GET", path, headers=[(b"authorization", f"Bearer {token}".encode())])
            return await communicator.get_response(timeout=20)

        before = threading.active_count()
        waits = [asyncio.ensure_future(ask(token, g)) for (_node, token), g in zip(nodes, generations, strict=True)]
        for node, _token in nodes:
            await subscribed(node)
        held = threading.active_count()
        await off_thread(node_desired_changed)(node_ids=[nodes[0][0].pk], why="test")
        first = await asyncio.wait_for(waits[0], 10)
        still_waiting = sum(not w.done() for w in waits[1:])
        for w in waits[1:]:
            w.cancel()
        await asyncio.gather(*waits[1:], return_exceptions=True)
        return held - before, still_waiting, first

    added_threads, still_waiting, first = run(scenario)
    assert first["status"] == 200
    assert json.loads(first["body"]) == {"changed": True}
    assert still_waiting == len(nodes) - 1, "a change told nodes it does not concern"
    assert added_threads < 4, f"{len(nodes)} held waits added {added_threads} threads"


# -- what the generation covers: every item of the reply the agent acts on ----------------


def desired(**changes: Any) -> list[protocol.DesiredInstance]:
    spec = instance_spec(**{"env": {"A": "1", "B": "2"}, "gpu_uuids": ["GPU-1"], **changes})
    return [protocol.DesiredInstance(instance_id=7, generation=3, state="running", spec=spec)]


def test_the_generation_moves_with_a_spec_field_and_an_orphan_stop_not_with_map_order() -> None:
    base = protocol.desired_generation(desired(), [])
    assert protocol.desired_generation(desired(max_num_seqs=32), []) != base
    assert protocol.desired_generation(desired(image="vllm/vllm-openai:v0.11.0"), []) != base
    stopping = protocol.desired_generation(desired(), [], ["c0ffee"])
    assert stopping != base
    assert stopping != protocol.desired_generation(desired(), [], ["beef"])
    # A JSON column may give a map's keys in another order: the same spec, the same generation.
    assert protocol.desired_generation(desired(env={"B": "2", "A": "1"}), []) == base
    # The previous version's digest sees none of it, and never equals this version's.
    v1 = protocol.desired_generation_v1(desired(), [])
    assert protocol.desired_generation_v1(desired(max_num_seqs=32), []) == v1
    assert v1 != base


def test_an_orphan_stop_request_moves_the_generation_and_answers_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.utils import timezone

    from fleet.decide.services import orphan_stop_request
    from fleet.models import OrphanContainer

    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    node, token = node_with_token("wait-a")
    now = timezone.now()
    orphan = OrphanContainer.objects.create(node=node, container_id="c0ffee", first_seen_at=now, last_seen_at=now)
    before = current(node)
    assert before == protocol.desired_generation([], [], [])

    async def scenario() -> tuple[Any, float]:
        waiting = asyncio.ensure_future(asking(token, before)())
        await subscribed(node)
        told = time.monotonic()
        await off_thread(orphan_stop_request)(orphan=orphan, reason="test: reap", kind="manual")
        response = await asyncio.wait_for(waiting, 10)
        return response, time.monotonic() - told

    response, answered_s = run(scenario)
    assert response.json() == {"changed": True}
    assert answered_s < 10
    # What the agent computes from the reply that carries the request.
    assert current(node) == protocol.desired_generation([], [], ["c0ffee"]) != before


def profile_change(client: Client, profile: ModelProfile, **changes: Any) -> Any:
    """Post the profile's admin change form as a browser would: its current values and ``changes``."""
    url = reverse("admin:fleet_modelprofile_change", args=[profile.pk])
    form = client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data.update(changes)
    data = {name: ("on" if value is True else value) for name, value in data.items() if value not in (None, False)}
    return client.post(url, data)


def test_a_profile_change_in_the_admin_moves_the_generation_and_answers_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.contrib.auth.models import User

    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    node, token = node_with_token("wait-a")
    other, _other_token = node_with_token("wait-b")
    pool = make_pool()
    instance = make_instance(pool, make_gpu(node))
    profile = pool.model_profile
    before, other_before = current(node), current(other)
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    seqs = profile.max_num_seqs // 2

    async def scenario() -> tuple[Any, Any]:
        waiting = asyncio.ensure_future(asking(token, before)())
        await subscribed(node)
        saved = await off_thread(profile_change)(client=client, profile=profile, max_num_seqs=str(seqs))
        return saved, await asyncio.wait_for(waiting, 10)

    saved, response = run(scenario)
    assert saved.status_code == 302, saved.content[-2000:]
    assert response.json() == {"changed": True}
    instance.refresh_from_db()
    reply = ingest.node_desired(node)
    assert [item.spec.max_num_seqs for item in reply.desired] == [seqs]
    assert [item.generation for item in reply.desired] == [instance.generation], "no new generation"
    assert current(node) == protocol.desired_generation(*reply) != before
    assert current(other) == other_before, "a node without the profile's instances is unchanged"


def test_a_previous_versions_generation_is_up_to_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent of the previous version digests (kind, id, generation, state) only: the wait
    holds it as it always did rather than answer "changed" to a digest that can never match."""
    from django.utils import timezone

    from fleet.models import OrphanContainer

    monkeypatch.setattr(agent_api, "WAIT_S", 0.3)
    node, token = node_with_token("wait-a")
    make_instance(make_pool(), make_gpu(node))
    now = timezone.now()
    OrphanContainer.objects.create(
        node=node, container_id="c0ffee", first_seen_at=now, last_seen_at=now, stop_requested_at=now
    )
    reply = ingest.node_desired(node)
    previous = protocol.desired_generation_v1(reply.desired, reply.batch_jobs)
    assert previous != current(node)
    started = time.monotonic()
    assert run(asking(token, previous)).json() == {"changed": False}
    assert time.monotonic() - started >= 0.3
    assert run(asking(token, previous + 1)).json() == {"changed": True}


def test_a_pool_given_another_profile_in_the_admin_answers_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.contrib.auth.models import User

    from tests.admin.test_validation import pool_form

    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    node, token = node_with_token("wait-a")
    pool = make_pool()
    make_instance(pool, make_gpu(node))
    other = ModelProfile.objects.exclude(pk=pool.model_profile_id).order_by("name").first()
    assert other is not None
    before = current(node)
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    url = reverse("admin:fleet_pool_change", args=[pool.pk])

    async def scenario() -> tuple[Any, Any]:
        waiting = asyncio.ensure_future(asking(token, before)())
        await subscribed(node)
        post = off_thread(lambda: client.post(url, pool_form(name=pool.name, tier=pool.tier, model_profile=other.pk)))
        saved = await post()
        return saved, await asyncio.wait_for(waiting, 10)

    saved, response = run(scenario)
    assert saved.status_code == 302, saved.content[-2000:]
    assert response.json() == {"changed": True}
    assert [item.spec.model for item in ingest.node_desired(node).desired] == [other.model]
    assert current(node) != before


# -- changes outside the admin's profile and pool pages, told through the same function ------


def told_of_two(monkeypatch: pytest.MonkeyPatch) -> tuple[list[set[int]], tuple[Node, str], Node]:
    """Two nodes, and the nodes each tell of ``fleet.telemetry.ingest`` names (passed on to
    their waits, which hold for 30 s): the first node, with its token, is the one concerned."""
    monkeypatch.setattr(agent_api, "WAIT_S", 30.0)
    calls: list[set[int]] = []
    tell = ingest.node_desired_changed

    def recording(*, node_ids: Any, why: str) -> None:
        calls.append({node_id for node_id in node_ids if node_id is not None})
        tell(node_ids=node_ids, why=why)

    monkeypatch.setattr(ingest, "node_desired_changed", recording)
    other, _other_token = node_with_token("wait-b")
    return calls, node_with_token("wait-a"), other


def answered(token: str, node: Node, change: Callable[[], Any]) -> Any:
    """The answer to a wait held on the node's current generation when ``change`` is made."""

    async def scenario() -> Any:
        waiting = asyncio.ensure_future(asking(token, await sync_to_async(current)(node))())
        await subscribed(node)
        await off_thread(change)()
        return await asyncio.wait_for(waiting, 10)

    return run(scenario)


def test_a_profile_rewritten_by_the_service_answers_the_wait_of_its_instances_nodes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's seeding writes its profiles through ``model_profile_update_or_create``."""
    from fleet.decide.profiles import model_profile_update_or_create

    calls, (node, token), other = told_of_two(monkeypatch)
    pool = make_pool()
    make_instance(pool, make_gpu(node))
    profile = pool.model_profile
    other_pool = make_pool("other", model_profile=ModelProfile.objects.create(name="other", model="m"))
    make_instance(other_pool, make_gpu(other))
    other_before = current(other)
    # Rewritten as it is: nothing an agent acts on changed, nobody is told.
    model_profile_update_or_create(name=profile.name, values={"max_num_seqs": profile.max_num_seqs})
    assert calls == []

    seqs = profile.max_num_seqs // 2
    change = functools.partial(model_profile_update_or_create, name=profile.name, values={"max_num_seqs": seqs})
    assert answered(token, node, change).json() == {"changed": True}
    assert calls == [{node.pk}]
    assert [item.spec.max_num_seqs for item in ingest.node_desired(node).desired] == [seqs]
    assert current(other) == other_before


def test_a_pool_given_another_profile_by_the_service_answers_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.decide.profiles import pool_update_or_create

    calls, (node, token), other = told_of_two(monkeypatch)
    pool = make_pool()
    make_instance(pool, make_gpu(node))
    make_instance(make_pool("other"), make_gpu(other))
    # A setting the reply does not carry tells nobody.
    pool_update_or_create(name=pool.name, values={"max_instances": pool.max_instances + 1})
    assert calls == []

    profile = ModelProfile.objects.exclude(pk=pool.model_profile_id).order_by("name").first()
    assert profile is not None
    change = functools.partial(pool_update_or_create, name=pool.name, values={"model_profile": profile})
    assert answered(token, node, change).json() == {"changed": True}
    assert calls == [{node.pk}]
    assert [item.spec.model for item in ingest.node_desired(node).desired] == [profile.model]


def test_the_colocation_image_bound_changed_in_the_admin_answers_the_waits_of_nodes_running_batch_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.contrib.auth.models import User

    from fleet.models import BatchJob, Policy
    from tests.admin.test_policy_form import change

    calls, (node, token), other = told_of_two(monkeypatch)
    make_instance(make_pool(), make_gpu(other))  # serves, runs no batch job: its reply has no bound
    job = BatchJob.objects.create(
        name="clean", image="cleaner:1", memory_bytes=2**30, state="running", gpu=make_gpu(node)
    )
    policy = Policy.objects.get(kind=Policy.Kind.COLOCATE, pool=None)
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    settings = dict(min_free_memory_gib="4", max_duty_cycle_pct="30", max_image_mb="200")
    other_before = current(other)
    # A setting no reply carries (the policy's own threshold) tells nobody.
    assert change(client, policy, **{**settings, "max_duty_cycle_pct": "40"}).status_code == 302
    assert calls == []

    posted = functools.partial(change, client, policy, **{**settings, "max_image_mb": "500"})
    assert answered(token, node, posted).json() == {"changed": True}
    assert calls == [{node.pk}]
    assert [item.max_image_bytes for item in ingest.node_desired(node).batch_jobs] == [500 * 1_000_000]
    assert current(other) == other_before
    # Deleted, the policy's defaults apply: a change of the bound again.
    calls.clear()
    deleted = client.post(reverse("admin:fleet_policy_delete", args=[policy.pk]), {"post": "yes"})
    assert deleted.status_code == 302
    assert calls == [{node.pk}]
    assert [item.max_image_bytes for item in ingest.node_desired(node).batch_jobs] == [200 * 1_000_000]
    assert job.pk in [item.job_id for item in ingest.node_desired(node).batch_jobs]
