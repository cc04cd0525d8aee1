"""Latency histogram arithmetic, defined once for the agent, the panel and the simulator.

A histogram is cumulative, as Prometheus keeps it. It comes in two shapes:

* the Prometheus form the agent scrapes: ``bounds`` ascending and ending with +Inf,
  ``counts[i]`` the observations at or under ``bounds[i]``;
* the wire form (``agents.protocol.Histogram``, the JSON columns of samples and rollups):
  the finite ``bounds``, their cumulative ``counts``, and the total ``count`` (the +Inf bucket).

Quantiles follow Prometheus's ``histogram_quantile``, so the agent's per-instance figures,
the pool windows policies read, SLA alerts, the dashboard, the rollups and the simulator
agree with each other and with what a Grafana user sees. A pool's latency over a window
and its SLA attainment are read from its instances' histograms merged bucket by bucket,
never from averaged or worst-instance percentiles.

No Django and no fleet imports: the agent imports this module, and it is the only
arithmetic the panel takes from ``agents/`` besides the protocol.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Wire = Mapping[str, Any]
Buckets = tuple[tuple[float, ...], tuple[float, ...]]


def counts_monotonic(counts: Iterable[float]) -> list[float]:
    """Cumulative counts never fall; a torn read can make them, so flatten (as Prometheus)."""
    fixed, highest = [], -math.inf
    for c in counts:
        highest = max(highest, c)
        fixed.append(highest)
    return fixed


def _checked(bounds: Sequence[float], counts: Sequence[float]) -> list[float]:
    if len(bounds) != len(counts) or not bounds or bounds[-1] != math.inf:
        raise ValueError("need matching bounds and counts, the last bound +Inf")
    return counts_monotonic(counts)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile of a cumulative histogram (Prometheus form), interpolating linearly inside a bucket.

    Prometheus's rules: the first bucket starts at 0 (when its bound is positive), a rank in
    the +Inf bucket gives the highest finite bound, a rank in an empty bucket its lower bound.
    None when the histogram holds no observations.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if len(bounds) < 2:
        raise ValueError("need at least one finite bucket besides +Inf")
    counts = _checked(bounds, counts)
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    b = next((i for i, c in enumerate(counts[:-1]) if c >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b > 0 else 0.0
    below = counts[b - 1] if b > 0 else 0.0
    in_bucket = counts[b] - below
    if in_bucket <= 0:
        return start
    return start + (bounds[b] - start) * (rank - below) / in_bucket


def histogram_share_within(limit: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The share of a cumulative histogram's observations (Prometheus form) at or under ``limit``.

    The inverse of ``histogram_quantile``, under the same rules: interpolated linearly inside
    the bucket that holds the limit, so a histogram whose P95 is under the limit has at least
    95 % within it. Observations in the +Inf bucket count as over any finite limit: nothing
    places them. None when the histogram holds no observations.
    """
    counts = _checked(bounds, counts)
    total = counts[-1]
    if total <= 0:
        return None
    lower, below = min(0.0, bounds[0]), 0.0
    if limit < lower:
        return 0.0
    for bound, cumulative in zip(bounds[:-1], counts[:-1], strict=True):
        if limit <= bound:
            width = bound - lower
            inside = (cumulative - below) * ((limit - lower) / width if width > 0 else 1.0)
            return (below + inside) / total
        lower, below = bound, cumulative
    return 1.0 if limit == math.inf else below / total


def buckets_merge(histograms: Iterable[tuple[Sequence[float], Sequence[float]]]) -> Buckets | None:
    """Sum cumulative histograms (Prometheus form) bucket by bucket: several engines, instances or windows.

    Only histograms with the same bounds add up. Where bounds differ (servers of different
    vLLM versions or settings), the bounds holding the most observations win, the first seen
    on a tie, and the others are left out. None when there is nothing to merge.
    """
    sums: dict[tuple[float, ...], list[float]] = {}
    for bounds, counts in histograms:
        if len(bounds) != len(counts):
            raise ValueError("bounds and counts differ in length")
        key = tuple(bounds)
        into = sums.get(key)
        sums[key] = list(counts) if into is None else [a + b for a, b in zip(into, counts, strict=True)]
    if not sums:
        return None
    bounds, counts = max(sums.items(), key=lambda item: item[1][-1] if item[1] else 0)
    return bounds, tuple(counts)


def _buckets(histogram: Wire) -> tuple[list[float], list[float]]:
    """The wire form in the Prometheus form: the +Inf bucket is the total."""
    return [*histogram["bounds"], math.inf], [*histogram["counts"], histogram["count"]]


def histograms_merge(histograms: Iterable[Wire | None]) -> dict[str, Any] | None:
    """Wire-form histograms summed (``buckets_merge``'s rule where bounds differ); None if none is given."""
    merged = buckets_merge(_buckets(h) for h in histograms if h and h.get("bounds") is not None)
    if merged is None:
        return None
    bounds, counts = merged
    return {"bounds": list(bounds[:-1]), "counts": list(counts[:-1]), "count": counts[-1]}


def histogram_observe(values: Iterable[float], bounds: Sequence[float]) -> dict[str, Any]:
    """Observations counted into finite ``bounds`` (wire form), as a Prometheus client's histogram does."""
    ordered = sorted(values)
    return {"bounds": list(bounds), "counts": [bisect_right(ordered, b) for b in bounds], "count": len(ordered)}


def pool_latency(histograms: Iterable[Wire | None], percentile: float) -> float | None:
    """The ``percentile`` (0-100) latency in seconds of the observations in these wire-form histograms.

    What a pool's SLA names ("P95 TTFT"): its instances' histograms over the window merged,
    then read as ``histogram_quantile``. None without observations or finite buckets.
    """
    merged = histograms_merge(histograms)
    if merged is None or not merged["bounds"] or merged["count"] <= 0:
        return None
    return histogram_quantile(percentile / 100, *_buckets(merged))


def attainment(histograms: Iterable[Wire | None], limit_s: float) -> float | None:
    """The share (0-1) of the observations in these wire-form histograms within ``limit_s`` seconds.

    A pool's SLA "P95 TTFT <= 500 ms" is met where at least 0.95 of its requests are within
    0.5 s: merged first, so a window whose own P95 missed does not make all its requests
    late. None without observations.
    """
    merged = histograms_merge(histograms)
    if merged is None or merged["count"] <= 0:
        return None
    return histogram_share_within(limit_s, *_buckets(merged))


def ttft_bound_ms(sla_latency_ms: float, per_1k_prompt_tokens: float, prompt_tokens: int) -> float:
    """One request's time-to-first-token bound in ms under an SLA that grows with prompt length.

    ``sla_latency_ms`` plus ``per_1k_prompt_tokens`` for every 1,000 prompt tokens: a pool's
    "P95 TTFT <= 500 ms + 20 ms per 1k prompt tokens" bounds a 30,000-token prompt at
    500 + 20 x 30 = 1,100 ms. A ``per_1k_prompt_tokens`` of 0 is the flat bound.
    """
    return sla_latency_ms + per_1k_prompt_tokens * prompt_tokens / 1000


def requests_attainment(
    requests: Iterable[tuple[float, int]], sla_latency_ms: float, per_1k_prompt_tokens: float
) -> float | None:
    """The share (0-1) of ``requests``, each ``(ttft_ms, prompt_tokens)``, whose first token came at or
    under its own ``ttft_bound_ms``. Where each request is known (the gateway's request log, the
    simulator's requests), unlike ``attainment``, which reads histograms that hold no prompt
    lengths. None without requests.
    """
    judged = within = 0
    for ttft_ms, prompt_tokens in requests:
        judged += 1
        within += ttft_ms <= ttft_bound_ms(sla_latency_ms, per_1k_prompt_tokens, prompt_tokens)
    return within / judged if judged else None
