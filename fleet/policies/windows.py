"""A pool's recent load, window by window: what autoscaling compares with the SLA and the band.

Pure arithmetic over what agents report, so the snapshot selector (reports read from the
database) and the trace simulator (reports of its simulated engines) compute every
window, and the cold start the pre-warm policy plans with, through the same functions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from statistics import median
from typing import Protocol, TypeVar

from agents.histograms import requests_attainment
from fleet.policies.snapshot import PoolWindow, per_instance_mean, per_instance_total

# How often an agent reports (the panel tells it so in each reply).
REPORT_INTERVAL_S = 5.0
# A report older than this no longer says what an instance or GPU is doing now.
SAMPLE_FRESH_S = 120
WINDOW_S = 60
WINDOWS = 6
COLD_STARTS_CONSIDERED = 20


class LoadSample(Protocol):
    """One instance's report, as vLLM's metrics give it (``InstanceSample`` rows have these fields)."""

    @property
    def instance_id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def requests_running(self) -> float | None: ...
    @property
    def requests_waiting(self) -> float | None: ...
    @property
    def kv_cache_usage(self) -> float | None: ...
    @property
    def prompt_tokens_rate(self) -> float | None: ...


S = TypeVar("S", bound=LoadSample)
# The pool's SLA latency over one window, in ms: (start, end, the window's samples) -> latency.
WindowLatency = Callable[[datetime, datetime, list[S]], float | None]


def pool_windows(
    *,
    now: datetime,
    samples: Sequence[S],
    duty: Sequence[tuple[datetime, float]],
    max_num_seqs: int,
    latency: WindowLatency[S],
    e2e_latency: WindowLatency[S] | None = None,
    over_bound: Callable[[datetime, datetime], float | None] | None = None,
) -> tuple[PoolWindow, ...]:
    """The last ``WINDOWS`` windows of ``WINDOW_S`` before ``now``, oldest first.

    ``samples`` are the reports of the pool's serving instances, ``duty`` the duty cycles
    (0..1, with their times) of the GPUs they run on. Utilization is the mean duty cycle;
    on MIG slices, where NVML has no duty cycle, it is running requests over
    ``max_num_seqs``. The queue is the sum over instances of their mean ``requests_waiting``.
    The load figures (running sequences, KV-cache usage, prompt tokens a second) are means
    per instance: each instance's mean over its samples, averaged over the instances.
    ``e2e_latency``, where given, reads the end-to-end latency of each window as ``latency`` reads the SLA's;
    ``over_bound``, where given, the share of each window's requests over their own TTFT bound
    (``over_bound_share``).
    """
    samples_in = _by_window(now, samples, lambda sample: sample.at)
    duty_in = _by_window(now, duty, lambda entry: entry[0])
    windows = []
    for back in range(WINDOWS, 0, -1):
        start, end = now - timedelta(seconds=back * WINDOW_S), now - timedelta(seconds=(back - 1) * WINDOW_S)
        busy = [value for _, value in duty_in[back]]
        mine = samples_in[back]
        if not busy and mine:
            busy = [(s.requests_running or 0) / max_num_seqs for s in mine if s.requests_running is not None]
        waiting, running, kv_cache, prompt_rate = _by_instance(mine)
        windows.append(
            PoolWindow(
                start=start,
                end=end,
                utilization=sum(busy) / len(busy) if busy else None,
                queue=per_instance_total(waiting),
                latency_ms=latency(start, end, mine),
                e2e_latency_ms=e2e_latency(start, end, mine) if e2e_latency is not None else None,
                over_bound_share=over_bound(start, end) if over_bound is not None else None,
                running=per_instance_mean(running),
                kv_cache=per_instance_mean(kv_cache),
                prompt_tokens_rate=per_instance_mean(prompt_rate),
            )
        )
    return tuple(windows)


def over_bound_share(
    requests: Iterable[tuple[float, int]], sla_latency_ms: float, per_1k_prompt_tokens: float
) -> float | None:
    """The share (0-1) of ``requests``, each ``(ttft_ms, prompt_tokens)``, over their own time-to-first-token
    bound (``requests_attainment``'s complement); None without requests."""
    within = requests_attainment(requests, sla_latency_ms, per_1k_prompt_tokens)
    return None if within is None else 1 - within


def cold_start_median(durations: Sequence[float]) -> float | None:
    """A pool's cold start: the median starting -> ready seconds of its recent starts; None before any."""
    return median(durations[-COLD_STARTS_CONSIDERED:]) if durations else None


T = TypeVar("T")


def _by_window(now: datetime, entries: Iterable[T], at: Callable[[T], datetime]) -> dict[int, list[T]]:
    """``entries`` per window, in their given order, keyed by how many windows back from ``now`` the window
    starts (``WINDOWS`` the oldest, 1 the last); entries in none of the windows are left out.

    One pass: the window ``back`` is [now - back * WINDOW_S, now - (back - 1) * WINDOW_S), so an entry
    at ``at`` falls in window ceil((now - at) / WINDOW_S), exact in timedelta's whole microseconds."""
    width = timedelta(seconds=WINDOW_S)
    windows: dict[int, list[T]] = {back: [] for back in range(1, WINDOWS + 1)}
    for entry in entries:
        back = -((at(entry) - now) // width)
        if 1 <= back <= WINDOWS:
            windows[back].append(entry)
    return windows


def _by_instance(
    samples: Iterable[S],
) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[int, list[float]], dict[int, list[float]]]:
    """Each instance's reported values, in one pass: waiting and running requests, KV-cache usage and
    prompt tokens a second (a value not reported is left out)."""
    waiting: dict[int, list[float]] = defaultdict(list)
    running: dict[int, list[float]] = defaultdict(list)
    kv_cache: dict[int, list[float]] = defaultdict(list)
    prompt_rate: dict[int, list[float]] = defaultdict(list)
    for sample in samples:
        instance = sample.instance_id
        if sample.requests_waiting is not None:
            waiting[instance].append(sample.requests_waiting)
        if sample.requests_running is not None:
            running[instance].append(sample.requests_running)
        if sample.kv_cache_usage is not None:
            kv_cache[instance].append(sample.kv_cache_usage)
        if sample.prompt_tokens_rate is not None:
            prompt_rate[instance].append(sample.prompt_tokens_rate)
    return waiting, running, kv_cache, prompt_rate
