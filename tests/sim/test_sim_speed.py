"""The simulator's fast paths give what stepping one event at a time gives (issue #20)."""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet.sim.compare import compare, oracle_bound, static_search
from fleet.sim.compiled import compiled_fresh
from fleet.sim.engine import engine_model_for
from fleet.sim.report import comparison_markdown
from fleet.sim.setup import setup_build, tick_period_s
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, trace_from_rate_series
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


class _SteppedSimulation(Simulation):
    """The run as stepped before ``EngineCore.advance``: ``EngineCore.steps`` called one run of steps at a
    time, what each run finished before the horizon collected after it (the reference ``advance`` keeps)."""

    def _step_start(self, instance: Any) -> None:
        following = self.next_arrival
        horizon = min(
            self.events[0][0] if self.events else math.inf,
            self.arrival_times[following] if following < len(self.arrival_times) else math.inf,
        )
        core = instance.core
        end, before = self.now, None
        while True:
            duration = core.steps(end, horizon)
            if duration <= 0:
                break
            end += duration
            if end >= horizon:
                break
            before = end
            instance.finished_before += core.pop_finished()
        instance.stepping = end > self.now
        if instance.stepping:
            if before is not None and end > before:
                instance.crossing_s = end
            self.sequence += 1
            heapq.heappush(self.step_ends, (end if before is None else before, self.sequence, instance.id))


def _bursty_trace() -> Trace:
    """Seven minutes of bursts and lulls with long and short answers: many finishes between arrivals,
    runs cut by arrivals and ticks, a queue that waits for KV cache and sequences."""
    windows = [(0, 120, 4.0), (120, 60, 0.0), (180, 60, 25.0), (240, 120, 2.0), (360, 60, 40.0)]
    return trace_from_rate_series(windows, lengths=[(300, 20), (4_000, 400), (50, 900), (12_000, 5)], seed=3)


@pytest.mark.parametrize("mode", ["static", "policy", "schedule"])
def test_advance_gives_what_steps_one_run_at_a_time_give(mode: str) -> None:
    """The calibrated H100 engine (attention and per-context terms on), one trace, each kind of run: the
    simulation with ``EngineCore.advance`` and the one calling ``steps`` run by run give equal results,
    every float the same (first tokens, finishes, duty cycles, decisions, billing)."""
    trace = _bursty_trace()
    setup = replace(setup_build(engine=engine_model_for("H100"), gpus=3, seed=5), start_jitter=0.1)
    runs: dict[str, dict[str, Any]] = {
        "static": {"static_instances": 1},
        "policy": {},
        "schedule": {"schedule": [1, 2, 0] * 7},
    }
    kwargs = runs[mode]
    fast = Simulation(trace=trace, setup=setup, label=mode, **kwargs)
    stepped = _SteppedSimulation(trace=trace, setup=setup, label=mode, **kwargs)
    assert fast.run() == stepped.run()
    assert fast.first_token == stepped.first_token and fast.finished == stepped.finished


def test_a_static_size_that_misses_stops_early_and_the_size_found_is_the_same() -> None:
    """The static search's smaller sizes only have to fail: with ``stop_early`` a size stops once more
    requests missed than the SLA allows over the trace, is left out of the runs, and the size found and
    its run are those of the full search. Three 400-token prompts at once and a short one (toy engine):
    one instance serves the second 0.82 s after it came (a miss, where 0 of 4 may miss at 99.9%),
    two serve all within 0.5 s."""
    trace = trace_of((0.0, 400, 2), (0.0, 400, 2), (5.0, 100, 2), (6.0, 100, 2))
    setup = toy_setup(gpus=3)
    count, meets, runs = static_search(trace=trace, setup=setup)
    early_count, early_meets, early_runs = static_search(trace=trace, setup=setup, stop_early=True)
    assert (count, meets) == (early_count, early_meets) == (2, True)
    assert runs[0].attainment < 1 and len(runs) == 2
    assert early_runs == [runs[1]]
    stopped = Simulation(trace=trace, setup=setup, label="static 1", static_instances=1, miss_limit=0)
    stopped.run()
    assert stopped.stopped_early and stopped.missed == 1
    # Past the misses the limit allows, the run goes on to the end.
    whole = Simulation(trace=trace, setup=setup, label="static 1", static_instances=1, miss_limit=1)
    assert not whole.stopped_early and whole.run() == runs[0]


# sha256 (first 16 hex digits) of ``comparison_markdown`` and of the repr of every result the comparison
# holds (policy, static, oracle and repaired runs with each first token and latency as a float repr, the
# schedules, the bound), recorded with the simulator as it stood before the third speed pass: making a
# run faster must not change a byte. A change meant to change results records new digests and says why.
# Batch work in the simulator added ``SimResult.batch`` (None in these runs): the results' repr gained
# ", batch=None" and nothing else (without it the digests are those recorded before, 6426364cabe9fca0
# and d6b12f993706cc7d).
_PINNED = {
    "conversation settings": ("b99f6ef897de496b", "0d2c1ecb45b3f735"),
    "end-to-end and per-prompt bounds": ("503a633b3000c0cd", "6ee67c9e493c65b1"),
}


@pytest.mark.parametrize("case", sorted(_PINNED))
def test_a_seeded_comparison_gives_the_recorded_report_and_results(case: str) -> None:
    """The bursty trace on 3 or 4 calibrated H100s with the benchmark's conversation settings (the gateway
    scales out under pressure, autoscale scales in, the oracle's schedule has empty intervals and is
    repaired); the second case also judges end-to-end latency (20 s) and a bound that grows with the
    prompt (100 ms per 1,000 tokens), so every latency log the policies read is kept."""
    values = json.loads((Path(__file__).resolve().parents[2] / "bench" / "sim" / "azure-conv.json").read_text())
    setup = {
        "conversation settings": replace(
            setup_build(engine=engine_model_for("H100"), gpus=3, values=values, seed=5), start_jitter=0.1
        ),
        "end-to-end and per-prompt bounds": setup_build(
            engine=engine_model_for("H100"),
            gpus=4,
            values=values,
            seed=2,
            e2e_sla_ms=20_000,
            sla_ms_per_1k_prompt_tokens=100,
        ),
    }[case]
    comparison = compare(trace=_bursty_trace(), setup=setup)
    results = (
        comparison.policy,
        comparison.static,
        comparison.oracle,
        comparison.oracle_repaired,
        comparison.schedule,
        comparison.oracle_bound,
    )

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    assert (digest(comparison_markdown(comparison)), digest(repr(results))) == _PINNED[case]


def test_a_compiled_module_older_than_its_source_refuses_to_load(tmp_path: Path) -> None:
    """``compiled_fresh`` (each compiled module calls it with its ``__file__`` at import): a build older than
    its source would run the old code, so it raises; a build newer than its source, or a plain ``.py``, passes."""
    source = tmp_path / "simulate.py"
    built = tmp_path / "simulate.cpython-311-x86_64-linux-gnu.so"
    source.write_text("")
    built.write_bytes(b"")
    os.utime(source, (100, 100))
    os.utime(built, (200, 200))
    compiled_fresh(str(built))
    os.utime(source, (300, 300))
    with pytest.raises(ImportError, match="make sim-compiled"):
        compiled_fresh(str(built))
    compiled_fresh(str(source))
