"""Arrivals drawn from a rate profile: counts per window, seeding, burstiness, rate scaling, rate-series CSVs.

Tolerances are four standard deviations of the quantity under the stated process, so a
correct generator fails a check about once in 16,000 runs per check, while any seed is
fixed anyway: the tests are deterministic, the tolerance says how far from the
expectation the figure may lie and still be called right.
"""

from __future__ import annotations

import itertools
import random
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.sim.traces import (
    EPOCH,
    Trace,
    TraceError,
    TraceRequest,
    arrivals_from_rates,
    rate_series_load,
    trace_from_rate_series,
)

START = datetime(2026, 1, 5, 9, tzinfo=UTC)
# Rates 0, 2 and 5 requests a second over three 600 s windows.
WINDOWS = [(0.0, 600.0, 0.0), (600.0, 600.0, 2.0), (1200.0, 600.0, 5.0)]


def _counts(times: list[float]) -> list[int]:
    return [sum(1 for t in times if start <= t < start + length) for start, length, _ in WINDOWS]


def test_counts_per_window_match_the_rates() -> None:
    """Expected counts 0 x 600 = 0, 2 x 600 = 1,200 and 5 x 600 = 3,000; a Poisson count's standard
    deviation is its square root: sqrt(1,200) = 34.6 -> within 139, sqrt(3,000) = 54.8 -> within 220."""
    times = arrivals_from_rates(WINDOWS, seed=1)
    silent, two, five = _counts(times)
    assert silent == 0
    assert abs(two - 1200) <= 139
    assert abs(five - 3000) <= 220
    assert two + five == len(times)  # every arrival lies inside a window
    assert times == sorted(times) and times[0] >= 600.0 and times[-1] < 1800.0


def test_same_seed_same_arrivals_another_seed_others() -> None:
    assert arrivals_from_rates(WINDOWS, seed=5) == arrivals_from_rates(WINDOWS, seed=5)
    assert arrivals_from_rates(WINDOWS, seed=5) != arrivals_from_rates(WINDOWS, seed=6)


def test_a_gap_across_a_silent_window_resumes_after_it() -> None:
    """A zero-rate window between two busy ones is silence; arrivals resume right after it."""
    windows = [(0.0, 100.0, 1.0), (100.0, 100.0, 0.0), (200.0, 100.0, 1.0)]
    times = arrivals_from_rates(windows, seed=3)
    assert not [t for t in times if 100.0 <= t < 200.0]
    assert [t for t in times if t < 100.0] and [t for t in times if t >= 200.0]


def _gap_cv(times: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.pstdev(gaps) / statistics.fmean(gaps)


def test_cv_sets_the_burstiness_of_gaps() -> None:
    """One window of 10 req/s for 5,000 s: about 50,000 gaps. Poisson gaps have CV 1; gamma gaps of
    shape 1/4 have CV 2. The sample CV of n gamma gaps has a standard error of about
    sqrt((kurtosis - 1) / 4n) x CV: excess kurtosis of gamma is 6/shape = 24, so kurtosis 27 and
    sqrt(26 / 200,000) x 2 = 0.023; 4 standard errors is 0.09, so 2 +- 0.1. For exponential gaps
    (kurtosis 9) sqrt(8 / 200,000) = 0.0063, so 1 +- 0.03. The mean rate stays 10/s either way:
    expected 50,000 arrivals; a renewal count's variance is about n x CV^2, so within
    4 x sqrt(50,000) x 2 = 1,789 for CV 2 and 4 x 224 = 894 for CV 1."""
    window = [(0.0, 5000.0, 10.0)]
    poisson = arrivals_from_rates(window, seed=11, cv=1.0)
    bursty = arrivals_from_rates(window, seed=11, cv=2.0)
    assert _gap_cv(poisson) == pytest.approx(1.0, abs=0.03)
    assert _gap_cv(bursty) == pytest.approx(2.0, abs=0.1)
    assert abs(len(poisson) - 50_000) <= 894
    assert abs(len(bursty) - 50_000) <= 1789


def test_bad_windows_are_refused() -> None:
    with pytest.raises(TraceError, match="positive"):
        arrivals_from_rates([(0.0, 60.0, 1.0)], seed=0, cv=0)
    with pytest.raises(TraceError, match="overlaps"):
        arrivals_from_rates([(0.0, 60.0, 1.0), (30.0, 60.0, 1.0)], seed=0)
    with pytest.raises(TraceError, match="must be positive"):
        arrivals_from_rates([(0.0, 60.0, -1.0)], seed=0)


def _reference() -> Trace:
    """Five requests a second for 600 s (3,000 requests), evenly spaced, each with its own (prompt, output)."""
    requests = tuple(TraceRequest(i * 0.2, 100 + i, 1 + i % 5) for i in range(3000))
    return Trace(name="even", start=START, requests=requests)


def _identical_within(trace: Trace, seconds: float) -> int:
    """Unordered pairs of requests with the same (prompt, output) arriving within ``seconds`` of each other."""
    by_pair: dict[tuple[int, int], list[float]] = {}
    for r in trace.requests:
        by_pair.setdefault((r.prompt_tokens, r.output_tokens), []).append(r.arrival_s)
    return sum(
        1 for times in by_pair.values() for i, a in enumerate(times) for b in times[i + 1 :] if abs(b - a) <= seconds
    )


def test_rate_scaled_quadruples_the_rate_without_copies() -> None:
    """x4 of 3,000 requests: 12,000 expected, Poisson sd sqrt(12,000) = 110 -> within 438.

    No copies: each arrival has about 20 others within the next second (20 req/s), 12,000 x 20 =
    240,000 close pairs, each the same length pair with probability 1/3,000: 80 identical close
    pairs expected, about Poisson, so at most 80 + 4 x sqrt(80) = 116. Four copies of each request
    within a second of each other would give up to 6 per request, about 18,000. Nor bunched: Poisson
    gaps at 20 req/s fall under 1 ms with probability 1 - exp(-20 x 0.001) = 2.0% (sd over 12,000 gaps
    0.13%): at most 3%; copies without jitter would put 3 gaps in 4 at zero."""
    reference = _reference()
    scaled = reference.rate_scaled(4, seed=2)
    assert abs(len(scaled.requests) - 12_000) <= 438
    assert scaled.start == START and scaled.duration_s <= reference.duration_s
    assert _identical_within(scaled, 1.0) <= 116
    times = [r.arrival_s for r in scaled.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(1 for gap in gaps if gap < 0.001) / len(gaps) <= 0.03
    pairs = {(r.prompt_tokens, r.output_tokens) for r in reference.requests}
    assert {(r.prompt_tokens, r.output_tokens) for r in scaled.requests} <= pairs  # lengths from the trace itself
    assert scaled.requests == reference.rate_scaled(4, seed=2).requests
    assert scaled.requests != reference.rate_scaled(4, seed=3).requests
    assert reference.rate_scaled(1, seed=2) is reference  # x1 at cv 1 is the trace as recorded


def test_rate_scaled_follows_the_traces_own_profile() -> None:
    """A trace at 1 req/s for its first 60 s window and 4 req/s for its second, x2: expected 120 and 480
    arrivals; Poisson sd 11.0 and 21.9 -> within 44 and 88."""
    requests = [TraceRequest(i * 1.0, 50, 5) for i in range(60)] + [
        TraceRequest(60 + i * 0.25, 50, 5) for i in range(240)
    ]
    trace = Trace(name="ramp", start=START, requests=tuple(requests))
    times = [r.arrival_s for r in trace.rate_scaled(2, seed=4).requests]
    first = sum(1 for t in times if t < 60)
    assert abs(first - 120) <= 44
    assert abs(len(times) - first - 480) <= 88


def test_rate_series_csv_with_a_missing_value_and_timestamps(tmp_path: Path) -> None:
    """Grafana's export of a Prometheus rate: a time column and the series' value; an empty value
    (no data) stays a zero-rate window and is counted. 10-minute windows at 1, (none), 3 req/s
    scaled x0.5: expected 300 and 900 arrivals (sd 17.3 and 30 -> within 70 and 120)."""
    path = tmp_path / "rate.csv"
    path.write_text(
        'Time,"sum(rate(requests_total[10m]))"\n2026-01-05 09:00:00,1\n2026-01-05 09:10:00,\n2026-01-05 09:20:00,3\n',
        encoding="utf-8",
    )
    series = rate_series_load(path)
    assert series.start == START
    assert series.windows == ((0.0, 600.0, 1.0), (600.0, 600.0, 0.0), (1200.0, 600.0, 3.0))
    assert series.missing == 1 and series.zero_windows == 1
    pairs = [(200, 20)]
    trace = trace_from_rate_series(path, lengths=pairs, seed=0, scale=0.5)
    times = [r.arrival_s for r in trace.requests]
    assert abs(sum(1 for t in times if t < 600) - 300) <= 70
    assert not [t for t in times if 600 <= t < 1200]
    assert abs(sum(1 for t in times if t >= 1200) - 900) <= 120
    assert {(r.prompt_tokens, r.output_tokens) for r in trace.requests} == {(200, 20)}
    assert "1 zero-rate windows kept silent, 1 without data" in trace.name


def test_rate_series_in_seconds_as_servegen_exports_it(tmp_path: Path) -> None:
    """Window starts in seconds; the last window lasts as long as the one before it."""
    path = tmp_path / "servegen.csv"
    path.write_text(
        "window_start_s,total_rate_rps,active_clients\n0,2.5,3\n600,0.000000,0\n1200,4,2\n", encoding="utf-8"
    )
    series = rate_series_load(path)
    assert series.start == EPOCH
    assert series.windows == ((0.0, 600.0, 2.5), (600.0, 600.0, 0.0), (1200.0, 600.0, 4.0))
    assert series.missing == 0 and series.zero_windows == 1
    # (2.5 + 0 + 4) / 3 = 2.1667 req/s over equal windows.
    assert series.mean_rate == pytest.approx(6.5 / 3)
    # Prometheus' query_range values as CSV: Unix seconds and the rate as a string, no header. Where it has
    # no data it writes no point: the absent 09:10 row leaves 600-1,200 s uncovered (silence), one missing.
    prometheus = tmp_path / "prometheus.csv"
    prometheus.write_text('1767603600,"2.5"\n1767604800,"4"\n1767605400,"NaN"\n', encoding="utf-8")
    exported = rate_series_load(prometheus)
    assert exported.start == START  # 1,767,603,600 s = 2026-01-05 09:00 UTC
    # Starts 0, 1,200 and 1,800 s: the step is 600 s; missing: the absent row and the NaN.
    assert exported.windows == ((0.0, 600.0, 2.5), (1200.0, 600.0, 4.0), (1800.0, 600.0, 0.0))
    assert exported.missing == 2 and exported.zero_windows == 1
    times = [r.arrival_s for r in trace_from_rate_series(exported, lengths=[(200, 20)], seed=0).requests]
    assert times and all(t < 600 or 1200 <= t < 1800 for t in times)
    bad = tmp_path / "bad.csv"
    bad.write_text("window_start_s,total_rate_rps\n0,-1\n600,2\n", encoding="utf-8")
    with pytest.raises(TraceError, match="row 1"):
        rate_series_load(bad)


def test_lengths_from_a_distribution_function() -> None:
    """A stated distribution: a function of the seeded generator returning (prompt, output)."""

    def uniform(draw: random.Random) -> tuple[int, int]:
        return draw.randint(10, 20), draw.randint(1, 3)

    trace = trace_from_rate_series([(0.0, 100.0, 1.0)], lengths=uniform, seed=1)
    assert trace.requests and trace.start == EPOCH
    assert all(10 <= r.prompt_tokens <= 20 and 1 <= r.output_tokens <= 3 for r in trace.requests)
    assert trace.requests == trace_from_rate_series([(0.0, 100.0, 1.0)], lengths=uniform, seed=1).requests


@pytest.mark.django_db
def test_the_simulate_commands_scale_is_a_rate_scale(tmp_path: Path) -> None:
    """240 requests at 2 req/s over 120 s, --scale 2 --cv 2: 480 expected; a renewal count's sd is about
    sqrt(480) x cv = 43.8, so within 175. Copies would give exactly 480 under the trace's plain name."""
    from io import StringIO

    from django.core.management import CommandError, call_command

    path = tmp_path / "trace.csv"
    rows = ["arrival_s,prompt_tokens,output_tokens"] + [
        f"{t * 0.5},{200 + 50 * (t % 7)},{5 + t % 9}" for t in range(240)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = StringIO()
    call_command("simulate", f"--trace={path}", "--gpu=L4", "--gpus=2", "--scale=2", "--cv=2", "--quiet", stdout=out)
    summary = out.getvalue()
    assert "trace rate x2 cv 2" in summary
    count = int(summary.split("cv 2, ")[1].split(" requests")[0].replace(",", ""))
    assert abs(count - 480) <= 175
    with pytest.raises(CommandError, match="rate scale must be positive"):
        call_command("simulate", f"--trace={path}", "--scale=0", "--quiet", stdout=StringIO())
