"""The same snapshots through production's evaluation and the simulator's: the same actions, in the same order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet import selectors
from fleet.decide import evaluate
from fleet.models import Decision
from fleet.policies.actions import Action
from fleet.policies.snapshot import FleetSnapshot, PoolWindow
from fleet.sim.engine import engine_model_for
from fleet.sim.setup import policy_configs_build, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from tests.policies.builders import GIB, NOW, ago, gpu, instance, pool, snapshot

pytestmark = pytest.mark.django_db

# A Monday, two minutes before its daily 09:00 report: within a cold start (120 s) + margin (30 s).
PREWARM_AT = datetime(2026, 3, 2, 8, 58, tzinfo=UTC)
HOT = PoolWindow(start=ago(60), end=NOW, kv_cache=0.6, queue=6, latency_ms=900)
COLD = PoolWindow(start=ago(60), end=NOW, kv_cache=0.1, queue=0, latency_ms=100)
BUSY = {"last_request_at": ago(2), "requests_running": 3.0}


def daily_report() -> list[datetime]:
    first = PREWARM_AT.replace(hour=9, minute=0) - timedelta(days=21)
    return [first + timedelta(days=day, seconds=5 * r) for day in range(21) for r in range(40)]


SCENARIOS: dict[str, tuple[FleetSnapshot, datetime, list[datetime], list[tuple[str, str, Any]]]] = {
    "idle reclaim": (
        snapshot(pools=[pool()], instances=[instance(1, last_request_at=ago(700))], gpus=[gpu(1)]),
        NOW,
        [],
        [("idle_reclaim", "stop", 1)],
    ),
    "scale out": (
        snapshot(
            pools=[pool(windows=(HOT,) * 6, gpu_memory_utilization=0.3)],
            instances=[instance(1, **BUSY)],
            gpus=[gpu(1), gpu(2)],
        ),
        NOW,
        [],
        [("autoscale", "scale_out", 1)],
    ),
    "scale in": (
        snapshot(
            pools=[pool(windows=(COLD,) * 6, gpu_memory_utilization=0.3)],
            instances=[instance(1, **BUSY), instance(2, gpu_id=1, last_request_at=ago(30))],
            gpus=[gpu(1)],
        ),
        NOW,
        [],
        [("autoscale", "scale_in", 2)],
    ),
    "prewarm": (
        replace(snapshot(pools=[pool()], gpus=[gpu(1)]), at=PREWARM_AT),
        PREWARM_AT,
        daily_report(),
        [("prewarm", "launch", 1)],
    ),
    "placement": (
        snapshot(
            pools=[pool(isolation="exclusive", windows=(HOT,) * 6)],
            instances=[instance(1, **BUSY)],
            gpus=[gpu(1), gpu(2, memory_used_bytes=70 * GIB, foreign_memory_bytes=70 * GIB), gpu(3)],
        ),
        NOW,
        [],
        [("autoscale", "scale_out", 3)],
    ),
}


def production_actions(
    monkeypatch: pytest.MonkeyPatch, fleet: FleetSnapshot, now: datetime, times: list[datetime]
) -> list[Action]:
    """``policies_evaluate`` reading ``fleet`` for its snapshot, its actions recorded instead of applied."""
    applied: list[Action] = []

    def record(*, action: Action, policies: Any) -> Decision:
        applied.append(action)
        return Decision(action=action.action, reason=action.reason)

    monkeypatch.setattr(selectors, "policy_configs", policy_configs_build)
    monkeypatch.setattr(selectors, "fleet_snapshot", lambda now: fleet)
    monkeypatch.setattr(evaluate, "action_apply", record)
    evaluate.policies_evaluate(now=now, request_times=lambda pool_ids, since, until: {pool_ids[0]: times})
    return applied


class _PatchableSimulation(Simulation):
    """A plain Python subclass, whose instances take patched methods also where the simulator is
    compiled (``make sim-compiled``: ``Simulation`` is then a native class, whose own instances do not)."""


def simulator_actions(
    monkeypatch: pytest.MonkeyPatch, fleet: FleetSnapshot, now: datetime, times: list[datetime]
) -> list[Action]:
    """The simulator's evaluation on a tick at ``now`` whose snapshot is ``fleet``, its actions recorded."""
    applied: list[Action] = []
    start = now - timedelta(hours=1)
    trace = Trace(name="hand", start=start, requests=(TraceRequest(0.0, 100, 1),))
    setup = replace(setup_build(engine=engine_model_for("H100"), gpus=1), policies=policy_configs_build())
    simulation = _PatchableSimulation(trace=trace, setup=setup, label="policy")
    simulation.now = (now - start).total_seconds()
    simulation.request_times[fleet.pools[0].id] = list(times)
    monkeypatch.setattr(simulation, "_snapshot", lambda: fleet)
    monkeypatch.setattr(simulation, "_apply", lambda action: applied.append(action) is None)
    simulation._evaluate()
    return applied


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_production_and_the_simulator_decide_the_same_on_the_same_snapshot(
    monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    fleet, now, times, expected = SCENARIOS[scenario]
    production = production_actions(monkeypatch, fleet, now, times)
    simulated = simulator_actions(monkeypatch, fleet, now, times)
    assert simulated == production
    assert [(a.kind, a.action, getattr(a, "instance_id", None) or getattr(a, "gpu_id", None)) for a in production] == (
        expected
    )
