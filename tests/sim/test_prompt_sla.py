"""The simulator judges each request against a first-token bound that grows with its prompt, by the same
function the panel uses (``agents.histograms.ttft_bound_ms``), in its attainment and in the windows
autoscale reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

import fleet.policies.autoscale
from fleet.policies.actions import Action
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig
from fleet.sim.setup import setup_build
from fleet.sim.simulate import Simulation
from tests.sim.toy import TOY, toy_setup, trace_of

# On the toy engine (1,000 prompt tokens a second after a 0.01 s step) one instance serves
# a 4,000-token prompt alone at 0 s: first token at 0.01 + 4.0 = 4.01 s; a 400-token prompt
# alone at 40 s: 0.01 + 0.4 = 0.41 s.
LONG_AND_SHORT = trace_of((0.0, 4000, 1), (40.0, 400, 1))


@pytest.mark.parametrize(
    ("per_1k", "expected"),
    [
        # Flat 500 ms: 4,010 ms misses, 410 ms meets: 1/2.
        (0.0, 0.5),
        # 500 + 1,000 x 4 = 4,500 ms >= 4,010 ms and 500 + 1,000 x 0.4 = 900 ms >= 410 ms: 2/2.
        (1000.0, 1.0),
        # 500 + 800 x 4 = 3,700 ms < 4,010 ms: the long prompt still misses, 1/2.
        (800.0, 0.5),
    ],
)
def test_attainment_judges_each_request_against_its_own_bound(per_1k: float, expected: float) -> None:
    setup = replace(toy_setup(gpus=1), sla_ms_per_1k_prompt_tokens=per_1k)
    result = Simulation(trace=LONG_AND_SHORT, setup=setup, label="static", static_instances=1).run()
    assert result.ttft_s == pytest.approx([4.01, 0.41])
    assert result.prompt_tokens == [4000, 400]
    assert result.attainment == expected


def test_a_negative_per_token_term_is_refused() -> None:
    with pytest.raises(ValueError, match="per 1k prompt tokens must be 0 or more"):
        setup_build(engine=TOY, gpus=1, sla_ms_per_1k_prompt_tokens=-1)


def test_windows_carry_the_share_of_requests_over_their_own_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool whose bound is 500 ms + 100 ms per 1k prompt tokens: the 4,000-token prompt's bound is
    900 ms, its first token at 4.01 s is over it; the 400-token prompt's bound 540 ms, 410 ms within, and
    the 10-token one at 100 s (501 ms, 20 ms) within. Each counts in the windows its first token came in,
    and the minute-long windows slide with the ticks: a window holding only the long prompt's first token
    reads 1.0 over, one holding it and the 400-token one 1/2 = 0.5, one holding only short ones 0.0. With
    no per-token term the windows carry no share at all (the flat path)."""
    seen: list[FleetSnapshot] = []
    original = fleet.policies.autoscale.autoscale

    def watching(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
        seen.append(snapshot)
        return original(snapshot, config, now)

    monkeypatch.setattr(fleet.policies.autoscale, "autoscale", watching)
    values = {"pool": {"sla_ms_per_1k_prompt_tokens": 100.0}}
    trace = trace_of((0.0, 4000, 1), (40.0, 400, 1), (100.0, 10, 1))
    Simulation(trace=trace, setup=toy_setup(gpus=1, values=values), label="policy").run()
    shares = {w.over_bound_share for s in seen for w in s.pools[0].windows}
    assert shares == {None, 0.0, 0.5, 1.0}

    seen.clear()
    Simulation(trace=trace, setup=toy_setup(gpus=1), label="policy").run()
    assert seen and all(w.over_bound_share is None for s in seen for w in s.pools[0].windows)
