"""What acted on each fleet, as the report lists it, and the SLA with an end-to-end bound beside the first-token one."""

from __future__ import annotations

from typing import Any

from fleet.sim.report import policy_activity
from fleet.sim.result import Decision
from fleet.sim.simulate import Simulation
from tests.sim.toy import sim_result, toy_setup, trace_of


def test_every_kind_is_listed_in_running_order_with_zeros_where_it_never_acted() -> None:
    decisions = [
        Decision(30, "autoscale", "scale_out", "r"),
        Decision(60, "autoscale", "scale_out", "r"),
        Decision(400, "autoscale", "scale_in", "r"),
        Decision(10, "gateway", "launch", "r"),
    ]
    result = sim_result(decisions=decisions)
    assert result.actions == {("autoscale", "scale_out"): 2, ("autoscale", "scale_in"): 1, ("gateway", "launch"): 1}
    assert policy_activity(result) == (
        "policy fleet: static hold 0; reap 0; idle reclaim 0; autoscale scale_in 1, scale_out 2; prewarm 0; "
        "colocate 0; "
        "gateway launch 1"
    )
    assert policy_activity(sim_result(label="static")) == (
        "static fleet: static hold 0; reap 0; idle reclaim 0; autoscale 0; prewarm 0; colocate 0"
    )


def test_a_small_simulation_counts_what_each_kind_applied() -> None:
    """Two warm instances, ten requests in the first 20 s, then one at 1500 s. Autoscale scales one in once
    three windows are calm (it never takes the last one); only idle reclaim can stop the last (idle for 600 s
    long before 1500 s); the request at 1500 s then finds nothing serving, and the gateway starts one. The
    report's line for the fleet names those counts, the kinds that did nothing with 0."""
    trace = trace_of(*[(2.0 * t, 100, 4) for t in range(10)], (1500.0, 100, 4))
    result = Simulation(trace=trace, setup=toy_setup(gpus=2), label="policy", initial_instances=2).run()
    actions = result.actions
    assert actions.get(("autoscale", "scale_in"), 0) >= 1
    assert actions.get(("idle_reclaim", "stop"), 0) >= 1
    assert sum(n for (kind, _), n in actions.items() if kind == "gateway") >= 1
    assert sum(actions.values()) == len(result.decisions)
    line = policy_activity(result)
    assert f"idle reclaim stop {actions[('idle_reclaim', 'stop')]}" in line
    assert "; prewarm 0; colocate 0; gateway " in line and line.startswith(
        "policy fleet: static hold 0; reap 0; idle reclaim "
    )


def test_with_an_end_to_end_bound_a_request_is_within_the_sla_only_if_it_meets_both() -> None:
    """TTFT 0.1, 0.1, 0.6, 0.1 s and end-to-end 1, 3, 1, 2 s against 500 ms and 2000 ms: the first and the
    last meet both (2 s is at the bound), the second misses end to end, the third its first token: 2 of 4.
    Without the end-to-end bound only the third misses: 3 of 4."""
    timings: dict[str, Any] = dict(requests=4, ttft_s=[0.1, 0.1, 0.6, 0.1], e2e_s=[1.0, 3.0, 1.0, 2.0])
    assert sim_result(**timings, e2e_sla_ms=2000.0).attainment == 0.5
    assert sim_result(**timings).attainment == 0.75
