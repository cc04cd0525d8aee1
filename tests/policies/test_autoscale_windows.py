"""Autoscaling reads only windows measured after its last action, and the end-to-end bound beside the SLA's."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from fleet import selectors
from fleet.models import InstanceSample
from fleet.policies.autoscale import autoscale
from fleet.policies.snapshot import PoolWindow
from fleet.sim.setup import setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from tests.factories import make_gpu, make_instance, make_node, make_pool
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot
from tests.sim.test_simulate import autoscale_snapshots
from tests.sim.toy import START, TOY

# No cool-downs: what is left to hold a decision back is which windows count.
SETTINGS = dict(breach_windows=2, scale_in_windows=3, scale_out_cooldown_s=0, scale_in_cooldown_s=0)


def minutes(kv_cache: float, latency_ms: float, e2e_latency_ms: float | None = None) -> tuple[PoolWindow, ...]:
    """Three one-minute windows, beginning 180, 120 and 60 s ago."""
    return tuple(
        PoolWindow(
            start=ago(60 * back),
            end=ago(60 * (back - 1)),
            kv_cache=kv_cache,
            queue=0,
            latency_ms=latency_ms,
            e2e_latency_ms=e2e_latency_ms,
        )
        for back in (3, 2, 1)
    )


def decide(windows: tuple[PoolWindow, ...], n: int, **pool_kwargs: Any) -> list[str]:
    snap = snapshot(
        pools=[pool(windows=windows, gpu_memory_utilization=0.3, **pool_kwargs)],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in range(1, n + 1)],
        gpus=[gpu(1), gpu(2)],
    )
    return [a.action for a in autoscale(snap, config("autoscale", **SETTINGS), NOW)]


# Load 0.2 on two instances: under the band (0.5) and 0.4 on one, still inside it; latency 300 ms < 0.7 x 500.
CALM = minutes(0.20, 300)
# Latency 620 ms over the 500 ms SLA.
HOT = minutes(0.60, 620)


@pytest.mark.parametrize(
    ("case", "windows", "n", "last", "expected"),
    [
        ("scale-in: the oldest window began before the last scale-in", CALM, 2, {"last_scale_in_at": ago(150)}, []),
        ("scale-in: a scale-out 170 s ago straddles it too", CALM, 2, {"last_scale_out_at": ago(170)}, []),
        ("scale-in: all three began at or after it", CALM, 2, {"last_scale_in_at": ago(180)}, ["scale_in"]),
        ("scale-in: no action yet", CALM, 2, {}, ["scale_in"]),
        ("scale-out: one window after the last scale-out", HOT, 1, {"last_scale_out_at": ago(90)}, []),
        ("scale-out: a scale-in 61 s ago leaves one window", HOT, 1, {"last_scale_in_at": ago(61)}, []),
        ("scale-out: two windows after it", HOT, 1, {"last_scale_out_at": ago(120)}, ["scale_out"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_decision_needs_its_windows_all_measured_after_the_last_action(
    case: str, windows: tuple[PoolWindow, ...], n: int, last: dict[str, Any], expected: list[str]
) -> None:
    assert decide(windows, n, **last) == expected


def test_the_end_to_end_bound_breaches_and_holds_scale_in_back() -> None:
    """First token 300 ms (within 500 ms) but the whole answer 3000 ms: over a 2000 ms end-to-end bound
    that is a breach; without one the same windows are calm. End-to-end 1500 ms is within the bound but
    above 0.7 x 2000 = 1400 ms, so it does not let a scale-in through either; 1300 ms does."""
    slow = minutes(0.20, 300, e2e_latency_ms=3000)
    assert decide(slow, 1, sla_e2e_latency_ms=2000) == ["scale_out"]
    assert decide(slow, 1) == []
    assert decide(minutes(0.20, 300, e2e_latency_ms=1500), 2, sla_e2e_latency_ms=2000) == []
    assert decide(minutes(0.20, 300, e2e_latency_ms=1300), 2, sla_e2e_latency_ms=2000) == ["scale_in"]


@pytest.mark.django_db
def test_production_windows_read_the_end_to_end_histogram_where_the_pool_has_the_bound() -> None:
    """One report with end-to-end buckets 1, 2.5, 5 s holding 2, 6, 10 of 10 requests: the P95 at rank 9.5
    lies in (2.5, 5] s, which holds 4, so 2.5 + 2.5 x 3.5/4 = 4.6875 s. A pool without the bound reads none."""
    node = make_node()
    bounded = make_pool("bounded", sla_percentile=95, sla_e2e_latency_ms=2000)
    plain = make_pool("plain", sla_percentile=95)
    histogram = {"bounds": [1.0, 2.5, 5.0], "counts": [2, 6, 10], "count": 10}
    now = NOW
    for index, row in enumerate((bounded, plain)):
        instance = make_instance(row, make_gpu(node, index), actual_state="ready")
        InstanceSample.objects.create(
            instance=instance, at=now - timedelta(seconds=20), state="ready", e2e_histogram=histogram
        )
    views = {view.name: view for view in selectors.fleet_snapshot(now=now).pools}
    assert views["bounded"].sla_e2e_latency_ms == 2000
    assert views["bounded"].windows[-1].e2e_latency_ms == pytest.approx(4687.5)
    assert views["plain"].windows[-1].e2e_latency_ms is None


def test_simulated_windows_read_the_end_to_end_latency_in_vllms_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 400-token prompts at once, one output token each, on the flat engine of the latency-figure test:
    done after 0.41 s and 0.82 s. In vLLM's end-to-end buckets (0.3, 0.5] and (0.8, 1.0]: the P95 at rank
    1.9 of 2 reads 0.8 + 0.2 x 0.9 = 0.98 s."""
    engine = TOY
    values = {"pool": {"sla_percentile": 95, "sla_e2e_latency_ms": 2000}}
    setup = replace(setup_build(engine=engine, gpus=1, values=values), start_jitter=0.0)
    trace = Trace(
        name="hand",
        start=START,
        requests=tuple(TraceRequest(*r) for r in ((0.0, 400, 1), (0.0, 400, 1), (40.0, 100, 1))),
    )
    seen = autoscale_snapshots(monkeypatch)
    Simulation(trace=trace, setup=setup, label="policy").run()
    assert seen[0].pools[0].windows[-1].e2e_latency_ms == pytest.approx(980)


@pytest.mark.parametrize(("margin", "expected"), [(1.0, ["scale_in"]), (1.6, ["scale_in"]), (1.7, [])])
def test_the_scale_in_load_margin_leaves_room_for_the_peaks_on_one_instance_fewer(
    margin: float, expected: list[str]
) -> None:
    """Load 0.2 on two instances guesses 0.2 x 2 / 1 = 0.4 on one. Times 1.6 that is 0.64, within the band's
    top (0.65): the scale-in goes. Times 1.7 it is 0.68, over it: the pool holds its two."""
    snap = snapshot(
        pools=[pool(windows=CALM, gpu_memory_utilization=0.3)],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in (1, 2)],
        gpus=[gpu(1), gpu(2)],
    )
    actions = autoscale(snap, config("autoscale", **SETTINGS, scale_in_load_margin=margin), NOW)
    assert [a.action for a in actions] == expected
    if margin == 1.6:
        assert "; 1 instance(s) would carry 40%, x margin 1.6 <= 65%; stopping instance 2" in actions[0].reason
