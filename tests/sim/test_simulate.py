"""The simulator: production policy functions, the hand-checked static reference, determinism (the oracle:
test_oracle.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

import fleet.policies.autoscale
import fleet.policies.colocate
import fleet.policies.idle
import fleet.policies.prewarm
import fleet.policies.reap
from fleet.policies import registry, routing
from fleet.policies.actions import Action
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig
from fleet.sim.compare import compare, static_search
from fleet.sim.report import comparison_html, comparison_markdown
from fleet.sim.setup import SimPool, policy_configs_build, pool_view_default, setup_build, tick_period_s
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from tests.sim.toy import START, TOY, toy_setup, trace_of


def test_the_simulator_runs_the_production_policy_functions_in_production_order() -> None:
    functions = registry.policy_functions()
    assert functions["reap"] is fleet.policies.reap.reap
    assert functions["idle_reclaim"] is fleet.policies.idle.idle_reclaim
    assert functions["autoscale"] is fleet.policies.autoscale.autoscale
    assert functions["prewarm"] is fleet.policies.prewarm.prewarm
    assert functions["colocate"] is fleet.policies.colocate.colocate
    assert set(functions) == set(registry.ORDER)
    assert tick_period_s() == 30.0


def test_a_patched_production_policy_changes_the_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autoscale is called every tick with snapshots of simulated state, and what it returns is applied."""
    trace = trace_of(*[(t * 2.0, 100, 4) for t in range(100)])
    setup = toy_setup(gpus=3)
    baseline = Simulation(trace=trace, setup=setup, label="policy").run()
    seen: list[FleetSnapshot] = []
    original = fleet.policies.autoscale.autoscale

    def always_out(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
        seen.append(snapshot)
        pool = snapshot.pools[0]
        return fleet.policies.autoscale._out(snapshot, pool, "test: always scale out", None, (), config.fleet or {})

    monkeypatch.setattr(fleet.policies.autoscale, "autoscale", always_out)
    patched = Simulation(trace=trace, setup=setup, label="policy").run()
    monkeypatch.setattr(fleet.policies.autoscale, "autoscale", original)
    assert len(seen) == int(trace.duration_s // 30)
    assert all(isinstance(s, FleetSnapshot) and s.gpus and s.instances for s in seen)
    assert [d.action for d in patched.decisions if d.kind == "autoscale"] == ["scale_out", "scale_out"]
    assert patched.gpu_hours > baseline.gpu_hours
    assert patched.instances_peak == 3 > baseline.instances_peak


def autoscale_snapshots(monkeypatch: pytest.MonkeyPatch) -> list[FleetSnapshot]:
    """Every snapshot autoscale is called with from now on, in order; autoscale still decides."""
    seen: list[FleetSnapshot] = []
    original = fleet.policies.autoscale.autoscale

    def watching(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
        seen.append(snapshot)
        return original(snapshot, config, now)

    monkeypatch.setattr(fleet.policies.autoscale, "autoscale", watching)
    return seen


def test_simulated_windows_carry_the_load_figures_the_agent_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """One instance, 100 prompt tokens every 2 s: 50 prompt tokens a second, a few sequences, no GPU-bound duty."""
    trace = trace_of(*[(t * 2.0, 100, 4) for t in range(100)])
    seen = autoscale_snapshots(monkeypatch)
    Simulation(trace=trace, setup=toy_setup(gpus=1), label="policy").run()
    steady = [s.pools[0].windows[-2] for s in seen[3:]]
    assert steady and all(w.prompt_tokens_rate == pytest.approx(50, rel=0.05) for w in steady)
    assert all(w.running is not None and 0 <= w.running <= 1 for w in steady)
    assert all(w.kv_cache is not None and 0 <= w.kv_cache < 0.01 for w in steady)
    assert seen[0].pools[0].max_num_seqs == TOY.max_num_seqs


def test_routing_uses_the_production_tier_function(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = trace_of((0.0, 100, 2), (1.0, 100, 2))
    base = toy_setup(gpus=2)
    pools = (
        SimPool(pool_view_default(engine=TOY, gpus=2, id=1, name="s"), tier="S"),
        SimPool(pool_view_default(engine=TOY, gpus=2, id=2, name="l"), tier="L"),
    )
    setup = replace(base, pools=pools)
    simulation = Simulation(trace=trace, setup=setup, label="policy")
    simulation.run()
    assert set(simulation.request_times) == {2}
    monkeypatch.setattr(routing, "tier_for", lambda rcf, settings: "S")
    simulation = Simulation(trace=trace, setup=setup, label="policy")
    simulation.run()
    assert set(simulation.request_times) == {1}


def test_static_reference_is_the_fewest_instances_meeting_the_sla_hand_checked() -> None:
    # Two 400-token prompts at once: on one instance the second waits for the first's
    # 0.41 s prefill, so its first token comes at 0.82 s (> 500 ms); on two, each takes
    # 0.41 s. A third request at 40 s fits anywhere.
    trace = trace_of((0.0, 400, 1), (0.0, 400, 1), (40.0, 100, 1))
    count, meets, runs = static_search(trace=trace, setup=toy_setup())
    assert (count, meets) == (2, True)
    assert runs[0].attainment == pytest.approx(2 / 3)
    assert runs[0].ttft_s == pytest.approx([0.41, 0.82, 0.11])
    assert runs[1].ttft_s == pytest.approx([0.41, 0.41, 0.11])
    # Two instances held from 0 s to the last first token at 40.11 s.
    assert runs[1].gpu_hours == pytest.approx(2 * 40.11 / 3600)


def test_requests_to_an_empty_pool_wait_for_a_cold_start() -> None:
    values = {"pool": {"idle_stop_after_s": 60, "idle_minimize_after_s": 30}}
    trace = trace_of((0.0, 100, 1), (200.0, 100, 1))
    result = Simulation(trace=trace, setup=toy_setup(values=values), label="policy").run()
    assert [d.action for d in result.decisions] == ["stop", "start"]
    assert result.cold_starts == 1 and result.cold_waited == 1
    assert result.ttft_s[1] == pytest.approx(30.0 + 0.11)
    assert result.attainment == 0.5


def test_same_seed_same_report_and_the_comparison_adds_up() -> None:
    trace = Trace(
        name="hand",
        start=START,
        requests=tuple(TraceRequest(t * 1.5, 300 + 37 * (t % 5), 3 + t % 4) for t in range(120)),
    ).rate_scaled(2, seed=3)
    setup = replace(setup_build(engine=TOY, gpus=4, seed=5), start_jitter=0.2)
    first = compare(trace=trace, setup=setup)
    second = compare(trace=trace, setup=setup)
    assert comparison_markdown(first) == comparison_markdown(second)
    assert comparison_html(first) == comparison_html(second)
    assert first.savings == pytest.approx(1 - first.policy.gpu_hours / first.static.gpu_hours)
    assert first.efficiency == pytest.approx(first.oracle_bound.gpu_hours / first.policy.gpu_hours)
    assert first.oracle_bound.gpu_hours <= first.static.gpu_hours
    assert "simulated" in comparison_html(first)


def test_policy_configs_are_validated_like_the_admin_does() -> None:
    configs = policy_configs_build({"autoscale": {"breach_windows": 1}, "prewarm": None})
    assert configs["autoscale"].fleet is not None and configs["autoscale"].fleet["breach_windows"] == 1
    assert configs["prewarm"].fleet is None
    with pytest.raises(Exception, match="breach_windows"):
        policy_configs_build({"autoscale": {"breach_windows": 0}})
