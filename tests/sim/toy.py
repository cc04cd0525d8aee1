"""The flat engine and one-pool setups the simulator's tests work out by hand.

Round numbers: prefill 1,000 tokens a second after a 0.01 s step, decode 0.01 s a step plus
0.001 s a sequence, 30 s cold starts, no start jitter, and none of the engine's attention or
per-context terms (``fleet.sim.engine``): a 400-token prompt alone takes 0.01 + 0.4 s to its
first token, two at once 0.01 + 0.8 s.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fleet.sim.engine import engine_model_for
from fleet.sim.result import SimResult
from fleet.sim.setup import SimSetup, setup_build
from fleet.sim.traces import Trace, TraceRequest

START = datetime(2026, 3, 2, 9, tzinfo=UTC)
TOY = replace(
    engine_model_for("H100"),
    prefill_tokens_per_s=1000.0,
    decode_step_base_s=0.01,
    decode_step_per_seq_s=0.001,
    cold_start_s=30.0,
    prefill_step_base_s=None,
    prefill_attention_s=0.0,
    decode_s_per_context_token=0.0,
)


def toy_setup(*, gpus: int = 4, values: dict[str, Any] | None = None, **fields: Any) -> SimSetup:
    """A one-pool setup on ``TOY`` without start jitter; ``fields`` replace ``SimSetup`` fields."""
    return replace(setup_build(engine=TOY, gpus=gpus, values=values), start_jitter=0.0, **fields)


def trace_of(*requests: tuple[float, int, int]) -> Trace:
    """A trace from (arrival s, prompt tokens, output tokens) triples."""
    return Trace(name="hand", start=START, requests=tuple(TraceRequest(*r) for r in requests))


def sim_result(**fields: Any) -> SimResult:
    """A ``SimResult`` built by hand, for figures read from a result rather than from a run.

    Unset fields are those of a run where nothing happened (label ``policy``, no hours, no
    events, a 500 ms SLA), except that ``requests`` defaults to the number of ``ttft_s`` given
    and ``e2e_s`` to ``ttft_s`` (answers that end with their first token), so a test states only
    what its figure reads.
    """
    ttft_s = fields.get("ttft_s", [])
    values: dict[str, Any] = dict(
        label="policy",
        requests=len(ttft_s),
        sla_ms=500.0,
        gpu_hours=0.0,
        ttft_s=ttft_s,
        e2e_s=list(ttft_s),
        cold_waited=0,
        cold_starts=0,
        wakes=0,
        failed=0,
        utilization=[],
        timeline=[],
        decisions=[],
        instances_peak=0,
        duration_s=0.0,
    )
    return SimResult(**{**values, **fields})
