"""Requests longer than every pool's context: the gateway refuses them (400 context_length_exceeded), and so
does the simulator, through the same function (``routing.pool_groups_for``)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from fleet.gateway import app, decide
from fleet.gateway.counting import ESTIMATE
from fleet.gateway.protocol import ApiError, parse_completion
from fleet.gateway.table import ApiKeyRoute, PoolRoute, RoutingTable
from fleet.policies import routing
from fleet.sim.compare import compare
from fleet.sim.engine import PROFILES, engine_model_for
from fleet.sim.report import comparison_markdown
from fleet.sim.setup import SimPool, SimSetup, pool_view_default, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest

START = datetime(2026, 3, 2, 9, tzinfo=UTC)
ENGINE = engine_model_for("H100")
# (prompt tokens, max tokens) with the default routing settings (prompt scale 512, max-tokens scale 256,
# M from RCF 1.2, S from 3.0, cap 5):
REQUESTS = (
    (1000, 100),  # RCF 1000/512 x 100/256 = 0.76: L; needs 1,100 tokens, every pool takes it
    (5000, 100),  # RCF 9.77 x 0.39 = 3.81: S; needs 5,100 > 4,096: not the L pool
    (8000, 500),  # needs 8,500 > 8,192, the longest context: refused
    (100, 8092),  # RCF capped at 5: S; needs exactly 8,192: fits the 8,192-token pools
)


def three_pools() -> SimSetup:
    """Pool 1 (tier L) serves 4,096 tokens, pools 2 (M) and 3 (S) 8,192."""
    pools = tuple(
        SimPool(pool_view_default(engine=ENGINE, gpus=3, id=pool_id, name=f"pool-{pool_id}", max_model_len=limit), tier)
        for pool_id, tier, limit in ((1, "L", 4096), (2, "M", 8192), (3, "S", 8192))
    )
    return replace(setup_build(engine=ENGINE, gpus=3), pools=pools, start_jitter=0.0)


def table_of(setup: SimSetup) -> RoutingTable:
    """The gateway's routing table for the simulator's pools: same ids, tiers and contexts."""
    routes = {
        pool.view.id: PoolRoute(
            pool_id=pool.view.id,
            name=pool.view.name,
            tier=pool.tier,
            served_name="m",
            max_model_len=pool.view.max_model_len or 0,
            counter=ESTIMATE,
            upstreams=(),
        )
        for pool in setup.pools
    }
    tiers = {tier: tuple(r for r in routes.values() if r.tier == tier) for tier in routing.TIERS}
    return RoutingTable(keys={}, pools=routes, models={"m": tiers})


def trace_of(requests: tuple[tuple[int, int], ...]) -> Trace:
    return Trace(
        name="hand",
        start=START,
        requests=tuple(TraceRequest(float(i), prompt, output) for i, (prompt, output) in enumerate(requests)),
    )


def test_the_gateway_and_the_simulator_list_and_refuse_the_same_pools() -> None:
    """The gateway's own routing (``decide.route``, what ``Gateway`` calls) on token-id prompts, so it
    counts exactly the prompt tokens the trace states."""
    assert app.route is decide.route and decide.pool_groups_for is routing.pool_groups_for
    setup = three_pools()
    table = table_of(setup)
    simulation = Simulation(trace=trace_of(REQUESTS), setup=setup, label="policy")
    expected = [
        [[1], [2], [3]],  # L first, then M, then S
        [[3], [2]],  # S, M; the L pool's 4,096 tokens are too few
        routing.ContextRefused(needed=8500, longest=8192),
        [[3], [2]],
    ]
    for index, (prompt, max_tokens) in enumerate(REQUESTS):
        request = parse_completion({"model": "m", "prompt": [7] * prompt, "max_tokens": max_tokens})
        simulated = simulation._groups(index)
        assert simulated == expected[index]
        if isinstance(simulated, routing.ContextRefused):
            with pytest.raises(ApiError) as refused:
                decide.route(request, ApiKeyRoute(1, 1), table)
            assert refused.value.status == 400 and refused.value.code == "context_length_exceeded"
            assert "8500 tokens" in str(refused.value) and "(8192 tokens)" in str(refused.value)
        else:
            assert decide.route(request, ApiKeyRoute(1, 1), table).groups == simulated


def test_a_request_over_the_context_is_counted_refused_and_never_served() -> None:
    """One pool of the default profile (8,192 tokens), one warm instance: the third request needs 8,500
    tokens and is refused; the other three are served and, on an idle H100, all well inside 500 ms."""
    assert PROFILES[ENGINE.profile].max_model_len == 8192
    setup = replace(setup_build(engine=ENGINE, gpus=2), start_jitter=0.0)
    simulation = Simulation(trace=trace_of(REQUESTS), setup=setup, label="policy")
    result = simulation.run()
    assert result.requests == 4 and result.refused == 1 and result.failed == 0
    assert math.isinf(simulation.first_token[2]) and math.isinf(simulation.finished[2])
    assert len(result.ttft_s) == len(result.e2e_s) == 3 and all(math.isfinite(t) for t in result.ttft_s)
    assert result.attainment == 1.0  # 3 of 3 answered requests: the refusal is not a miss
    table = comparison_markdown(compare(trace=trace_of(REQUESTS), setup=setup))
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")][:5]
    column = [cell.strip() for cell in header.split("|")].index("refused")
    assert [[cell.strip() for cell in row.split("|")][column] for row in rows] == ["1", "1", "1"]
    assert "outside the SLA): 1 requests." in table


def test_a_pool_without_a_stated_context_refuses_nothing() -> None:
    setup = three_pools()
    pools = tuple(replace(pool, view=replace(pool.view, max_model_len=None)) for pool in setup.pools)
    simulation = Simulation(trace=trace_of(REQUESTS), setup=replace(setup, pools=pools), label="policy")
    assert not isinstance(simulation._groups(2), routing.ContextRefused)
