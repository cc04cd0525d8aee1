"""Rollup rows, decisions and requests at chosen instants, for the dashboard's pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fleet.models import Gpu, GpuHour, GpuMinute, Pool, PoolHour, PoolMinute, RequestLog
from fleet.telemetry.rollups import histogram_percentiles

GIB = 1024**3


def gpu_rollups(
    gpu: Gpu,
    start: datetime,
    count: int,
    *,
    hourly: bool = False,
    utilization: float | Callable[[datetime], float] = 50.0,
) -> None:
    """``count`` consecutive minute (or hour) rollup rows from ``start``; ``utilization`` may vary with time."""
    model, step = (GpuHour, timedelta(hours=1)) if hourly else (GpuMinute, timedelta(minutes=1))
    load = utilization if callable(utilization) else (lambda _at: utilization)
    model.objects.bulk_create(
        model(
            gpu=gpu,
            bucket=start + i * step,
            samples=12,
            utilization_mean=load(start + i * step),
            utilization_max=load(start + i * step),
            memory_used_mean=8 * GIB,
            memory_used_max=8 * GIB,
            memory_total=24 * GIB,
            power_mean=150.0,
            power_max=180.0,
            temperature_max=61.0,
        )
        for i in range(count)
    )


def histogram(observations: dict[float, int]) -> dict[str, Any]:
    """A cumulative histogram over bounds 0.1, 0.25, 0.5, 1, 2.5 s from {upper bound: count in that bucket}."""
    bounds = [0.1, 0.25, 0.5, 1.0, 2.5]
    counts, running = [], 0
    for bound in bounds:
        running += observations.get(bound, 0)
        counts.append(running)
    return {"bounds": bounds, "counts": counts, "count": running + observations.get(float("inf"), 0)}


def pool_rollup(
    pool: Pool,
    bucket: datetime,
    *,
    requests: int,
    fast: bool = True,
    hourly: bool = False,
    ttft: dict[str, Any] | None = None,
) -> None:
    """One bucket of traffic whose TTFT sits well under (fast) or over 500 ms, or follows ``ttft``."""
    model = PoolHour if hourly else PoolMinute
    if ttft is None:
        ttft = histogram({0.1: requests} if fast else {1.0: requests})
        percentiles: list[float | None] = [0.08, 0.095, 0.099] if fast else [0.8, 0.95, 0.99]
    else:
        percentiles = list(histogram_percentiles(ttft).values())
    model.objects.create(
        pool=pool,
        bucket=bucket,
        samples=12,
        instances=1,
        requests_waiting_mean=0.5,
        requests_waiting_max=2,
        requests=requests,
        prompt_tokens=requests * 400,
        generation_tokens=requests * 100,
        ttft_histogram=ttft,
        e2e_histogram=ttft,
        ttft_p50_s=percentiles[0],
        ttft_p95_s=percentiles[1],
        ttft_p99_s=percentiles[2],
    )


def request(pool: Pool | None, at: datetime, *, tier: str = "L", latency_ms: float = 120, **extra: Any) -> RequestLog:
    values: dict[str, Any] = {"endpoint": "chat", "model": "qwen3-4b", "rcf": 0.5, "status": 200} | extra
    return RequestLog.objects.create(at=at, pool=pool, tier=tier, latency_ms=latency_ms, **values)
