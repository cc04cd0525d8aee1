"""The static-spend guard in the simulator: the policy never pays more than the static fleet it replaces."""

from __future__ import annotations

from fleet.policies.static_hold import HOLD_START, REFUSE
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace
from tests.sim.toy import toy_setup, trace_of

STATIC = 2


def bursts() -> Trace:
    """20 minutes of 1,000-token prompts at 1.5 a second, on for 2 minutes in every 5: about what two
    toy instances serve (1,000 prompt tokens a second each), enough pressure for autoscale to go to four."""
    requests, t = [], 0.0
    while t < 1200:
        if t % 300 < 120:
            requests.append((t, 1000, 16))
        t += 1 / 1.5
    return trace_of(*requests)


def test_the_guarded_policy_pays_at_most_the_static_fleet_where_the_unguarded_one_pays_more() -> None:
    trace = bursts()
    guarded = {"policies": {"static_hold": {"static_replicas": STATIC, "window_hours": 0.25}}}
    loose = 5000.0

    static = Simulation(trace=trace, setup=toy_setup(sla_ms=loose), label="static", static_instances=STATIC).run()
    free = Simulation(trace=trace, setup=toy_setup(sla_ms=loose), label="policy").run()
    held = Simulation(trace=trace, setup=toy_setup(values=guarded, sla_ms=loose), label="policy").run()

    assert free.instances_peak > STATIC
    assert free.gpu_hours > static.gpu_hours
    assert held.gpu_hours <= static.gpu_hours
    assert held.instances_peak <= STATIC
    assert all(point.billed <= STATIC for point in held.timeline)
    refusals = [d for d in held.decisions if d.kind == "static_hold" and d.action == REFUSE]
    assert refusals and all(
        d.reason.startswith(f"holding the static size {STATIC} of pool simulated") for d in refusals
    )
    # Two instances billed for a whole 15-minute window came to the static fleet's hours: the hold started.
    [start] = [d for d in held.decisions if d.action == HOLD_START]
    assert f"against the static fleet's 0.50 ({STATIC} x 0.25 h)" in start.reason
