"""The static-spend guard: never above the static size, and hold it once the policy has not saved."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet import selectors
from fleet.decide.evaluate import policies_evaluate, pool_scale_out_request
from fleet.models import Decision, Instance, InstanceEvent, Node, Policy
from fleet.policies import static_hold
from fleet.policies.actions import DesireInstance, LaunchInstance, PoolDecision
from fleet.policies.registry import policies_run
from fleet.policies.settings import policy_defaults
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig
from fleet.policies.static_hold import HOLD_END, HOLD_START, REFUSE, held_hours, static_guard
from tests.factories import make_gpu, make_instance, make_node, make_pool
from tests.policies.builders import NOW, ago, gpu, instance, pool, snapshot, window


def guard(**settings: Any) -> PolicyConfig:
    return PolicyConfig(kind="static_hold", fleet={**policy_defaults("static_hold"), **settings})


def launch(pool_id: int = 1, gpu_id: int = 9) -> LaunchInstance:
    return LaunchInstance(
        kind="autoscale",
        action="scale_out",
        reason="breach",
        pool_id=pool_id,
        gpu_id=gpu_id,
        mig_device_id=None,
        active_seen=0,
    )


def desire(instance_id: int, state: str, kind: str = "idle_reclaim", action: str = "stop") -> DesireInstance:
    return DesireInstance(
        kind=kind, action=action, reason="r", instance_id=instance_id, pool_id=1, generation=3, state=state
    )


# -- the figure --------------------------------------------------------------------------


def test_held_hours_is_the_overlap_of_the_billed_runs_with_the_window() -> None:
    runs = [(ago(3600), ago(1800)), (ago(600), None), (ago(7200), ago(5400))]
    # Window: the last 50 minutes. First run: 20 of its 30 min inside; second: 10 min, still open; third: none.
    assert held_hours(runs, since=ago(3000), until=NOW) == pytest.approx((1200 + 600) / 3600)
    assert held_hours([], since=ago(60), until=NOW) == 0.0
    with pytest.raises(ValueError, match="before it starts"):
        held_hours(runs, since=NOW, until=ago(1))


# -- rule 1: never above the static size -------------------------------------------------


def test_a_scale_out_past_the_static_size_is_refused_with_a_decision_saying_why() -> None:
    fleet = snapshot(pools=[pool()], instances=[instance(1), instance(2)], gpus=[gpu(1), gpu(2), gpu(9)])

    kept = static_guard(fleet, guard(static_replicas=2), NOW, [launch()])

    [note] = kept
    assert isinstance(note, PoolDecision)
    assert (note.kind, note.action, note.pool_id) == ("static_hold", REFUSE, 1)
    assert note.reason.startswith("holding the static size 2 of pool pool-1: autoscale scale_out refused")
    assert note.inputs["billed"] == 2
    # Under the static size, the same scale-out passes.
    assert static_guard(fleet, guard(static_replicas=3), NOW, [launch()]) == [launch()]
    # No static size, no guard.
    assert static_guard(fleet, guard(static_replicas=0), NOW, [launch()]) == [launch()]


def test_starting_and_draining_instances_count_waking_a_sleeping_one_adds_none() -> None:
    fleet = snapshot(
        pools=[pool()],
        instances=[
            instance(1, actual_state="starting"),
            instance(2, desired_state="stopped", actual_state="stopping"),
            instance(3, desired_state="sleeping", actual_state="sleeping"),
            instance(4, desired_state="stopped", actual_state="stopped"),
        ],
    )
    config = guard(static_replicas=3)
    wake = desire(3, "running", kind="autoscale", action="scale_out")
    restart = desire(4, "running", kind="autoscale", action="scale_out")

    assert static_guard(fleet, config, NOW, [wake]) == [wake]
    [note] = static_guard(fleet, config, NOW, [restart])
    assert isinstance(note, PoolDecision) and note.inputs["billed"] == 3


def test_several_additions_of_one_call_are_counted_together_and_logged_once() -> None:
    fleet = snapshot(pools=[pool()], instances=[instance(1)])
    first, second, third = launch(gpu_id=7), launch(gpu_id=8), launch(gpu_id=9)

    kept = static_guard(fleet, guard(static_replicas=2), NOW, [first, second, third])

    assert kept[0] == first
    assert [type(a) for a in kept[1:]] == [PoolDecision]
    assert kept[1].inputs["refused"] == ["autoscale scale_out refused, 2 instance(s) billed"] * 2


def test_a_refusal_is_logged_at_most_once_per_refusal_log_s_but_refused_every_time() -> None:
    recent = snapshot(pools=[pool(static_refused_at=ago(60))], instances=[instance(1)])
    older = snapshot(pools=[pool(static_refused_at=ago(700))], instances=[instance(1)])
    config = guard(static_replicas=1, refusal_log_s=600)

    assert static_guard(recent, config, NOW, [launch()]) == []
    [note] = static_guard(older, config, NOW, [launch()])
    assert isinstance(note, PoolDecision)


def test_a_pool_over_its_static_size_has_its_surplus_stopped_sleeping_then_idlest_never_busy() -> None:
    """Four active instances against a static size of 2 (the size lowered, or ``min_instances`` above it):
    the sleeping one and the idlest quiet one are stopped; the busy one stays; the one already told to
    stop (still draining, still billed) is not surplus again."""
    fleet = snapshot(
        pools=[pool()],
        instances=[
            instance(1, last_request_at=ago(60)),
            instance(2, last_request_at=ago(600)),
            instance(3, last_request_at=ago(3000), requests_running=2),
            instance(4, desired_state="sleeping", actual_state="sleeping", last_request_at=ago(30)),
            instance(5, desired_state="stopped", actual_state="stopping"),
        ],
    )

    stops = static_hold.static_hold(fleet, guard(static_replicas=2), NOW)

    assert [(a.instance_id, a.state, a.kind, a.action) for a in stops if isinstance(a, DesireInstance)] == [
        (4, "stopped", "static_hold", "stop"),
        (2, "stopped", "static_hold", "stop"),
    ]
    assert stops[0].reason == "holding the static size 2 of pool pool-1: 5 instance(s) billed; stopping instance 4"
    assert static_hold.static_hold(fleet, guard(static_replicas=4), NOW) == []


# -- rule 2: hold the static size --------------------------------------------------------


def measured(paid: float, start_ago_h: float = 24, **fields: Any) -> FleetSnapshot:
    return snapshot(
        pools=[pool(static_paid_hours=paid, static_window_start=ago(start_ago_h * 3600), **fields)],
        instances=[instance(1), instance(2)],
    )


def test_the_hold_starts_once_paid_reaches_the_static_fleets_hours_over_a_whole_window() -> None:
    config = guard(static_replicas=2, window_hours=24)

    [start] = static_hold.static_hold(measured(48.0), config, NOW)

    assert isinstance(start, PoolDecision)
    assert (start.kind, start.action) == ("static_hold", HOLD_START)
    assert start.reason.startswith("holding the static size 2 of pool pool-1: paid 48.00 GPU-h over the last 24.00 h")
    assert start.inputs == {
        "static_replicas": 2,
        "window_hours": 24.0,
        "measured_hours": 24.0,
        "paid_gpu_hours": 48.0,
        "static_gpu_hours": 48.0,
    }
    assert static_hold.static_hold(measured(47.9), config, NOW) == []
    # A window measured only since the last hold ended (2 h ago) is not a whole one yet.
    assert static_hold.static_hold(measured(4.0, start_ago_h=2), config, NOW) == []
    # No figures (the builder measured none), no decision.
    assert static_hold.static_hold(snapshot(pools=[pool()]), config, NOW) == []


def test_the_hold_ends_under_the_margin_or_after_a_whole_window_held() -> None:
    config = guard(static_replicas=2, window_hours=24, release_ratio=0.9)

    [under] = static_hold.static_hold(measured(0.85 * 48, static_held_since=ago(3600)), config, NOW)
    still = static_hold.static_hold(measured(0.95 * 48, static_held_since=ago(3600)), config, NOW)
    [whole] = static_hold.static_hold(measured(48.0, static_held_since=ago(24 * 3600)), config, NOW)

    assert isinstance(under, PoolDecision) and under.action == HOLD_END
    assert "under 0.9 x static" in under.reason and under.inputs["paid_gpu_hours"] == pytest.approx(40.8)
    assert still == []
    assert isinstance(whole, PoolDecision) and "held a whole window" in whole.reason


def test_while_held_no_stop_or_sleep_takes_the_serving_instances_below_the_static_size() -> None:
    fleet = snapshot(
        pools=[pool(static_held_since=ago(600))],
        instances=[instance(1), instance(2), instance(3, actual_state="ready")],
    )
    config = guard(static_replicas=2)
    stop, sleep = desire(1, "stopped"), desire(2, "sleeping", action="sleep")

    kept = static_guard(fleet, config, NOW, [stop, sleep])

    assert kept[0] == stop
    assert isinstance(kept[1], PoolDecision)
    assert kept[1].inputs["refused"] == ["idle_reclaim sleep refused while held, 2 instance(s) serving"]
    # Not held: reclaim is the policies' as before.
    free = snapshot(pools=[pool()], instances=[instance(1), instance(2), instance(3)])
    assert static_guard(free, config, NOW, [stop, sleep]) == [stop, sleep]


def test_the_evaluation_loop_passes_every_kinds_actions_through_the_guard() -> None:
    """Autoscale in breach on a pool at its static size: the loop applies the refusal, not the scale-out."""
    breach = [replace(window(kv_cache=0.95), start=ago(120), end=ago(60)), window(kv_cache=0.95)]
    fleet = snapshot(pools=[pool(windows=tuple(breach))], instances=[instance(1)], gpus=[gpu(1), gpu(2)])
    configs = {
        "static_hold": guard(static_replicas=1),
        "autoscale": PolicyConfig(kind="autoscale", fleet=policy_defaults("autoscale")),
    }
    applied: list[Any] = []

    def apply(action: Any) -> bool:
        applied.append(action)
        return True

    policies_run(
        configs=configs,
        now=NOW,
        snapshot=lambda: fleet,
        apply=apply,
        request_times=lambda *_: {},
    )

    [note] = applied
    assert isinstance(note, PoolDecision) and note.action == REFUSE
    assert "autoscale scale_out refused, 1 instance(s) billed" in note.reason


# -- against the database ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_gateways_scale_out_past_the_static_size_is_refused_and_logged() -> None:
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    first, _free = make_gpu(node, 0), make_gpu(node, 1)
    chat = make_pool(isolation="exclusive")
    Instance.objects.create(pool=chat, gpu=first, actual_state="ready", endpoint="http://127.0.0.1:9")
    Policy.objects.update_or_create(kind="autoscale", pool=None, defaults={"settings": {"scale_out_cooldown_s": 60}})
    Policy.objects.create(kind="static_hold", pool=chat, settings={"static_replicas": 1})

    [decision] = pool_scale_out_request(pool_id=chat.pk, reason="pressure")

    assert (decision.policy_kind, decision.action, decision.pool_id) == ("static_hold", REFUSE, chat.pk)
    assert decision.reason.startswith(f"holding the static size 1 of pool {chat.name}: gateway scale_out refused")
    assert decision.inputs["billed"] == 1
    assert Instance.objects.filter(pool=chat).count() == 1
    # Logged once: the next refusal within refusal_log_s is refused without a decision.
    assert pool_scale_out_request(pool_id=chat.pk, reason="pressure") == []
    assert Decision.objects.filter(action=REFUSE).count() == 1


@pytest.mark.django_db
def test_an_evaluation_holds_the_static_size_with_the_figures_and_refuses_the_reclaim_below_it() -> None:
    """Two idle instances billed for 2 h against a static size of 1 over a 1 h window: the hold starts,
    idle reclaim stops one of them and is refused the second."""
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    chat = make_pool(isolation="exclusive")
    now = timezone.now()
    for index in range(2):
        one = make_instance(chat, make_gpu(node, index), actual_state="ready")
        Instance.objects.filter(pk=one.pk).update(
            ready_at=now - timedelta(hours=2),
            desired_changed_at=now - timedelta(hours=2),
            last_request_at=now - timedelta(hours=1),
        )
        InstanceEvent.objects.create(instance=one, at=now - timedelta(hours=2), state="ready", gpu=one.gpu)
    Policy.objects.create(kind="static_hold", pool=chat, settings={"static_replicas": 1, "window_hours": 1})
    Policy.objects.update_or_create(kind="idle_reclaim", pool=None, defaults={"enabled": True, "settings": {}})

    view = next(p for p in selectors.fleet_snapshot(now=now).pools if p.id == chat.pk)
    assert view.static_paid_hours == pytest.approx(2.0)
    assert view.static_window_start == now - timedelta(hours=1)

    policies_evaluate(now=now, kinds=["static_hold", "idle_reclaim"])

    start = Decision.objects.get(action=HOLD_START)
    assert start.pool_id == chat.pk and start.policy_kind == "static_hold"
    assert start.inputs["paid_gpu_hours"] == pytest.approx(2.0)
    assert start.inputs["static_gpu_hours"] == pytest.approx(1.0)
    assert Instance.objects.filter(pool=chat, desired_state="stopped").count() == 1
    refusal = Decision.objects.get(action=REFUSE)
    assert "idle_reclaim stop refused while held, 1 instance(s) serving" in refusal.reason
    assert Instance.objects.filter(pool=chat, desired_state="running").count() == 1

    # The hold is read back from its decision: a second evaluation starts none again.
    policies_evaluate(now=now + timedelta(seconds=30), kinds=["static_hold", "idle_reclaim"])
    assert Decision.objects.filter(action=HOLD_START).count() == 1
    assert Instance.objects.filter(pool=chat, desired_state="running").count() == 1
