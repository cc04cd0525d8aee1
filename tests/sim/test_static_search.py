"""The static fleet: where no size meets the SLA, the comparison says so rather than pass the whole fleet off as it."""

from __future__ import annotations

import pytest

from fleet.sim.compare import compare, static_search
from fleet.sim.report import benchmark_markdown, comparison_markdown
from tests.sim.toy import toy_setup, trace_of


def test_no_static_size_meets_the_sla_and_the_comparison_says_so() -> None:
    # The toy engine prefills a 400-token prompt in 0.01 + 0.4 = 0.41 s alone. Three arrive at
    # 0 s: one instance starts the first alone (0.41 s) and the other two together in its next
    # step (0.41 + 0.01 + 0.8 = 1.22 s): 2 of 4 requests late, with the one at 40 s on time.
    # Two instances: 0.41, 0.41 and 0.82 s (1 of 4 late, 75% within). A 99.9% target allows
    # no miss, so neither size of a 2-GPU fleet meets it.
    trace = trace_of((0.0, 400, 1), (0.0, 400, 1), (0.0, 400, 1), (40.0, 100, 1))
    setup = toy_setup(gpus=2)
    count, meets, runs = static_search(trace=trace, setup=setup)
    assert (count, meets) == (2, False)
    assert [run.attainment for run in runs] == pytest.approx([0.5, 0.75])

    comparison = compare(trace=trace, setup=setup)
    assert comparison.static_meets_sla is False
    assert comparison.static_instances == 2
    note = "no static size of 1..2 meets the SLA; savings are against 2 always-on instances that miss it"
    assert any(n.startswith(note) for n in comparison.notes)
    assert "75.00% within" in next(n for n in comparison.notes if n.startswith(note))
    # The policy starts from the largest static tried, and the note says that too: two
    # instances warm at 0 s, so its first tokens are the 2-instance figures, not 1.22 s.
    assert comparison.policy.ttft_s[:3] == pytest.approx([0.41, 0.41, 0.82])
    assert "the policy starts from them" in comparison.notes[0]
    assert f"Note: {comparison.notes[0]}." in comparison_markdown(comparison)
    assert f"* {trace.name}: {comparison.notes[0]}." in benchmark_markdown([comparison])


def test_a_static_size_that_meets_the_sla_leaves_no_note() -> None:
    # Two prompts at 0 s: two instances give both their first token at 0.41 s.
    trace = trace_of((0.0, 400, 1), (0.0, 400, 1), (40.0, 100, 1))
    comparison = compare(trace=trace, setup=toy_setup(gpus=2))
    assert (comparison.static_instances, comparison.static_meets_sla) == (2, True)
    assert not [n for n in comparison.notes if "static" in n]
    assert "Note:" not in comparison_markdown(comparison)
