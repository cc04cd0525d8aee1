"""The simulator's fast paths give what stepping one event at a time gives (issue #20)."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest

from fleet.sim.compare import compare, oracle_bound
from fleet.sim.report import comparison_markdown
from fleet.sim.setup import setup_build, tick_period_s
from fleet.sim.simulate import Simulation
from fleet.sim.traces import trace_from_rate_series
from tests.sim.toy import TOY, toy_setup, trace_of


def test_steps_run_in_one_go_are_collected_before_the_tick_that_follows_them() -> None:
    """One always-on toy instance; R1 (400 prompt, 200 output) and R2 (100 prompt, 2 output) at 29 s.

    R1 arrives first and starts alone: prefill 0.01 + 400/1000 = 0.41 s, first token 29.41.
    R2 is admitted then: a mixed step, 1 decode (0.01 + 0.001) + 100 prompt tokens (0.1 s) =
    0.111 s, R2's first token at 29.521 (TTFT 521 ms); one decode step of two sequences
    (0.012 s) finishes R2 at 29.533. R1 then decodes alone (0.011 s a step) from step 4 to its
    200th step: 197 x 0.011 = 2.167 s, finished at 31.700. The engine runs R1's steps from
    29.533 up to the 30 s tick in one go (the last one crosses it), so R2's finish must still
    be collected before the tick: the tick's timeline point holds R2's TTFT alone (521 ms).
    """
    assert tick_period_s() == 30
    trace = trace_of((29.0, 400, 200), (29.0, 100, 2))
    simulation = Simulation(trace=trace, setup=toy_setup(gpus=1), label="static", static_instances=1)
    result = simulation.run()
    assert simulation.first_token == pytest.approx([29.41, 29.521])
    assert simulation.finished == pytest.approx([31.700, 29.533])
    assert result.ttft_s == pytest.approx([0.41, 0.521])
    point = result.timeline[0]
    assert point.t_s == 30
    assert point.ttft_p50_ms == pytest.approx(521) and point.ttft_p99_ms == pytest.approx(521)
    assert result.duration_s == pytest.approx(31.700)


def test_a_run_restores_the_garbage_collector() -> None:
    """The collector is paused during a run and left as it was found (on, or off)."""
    trace = trace_of((0.0, 100, 2))
    assert gc.isenabled()
    Simulation(trace=trace, setup=toy_setup(gpus=1), label="static", static_instances=1).run()
    assert gc.isenabled()
    gc.disable()
    try:
        Simulation(trace=trace, setup=toy_setup(gpus=1), label="static", static_instances=1).run()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_arrivals_out_of_order_are_served_in_time_order() -> None:
    """Arrivals are read in time order, not trace order: R0 at 1 s is listed after R1 at 0 s.

    R1 (100 prompt, 2 output) alone: prefill 0.01 + 0.1 = 0.11 s, first token 0.11, one decode
    step 0.011, finished 0.121; R0 at 1.0: first token 1.11, finished 1.121.
    """
    trace = trace_of((1.0, 100, 2), (0.0, 100, 2))
    simulation = Simulation(trace=trace, setup=toy_setup(gpus=1), label="static", static_instances=1)
    simulation.run()
    assert simulation.first_token == pytest.approx([1.11, 0.11])
    assert simulation.finished == pytest.approx([1.121, 0.121])


def test_the_oracle_counts_an_interval_with_no_instance_without_simulating_it() -> None:
    """With no instance every request an interval's gateway does not refuse misses (``interval_misses``
    at count 0). Two intervals: 3 requests in the first, 2 in the second, all served within the
    SLA by one instance (a 100-token prompt: 0.11 s to its first token): the table's count-0
    entries are 3 and 2, so 5 requests are judged and at 99.9% none may miss; the schedule is
    one instance in each interval."""
    tick = tick_period_s()
    trace = trace_of((0.0, 100, 2), (1.0, 100, 2), (2.0, 100, 2), (tick + 1, 100, 2), (tick + 2, 100, 2))
    bound = oracle_bound(trace=trace, setup=toy_setup(gpus=2))
    assert bound.allowed == 0 and bound.feasible
    assert bound.schedule == (1, 1)


def test_the_same_seed_gives_the_same_report_on_a_rate_series() -> None:
    """Two comparisons of the same seeded rate-series trace (three 60 s windows at 2, 0 and 4 requests a
    second, lengths from a fixed pair list) give the same report, character for character."""
    trace = trace_from_rate_series([(0, 60, 2.0), (60, 60, 0.0), (120, 60, 4.0)], lengths=[(300, 20)], seed=7)
    setup = replace(setup_build(engine=TOY, gpus=3, seed=11), start_jitter=0.2)
    first, second = compare(trace=trace, setup=setup), compare(trace=trace, setup=setup)
    assert comparison_markdown(first) == comparison_markdown(second)
    assert first.policy == second.policy and first.oracle == second.oracle and first.static == second.static


def test_a_second_process_gives_the_same_comparison() -> None:
    """``jobs=2`` runs the static search and the policy run in a forked process: same report as one."""
    trace = trace_from_rate_series([(0, 60, 2.0), (60, 60, 0.0), (120, 60, 4.0)], lengths=[(300, 20)], seed=7)
    setup = replace(setup_build(engine=TOY, gpus=3, seed=11), start_jitter=0.2)
    alone, forked = compare(trace=trace, setup=setup), compare(trace=trace, setup=setup, jobs=2)
    assert comparison_markdown(alone) == comparison_markdown(forked)
    assert alone.policy == forked.policy and alone.static == forked.static
