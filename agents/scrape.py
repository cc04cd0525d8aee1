"""Scrape a vLLM server's Prometheus ``/metrics`` and turn two scrapes into window stats.

The text is parsed by ``prometheus_client``'s parser, never by hand. Both metric
generations are accepted (``vllm:kv_cache_usage_perc`` and the older
``vllm:gpu_cache_usage_perc``; ``vllm:inter_token_latency_seconds`` and the older
``vllm:time_per_output_token_seconds``). Histogram bucket bounds are read from the
text, since servers can override them. Latency quantiles follow Prometheus's
``histogram_quantile`` so numbers here match what a Prometheus/Grafana user sees.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agents.histograms import buckets_merge, counts_monotonic, histogram_quantile

MAX_TEXT_BYTES = 16 * 1024 * 1024
QUANTILES = (0.5, 0.95, 0.99)

Labels = frozenset[tuple[str, str]]
Combine = Callable[[Sequence[float]], float]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# Canonical key → accepted metric names, newest first. Only the first name present
# is read, so a server exporting both generations is not counted twice.
GAUGES: dict[str, tuple[tuple[str, ...], Combine]] = {
    # A fraction per engine; engines of one server have equal caches, so average.
    "kv_cache_usage": (("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), _mean),
    "requests_running": (("vllm:num_requests_running",), sum),
    "requests_waiting": (("vllm:num_requests_waiting",), sum),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    # Summed over finished_reason (stop, length, abort, error, ...).
    "requests_success": ("vllm:request_success_total",),
    "preemptions": ("vllm:num_preemptions_total",),
}
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "inter_token": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "queue_time": ("vllm:request_queue_time_seconds",),
}


class ScrapeError(Exception):
    """The one error this module raises for bad input or a failed fetch."""


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: ``counts[i]`` observations were ``<= bounds[i]``.

    ``bounds`` ascend and end with +inf, as in the Prometheus text format.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float

    @property
    def count(self) -> float:
        return self.counts[-1]

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.bounds, self.counts)


@dataclass(frozen=True)
class Snapshot:
    """One scrape of one vLLM server, summed over its engines, keyed as in GAUGES etc.

    A value is None when the server does not export it or exported a non-finite or
    inconsistent value for it.
    """

    timestamp: float
    model_name: str | None
    gauges: dict[str, float | None]
    counters: dict[str, float | None]
    histograms: dict[str, Histogram | None]


@dataclass(frozen=True)
class WindowStats:
    """What happened between two scrapes: per-second rates and latency quantiles.

    Quantiles are None when no request finished in the window. ``histograms`` holds
    the window's bucket deltas so rollups can merge servers before taking quantiles.
    """

    model_name: str | None
    seconds: float
    requests_finished: float | None
    requests_per_s: float | None
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    preemptions_per_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    e2e_p99_s: float | None
    counter_reset: bool
    histograms: dict[str, Histogram | None]


def _families(text: str) -> list[Sample]:
    """All samples of the text, or ScrapeError whatever way the parser objects."""
    if len(text) > MAX_TEXT_BYTES:
        raise ScrapeError(f"metrics text too large ({len(text)} characters)")
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, TypeError, IndexError, KeyError, UnicodeError) as exc:
        raise ScrapeError(f"not Prometheus metrics text: {type(exc).__name__}: {exc}") from exc


def _model_name(samples: Iterable[Sample]) -> str | None:
    names = {s.labels["model_name"] for s in samples if "model_name" in s.labels}
    if len(names) > 1:
        raise ScrapeError(f"expected one served model, found {sorted(names)}")
    return names.pop() if names else None


def _by_name(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        grouped[s.name].append(s)
    return grouped


def _first_present(grouped: dict[str, list[Sample]], names: Sequence[str]) -> list[Sample]:
    return next((grouped[n] for n in names if n in grouped), [])


def _finite_values(samples: Sequence[Sample]) -> list[float] | None:
    values = [float(s.value) for s in samples]
    return values if values and all(math.isfinite(v) for v in values) else None


def _finite(value: float) -> float | None:
    """Summing huge values can overflow to inf; that is no more usable than NaN."""
    return value if math.isfinite(value) else None


def _gauge(grouped: dict[str, list[Sample]], names: Sequence[str], combine: Combine) -> float | None:
    values = _finite_values(_first_present(grouped, names))
    return None if values is None else _finite(combine(values))


def _counter(grouped: dict[str, list[Sample]], names: Sequence[str]) -> float | None:
    values = _finite_values(_first_present(grouped, names))
    return None if values is None or min(values) < 0 else _finite(sum(values))


def _series_histogram(buckets: Sequence[Sample], sum_value: float) -> Histogram | None:
    """One label set's buckets, sorted by bound; None if any bound or count is unusable."""
    try:
        pairs = sorted((float(s.labels["le"]), float(s.value)) for s in buckets)
    except (KeyError, ValueError):
        return None
    bounds = tuple(b for b, _ in pairs)
    counts = tuple(counts_monotonic(c for _, c in pairs))
    if len(pairs) < 2 or bounds[-1] != math.inf or len(set(bounds)) != len(bounds) or any(map(math.isnan, bounds)):
        return None
    if not all(math.isfinite(c) and c >= 0 for c in counts) or not math.isfinite(sum_value):
        return None
    return Histogram(bounds=bounds, counts=counts, sum=sum_value)


def _without_le(labels: dict[str, str]) -> Labels:
    return frozenset((k, v) for k, v in labels.items() if k != "le")


def _histogram(grouped: dict[str, list[Sample]], names: Sequence[str]) -> Histogram | None:
    """Histogram of the first name present, merged over engines; None if unusable."""
    base = next((n for n in names if f"{n}_bucket" in grouped), None)
    if base is None:
        return None
    series: dict[Labels, list[Sample]] = defaultdict(list)
    for s in grouped[f"{base}_bucket"]:
        series[_without_le(s.labels)].append(s)
    sums = {_without_le(s.labels): float(s.value) for s in grouped.get(f"{base}_sum", [])}
    parts = [_series_histogram(buckets, sums.get(labels, math.nan)) for labels, buckets in series.items()]
    usable = [p for p in parts if p is not None]
    merged = buckets_merge((p.bounds, p.counts) for p in usable)
    # Engines of one server share their bounds; a server whose engines differ is not to be trusted.
    if merged is None or len(usable) != len(parts) or len({p.bounds for p in usable}) != 1:
        return None
    histogram = Histogram(bounds=merged[0], counts=merged[1], sum=sum(p.sum for p in usable))
    return histogram if all(math.isfinite(v) for v in (*histogram.counts, histogram.sum)) else None


def parse(text: str, timestamp: float) -> Snapshot:
    """Parse one ``/metrics`` text taken at ``timestamp`` (unix seconds).

    Raises ScrapeError when the text is not metrics text, carries no ``vllm:``
    metrics (the wrong endpoint), or mixes several served models.
    """
    samples = [s for s in _families(text) if s.name.startswith("vllm:")]
    if not samples:
        raise ScrapeError("no vllm: metrics in the text; is this a vLLM /metrics endpoint?")
    grouped = _by_name(samples)
    return Snapshot(
        timestamp=timestamp,
        model_name=_model_name(samples),
        gauges={key: _gauge(grouped, names, combine) for key, (names, combine) in GAUGES.items()},
        counters={key: _counter(grouped, names) for key, names in COUNTERS.items()},
        histograms={key: _histogram(grouped, names) for key, names in HISTOGRAMS.items()},
    )


def _counter_delta(prev: float | None, cur: float | None) -> tuple[float | None, bool]:
    """Increase over the window and whether the counter was reset (server restart)."""
    if prev is None or cur is None:
        return None, False
    if cur < prev:
        return cur, True
    return cur - prev, False


def _histogram_delta(prev: Histogram | None, cur: Histogram | None) -> tuple[Histogram | None, bool]:
    """Observations made in the window; after a reset (or new bounds) all of ``cur``."""
    if prev is None or cur is None:
        return None, False
    fell = cur.sum < prev.sum or any(c < p for c, p in zip(cur.counts, prev.counts, strict=True))
    if cur.bounds != prev.bounds or fell:
        return cur, True
    counts = tuple(c - p for c, p in zip(cur.counts, prev.counts, strict=True))
    return Histogram(bounds=cur.bounds, counts=counts, sum=cur.sum - prev.sum), False


def _rate(value: float | None, seconds: float) -> float | None:
    return None if value is None else value / seconds


def _quantiles(histogram: Histogram | None) -> list[float | None]:
    if histogram is None:
        return [None for _ in QUANTILES]
    return [histogram.quantile(q) for q in QUANTILES]


def delta(prev: Snapshot, cur: Snapshot) -> WindowStats:
    """Rates and latency quantiles for the window between two scrapes of one server."""
    seconds = cur.timestamp - prev.timestamp
    if seconds <= 0:
        raise ValueError(f"cur must be taken after prev (window of {seconds} s)")
    counters = {key: _counter_delta(prev.counters.get(key), cur.counters.get(key)) for key in COUNTERS}
    histograms = {key: _histogram_delta(prev.histograms.get(key), cur.histograms.get(key)) for key in HISTOGRAMS}
    reset = any(r for _, r in counters.values()) or any(r for _, r in histograms.values())
    ttft = _quantiles(histograms["ttft"][0])
    e2e = _quantiles(histograms["e2e"][0])
    return WindowStats(
        model_name=cur.model_name,
        seconds=seconds,
        requests_finished=counters["requests_success"][0],
        requests_per_s=_rate(counters["requests_success"][0], seconds),
        prompt_tokens_per_s=_rate(counters["prompt_tokens"][0], seconds),
        generation_tokens_per_s=_rate(counters["generation_tokens"][0], seconds),
        preemptions_per_s=_rate(counters["preemptions"][0], seconds),
        ttft_p50_s=ttft[0],
        ttft_p95_s=ttft[1],
        ttft_p99_s=ttft[2],
        e2e_p50_s=e2e[0],
        e2e_p95_s=e2e[1],
        e2e_p99_s=e2e[2],
        counter_reset=reset,
        histograms={key: h for key, (h, _) in histograms.items()},
    )


def metrics_url(url: str) -> str:
    """Accept a server's base URL or its ``/metrics`` URL."""
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    """The body, refusing to buffer more than MAX_TEXT_BYTES or to wait past ``deadline``.

    httpx's timeout applies to each read, so a server trickling a byte a second would
    otherwise hold the agent's loop forever.
    """
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > MAX_TEXT_BYTES:
            raise ScrapeError(f"{response.url} sent more than {MAX_TEXT_BYTES} bytes")
        if time.monotonic() > deadline:
            raise ScrapeError(f"{response.url} is still sending its metrics after the scrape's time ran out")
    return bytes(body)


def scrape(url: str, client: httpx.Client, timeout: float = 5.0) -> Snapshot:
    """Fetch and parse a server's metrics; any failure is a ScrapeError naming the cause."""
    target = metrics_url(url)
    deadline = time.monotonic() + timeout
    try:
        with client.stream("GET", target, timeout=timeout) as response:
            if response.status_code != httpx.codes.OK:
                raise ScrapeError(f"{target} answered HTTP {response.status_code}")
            body = _read_capped(response, deadline)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ScrapeError(f"could not fetch {target}: {type(exc).__name__}: {exc}") from exc
    # The Prometheus text format is UTF-8 by definition, whatever the headers say.
    return parse(body.decode("utf-8", errors="replace"), time.time())
