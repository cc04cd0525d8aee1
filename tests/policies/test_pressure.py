"""Scale-out under the gateway's pressure: when the outstanding requests call for one more instance now,
and what the database worker then does (autoscale's scale-out, its cool-down shared)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.policies.pressure import pressure_actions, pressure_scale_out
from fleet.policies.settings import policy_defaults
from tests.policies.builders import NOW, ago, gpu, instance, pool, snapshot

SETTINGS = policy_defaults("autoscale") | {"scale_out_cooldown_s": 60}


def pressed(**kwargs: Any) -> str | None:
    """Pool of max_num_seqs 8, band top 0.65: the threshold is 8 x 0.65 = 5.2 requests per ready instance."""
    values: dict[str, Any] = dict(
        pool_name="chat",
        max_num_seqs=8,
        util_band_high=0.65,
        ready=2,
        serving=2,
        active=2,
        max_instances=4,
        outstanding=0,
        held=0,
    )
    values.update(kwargs)
    return pressure_scale_out(**values)


@pytest.mark.parametrize(
    ("case", "figures", "expected"),
    [
        # 10 on 2 instances = 5 each = 5/8 = 62.5% < 65%.
        ("under the band top", dict(outstanding=10), None),
        # 11 on 2 = 5.5 each = 68.75% >= 65%.
        ("over the band top", dict(outstanding=11), "load 69% of max_num_seqs 8 >= band top 65%"),
        # 10 outstanding + 1 held = 5.5 each: the held request counts as asked for.
        ("a held request tips it", dict(outstanding=10, held=1), "load 69%"),
        # 26 on 5 = 5.2 each = exactly 65%: at the top counts.
        ("exactly at the band top", dict(outstanding=26, ready=5, serving=5, active=5, max_instances=6), "load 65%"),
        ("no ready instance: the hold's wake-up", dict(ready=0, serving=1, outstanding=0, held=40), None),
        ("one already on its way", dict(outstanding=40, serving=3, active=3), None),
        ("at max_instances", dict(outstanding=40, active=4), None),
        ("sleeping instances do not block", dict(outstanding=40, active=3), "load 250%"),
        ("max_num_seqs unknown", dict(outstanding=40, max_num_seqs=0), None),
    ],
)
def test_pressure_is_outstanding_per_ready_instance_against_the_band(
    case: str, figures: dict[str, Any], expected: str | None
) -> None:
    reason = pressed(**figures)
    if expected is None:
        assert reason is None, case
    else:
        assert reason is not None and expected in reason, (case, reason)


def fleet(**pool_kwargs: Any) -> Any:
    """Pool 1 with one ready instance on GPU 1; GPU 2 free (budget 0.3 x 80 GiB = 24 GiB fits Qwen3-4B)."""
    return snapshot(
        pools=[pool(gpu_memory_utilization=0.3, **pool_kwargs)],
        instances=[instance(1, gpu_id=1)],
        gpus=[gpu(1), gpu(2)],
    )


def test_the_worker_scales_out_as_autoscale_would_logged_as_the_gateway() -> None:
    actions = pressure_actions(fleet(), pool_id=1, settings=SETTINGS, now=NOW, reason="pressure", inputs={"held": 0})
    assert len(actions) == 1
    action = actions[0]
    assert (action.kind, action.action, action.inputs["via"]) == ("gateway", "scale_out", "launch")
    assert action.inputs["active_instances"] == 1 and action.active_seen == 1


def test_a_sleeping_instance_is_woken_first() -> None:
    snap = snapshot(
        pools=[pool(gpu_memory_utilization=0.3)],
        instances=[instance(1, gpu_id=1), instance(2, gpu_id=2, desired_state="sleeping", actual_state="sleeping")],
        gpus=[gpu(1), gpu(2)],
    )
    [action] = pressure_actions(snap, pool_id=1, settings=SETTINGS, now=NOW, reason="pressure")
    assert (action.action, action.inputs["via"], action.instance_id) == ("scale_out", "wake", 2)


@pytest.mark.parametrize(
    ("case", "snap", "settings"),
    [
        # 59 s since the last scale-out (the tick's or a gateway's) < 60 s cool-down.
        ("within the cool-down", fleet(last_scale_out_at=ago(59)), SETTINGS),
        ("autoscale off for the pool", fleet(), None),
        ("unknown or disabled pool", snapshot(pools=[], instances=[], gpus=[gpu(1)]), SETTINGS),
        ("at max_instances", fleet(max_instances=1), SETTINGS),
    ],
)
def test_the_worker_declines(case: str, snap: Any, settings: Any) -> None:
    assert pressure_actions(snap, pool_id=1, settings=settings, now=NOW, reason="pressure") == [], case


def test_the_cool_down_ends() -> None:
    """61 s since the last scale-out >= 60 s: one more."""
    assert (
        len(pressure_actions(fleet(last_scale_out_at=ago(61)), pool_id=1, settings=SETTINGS, now=NOW, reason="p")) == 1
    )


def test_nothing_while_an_instance_is_on_its_way() -> None:
    snap = snapshot(
        pools=[pool(gpu_memory_utilization=0.3)],
        instances=[instance(1, gpu_id=1), instance(2, gpu_id=2, actual_state="starting")],
        gpus=[gpu(1), gpu(2), gpu(3)],
    )
    assert pressure_actions(snap, pool_id=1, settings=SETTINGS, now=NOW, reason="pressure") == []
