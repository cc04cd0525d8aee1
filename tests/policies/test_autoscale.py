"""Autoscaling: breach for N windows to scale out, comfort for M windows to scale in, the load measure,
cool-downs, draining, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.policies.autoscale import autoscale, window_load
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot, window

HOT = window(kv_cache=0.60, latency_ms=620)  # P95 over the 500 ms SLA
OK = window(kv_cache=0.58, latency_ms=380)
COLD = window(kv_cache=0.20, latency_ms=300)


def decide(
    windows: list[Any], n: int = 1, settings: dict[str, Any] | None = None, **pool_kwargs: Any
) -> list[tuple[str, int | None]]:
    values: dict[str, Any] = dict(windows=tuple(windows), gpu_memory_utilization=0.3)
    values.update(pool_kwargs)
    snap = snapshot(
        pools=[pool(**values)],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in range(1, n + 1)],
        gpus=[gpu(1), gpu(2)],
    )
    return [
        (a.action, getattr(a, "instance_id", None))
        for a in autoscale(
            snap, config("autoscale", **({"breach_windows": 2, "scale_in_windows": 2} | (settings or {}))), NOW
        )
    ]


@pytest.mark.parametrize(
    ("case", "windows", "expected"),
    [
        ("latency breached twice", [HOT, HOT], [("scale_out", None)]),
        ("breached once only", [OK, HOT], []),
        ("queue above the threshold", [window(0.5, queue=5), window(0.5, queue=4.5)], [("scale_out", None)]),
        ("queue exactly at the threshold", [window(0.5, queue=4), window(0.5, queue=4)], []),
        ("load above the band", [window(0.66), window(0.70)], [("scale_out", None)]),
        ("load exactly at the band's top", [window(0.65), window(0.65)], []),
        (
            "a GPU busy all the time is not load",
            [window(0.3, utilization=1.0), window(0.3, utilization=1.0)],
            [],
        ),
        ("inside the band", [OK, OK], []),
        ("too few windows yet", [HOT], []),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_scale_out(case: str, windows: list[Any], expected: list[Any]) -> None:
    assert decide(windows) == expected


def test_scale_out_respects_max_and_cooldown() -> None:
    assert decide([HOT, HOT], n=2, max_instances=2) == []
    assert decide([HOT, HOT], last_scale_out_at=ago(59)) == []
    assert decide([HOT, HOT], last_scale_out_at=ago(60)) == [("scale_out", None)]


@pytest.mark.parametrize(
    ("case", "windows", "n", "pool_kwargs", "expected"),
    [
        ("cold and fast", [COLD, COLD], 2, {}, [("scale_in", 2)]),
        ("latency not comfortably inside", [COLD, window(0.2, latency_ms=351)], 2, {}, []),
        ("latency exactly at the ratio", [COLD, window(0.2, latency_ms=350)], 2, {}, [("scale_in", 2)]),
        ("queue above the scale-in maximum", [COLD, window(0.2, queue=0.51)], 2, {}, []),
        ("a stray request waiting is no backlog", [COLD, window(0.2, queue=0.5)], 2, {}, [("scale_in", 2)]),
        ("load at the band's low", [COLD, window(0.5)], 2, {}, []),
        ("no load measured", [COLD, window(None)], 2, {}, []),
        ("one fewer would be over the band", [COLD, window(0.33)], 2, {}, []),
        ("one fewer would be exactly at the band's top", [COLD, window(0.325)], 2, {}, [("scale_in", 2)]),
        ("three share what two can hold", [window(0.43), window(0.43)], 3, {}, [("scale_in", 3)]),
        ("the last one is left to idle reclaim", [COLD, COLD], 1, {}, []),
        ("never below the minimum", [COLD, COLD], 2, {"min_instances": 2}, []),
        ("scale-in cool-down", [COLD, COLD], 2, {"last_scale_in_at": ago(299)}, []),
        ("recent scale-out blocks scale-in", [COLD, COLD], 2, {"last_scale_out_at": ago(100)}, []),
        ("cool-down over", [COLD, COLD], 2, {"last_scale_in_at": ago(300)}, [("scale_in", 2)]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_scale_in(case: str, windows: list[Any], n: int, pool_kwargs: dict[str, Any], expected: list[Any]) -> None:
    assert decide(windows, n=n, **pool_kwargs) == expected


def test_scale_in_never_stops_a_busy_instance() -> None:
    snap = snapshot(
        pools=[pool(windows=(COLD, COLD))],
        instances=[instance(1, requests_running=1, gpu_id=1), instance(2, requests_waiting=2, gpu_id=1)],
        gpus=[gpu(1)],
    )
    assert autoscale(snap, config("autoscale", breach_windows=2), NOW) == []


def test_below_the_minimum_an_instance_is_added_whatever_the_windows() -> None:
    assert decide([], n=0, min_instances=1) == [("scale_out", None)]


def test_above_the_maximum_the_surplus_is_stopped() -> None:
    assert decide([OK, OK], n=3, max_instances=2) == [("scale_in", 3)]


def test_the_reason_names_the_breach() -> None:
    snap = snapshot(
        pools=[pool(windows=(HOT, HOT), gpu_memory_utilization=0.3)], instances=[instance(1)], gpus=[gpu(1)]
    )
    [action] = autoscale(snap, config("autoscale", breach_windows=2), NOW)
    assert "P95 ttft 620 ms > 500 ms" in action.reason
    assert action.inputs["via"] == "launch" and len(action.inputs["windows"]) == 2


def test_scale_in_waits_for_its_own_number_of_windows() -> None:
    calm = {"scale_in_windows": 3}
    assert decide([COLD, COLD], n=2, settings=calm) == []
    assert decide([HOT, COLD, COLD], n=2, settings=calm) == []
    assert decide([COLD, COLD, COLD], n=2, settings=calm) == [("scale_in", 2)]
    assert decide([OK, COLD, COLD], n=2, settings={"breach_windows": 1, "scale_in_windows": 2}) == [("scale_in", 2)]


@pytest.mark.parametrize(
    ("case", "figures", "settings", "expected"),
    [
        ("nothing measured", {}, {}, None),
        ("running sequences over max_num_seqs", {"running": 64}, {}, 0.25),
        ("KV-cache usage", {"kv_cache": 0.4}, {}, 0.4),
        ("prefill left out without a rate", {"running": 64, "prompt_tokens_rate": 30_000}, {}, 0.25),
        ("prompt tokens over the prefill rate", {"prompt_tokens_rate": 30_000}, {"prefill_tokens_per_s": 40_000}, 0.75),
        (
            "the scarcest resource",
            {"running": 128, "kv_cache": 0.2, "prompt_tokens_rate": 10_000},
            {"prefill_tokens_per_s": 40_000},
            0.5,
        ),
        ("over capacity reads over 1", {"prompt_tokens_rate": 60_000}, {"prefill_tokens_per_s": 40_000}, 1.5),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_window_load(case: str, figures: dict[str, float], settings: dict[str, Any], expected: float | None) -> None:
    measured = window(figures.pop("kv_cache", None), **figures)
    assert window_load(pool(max_num_seqs=256), measured, config("autoscale", **settings).fleet) == expected


def test_prefill_load_scales_out_and_names_the_load() -> None:
    hot = window(None, prompt_tokens_rate=30_000, running=20, utilization=1.0)
    snap = snapshot(pools=[pool(windows=(hot,), gpu_memory_utilization=0.3)], instances=[instance(1)], gpus=[gpu(1)])
    [action] = autoscale(snap, config("autoscale", breach_windows=1, prefill_tokens_per_s=40_000), NOW)
    assert action.action == "scale_out" and "load 75% > 65%" in action.reason
    [seen] = action.inputs["windows"]
    assert seen["load"] == 0.75 and seen["utilization"] == 1.0 and seen["prompt_tokens_rate"] == 30_000
    assert autoscale(snap, config("autoscale", breach_windows=1), NOW) == []


def test_draining_scale_in_takes_the_least_loaded_busy_instance() -> None:
    snap = snapshot(
        pools=[pool(windows=(COLD, COLD))],
        instances=[
            instance(1, requests_running=3, gpu_id=1),
            instance(2, requests_running=1, requests_waiting=1, gpu_id=1),
            instance(3, requests_running=1, gpu_id=1),
        ],
        gpus=[gpu(1)],
    )
    [action] = autoscale(snap, config("autoscale", breach_windows=2, scale_in_windows=2, scale_in_drain=True), NOW)
    assert (action.action, action.instance_id, action.state) == ("scale_in", 3, "stopped")
    assert "draining 1 request(s) in flight" in action.reason


def test_draining_prefers_a_quiet_instance() -> None:
    snap = snapshot(
        pools=[pool(windows=(COLD, COLD))],
        instances=[instance(1, requests_running=1, gpu_id=1), instance(2, requests_running=0, gpu_id=1)],
        gpus=[gpu(1)],
    )
    [action] = autoscale(snap, config("autoscale", breach_windows=2, scale_in_windows=2, scale_in_drain=True), NOW)
    assert action.instance_id == 2 and "draining" not in action.reason
