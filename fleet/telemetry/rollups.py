"""Rollups and retention: the writes that turn raw samples into the tables charts read.

Minute rollups are computed from raw samples, hour rollups from minute rollups, so an
hour can be recomputed after its raw samples are pruned. Each window is recomputed whole
(delete its rows, insert the new ones, in one transaction), which makes a run
idempotent: running a window twice gives the same rows. A watermark per resolution says
how far the rollup is complete; ingest pulls the minute watermark back when a batch of
late reports lands (an agent flushing its buffer after the panel was away), and the minute
task pulls the hour watermark back over whatever minutes it recomputes. Day rollups (what
spend over weeks and months reads) are summed from hour rollups once a UTC day is
complete, and again from the first day any hour is recomputed in. The gateway's request log
is rolled up into usage hours (``UsageHour``) by the hour task too, complete UTC hours only;
the gateway pulls the ``usage`` watermark back when it logs a request for an hour already
rolled up (``usage_reopen``), so the next run recomputes that hour.

Arithmetic, chosen so no figure is invented:

* Means are over the samples in the bucket; an hour's mean is its minutes' means weighted
  by their sample counts, so it equals the mean of the raw samples.
* A bucket without samples has no row. An hour with one online minute is that minute.
* Energy: the NVML counter's increase between consecutive samples of one GPU is
  attributed to the bucket of the later sample. A pair further apart than
  ``MAX_GAP_S`` (host offline) or with a falling counter (driver reload) adds nothing.
* Tokens: each sample's rate times the time since the instance's previous sample, under
  the same gap rule; requests are the observations of the end-to-end latency histogram.
* Latency: histogram buckets are summed over instances and reports (only histograms with
  the same bounds can be summed; where bounds differ the bounds holding the most requests
  win), and percentiles are read from the merged buckets, never averaged
  (``agents.histograms``, as the policy windows, alerts and dashboard read them).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, F, Min, Sum, Value
from django.db.models.functions import Least, TruncDay, TruncHour
from django.utils import timezone

from agents.histograms import histograms_merge, pool_latency
from fleet.costs.teams import exact_ms, request_gpu_ms, request_tokens, utc_hour
from fleet.models import (
    GpuDay,
    GpuHour,
    GpuMinute,
    GpuSample,
    InstanceSample,
    PoolHour,
    PoolMinute,
    RequestLog,
    RollupWatermark,
    UsageHour,
)
from fleet.models.telemetry import PoolRollup

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MAX_GAP_S = 60.0
ROLLUP_LAG = timedelta(seconds=30)
CHUNK_MINUTES = 10
RUN_BUDGET_S = 40.0
PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    """Start of the UTC day of ``at``: day rollups are UTC days, as hour rollups are UTC hours."""
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def rollup_reopen(*, since: datetime) -> None:
    """Pull the minute watermark back to ``since`` when late samples land in finished minutes.

    Costs a query only for samples older than the rollup lag, i.e. buffered reports.
    """
    if since >= timezone.now() - ROLLUP_LAG - MINUTE:
        return
    RollupWatermark.objects.filter(name="minute", done_until__gt=floor_minute(since)).update(
        done_until=floor_minute(since)
    )


# ---- histograms ----------------------------------------------------------------------


def histogram_percentiles(histogram: dict[str, Any] | None) -> dict[str, float | None]:
    """p50/p95/p99 of a merged histogram, read from its buckets as Prometheus does."""
    return {name: pool_latency([histogram], percentile) for name, percentile in PERCENTILES.items()}


# ---- minute rollups from raw samples ---------------------------------------------------


@dataclass
class _Stat:
    """Mean and max of one metric over a bucket, skipping missing readings."""

    total: float = 0.0
    n: int = 0
    top: float | None = None

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.total += value
        self.n += 1
        self.top = value if self.top is None else max(self.top, value)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


Row = tuple[Any, ...]


def series_pairs(rows: Sequence[Row], start: datetime) -> Iterable[tuple[Row | None, Row]]:
    """(previous row of the same series or None, row) for each row at or after ``start``.

    ``rows`` are ordered by series then time; the lookback rows before ``start`` serve only
    as previous rows.
    """
    previous: Row | None = None
    for row in rows:
        if previous is not None and previous[0] != row[0]:
            previous = None
        if row[1] >= start:
            gap_ok = previous is not None and (row[1] - previous[1]).total_seconds() <= MAX_GAP_S
            yield (previous if gap_ok else None), row
        previous = row


def gpu_minutes_compute(*, start: datetime, end: datetime) -> list[GpuMinute]:
    """Per-GPU minute rollups of the raw samples in [start, end), not yet saved."""
    rows = list(
        GpuSample.objects.filter(at__gte=start - timedelta(seconds=MAX_GAP_S), at__lt=end)
        .order_by("gpu_id", "at")
        .values_list(
            "gpu_id",
            "at",
            "utilization_gpu_pct",
            "sm_activity_pct",
            "memory_used_bytes",
            "memory_total_bytes",
            "power_watts",
            "temperature_c",
            "energy_joules",
        )
    )
    buckets: dict[tuple[int, datetime], dict[str, Any]] = {}
    for previous, row in series_pairs(rows, start):
        gpu_id, at, util, sm, mem, mem_total, power, temp, energy = row
        b = buckets.setdefault(
            (gpu_id, floor_minute(at)),
            {
                "n": 0,
                "util": _Stat(),
                "sm": _Stat(),
                "mem": _Stat(),
                "total": _Stat(),
                "power": _Stat(),
                "temp": _Stat(),
                "energy": None,
            },
        )
        b["n"] += 1
        for key, value in (
            ("util", util),
            ("sm", sm),
            ("mem", mem),
            ("total", mem_total),
            ("power", power),
            ("temp", temp),
        ):
            b[key].add(value)
        if previous is not None and energy is not None and previous[8] is not None and energy >= previous[8]:
            b["energy"] = (b["energy"] or 0.0) + energy - previous[8]
    return [
        GpuMinute(
            gpu_id=gpu_id,
            bucket=bucket,
            samples=b["n"],
            utilization_mean=b["util"].mean,
            utilization_max=b["util"].top,
            sm_activity_mean=b["sm"].mean,
            sm_activity_max=b["sm"].top,
            memory_used_mean=b["mem"].mean,
            memory_used_max=b["mem"].top,
            memory_total=b["total"].top,
            power_mean=b["power"].mean,
            power_max=b["power"].top,
            temperature_max=b["temp"].top,
            energy_joules=b["energy"],
        )
        for (gpu_id, bucket), b in buckets.items()
    ]


def pool_minutes_compute(*, start: datetime, end: datetime) -> list[PoolMinute]:
    """Per-pool minute rollups of the instance samples in [start, end), not yet saved."""
    rows = list(
        InstanceSample.objects.filter(at__gte=start - timedelta(seconds=MAX_GAP_S), at__lt=end)
        .order_by("instance_id", "at")
        .values_list(
            "instance_id",
            "at",
            "instance__pool_id",
            "requests_waiting",
            "requests_running",
            "kv_cache_usage",
            "prompt_tokens_rate",
            "generation_tokens_rate",
            "ttft_histogram",
            "e2e_histogram",
        )
    )
    buckets: dict[tuple[int, datetime], dict[str, Any]] = {}
    for previous, row in series_pairs(rows, start):
        instance_id, at, pool_id, waiting, running, kv, prompt_rate, gen_rate, ttft, e2e = row
        b = buckets.setdefault(
            (pool_id, floor_minute(at)),
            {
                "n": 0,
                "instances": set(),
                "waiting": _Stat(),
                "running": _Stat(),
                "kv": _Stat(),
                "prompt": 0.0,
                "gen": 0.0,
                "ttft": [],
                "e2e": [],
            },
        )
        b["n"] += 1
        b["instances"].add(instance_id)
        b["waiting"].add(waiting)
        b["running"].add(running)
        b["kv"].add(kv)
        if previous is not None:
            dt = (at - previous[1]).total_seconds()
            b["prompt"] += (prompt_rate or 0.0) * dt
            b["gen"] += (gen_rate or 0.0) * dt
        b["ttft"].append(ttft)
        b["e2e"].append(e2e)
    minutes = []
    for (pool_id, bucket), b in buckets.items():
        ttft, e2e = histograms_merge(b["ttft"]), histograms_merge(b["e2e"])
        minutes.append(
            _pool_row(
                PoolMinute,
                pool_id=pool_id,
                bucket=bucket,
                samples=b["n"],
                instances=len(b["instances"]),
                requests_waiting_mean=b["waiting"].mean,
                requests_waiting_max=b["waiting"].top,
                requests_running_mean=b["running"].mean,
                requests_running_max=b["running"].top,
                kv_cache_usage_mean=b["kv"].mean,
                requests=e2e["count"] if e2e else 0.0,
                prompt_tokens=b["prompt"],
                generation_tokens=b["gen"],
                ttft_histogram=ttft,
                e2e_histogram=e2e,
            )
        )
    return minutes


def _pool_row(model: type[PoolRollup], **values: Any) -> Any:
    """A pool rollup row with its percentiles read from its merged histograms."""
    for name in ("ttft", "e2e"):
        for q, value in histogram_percentiles(values[f"{name}_histogram"]).items():
            values[f"{name}_{q}_s"] = value
    return model(**values)


# ---- hour rollups from minute rollups ----------------------------------------------------


def _weighted(rows: Sequence[Any], field: str) -> float | None:
    pairs = [(getattr(r, field), r.samples) for r in rows if getattr(r, field) is not None]
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


def _top(rows: Sequence[Any], field: str) -> Any:
    values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
    return max(values) if values else None


def _total(rows: Sequence[Any], field: str) -> float | None:
    values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
    return sum(values) if values else None


def gpu_hours_compute(*, start: datetime, end: datetime) -> list[GpuHour]:
    """Per-GPU hour rollups of the minute rollups in [start, end), not yet saved."""
    groups: dict[tuple[int, datetime], list[GpuMinute]] = defaultdict(list)
    for minute in GpuMinute.objects.filter(bucket__gte=start, bucket__lt=end).order_by("gpu_id", "bucket"):
        groups[(minute.gpu_id, floor_hour(minute.bucket))].append(minute)
    return [
        GpuHour(
            gpu_id=gpu_id,
            bucket=bucket,
            samples=sum(m.samples for m in rows),
            utilization_mean=_weighted(rows, "utilization_mean"),
            utilization_max=_top(rows, "utilization_max"),
            sm_activity_mean=_weighted(rows, "sm_activity_mean"),
            sm_activity_max=_top(rows, "sm_activity_max"),
            memory_used_mean=_weighted(rows, "memory_used_mean"),
            memory_used_max=_top(rows, "memory_used_max"),
            memory_total=_top(rows, "memory_total"),
            power_mean=_weighted(rows, "power_mean"),
            power_max=_top(rows, "power_max"),
            temperature_max=_top(rows, "temperature_max"),
            energy_joules=_total(rows, "energy_joules"),
        )
        for (gpu_id, bucket), rows in groups.items()
    ]


def pool_hours_compute(*, start: datetime, end: datetime) -> list[PoolHour]:
    """Per-pool hour rollups of the minute rollups in [start, end), not yet saved.

    ``instances`` of an hour is the most instances seen in any of its minutes.
    """
    groups: dict[tuple[int, datetime], list[PoolMinute]] = defaultdict(list)
    for minute in PoolMinute.objects.filter(bucket__gte=start, bucket__lt=end).order_by("pool_id", "bucket"):
        groups[(minute.pool_id, floor_hour(minute.bucket))].append(minute)
    return [
        _pool_row(
            PoolHour,
            pool_id=pool_id,
            bucket=bucket,
            samples=sum(m.samples for m in rows),
            instances=max(m.instances for m in rows),
            requests_waiting_mean=_weighted(rows, "requests_waiting_mean"),
            requests_waiting_max=_top(rows, "requests_waiting_max"),
            requests_running_mean=_weighted(rows, "requests_running_mean"),
            requests_running_max=_top(rows, "requests_running_max"),
            kv_cache_usage_mean=_weighted(rows, "kv_cache_usage_mean"),
            requests=sum(m.requests for m in rows),
            prompt_tokens=sum(m.prompt_tokens for m in rows),
            generation_tokens=sum(m.generation_tokens for m in rows),
            ttft_histogram=histograms_merge(m.ttft_histogram for m in rows),
            e2e_histogram=histograms_merge(m.e2e_histogram for m in rows),
        )
        for (pool_id, bucket), rows in groups.items()
    ]


def gpu_period_sums(
    model: type[GpuHour] | type[GpuMinute], *, start: datetime, end: datetime, period: Any = None
) -> Any:
    """Per GPU and period (a ``Trunc`` of the bucket, or each bucket when None), summed in the
    database over the buckets in [start, end) in which the GPU reported: (gpu, period, first
    bucket, buckets, mean of their duty cycles, raw samples). Day rollups store these sums
    over hours; spend reads them for the parts of a range no day rollup covers.
    """
    rows = model.objects.filter(bucket__gte=start, bucket__lt=end, samples__gt=0)
    return (
        rows.annotate(period=period or F("bucket"))
        .values("gpu_id", "period")
        .annotate(first=Min("bucket"), n=Count("id"), mean=Avg("utilization_mean"), weight=Sum("samples"))
        .values_list("gpu_id", "period", "first", "n", "mean", "weight")
    )


def gpu_days_compute(*, start: datetime, end: datetime) -> list[GpuDay]:
    """Per-GPU day rollups of the hour rollups in [start, end) (whole UTC days), not yet saved."""
    return [
        GpuDay(gpu_id=gpu_id, bucket=day, first_hour=first, hours=n, samples=weight, utilization_mean=mean)
        for gpu_id, day, first, n, mean, weight in gpu_period_sums(
            GpuHour, start=start, end=end, period=TruncDay("bucket", tzinfo=UTC)
        )
    ]


def days_rollup(*, start: datetime, end: datetime) -> int:
    """Recompute every day rollup in [start, end) from hour rollups; returns the rows written."""
    with transaction.atomic():
        rows = gpu_days_compute(start=start, end=end)
        _replace(GpuDay, rows, start, end)
    return len(rows)


# ---- windows, watermarks, tasks ------------------------------------------------------------


# The rollup tables by their concrete classes: the abstract GpuRollup and PoolRollup have no
# manager of their own, so a function that reaches `objects` names the tables themselves.
RollupTable = type[GpuMinute] | type[GpuHour] | type[PoolMinute] | type[PoolHour] | type[GpuDay]
TelemetryTable = RollupTable | type[GpuSample] | type[InstanceSample]


def _replace(model: RollupTable, rows: list[Any], start: datetime, end: datetime) -> None:
    model.objects.filter(bucket__gte=start, bucket__lt=end).delete()
    model.objects.bulk_create(rows, batch_size=2000)


def minutes_rollup(*, start: datetime, end: datetime) -> int:
    """Recompute every minute rollup in [start, end); returns the rows written."""
    with transaction.atomic():
        gpu_rows = gpu_minutes_compute(start=start, end=end)
        pool_rows = pool_minutes_compute(start=start, end=end)
        _replace(GpuMinute, gpu_rows, start, end)
        _replace(PoolMinute, pool_rows, start, end)
    return len(gpu_rows) + len(pool_rows)


def hours_rollup(*, start: datetime, end: datetime) -> int:
    """Recompute every hour rollup in [start, end) from minute rollups; returns the rows written."""
    with transaction.atomic():
        gpu_rows = gpu_hours_compute(start=start, end=end)
        pool_rows = pool_hours_compute(start=start, end=end)
        _replace(GpuHour, gpu_rows, start, end)
        _replace(PoolHour, pool_rows, start, end)
    return len(gpu_rows) + len(pool_rows)


def _watermark(name: str, default: Callable[[], datetime]) -> RollupWatermark:
    """The watermark row, locked until the caller's transaction ends: one roller at a time.

    ``default`` gives the first run's start; it is called only while there is no row yet, as
    finding the start may read the oldest row of a large table.
    """
    mark = RollupWatermark.objects.select_for_update().filter(name=name).first()
    if mark is None:
        RollupWatermark.objects.get_or_create(name=name, defaults={"done_until": default()})
        mark = RollupWatermark.objects.select_for_update().get(name=name)
    return mark


def _first_sample_minute(now: datetime) -> datetime:
    oldest = GpuSample.objects.order_by("at").values_list("at", flat=True).first()
    floor = floor_minute(now - timedelta(hours=settings.TELEMETRY_RAW_RETENTION_HOURS))
    return max(floor_minute(oldest), floor) if oldest else floor_minute(now)


def rollup_minutes_run(*, now: datetime | None = None) -> dict[str, Any]:
    """Roll up every finished minute since the watermark, in chunks, within a time budget.

    A minute is finished ``ROLLUP_LAG`` after it ends, leaving reports time to arrive; later
    ones pull the watermark back (``rollup_reopen``). The hour watermark is pulled back to
    the first hour touched, so ``rollup_hours_run`` recomputes it.
    """
    now = now or timezone.now()
    target = floor_minute(now - ROLLUP_LAG)
    started, rows, minutes = time.monotonic(), 0, 0
    while time.monotonic() - started < RUN_BUDGET_S:
        with transaction.atomic():
            mark = _watermark("minute", lambda: _first_sample_minute(now))
            if mark.done_until >= target:
                break
            end = min(target, mark.done_until + CHUNK_MINUTES * MINUTE)
            rows += minutes_rollup(start=mark.done_until, end=end)
            minutes += int((end - mark.done_until) / MINUTE)
            RollupWatermark.objects.get_or_create(name="hour", defaults={"done_until": floor_hour(mark.done_until)})
            RollupWatermark.objects.filter(name="hour", done_until__gt=floor_hour(mark.done_until)).update(
                done_until=floor_hour(mark.done_until)
            )
            mark.done_until = end
            mark.save(update_fields=["done_until"])
    return {"minutes": minutes, "rows": rows}


def rollup_hours_run(*, now: datetime | None = None) -> dict[str, Any]:
    """Recompute hours from the hour watermark up to the hour the minutes are complete to.

    The current, unfinished hour is computed too (so charts show it) but the watermark
    stays at its start, so it is recomputed on every run until it is over. The request
    log's usage hours are rolled up first, whether or not any GPU reports.
    """
    now = now or timezone.now()
    usage = usage_rollup_run(now=now)
    with transaction.atomic():
        minute_mark = RollupWatermark.objects.filter(name="minute").values_list("done_until", flat=True).first()
        if minute_mark is None:
            return {"hours": 0, "rows": 0, **usage}
        mark = _watermark("hour", lambda: floor_hour(minute_mark))
        end = floor_hour(minute_mark) + HOUR
        recomputed_from = mark.done_until
        rows = hours_rollup(start=recomputed_from, end=end)
        hours = int((end - recomputed_from) / HOUR)
        mark.done_until = floor_hour(minute_mark)
        mark.save(update_fields=["done_until"])
        # Days whose every hour is done, again from the first day an hour was recomputed in.
        day_mark = _watermark("day", lambda: floor_day(recomputed_from))
        day_from, day_to = min(day_mark.done_until, floor_day(recomputed_from)), floor_day(mark.done_until)
        days = days_rollup(start=day_from, end=day_to) if day_from < day_to else 0
        day_mark.done_until = max(day_from, day_to)
        day_mark.save(update_fields=["done_until"])
    return {"hours": hours, "rows": rows, "day_rows": days, **usage}


# ---- gateway usage hours --------------------------------------------------------------------


def usage_hours_compute(*, start: datetime, end: datetime) -> list[UsageHour]:
    """Usage hours of [start, end) from the request log, in one grouped query.

    The sums are ``fleet.costs.teams``' own expressions, so an hour's row is exactly what the
    raw read of that hour gives; SQLite sums floats, and those are kept to the microsecond,
    as the raw read keeps them.
    """
    rows = (
        RequestLog.objects.filter(at__gte=start, at__lt=end, pool__isnull=False)
        .annotate(bucket=TruncHour("at", tzinfo=UTC))
        .values("bucket", "pool_id", "team_id", "api_key_id")
        .annotate(gpu_ms=request_gpu_ms(), tokens=request_tokens(), requests=Count("id"))
        .order_by()
    )
    return [
        UsageHour(
            hour=row["bucket"],
            pool_id=row["pool_id"],
            team_id=row["team_id"],
            api_key_id=row["api_key_id"],
            gpu_ms=exact_ms(row["gpu_ms"]),
            tokens=row["tokens"] or 0,
            requests=row["requests"],
        )
        for row in rows
    ]


def _first_usage_hour(target: datetime) -> datetime:
    """The first run's start: the hour of the oldest logged request, or ``target`` if none is older."""
    oldest = RequestLog.objects.order_by("at").values_list("at", flat=True).first()
    return min(utc_hour(oldest), target) if oldest else target


def usage_rollup_run(*, now: datetime | None = None) -> dict[str, int]:
    """Roll the request log up into usage hours, from the ``usage`` watermark to the last complete hour.

    The hours from the watermark on are recomputed whole (delete, insert, one transaction), so
    a run is idempotent and a late request the gateway reopened an hour for is counted once.
    The first run starts at the oldest logged request.
    """
    now = now or timezone.now()
    target = utc_hour(now - ROLLUP_LAG)
    with transaction.atomic():
        mark = _watermark("usage", lambda: _first_usage_hour(target))
        if mark.done_until >= target:
            return {"usage_hours": 0, "usage_rows": 0}
        rows = usage_hours_compute(start=mark.done_until, end=target)
        UsageHour.objects.filter(hour__gte=mark.done_until, hour__lt=target).delete()
        UsageHour.objects.bulk_create(rows, batch_size=2000)
        hours = int((target - mark.done_until) / HOUR)
        mark.done_until = target
        mark.save(update_fields=["done_until"])
    return {"usage_hours": hours, "usage_rows": len(rows)}


def usage_reopen(*, since: datetime) -> None:
    """Pull the usage watermark back to the hour of ``since`` when a request is logged for an hour rolled up.

    Costs a query only for requests from before the current hour (a request that ended after
    the hour it came in, a buffered batch): the run never rolls up the current hour.
    """
    hour = utc_hour(since)
    if hour >= utc_hour(timezone.now()):
        return
    # Locks the watermark even where it is already before the hour: a run that takes it next
    # waits for the caller's transaction, so it reads the request this reopens for.
    RollupWatermark.objects.filter(name="usage").update(done_until=Least("done_until", Value(hour)))


def telemetry_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete raw samples and rollups past their retention (settings ``TELEMETRY_*``)."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(hours=settings.TELEMETRY_RAW_RETENTION_HOURS)
    cutoffs: dict[TelemetryTable, tuple[str, datetime]] = {
        GpuSample: ("at", raw_cutoff),
        InstanceSample: ("at", raw_cutoff),
        GpuMinute: ("bucket", now - timedelta(days=settings.TELEMETRY_MINUTE_RETENTION_DAYS)),
        PoolMinute: ("bucket", now - timedelta(days=settings.TELEMETRY_MINUTE_RETENTION_DAYS)),
        GpuHour: ("bucket", now - timedelta(days=settings.TELEMETRY_HOUR_RETENTION_DAYS)),
        GpuDay: ("bucket", now - timedelta(days=settings.TELEMETRY_HOUR_RETENTION_DAYS)),
        PoolHour: ("bucket", now - timedelta(days=settings.TELEMETRY_HOUR_RETENTION_DAYS)),
    }
    return {
        model.__name__: model.objects.filter(**{f"{field}__lt": cutoff}).delete()[0]
        for model, (field, cutoff) in cutoffs.items()
    }
