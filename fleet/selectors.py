"""Reads of the fleet, shaped for the pages that show them."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from fleet import catalog
from fleet.models import (
    Gpu,
    GpuHour,
    GpuMinute,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    Node,
    Pool,
    PoolHour,
    PoolMinute,
    PriceRate,
)


def nodes_overview() -> QuerySet[Node]:
    """Nodes with their GPU count and total GPU memory, in one query."""
    return Node.objects.annotate(gpu_count=Count("gpus"), gpu_memory_bytes=Sum("gpus__memory_total_bytes")).order_by(
        "name"
    )


def pools_overview() -> QuerySet[Pool]:
    """Pools with instance counts by actual state and their profile, in one query."""
    return (
        Pool.objects.select_related("model_profile")
        .annotate(
            instances_total=Count("instances"),
            instances_ready=Count("instances", filter=Q(instances__actual_state=Instance.Actual.READY)),
            instances_sleeping=Count("instances", filter=Q(instances__actual_state=Instance.Actual.SLEEPING)),
        )
        .order_by("tier", "name")
    )


# ---- telemetry: the queries charts, /metrics and the benchmarks use -------------------------
#
# Resolution follows the range so a chart never reads more than about 1,500 points per
# series: raw samples up to RAW_MAX_RANGE, minute rollups up to MINUTE_MAX_RANGE, hour
# rollups beyond. History pages never read raw samples past RAW_MAX_RANGE.

RAW_MAX_RANGE = timedelta(hours=2)
MINUTE_MAX_RANGE = timedelta(hours=25)
HOLDING_STATES = frozenset({"starting", "ready", "sleeping", "stopping"})
SAMPLE_FRESH_FOR = timedelta(minutes=2)

GPU_SERIES_FIELDS = ("utilization", "sm_activity", "memory_used", "power")


def _resolution(start: datetime, end: datetime) -> str:
    span = end - start
    if span <= RAW_MAX_RANGE:
        return "raw"
    return "minute" if span <= MINUTE_MAX_RANGE else "hour"


def gpu_series(*, gpu_id: int, start: datetime, end: datetime) -> dict[str, Any]:
    """One GPU's utilization, SM activity, memory and power over [start, end), for a chart.

    Returns ``{"resolution", "at": [...], "<field>": [...], "<field>_max": [...]}``; raw
    samples have no separate max, so ``_max`` repeats the value there.
    """
    resolution = _resolution(start, end)
    if resolution == "raw":
        rows = (
            GpuSample.objects.filter(gpu_id=gpu_id, at__gte=start, at__lt=end)
            .order_by("at")
            .values_list("at", "utilization_gpu_pct", "sm_activity_pct", "memory_used_bytes", "power_watts")
        )
        columns = list(zip(*rows, strict=True)) or [()] * 5
        series = dict(zip(("at", *GPU_SERIES_FIELDS), (list(c) for c in columns), strict=True))
        return {"resolution": resolution, **series, **{f"{f}_max": series[f] for f in GPU_SERIES_FIELDS}}
    model = GpuMinute if resolution == "minute" else GpuHour
    fields = ["bucket"] + [f"{f}_{kind}" for f in GPU_SERIES_FIELDS for kind in ("mean", "max")]
    rows = (
        model.objects.filter(gpu_id=gpu_id, bucket__gte=start, bucket__lt=end).order_by("bucket").values_list(*fields)
    )
    columns = list(zip(*rows, strict=True)) or [()] * len(fields)
    out: dict[str, Any] = {"resolution": resolution, "at": list(columns[0])}
    for i, f in enumerate(GPU_SERIES_FIELDS):
        out[f], out[f"{f}_max"] = list(columns[1 + 2 * i]), list(columns[2 + 2 * i])
    return out


def pool_series(*, pool_id: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """One pool's traffic, queue and latency percentiles (from merged buckets) per bucket."""
    model = PoolMinute if end - start <= MINUTE_MAX_RANGE else PoolHour
    return list(
        model.objects.filter(pool_id=pool_id, bucket__gte=start, bucket__lt=end)
        .order_by("bucket")
        .values(
            "bucket",
            "instances",
            "requests",
            "prompt_tokens",
            "generation_tokens",
            "requests_waiting_mean",
            "requests_waiting_max",
            "kv_cache_usage_mean",
            "ttft_p95_s",
            "e2e_p50_s",
            "e2e_p95_s",
            "e2e_p99_s",
        )
    )


def fleet_heatmap(*, start: datetime, end: datetime) -> dict[str, Any]:
    """Mean utilization per GPU per hour over [start, end): rows GPUs, columns hours.

    Hours without samples stay None (a gap), never 0.
    """
    first = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    at = first
    while at < end:
        hours.append(at)
        at += timedelta(hours=1)
    column = {hour: i for i, hour in enumerate(hours)}
    gpus = list(Gpu.objects.order_by("node__name", "index").values_list("pk", "node__name", "index"))
    row = {pk: i for i, (pk, _name, _index) in enumerate(gpus)}
    cells: list[list[float | None]] = [[None] * len(hours) for _ in gpus]
    for gpu_id, bucket, value in GpuHour.objects.filter(bucket__gte=first, bucket__lt=end).values_list(
        "gpu_id", "bucket", "utilization_mean"
    ):
        if gpu_id in row and bucket in column:
            cells[row[gpu_id]][column[bucket]] = value
    return {"hours": hours, "gpus": [f"{name}/{index}" for _pk, name, index in gpus], "utilization": cells}


def gpus_latest(*, fresh_for: timedelta | None = SAMPLE_FRESH_FOR) -> list[dict[str, Any]]:
    """Every GPU's newest sample with its node, in two index-backed queries.

    The newest sample id per GPU is one probe of the ``(gpu, at DESC)`` index each, so
    this stays fast however long the table grows. GPUs whose newest sample is older than
    ``fresh_for`` (None: any age) are left out: a host that stopped reporting must not
    show its last utilization as if it were current.
    """
    newest = GpuSample.objects.filter(gpu_id=OuterRef("pk")).order_by("-at").values("pk")[:1]
    ids = Gpu.objects.annotate(sample_id=Subquery(newest)).exclude(sample_id=None).values("sample_id")
    samples = GpuSample.objects.filter(pk__in=ids)
    if fresh_for is not None:
        samples = samples.filter(at__gte=timezone.now() - fresh_for)
    return list(
        samples.values(
            "gpu_id",
            "at",
            "utilization_gpu_pct",
            "sm_activity_pct",
            "memory_used_bytes",
            "memory_total_bytes",
            "power_watts",
            "temperature_c",
            "energy_joules",
            node=F("gpu__node__name"),
            index=F("gpu__index"),
            uuid=F("gpu__uuid"),
            model=F("gpu__model_name"),
        )
    )


def instances_latest(*, fresh_for: timedelta = SAMPLE_FRESH_FOR) -> list[dict[str, Any]]:
    """Every instance's newest sample (queue, latency) with its pool, if fresh."""
    newest = InstanceSample.objects.filter(instance_id=OuterRef("pk")).order_by("-at").values("pk")[:1]
    ids = Instance.objects.annotate(sample_id=Subquery(newest)).exclude(sample_id=None).values("sample_id")
    return list(
        InstanceSample.objects.filter(pk__in=ids, at__gte=timezone.now() - fresh_for).values(
            "instance_id",
            "requests_waiting",
            "requests_running",
            "ttft_p95_s",
            "e2e_p95_s",
            pool=F("instance__pool__name"),
        )
    )


def spend_totals(*, now: datetime | None = None) -> dict[str, float]:
    """Money spent on allocated GPUs since records began, per currency.

    The arithmetic: an instance holds its GPU (or MIG slice) from an event into a holding
    state (starting, ready, sleeping, stopping) until its next event into any other state,
    or until now. Each such interval, split at the dates prices change, costs
    hours x the price per GPU-hour in force (a node's own price before the fleet price;
    a MIG slice pays slices/7 of it). Intervals with no price for their GPU model cost
    nothing and are not counted. Totals only grow as time passes, so they export as a counter.
    """
    now = now or timezone.now()
    rates: dict[tuple[str, int | None], dict[str, list[tuple[datetime, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rate in PriceRate.objects.order_by("effective_from"):
        start = datetime.combine(rate.effective_from, time.min, tzinfo=UTC)
        rates[(rate.gpu_model, rate.node_id)][rate.currency].append((start, float(rate.price_per_gpu_hour)))
    totals: dict[str, float] = defaultdict(float)
    events = InstanceEvent.objects.order_by("instance_id", "at", "id").values_list(
        "instance_id", "at", "state", "gpu__model_name", "gpu__node_id", "mig_device__profile"
    )
    previous: tuple[Any, ...] | None = None
    for event in [*events, (None, now, "", None, None, None)]:
        if previous is not None and previous[2] in HOLDING_STATES and previous[3]:
            end = event[1] if event[0] == previous[0] else now
            schedules = rates.get((previous[3], previous[4])) or rates.get((previous[3], None)) or {}
            share = catalog.mig_slices(previous[5]) / 7 if previous[5] else 1.0
            for currency, schedule in schedules.items():
                totals[currency] += _interval_cost(previous[1], end, schedule) * share
        previous = event
    return dict(totals)


def _interval_cost(start: datetime, end: datetime, schedule: list[tuple[datetime, float]]) -> float:
    """Cost of [start, end) under one currency's price schedule (each price holds until the next)."""
    cost = 0.0
    for i, (from_, price) in enumerate(schedule):
        until = schedule[i + 1][0] if i + 1 < len(schedule) else end
        overlap = (min(end, until) - max(start, from_)).total_seconds()
        if overlap > 0:
            cost += overlap / 3600 * price
    return cost
