"""Several pools in one simulation, each on its own GPUs with its own engine model and price, routed
as the gateway routes (``routing.FALLBACK``, ``Picker.pick``): the tier split, the fallback order and
the spend, worked out by hand on the toy engine (``tests.sim.toy``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from fleet.policies import routing
from fleet.policies.settings import SCHEMAS
from fleet.sim.engine import engine_model_for
from fleet.sim.setup import SimPool, SimSetup, gpu_groups, policy_configs_build, pool_view_default, request_tier
from fleet.sim.simulate import Simulation
from fleet.sim.tiers import (
    TierSpec,
    pools_run,
    tier_price,
    tier_setup,
    tier_split,
    tiered_compare,
    together_run,
    together_setup,
)
from fleet.sim.traces import Trace
from tests.sim.test_sim_speed import _bursty_trace
from tests.sim.test_tiers import SPECS, STATIC
from tests.sim.test_tiers import hand_trace as tiers_trace
from tests.sim.toy import TOY, toy_setup, trace_of

# The M pool's device prefills at half the toy rate: 500 tokens a second.
SLOW = replace(TOY, prefill_tokens_per_s=500.0)
OFF = policy_configs_build(dict.fromkeys(SCHEMAS))  # every policy off: the fleet stays as it starts


def pool(pool_id: int, tier: str, gpus: int, **fields: Any) -> SimPool:
    view = pool_view_default(engine=TOY, gpus=max(gpus, 1), id=pool_id, name=f"tier {tier}")
    return SimPool(view=view, tier=tier, engine=TOY, gpus=gpus, device=f"toy {tier}", **fields)


def three_pools(s: int = 1, m: int = 1, l_gpus: int = 1, **fields: Any) -> SimSetup:
    """S, M and L pools with GPUs of their own (the M pool's engine ``SLOW``), every policy off."""
    pools = (pool(1, "S", s), replace(pool(2, "M", m), engine=SLOW), pool(3, "L", l_gpus))
    return replace(toy_setup(gpus=1), pools=pools, policies=OFF, **fields)


def hand_trace() -> Trace:
    """RCF = prompt / 512 x output / 256, S from 3.0, M from 1.2 (``tests.sim.test_tiers``): two of each,
    10 s apart, so no request waits for another: (512, 256) L, (1536, 256) S, (768, 256) M, (600, 256) L,
    (1024, 256) M, (1536, 512) S."""
    return trace_of(
        (0.0, 512, 256), (10.0, 1536, 256), (20.0, 768, 256), (30.0, 600, 256), (40.0, 1024, 256), (50.0, 1536, 512)
    )


def served_tiers(simulation: Simulation) -> list[str]:
    tier_of = {p.view.id: p.tier for p in simulation.setup.pools}
    return [tier_of[pool_id] for pool_id in simulation.served_by]


def test_gpus_are_numbered_per_pool_on_nodes_of_their_own() -> None:
    """Two GPUs a node: S's 2 GPUs are 1-2 (node 1), M's one is 3 (node 2, GPU 4 left out), L's 2 are 5-6
    (node 3). The snapshot shows each GPU with its pool's device and memory, and each pool wants its
    device (``PoolView.gpu_model``), which is how production placement keeps a pool to its GPUs."""
    setup = three_pools(2, 1, 2, gpus_per_node=2)
    groups = gpu_groups(setup)
    assert [(list(g.gpu_ids), g.pool_ids, g.device) for g in groups] == [
        ([1, 2], (1,), "toy S"),
        ([3], (2,), "toy M"),
        ([5, 6], (3,), "toy L"),
    ]
    snapshot = Simulation(trace=hand_trace(), setup=setup, label="policy")._snapshot()
    assert [(g.id, g.node_id, g.model_name) for g in snapshot.gpus] == [
        (1, 1, "toy S"),
        (2, 1, "toy S"),
        (3, 2, "toy M"),
        (5, 3, "toy L"),
        (6, 3, "toy L"),
    ]
    assert [p.gpu_model for p in snapshot.pools] == ["toy S", "toy M", "toy L"]


def test_a_one_pool_setup_keeps_the_setups_gpus_and_leaves_the_pool_unconstrained() -> None:
    setup = toy_setup(gpus=3)
    assert [(list(g.gpu_ids), g.pool_ids) for g in gpu_groups(setup)] == [([1, 2, 3], (1,))]
    snapshot = Simulation(trace=hand_trace(), setup=setup, label="policy")._snapshot()
    assert snapshot.pools[0].gpu_model == ""
    assert {g.model_name for g in snapshot.gpus} == {"NVIDIA H100 80GB HBM3"}


def test_bad_pool_devices_are_refused() -> None:
    same = replace(three_pools(), pools=(pool(1, "S", 1), replace(pool(2, "M", 1), device="toy S")))
    with pytest.raises(ValueError, match="distinct names"):
        gpu_groups(same)
    borrowed = replace(three_pools(), pools=(SimPool(pool_view_default(engine=TOY, gpus=1), engine=SLOW),))
    with pytest.raises(ValueError, match="needs GPUs of its own"):
        gpu_groups(borrowed)
    negative = replace(three_pools(), pools=(pool(1, "S", -1),))
    with pytest.raises(ValueError, match="0 or more"):
        gpu_groups(negative)


def test_each_pool_serves_the_requests_routing_gives_its_tier_when_none_is_full() -> None:
    """One warm instance in each pool: every request goes to its own tier's pool (``request_tier``, the
    gateway's functions), two each, and each pool's share adds up to the whole run."""
    setup = three_pools()
    simulation = Simulation(trace=hand_trace(), setup=setup, label="policy")
    total = simulation.run()
    own = [request_tier(r.prompt_tokens, r.output_tokens, setup.routing) for r in hand_trace().requests]
    assert own == ["L", "S", "M", "L", "M", "S"]
    assert served_tiers(simulation) == own
    shares = simulation.pool_results()
    assert {setup.pools[i - 1].tier: share.requests for i, share in shares.items()} == Counter(own)
    assert sum(share.gpu_hours for share in shares.values()) == pytest.approx(total.gpu_hours)
    assert sorted(t for share in shares.values() for t in share.ttft_s) == sorted(total.ttft_s)
    # The M pool's engine is its own: (768, 256) at 20 s prefills at 500 tokens/s, 0.01 + 1.536 s.
    assert shares[2].ttft_s[0] == pytest.approx(1.546)
    assert shares[1].ttft_s[0] == pytest.approx(0.01 + 1.536)  # (1536, 256) on S's toy engine


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        # S full (no GPU): S's requests go to M, the next in FALLBACK["S"].
        ((0, 1, 1), ["L", "M", "M", "L", "M", "M"]),
        # S and M full: S's and M's requests go to L (FALLBACK["S"] = S, M, L; FALLBACK["M"] = M, S, L).
        ((0, 0, 1), ["L", "L", "L", "L", "L", "L"]),
        # L full: L's requests go to M first (FALLBACK["L"] = L, M, S).
        ((1, 1, 0), ["M", "S", "M", "M", "M", "S"]),
        # L and M full: everything to S.
        ((1, 0, 0), ["S", "S", "S", "S", "S", "S"]),
        # M full: M's requests go to S, not L.
        ((1, 0, 1), ["L", "S", "S", "L", "S", "S"]),
    ],
)
def test_requests_fall_back_in_the_gateways_order(gpus: tuple[int, int, int], expected: list[str]) -> None:
    """A pool without GPUs never has a ready instance: its tier's requests go to the first tier in
    ``routing.FALLBACK`` whose pool has one, as the gateway's pick sends them, none held or failed."""
    setup = three_pools(*gpus)
    simulation = Simulation(trace=hand_trace(), setup=setup, label="policy")
    result = simulation.run()
    assert served_tiers(simulation) == expected
    has = {p.tier for p in setup.pools if p.gpus}
    own = [request_tier(r.prompt_tokens, r.output_tokens, setup.routing) for r in hand_trace().requests]
    assert expected == [next(t for t in routing.FALLBACK[tier] if t in has) for tier in own]
    assert result.failed == 0 and result.cold_waited == 0


def test_an_absent_tier_falls_back_the_same_way() -> None:
    """No S pool at all: S's requests go to M; the run's tier result counts them as served elsewhere."""
    setup = three_pools()
    setup = replace(setup, pools=setup.pools[1:])
    result = pools_run(hand_trace(), setup)
    assert {tier: share.requests for tier, share in result.pools.items()} == {"M": 4, "L": 2}
    assert result.routed == {"S": 2, "M": 2, "L": 2}
    assert result.served_elsewhere == {"S": 2, "M": 0, "L": 0}


def test_a_pools_launch_goes_to_its_own_gpus() -> None:
    """Every pool empty; an S request (1536, 256) at 0 s is held and the gateway wakes the S pool, whose
    GPU is the last (pools listed L, M, S): production placement launches it there, not on GPU 1, and
    the request gets its first token after the 30 s cold start and a 1.546 s prefill."""
    base = three_pools()
    setup = replace(base, pools=tuple(reversed(base.pools)))
    simulation = Simulation(trace=trace_of((0.0, 1536, 256)), setup=setup, label="policy", initial_instances=0)
    result = simulation.run()
    assert [(i.pool_id, i.gpu_id) for i in simulation.instances.values()] == [(1, 3)]
    assert result.ttft_s == pytest.approx([30.0 + 0.01 + 1.536])
    assert result.cold_starts == 1 and simulation.pool_results()[1].cold_starts == 1


def test_per_pool_prices_give_the_hand_computed_spend() -> None:
    """Two S instances, one M, one L, warm from 0 s, every policy off; one M request (768, 256) at 0 s,
    on M's engine: first token at 0.01 + 768 / 500 = 1.546 s, then 255 decode steps of 0.011 s, done at
    4.351 s, the end of the run. Held: S 2 x 4.351 s, M and L 4.351 s each. At $4, $2 and $1 an hour:
    4.351 / 3600 x (2 x 4 + 2 + 1) = $0.013294..."""
    prices = {"S": Decimal(4), "M": Decimal(2), "L": Decimal(1)}
    setup = three_pools(2, 1, 1)
    setup = replace(setup, pools=tuple(replace(p, price_per_gpu_hour=prices[p.tier]) for p in setup.pools))
    result = pools_run(trace_of((0.0, 768, 256)), setup, initial={"S": 2, "M": 1, "L": 1})
    end = 1.546 + 255 * 0.011
    assert result.total.duration_s == pytest.approx(end)
    assert {t: share.paid_gpu_hours * 3600 for t, share in result.pools.items()} == pytest.approx(
        {"S": 2 * end, "M": end, "L": end}
    )
    assert float(result.spend("S")) == pytest.approx(2 * end / 3600 * 4)
    assert float(result.spend()) == pytest.approx(end / 3600 * 11)
    assert result.hours() == pytest.approx(4 * end / 3600)
    assert result.pools["M"].requests == 1 and result.pools["S"].requests == 0


def test_the_tiers_together_split_as_the_routing_function_splits_them() -> None:
    """The benchmark's tier pools (H100, H100 MIG 3g.40gb slices, L40S) in one simulation: each serves
    the requests ``tier_split`` gives its tier (2 each), on its own device at its own price."""
    trace = tiers_trace()
    result = together_run(trace, SPECS)
    split = {tier: len(t.requests) for tier, t in tier_split(trace).items()}
    assert {tier: share.requests for tier, share in result.pools.items()} == split == result.routed
    assert result.served_elsewhere == {"S": 0, "M": 0, "L": 0}
    assert result.prices == {spec.tier: tier_price(spec) for spec in SPECS}
    devices = [g.device for g in gpu_groups(together_setup(SPECS))]
    assert devices == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3 MIG 3g.40gb", "NVIDIA L40S"]
    assert result.spend() == sum((result.spend(t) for t in "SML"), Decimal(0))


def test_the_tiered_comparison_runs_the_tiers_together_from_their_static_fleets() -> None:
    """``tiered_compare`` adds the run together, each pool starting from its tier's static fleet (one
    instance each here), beside the tiers apart; its spend is each pool's paid hours at its price."""
    result = tiered_compare(tiers_trace(), SPECS, STATIC)
    together = result.together
    assert together is not None
    assert {t.spec.tier: t.requests for t in result.tiers} == {t: s.requests for t, s in together.pools.items()}
    assert [t.comparison.static_instances for t in result.tiers if t.comparison] == [1, 1, 1]
    assert together.total.failed == 0 and together.total.attainment == 1.0
    prices = {spec.tier: tier_price(spec) for spec in SPECS}
    spend = sum((Decimal(str(s.paid_gpu_hours)) * prices[t] for t, s in together.pools.items()), Decimal(0))  # type: ignore[operator]
    assert together.spend() == spend


def test_a_tier_setup_leaves_settings_shared_between_specs_as_they_were() -> None:
    """Tier specs built from one settings file share its nested sections: scaling the M slice's autoscale
    prefill capacity (42,613 x 3/7 = 18,263) must not scale the L tier's or a second call's again."""
    autoscale = {"prefill_tokens_per_s": 42613}
    shared = {"policies": {"autoscale": autoscale}}
    m = TierSpec(tier="M", gpu="H100", gpus=2, mig_profile="3g.40gb", values=shared)
    first, second = tier_setup(m), tier_setup(m)
    assert autoscale == {"prefill_tokens_per_s": 42613}
    for setup in (first, second):
        fleet = setup.policies["autoscale"].fleet
        assert fleet is not None and fleet["prefill_tokens_per_s"] == pytest.approx(42613 * 3 / 7, abs=1)
    together = together_setup([replace(spec, values=shared) for spec in SPECS])
    pools = together.policies["autoscale"].pools
    rates = [pools[i]["prefill_tokens_per_s"] for i in (1, 2, 3)]  # type: ignore[index]
    assert rates[0] == 42613 and rates[1] == pytest.approx(42613 * 3 / 7, abs=1)


def test_one_pools_share_is_the_whole_run() -> None:
    """With one pool its share holds every request the gateway did not refuse (its 12,000-token prompts
    exceed the 8,192-token context) and every hour, start and node of the run (a policy run of the
    bursty speed-test trace on three calibrated H100s, two a node)."""
    setup = replace(toy_setup(gpus=3), engine=engine_model_for("H100"), gpus_per_node=2, start_jitter=0.1, pools=())
    setup = replace(setup, pools=(SimPool(pool_view_default(engine=setup.engine, gpus=3)),))
    simulation = Simulation(trace=_bursty_trace(), setup=setup, label="policy")
    total = simulation.run()
    share = simulation.pool_results()[1]
    assert total.cold_starts > 0 and total.refused > 0
    assert share.requests == total.requests - total.refused and share.refused == 0
    assert (share.ttft_s, share.e2e_s, share.prompt_tokens) == (total.ttft_s, total.e2e_s, total.prompt_tokens)
    assert (share.gpu_hours, share.node_hours, share.cold_starts) == (
        total.gpu_hours,
        total.node_hours,
        total.cold_starts,
    )
    assert (share.failed, share.cold_waited, share.instances_peak) == (
        total.failed,
        total.cold_waited,
        total.instances_peak,
    )
