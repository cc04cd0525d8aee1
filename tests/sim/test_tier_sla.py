"""Each tier judged by the first-token bound its own pool states (``tier_bound``), apart and together,
and the benchmark's per-trace tier settings (``bench/tiers.py``'s ``tier_entry``): worked out by hand
on the toy engine (``tests.sim.toy``: prefill 1,000 tokens a second after a 0.01 s step; the M pool's
``SLOW`` engine 500 a second)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fleet.policies.settings import SCHEMAS
from fleet.sim.setup import SimPool, SimSetup, policy_configs_build, pool_view_default
from fleet.sim.tiers import TierSpec, pools_run, tier_bound, tier_setup, together_run, together_setup
from fleet.sim.traces import Trace
from tests.sim.toy import TOY, toy_setup, trace_of

SLOW = replace(TOY, prefill_tokens_per_s=500.0)
OFF = policy_configs_build(dict.fromkeys(SCHEMAS))  # every policy off: one warm instance a pool throughout
BENCH = Path(__file__).resolve().parents[2] / "bench" / "tiers.py"


def pool(pool_id: int, tier: str, **fields: Any) -> SimPool:
    view = pool_view_default(engine=TOY, gpus=1, id=pool_id, name=f"tier {tier}")
    return SimPool(view=view, tier=tier, engine=TOY, gpus=1, device=f"toy {tier}", **fields)


def three_pools() -> SimSetup:
    """S, M and L pools of one toy GPU each (M's engine ``SLOW``), every policy off; the setup's SLA 500 ms."""
    pools = (pool(1, "S"), replace(pool(2, "M"), engine=SLOW), pool(3, "L"))
    return replace(toy_setup(gpus=1), pools=pools, policies=OFF)


def two_of_each() -> Trace:
    """RCF = prompt / 512 x output / 256, S from 3.0, M from 1.2; 10 s apart, so none waits for another.
    First tokens, each alone on its pool's engine: L (512, 256) 0.01 + 0.512 = 0.522 s; S (1536, 256)
    1.546 s; M (768, 256) 0.01 + 768 / 500 = 1.546 s; L (600, 256) 0.61 s; M (1024, 256) 2.058 s;
    S (1536, 512) 1.546 s."""
    return trace_of(
        (0.0, 512, 256), (10.0, 1536, 256), (20.0, 768, 256), (30.0, 600, 256), (40.0, 1024, 256), (50.0, 1536, 512)
    )


def test_a_tier_is_judged_by_the_bound_its_pool_states() -> None:
    """The L pool states 500 ms + 56 ms per 1k prompt tokens: the tier's setup judges by it and its pool
    aims at it; unset, ``PoolView``'s 500 ms flat."""
    spec = TierSpec(tier="L", gpu="L40S", values={"pool": {"sla_latency_ms": 500, "sla_ms_per_1k_prompt_tokens": 56}})
    assert tier_bound(spec) == (500.0, 56.0)
    setup = tier_setup(spec)
    assert (setup.sla_ms, setup.sla_ms_per_1k_prompt_tokens) == (500.0, 56.0)
    view = setup.pools[0].view
    assert (view.sla_latency_ms, view.sla_ms_per_1k_prompt_tokens) == (500, 56)
    assert tier_bound(TierSpec(tier="S", gpu="H100")) == (500.0, 0.0)


def test_a_bound_the_spec_states_wins_over_its_pools() -> None:
    """A pool not told of the long-prompt allowance (flat 400 ms) is still judged by the spec's 500 + 150."""
    values = {"pool": {"sla_latency_ms": 400}}
    spec = TierSpec(tier="S", gpu="H100", values=values, sla_ms=500.0, sla_ms_per_1k_prompt_tokens=150.0)
    setup = tier_setup(spec)
    assert (setup.sla_ms, setup.sla_ms_per_1k_prompt_tokens) == (500.0, 150.0)
    assert setup.pools[0].view.sla_latency_ms == 400


def test_each_pools_share_of_a_run_together_is_judged_by_its_own_tiers_bound() -> None:
    """S 1,000 + 400 ms/1k: 1,614.4 ms for 1,536 tokens, both S within; M 1,500 + 100 ms/1k: 1,576.8 ms
    for 768 tokens (1.546 s within), 1,602.4 ms for 1,024 (2.058 s not); L 500 + 200 ms/1k: 602.4 ms for
    512 tokens (0.522 s) and 620 ms for 600 (0.61 s), both within. 5 of 6 within. Judged by the setup's
    flat 500 ms, none is."""
    bounds = {"S": (1000.0, 400.0), "M": (1500.0, 100.0), "L": (500.0, 200.0)}
    result = pools_run(two_of_each(), three_pools(), bounds=bounds)
    assert {tier: share.ttft_s for tier, share in result.pools.items()} == {
        "S": pytest.approx([1.546, 1.546]),
        "M": pytest.approx([1.546, 2.058]),
        "L": pytest.approx([0.522, 0.61]),
    }
    assert {tier: (s.sla_ms, s.sla_ms_per_1k_prompt_tokens) for tier, s in result.pools.items()} == bounds
    assert {tier: share.attainment for tier, share in result.pools.items()} == {"S": 1.0, "M": 0.5, "L": 1.0}
    assert result.attainment == pytest.approx(5 / 6)
    unjudged = pools_run(two_of_each(), three_pools())
    assert unjudged.attainment == 0.0 and unjudged.total.attainment == 0.0


def test_tiers_with_different_bounds_run_together_each_judged_as_apart() -> None:
    """The benchmark's devices with L's pool at 500 + 56 ms/1k and S's and M's at 500 ms: one simulation,
    each pool's share judged by the bound its tier is judged by apart (``tier_setup``)."""
    flat = {"pool": {"sla_latency_ms": 500}}
    long_context = {"pool": {"sla_latency_ms": 500, "sla_ms_per_1k_prompt_tokens": 56}}
    specs = [
        TierSpec(tier="S", gpu="H100", gpus=2, values=flat),
        TierSpec(tier="M", gpu="H100", gpus=2, mig_profile="3g.40gb", values=flat),
        TierSpec(tier="L", gpu="L40S", gpus=2, values=long_context),
    ]
    result = together_run(two_of_each(), specs)
    judged = {tier: (share.sla_ms, share.sla_ms_per_1k_prompt_tokens) for tier, share in result.pools.items()}
    apart = {spec.tier: (tier_setup(spec).sla_ms, tier_setup(spec).sla_ms_per_1k_prompt_tokens) for spec in specs}
    assert judged == apart == {"S": (500.0, 0.0), "M": (500.0, 0.0), "L": (500.0, 56.0)}
    assert together_setup(specs).pools[2].view.sla_ms_per_1k_prompt_tokens == 56


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tiers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_traces_own_tier_settings_lay_over_the_tiers(bench: ModuleType) -> None:
    """``trace_tiers`` by label prefix: the code trace's L tier gets 16 devices and a minimum of 13 over the
    tier's 8 and its stated bound; another trace's L tier, and the code trace's S tier, are the tiers'."""
    settings: dict[str, Any] = {
        "tiers": {
            "S": {"gpu": "H100", "settings": {"pool": {"min_instances": 1}}},
            "L": {"gpu": "L40S", "gpus": 8, "settings": {"pool": {"sla_latency_ms": 500, "min_instances": 1}}},
        },
        "trace_tiers": {"azure-code": {"L": {"gpus": 16, "settings": {"pool": {"min_instances": 13}}}}},
    }
    assert bench.tier_entry(settings, "azure-code", "L") == {
        "gpu": "L40S",
        "gpus": 16,
        "settings": {"pool": {"sla_latency_ms": 500, "min_instances": 13}},
    }
    assert bench.tier_entry(settings, "azure-conv x4", "L") == settings["tiers"]["L"]
    assert bench.tier_entry(settings, "azure-code", "S") == settings["tiers"]["S"]


def test_a_tiers_row_states_its_bound(bench: ModuleType) -> None:
    long_context = TierSpec(tier="L", gpu="L40S", values={"pool": {"sla_ms_per_1k_prompt_tokens": 56}})
    assert bench.bound_text(tier_bound(long_context)) == "500 ms + 56 ms/1k prompt tokens"
    assert bench.bound_text(tier_bound(TierSpec(tier="S", gpu="H100"))) == "500 ms"
