"""Fit the engine model to a fleet's own request log.

Two straight lines by ordinary least squares, each the part of the model the log can see:

* time to first token against prompt tokens: ``ttft = a + prompt / prefill_tokens_per_s``,
  so the slope gives the prefill rate and the intercept the fixed cost of a step (and of
  the gateway and network, which the log includes);
* decode time (end to end minus time to first token) against output tokens:
  ``decode = c + (output - 1) x step``, where ``step`` is the time per decode step at the
  batch sizes the fleet ran; it replaces ``decode_step_base_s`` (the per-sequence term is
  kept from the documented default, since a log without batch sizes cannot separate them).

Only streamed, successful requests carry a time to first token; others are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Line:
    intercept: float
    slope: float
    r2: float
    points: int


@dataclass(frozen=True)
class EngineFit:
    ttft: Line
    decode: Line

    @property
    def prefill_tokens_per_s(self) -> float:
        return 1 / self.ttft.slope

    @property
    def decode_step_s(self) -> float:
        return self.decode.slope

    def engine_fields(self) -> dict[str, Any]:
        """What ``simulate --engine`` takes: the fitted fields and where they come from."""
        return {
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
            "decode_step_base_s": round(self.decode_step_s, 6),
            # The log's lines already hold the prompt-length and context costs that the
            # documented model adds separately (fleet.sim.engine), so those terms are cleared.
            "prefill_step_base_s": None,
            "prefill_attention_s": 0.0,
            "decode_s_per_context_token": 0.0,
            "source": (
                f"fitted to a gateway request log: TTFT = {self.ttft.intercept * 1000:.1f} ms + prompt / "
                f"{self.prefill_tokens_per_s:,.0f} tokens/s (R^2 {self.ttft.r2:.3f}, {self.ttft.points} requests); "
                f"decode {self.decode_step_s * 1000:.2f} ms per token (R^2 {self.decode.r2:.3f}, "
                f"{self.decode.points} requests)"
            ),
        }


def least_squares(xs: list[float], ys: list[float]) -> Line:
    """y = intercept + slope x, minimising squared error; R^2 is the share of variance explained."""
    n = len(xs)
    if n < 2:
        raise ValueError(f"need at least 2 points to fit a line, got {n}")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("all points have the same x: the log cannot tell the slope")
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return Line(intercept=intercept, slope=slope, r2=1 - residual / total if total else 1.0, points=n)


def engine_fit(rows: Iterable[Mapping[str, Any]]) -> EngineFit:
    """Fit from ``RequestLog`` values: prompt_tokens, output_tokens, ttft_ms, latency_ms."""
    prompts, ttfts, outputs, decodes = [], [], [], []
    for row in rows:
        if not row.get("prompt_tokens") or row.get("ttft_ms") is None or row.get("output_tokens") is None:
            continue
        ttft = row["ttft_ms"] / 1000
        prompts.append(float(row["prompt_tokens"]))
        ttfts.append(ttft)
        if row["output_tokens"] > 1:
            outputs.append(float(row["output_tokens"] - 1))
            decodes.append(row["latency_ms"] / 1000 - ttft)
    fit = EngineFit(ttft=least_squares(prompts, ttfts), decode=least_squares(outputs, decodes))
    if fit.ttft.slope <= 0 or fit.decode.slope <= 0:
        raise ValueError(
            f"the log gives non-positive slopes (prefill {fit.ttft.slope:.3g} s/token, decode "
            f"{fit.decode.slope:.3g} s/token): too few or too uniform requests to fit"
        )
    return fit
