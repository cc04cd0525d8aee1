"""Fitting the engine model to a request log: least squares recovers the rates that made the log."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from fleet.models import RequestLog
from fleet.sim.fit import engine_fit, least_squares

PREFILL_TOKENS_PER_S = 20_000.0
STEP_S = 0.008
OVERHEAD_S = 0.030


def generated_rows(count: int, *, seed: int = 1) -> list[dict[str, float]]:
    """Rows as a gateway in front of an engine with known rates would log them, with 5% noise."""
    draw = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = draw.randint(50, 6_000)
        output = draw.randint(2, 600)
        ttft = (OVERHEAD_S + prompt / PREFILL_TOKENS_PER_S) * draw.uniform(0.95, 1.05)
        decode = (output - 1) * STEP_S * draw.uniform(0.95, 1.05)
        rows.append(
            {
                "prompt_tokens": prompt,
                "output_tokens": output,
                "ttft_ms": ttft * 1000,
                "latency_ms": (ttft + decode) * 1000,
            }
        )
    return rows


def test_least_squares_on_an_exact_line() -> None:
    line = least_squares([1, 2, 3, 4], [3, 5, 7, 9])
    assert (line.intercept, line.slope, line.r2) == pytest.approx((1.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="same x"):
        least_squares([2, 2], [1, 3])


def test_fit_recovers_the_rates_of_a_generated_log() -> None:
    fit = engine_fit(generated_rows(2_000))
    assert fit.prefill_tokens_per_s == pytest.approx(PREFILL_TOKENS_PER_S, rel=0.03)
    assert fit.decode_step_s == pytest.approx(STEP_S, rel=0.03)
    assert fit.ttft.intercept == pytest.approx(OVERHEAD_S, rel=0.1)
    assert fit.ttft.r2 > 0.9 and fit.decode.r2 > 0.9


def test_fit_refuses_a_log_that_cannot_tell_the_slope() -> None:
    rows = [{"prompt_tokens": 100, "output_tokens": 5, "ttft_ms": 50.0, "latency_ms": 90.0}] * 10
    with pytest.raises(ValueError, match="same x"):
        engine_fit(rows)


@pytest.mark.django_db
def test_sim_fit_command_reads_the_request_log_and_writes_engine_fields(tmp_path: Path) -> None:
    now = timezone.now()
    RequestLog.objects.bulk_create(
        RequestLog(at=now - timedelta(minutes=i), endpoint="chat", model="m", rcf=1.0, tier="L", status=200, **row)
        for i, row in enumerate(generated_rows(300, seed=2))
    )
    RequestLog.objects.create(
        at=now, endpoint="chat", model="m", rcf=1.0, tier="L", status=503, prompt_tokens=10, latency_ms=60_000
    )
    output = tmp_path / "engine.json"
    out = StringIO()
    call_command("sim_fit", "--from-request-log", f"--output={output}", stdout=out, stderr=StringIO())
    fields = json.loads(output.read_text())
    assert fields["prefill_tokens_per_s"] == pytest.approx(PREFILL_TOKENS_PER_S, rel=0.05)
    assert fields["decode_step_base_s"] == pytest.approx(STEP_S, rel=0.05)
    assert "request log" in fields["source"]


@pytest.mark.django_db
def test_sim_fit_command_with_an_empty_log_says_so() -> None:
    with pytest.raises(CommandError, match="cannot fit"):
        call_command("sim_fit", "--from-request-log", stdout=StringIO())
