"""The tiered benchmark: a multi-pool simulation whose tier split matches the routing function on
the same requests, each tier priced by its device, and the money totals worked out by hand."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fleet.policies import routing
from fleet.sim.compare import Comparison, OracleBound
from fleet.sim.engine import engine_model_for
from fleet.sim.result import SimResult
from fleet.sim.tiers import (
    TieredComparison,
    TierResult,
    TierSpec,
    document_summaries,
    mig_shares,
    one_pool_policy,
    static_held,
    tier_engine,
    tier_price,
    tier_setup,
    tier_split,
    tiered_compare,
    together_run,
)
from fleet.sim.traces import trace_load
from tests.sim.toy import sim_result, trace_of

SPECS = (
    TierSpec(tier="S", gpu="H100", gpus=2),
    TierSpec(tier="M", gpu="H100", gpus=2, mig_profile="3g.40gb"),
    TierSpec(tier="L", gpu="L40S", gpus=2),
)
STATIC = TierSpec(tier="L", gpu="H100", gpus=2)


def hand_trace() -> Any:
    """RCF = prompt / 512 x output / 256 (no content feature), capped at 5; S from 3.0, M from 1.2:
    (512, 256) -> 1.0 L; (600, 256) -> 1.17 L; (768, 256) -> 1.5 M; (1024, 256) -> 2.0 M;
    (1536, 256) -> 3.0 S (the threshold itself); (1536, 512) -> 6, capped 5, S."""
    return trace_of(
        (0.0, 512, 256), (10.0, 1536, 256), (20.0, 768, 256), (30.0, 600, 256), (40.0, 1024, 256), (50.0, 1536, 512)
    )


def test_split_matches_the_routing_function_by_hand() -> None:
    split = tier_split(hand_trace())
    assert {tier: len(t.requests) for tier, t in split.items()} == {"S": 2, "M": 2, "L": 2}
    assert [r.arrival_s for r in split["S"].requests] == [10.0, 50.0]  # the same clock, not shifted
    assert [r.prompt_tokens for r in split["M"].requests] == [768, 1024]


def test_split_matches_the_routing_function_on_a_published_trace() -> None:
    """Counted here with the gateway's own functions, request by request, over the code trace."""
    trace = trace_load("azure-code")
    settings = routing.RoutingSettings.defaults()
    none = routing.Features(code_block=False, code_keywords=False, math=False)
    counted = Counter(
        routing.tier_for(
            routing.rcf_compute(
                prompt_tokens=r.prompt_tokens, max_tokens=r.output_tokens, features=none, settings=settings
            ),
            settings,
        )
        for r in trace.requests
    )
    split = tier_split(trace)
    assert {tier: len(t.requests) for tier, t in split.items()} == {tier: counted[tier] for tier in "SML"}
    assert sum(len(t.requests) for t in split.values()) == len(trace.requests)


def test_mig_slice_device_and_price() -> None:
    """3g.40gb on an 80 GB H100: 3 of 7 compute slices, 40 of 80 GB, two slices a card (7 // 3 = 2,
    80 // 40 = 2); the card's $6.88 preset split in two: $3.44 a slice-hour."""
    compute, memory, per_card = mig_shares("H100", "3g.40gb")
    assert compute == pytest.approx(3 / 7)
    assert (memory, per_card) == (0.5, 2)
    card, sliced = tier_engine(SPECS[0]), tier_engine(SPECS[1])
    assert sliced.prefill_tokens_per_s == pytest.approx(card.prefill_tokens_per_s * 3 / 7)
    assert sliced.decode_step_base_s == pytest.approx(card.decode_step_base_s * 2)
    assert sliced.kv_cache_tokens < card.kv_cache_tokens
    assert tier_price(SPECS[1]) == Decimal("3.44")
    assert tier_price(SPECS[2]) == Decimal("1.8610")


def test_tier_pool_is_routed_first_and_prefill_capacity_scaled() -> None:
    """The M pool sits in tier M; an autoscale prefill capacity given for an H100 (42,613 tokens/s)
    is scaled by the slice's share of the card's prefill rate, 3/7: 18,263."""
    values = {"policies": {"autoscale": {"prefill_tokens_per_s": 42613}}}
    setup = tier_setup(replace(SPECS[1], values=values))
    assert [pool.tier for pool in setup.pools] == ["M"]
    assert setup.policies["autoscale"].fleet is not None
    assert setup.policies["autoscale"].fleet["prefill_tokens_per_s"] == pytest.approx(42613 * 3 / 7, abs=1)


def test_multi_pool_simulation_serves_each_tier_its_own_requests() -> None:
    """Each tier's pool gets exactly the requests the routing function gives its tier (2 each), and
    the static fleet, one always-on H100 pool, serves all 6 from 0 s until the last answer ends:
    one instance (six short prompts 10 s apart never queue), billed 50 s + the last request's
    time, at most a few seconds (256 output tokens at ~5 ms a step): under $0.11 at $6.88 an hour."""
    result = tiered_compare(hand_trace(), SPECS, STATIC)
    assert [(t.spec.tier, t.requests) for t in result.tiers] == [("S", 2), ("M", 2), ("L", 2)]
    for tier in result.tiers:
        assert tier.comparison is not None
        assert tier.comparison.policy.requests == 2
        assert tier.comparison.policy.failed == 0
    assert result.static_instances == 1
    assert result.static.requests == 6
    assert 50 / 3600 < result.static.paid_gpu_hours < 55 / 3600
    assert result.static_spend == Decimal(str(result.static.paid_gpu_hours)) * Decimal("6.8800")
    assert result.spend("policy") == sum((t.spend("policy") for t in result.tiers), Decimal(0))


def _result(paid_hours: float, *, held_hours: float | None = None) -> SimResult:
    return sim_result(
        label="hand",
        ttft_s=[0.1],
        e2e_s=[0.2],
        gpu_hours=paid_hours if held_hours is None else held_hours,
        node_hours=paid_hours,
        instances_peak=1,
        duration_s=3600.0,
    )


def _comparison(policy: float, static: float, oracle: float) -> Comparison:
    bound = OracleBound(schedule=(1,), gpu_hours=oracle, misses=0, interval_misses=(0,), allowed=0, feasible=True)
    return Comparison(
        trace="hand",
        gpu_model="H100",
        policy=_result(policy),
        static=_result(static),
        static_instances=1,
        static_meets_sla=True,
        oracle=_result(oracle),
        schedule=(1,),
        price_per_gpu_hour=None,
        setup=tier_setup(STATIC),
        oracle_bound=bound,
        oracle_meets_sla=True,
        oracle_repaired=_result(oracle),
        repaired_schedule=(1,),
        oracle_repaired_meets_sla=True,
    )


def test_money_totals_by_hand() -> None:
    """S: policy 2 h x $6.88 = $13.76, oracle 1.5 h = $10.32. M: 3 slice-hours x $3.44 = $10.32,
    oracle 2 = $6.88. L: 4 h x $1.861 = $7.444, oracle 2 = $3.722. Policy total $31.524, oracle
    $20.922. Static: one H100 pool, 3 instances for 2 h = 6 h x $6.88 = $41.28. Saved:
    1 - 31.524 / 41.28 = 0.23634; the oracle's 1 - 20.922 / 41.28 = 0.49317; oracle/policy in
    money 20.922 / 31.524 = 0.66368."""
    prices = {"S": Decimal("6.88"), "M": Decimal("3.44"), "L": Decimal("1.861")}
    hours = {"S": (2.0, 2.0, 1.5), "M": (3.0, 4.0, 2.0), "L": (4.0, 4.0, 2.0)}
    tiers = tuple(
        TierResult(spec=spec, requests=1, price=prices[spec.tier], comparison=_comparison(*hours[spec.tier]))
        for spec in SPECS
    )
    total = TieredComparison(
        trace="hand",
        requests=3,
        tiers=tiers,
        static=_result(6.0),
        static_instances=3,
        static_meets_sla=True,
        static_gpu="H100",
        static_price=Decimal("6.88"),
    )
    assert total.spend("policy") == Decimal("31.524")
    assert total.spend("oracle") == Decimal("20.922")
    assert total.static_spend == Decimal("41.28")
    assert total.saved("policy") == pytest.approx(0.23634, abs=1e-5)
    assert total.saved("oracle") == pytest.approx(0.49317, abs=1e-5)
    assert total.efficiency == pytest.approx(0.66368, abs=1e-5)


def test_document_summaries_are_seeded_and_within_their_stated_range() -> None:
    """Poisson arrivals at 1 request a second for 200 s: about 200 (Poisson: sd 14); prompts
    within 8,192..131,072 tokens, log-uniform, so half below their geometric middle,
    sqrt(8,192 x 131,072) = 32,768 tokens; summaries within 256..1,024 tokens."""
    trace = document_summaries([(0.0, 200.0, 1.0)], seed=3)
    again = document_summaries([(0.0, 200.0, 1.0)], seed=3)
    assert trace.requests == again.requests
    assert 150 < len(trace.requests) < 250
    prompts = [r.prompt_tokens for r in trace.requests]
    assert all(8_192 <= p <= 131_072 for p in prompts)
    assert all(256 <= r.output_tokens <= 1_024 for r in trace.requests)
    below = sum(p < 32_768 for p in prompts) / len(prompts)
    assert 0.35 < below < 0.65
    assert {len(t.requests) for t in tier_split(trace).values()} == {0, len(prompts)}  # all S: RCF capped at 5


def test_static_held_sets_the_guard_and_leaves_the_given_settings_alone() -> None:
    """The guard at the stated size over the trace's settings; the other policies' settings, and any of the
    guard's own (its window), kept; the mapping passed in unchanged (tier specs share it)."""
    given: dict[str, dict[str, Any]] = {"pool": {"min_instances": 1}, "policies": {"autoscale": {"breach_windows": 1}}}
    held = static_held(given, replicas=4)
    assert held == {
        "pool": {"min_instances": 1},
        "policies": {"autoscale": {"breach_windows": 1}, "static_hold": {"static_replicas": 4}},
    }
    assert "static_hold" not in given["policies"]
    windowed = {"policies": {"static_hold": {"window_hours": 6}}}
    assert static_held(windowed, replicas=2)["policies"]["static_hold"] == {"window_hours": 6, "static_replicas": 2}


def l_burst() -> Any:
    """600 L-tier requests (RCF 512/512 x 256/256 = 1.0) in the first second: 600 outstanding on one ready
    instance is 2.3 x its 256 sequences, far over the band's top (the gateway's pressure scales out)."""
    return trace_of(*((i / 600, 512, 256) for i in range(600)))


def test_together_hold_static_keeps_each_pool_at_its_static_size() -> None:
    """From one L40S (the L tier's static fleet, as ``together_initial`` gives it), the unguarded L pool
    scales out under the burst; held at that size it never bills a second one."""
    initial = {"S": 0, "M": 0, "L": 1}
    free = together_run(l_burst(), SPECS, initial=initial)
    held = together_run(l_burst(), SPECS, initial=initial, hold_static=True)
    assert free.pools["L"].instances_peak > 1
    assert held.pools["L"].instances_peak == 1
    assert held.pools["L"].requests == 600


def test_one_pool_policy_starts_from_the_static_fleet_and_holds_it_when_asked() -> None:
    """The same burst on one H100 pool from one instance: free, the policy adds instances; held at the
    static size of one, it serves all 600 on that one."""
    spec = replace(STATIC, gpus=4)
    free = one_pool_policy(l_burst(), spec, count=1)
    held = one_pool_policy(l_burst(), spec, count=1, hold_static=True)
    assert free.instances_peak > 1
    assert (held.instances_peak, held.requests, held.failed) == (1, 600, 0)
    assert held.label == "policy from 1, static hold 1"


def test_the_fleet_rate_settings_carry_the_calibrated_h100_prefill_rate() -> None:
    """``tiers.json``'s fleet-rate row runs ``servegen-fleet.json``, whose autoscale prefill capacity is the
    calibrated H100 engine's (``tier_setup`` scales it to each tier's device): a stale figure (the eager
    engine's 42,613 tokens/s against about 79,700) read every card as nearly twice as loaded as it was."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "sim"
    fleet = json.loads((bench / "tiers.json").read_text(encoding="utf-8"))["servegen_fleet"]
    values = json.loads((bench / fleet["policy_settings"]).read_text(encoding="utf-8"))
    stated = values["policies"]["autoscale"]["prefill_tokens_per_s"]
    assert stated == pytest.approx(engine_model_for("H100").prefill_tokens_per_s, rel=0.01)
