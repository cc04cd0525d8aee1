"""Autoscaling: breach for N windows to scale out, comfort for N windows to scale in, cool-downs, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.policies.autoscale import autoscale
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot, window

HOT = window(utilization=0.60, latency_ms=620)  # P95 over the 500 ms SLA
OK = window(utilization=0.58, latency_ms=380)
COLD = window(utilization=0.20, latency_ms=300)


def decide(windows: list[Any], n: int = 1, **pool_kwargs: Any) -> list[tuple[str, int | None]]:
    values: dict[str, Any] = dict(windows=tuple(windows), gpu_memory_utilization=0.3)
    values.update(pool_kwargs)
    snap = snapshot(
        pools=[pool(**values)],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in range(1, n + 1)],
        gpus=[gpu(1), gpu(2)],
    )
    return [
        (a.action, getattr(a, "instance_id", None)) for a in autoscale(snap, config("autoscale", breach_windows=2), NOW)
    ]


@pytest.mark.parametrize(
    ("case", "windows", "expected"),
    [
        ("latency breached twice", [HOT, HOT], [("scale_out", None)]),
        ("breached once only", [OK, HOT], []),
        ("queue above the threshold", [window(0.5, queue=5), window(0.5, queue=4.5)], [("scale_out", None)]),
        ("queue exactly at the threshold", [window(0.5, queue=4), window(0.5, queue=4)], []),
        ("utilization above the band", [window(0.66), window(0.70)], [("scale_out", None)]),
        ("utilization exactly at the band's top", [window(0.65), window(0.65)], []),
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
        ("queue not empty", [COLD, window(0.2, queue=1)], 2, {}, []),
        ("utilization at the band's low", [COLD, window(0.5)], 2, {}, []),
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
