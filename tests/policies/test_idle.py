"""Idle reclaim, table-driven, including each edge the method cares about."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.policies.idle import idle_reclaim
from fleet.policies.snapshot import PolicyConfig
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot

SLEEPY = dict(enable_sleep_mode=True)


def decide(
    pool_kwargs: dict[str, Any], instances: list[Any], gpus: list[Any] | None = None, cfg: PolicyConfig | None = None
):  # type: ignore[no-untyped-def]
    snap = snapshot(pools=[pool(**pool_kwargs)], instances=instances, gpus=gpus or [gpu(i.gpu_id) for i in instances])
    return [(a.instance_id, a.action, a.state) for a in idle_reclaim(snap, cfg or config("idle_reclaim"), NOW)]


@pytest.mark.parametrize(
    ("case", "pool_kwargs", "inst", "gpu_kwargs", "expected"),
    [
        ("busy recently", SLEEPY, dict(last_request_at=ago(299)), {}, []),
        ("exactly at the first stage", SLEEPY, dict(last_request_at=ago(300)), {}, [(1, "sleep", "sleeping")]),
        ("no sleep mode skips the stage", {}, dict(last_request_at=ago(400)), {}, []),
        ("no sleep mode stops at M", {}, dict(last_request_at=ago(600)), {}, [(1, "stop", "stopped")]),
        ("exactly at the stop", SLEEPY, dict(last_request_at=ago(600)), {}, [(1, "stop", "stopped")]),
        ("one request running", SLEEPY, dict(last_request_at=ago(900), requests_running=1), {}, []),
        ("one request waiting", SLEEPY, dict(last_request_at=ago(900), requests_waiting=1), {}, []),
        ("duty cycle at the threshold", SLEEPY, dict(last_request_at=ago(900)), dict(utilization_pct=20), []),
        (
            "duty cycle under it",
            SLEEPY,
            dict(last_request_at=ago(900)),
            dict(utilization_pct=19.9),
            [(1, "stop", "stopped")],
        ),
        (
            "no request ever: idle since ready",
            SLEEPY,
            dict(last_request_at=None, ready_at=ago(301)),
            {},
            [(1, "sleep", "sleeping")],
        ),
        ("still starting cannot sleep", SLEEPY, dict(last_request_at=ago(350), actual_state="starting"), {}, []),
        (
            "sleeping goes on to stop",
            SLEEPY,
            dict(desired_state="sleeping", last_request_at=ago(600)),
            dict(utilization_pct=90),
            [(1, "stop", "stopped")],
        ),
        ("sleeping stays asleep before M", SLEEPY, dict(desired_state="sleeping", last_request_at=ago(599)), {}, []),
        ("already stopped", SLEEPY, dict(desired_state="stopped", last_request_at=ago(9999)), {}, []),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_idle_reclaim(
    case: str, pool_kwargs: dict[str, Any], inst: dict[str, Any], gpu_kwargs: dict[str, Any], expected: list[Any]
) -> None:
    assert decide(pool_kwargs, [instance(1, **inst)], [gpu(1, **gpu_kwargs)]) == expected


def test_min_instances_keeps_the_most_recently_used_serving() -> None:
    instances = [
        instance(1, last_request_at=ago(2000)),
        instance(2, last_request_at=ago(1000)),
        instance(3, last_request_at=ago(900)),
    ]
    assert decide({"min_instances": 2}, instances) == [(1, "stop", "stopped")]
    assert decide({"min_instances": 3}, instances) == []


def test_a_sleeping_instance_does_not_count_towards_the_minimum() -> None:
    instances = [instance(1, last_request_at=ago(700)), instance(2, desired_state="sleeping", last_request_at=ago(400))]
    assert decide({"min_instances": 1, **SLEEPY}, instances) == []


def test_the_sleep_level_and_reason_come_from_the_settings() -> None:
    snap = snapshot(pools=[pool(**SLEEPY)], instances=[instance(1, last_request_at=ago(612))], gpus=[gpu(1)])
    snap_sleep = snapshot(pools=[pool(**SLEEPY)], instances=[instance(1, last_request_at=ago(312))], gpus=[gpu(1)])
    [stop] = idle_reclaim(snap, config("idle_reclaim"), NOW)
    assert stop.reason == "pool pool-1 idle for 10 min 12 s; stopping instance 1"
    [sleep] = idle_reclaim(snap_sleep, config("idle_reclaim", sleep_level=2), NOW)
    assert sleep.inputs["sleep_level"] == 2 and "sleep level 2" in sleep.reason
    assert (sleep.generation, sleep.policy_id) == (3, 99)


def test_a_disabled_policy_decides_nothing_for_its_pool() -> None:
    disabled = PolicyConfig(kind="idle_reclaim", fleet=config("idle_reclaim").fleet, pools={1: None})
    assert decide({}, [instance(1, last_request_at=ago(9999))], cfg=disabled) == []


def test_mig_instances_are_judged_by_their_queue_alone() -> None:
    on_mig = instance(1, last_request_at=ago(700), mig_device_id=4)
    assert decide({}, [on_mig], [gpu(1, utilization_pct=None, mig_enabled=True)]) == [(1, "stop", "stopped")]


def test_a_freshly_woken_instance_is_not_stopped_before_it_could_serve() -> None:
    woken = instance(1, actual_state="sleeping", last_request_at=ago(3000), desired_changed_at=ago(5))
    assert decide(SLEEPY, [woken]) == []
    assert decide(SLEEPY, [instance(1, actual_state="sleeping", last_request_at=ago(3000))]) == [(1, "stop", "stopped")]


def test_a_start_longer_than_the_stop_threshold_is_not_taken_for_idleness() -> None:
    """Launched 700 s ago and still starting (an image pull, a weight download): past the 600 s
    stop threshold counted from the launch, yet it never could serve. Once ready, its idle time
    counts from then: ready 601 s ago, it stops."""
    starting = instance(1, actual_state="starting", created_at=ago(700), ready_at=None, desired_changed_at=ago(700))
    assert decide({}, [starting]) == []
    ready = instance(1, created_at=ago(1300), ready_at=ago(601), desired_changed_at=ago(1300), last_request_at=None)
    assert decide({}, [ready]) == [(1, "stop", "stopped")]
