"""Reads of the fleet, shaped for the pages that show them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings as django_settings
from django.db.models import Count, F, Max, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from agents.histograms import pool_latency, requests_attainment
from fleet import states
from fleet.costs.allocation import Hold, StateEvent, holds_from_events
from fleet.models import (
    ApiKey,
    BatchJob,
    Decision,
    Gpu,
    GpuHour,
    GpuMinute,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    JoinToken,
    MigDevice,
    Node,
    OrphanContainer,
    Policy,
    Pool,
    PoolHour,
    PoolMinute,
    RequestLog,
)
from fleet.policies import static_hold
from fleet.policies.settings import DAY, SCHEMAS, policy_defaults, policy_settings_stored
from fleet.policies.snapshot import (
    BatchJobView,
    FleetSnapshot,
    GpuView,
    InstanceView,
    MigView,
    OrphanView,
    PolicyConfig,
    PoolView,
    PoolWindow,
)
from fleet.policies.vram import vram_estimate_for
from fleet.policies.windows import (
    REPORT_INTERVAL_S,
    SAMPLE_FRESH_S,
    WINDOW_S,
    WINDOWS,
    cold_start_median,
    over_bound_share,
    pool_windows,
)

# A judged request: when its first token came, its time to first token (ms) and its prompt tokens.
JudgedRequest = tuple[datetime, float, int]


def nodes_overview() -> QuerySet[Node]:
    """Nodes with their GPU count and total GPU memory, in one query; live ones first, by name.

    Decommissioned hosts follow, newest first, with the cards they had when they left
    (their history still counts); a card swapped out of a live host is not counted.
    """
    cards = Q(gpus__decommissioned_at__isnull=True) | Q(gpus__decommissioned_at=F("decommissioned_at"))
    return Node.objects.annotate(
        gpu_count=Count("gpus", filter=cards), gpu_memory_bytes=Sum("gpus__memory_total_bytes", filter=cards)
    ).order_by(F("decommissioned_at").desc(nulls_first=True), "name")


def fleet_simulated_hosts() -> int:
    """Simulated hosts in the fleet (the demo's): while there are any, every page says the fleet is simulated.

    A decommissioned one has left the fleet: its history stays, the banner goes.
    """
    return Node.objects.filter(simulated=True, decommissioned_at__isnull=True).count()


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


# -- what policies see -----------------------------------------------------------------


def request_times_from_samples(pool_ids: list[int], since: datetime, until: datetime) -> dict[int, list[datetime]]:
    """Request timestamps rebuilt from the request rate each instance reported.

    The interim source for pre-warm: each sample with a rate stands for rate x report
    interval requests at its time. The gateway's request log, which has every request's
    time, replaces it: pass a source reading that log to ``policies_evaluate``.
    """
    times: dict[int, list[datetime]] = defaultdict(list)
    rows = InstanceSample.objects.filter(
        instance__pool_id__in=pool_ids, at__gte=since, at__lt=until, request_rate__gt=0
    ).values_list("instance__pool_id", "at", "request_rate")
    for pool_id, at, rate in rows.iterator(chunk_size=5000):
        if rate is None:  # the column is nullable; request_rate__gt=0 leaves such rows out
            continue
        times[pool_id].extend([at] * max(1, round(rate * REPORT_INTERVAL_S)))
    return dict(times)


def policy_configs() -> dict[str, PolicyConfig]:
    """Each policy kind's settings, fleet-wide and per pool, defaults filled in; disabled ones None.

    A row whose stored settings no longer validate runs on its kind's defaults, logged
    (``policy_settings_stored``), as the gateway and the agents' replies read it.
    """
    fleet: dict[str, Mapping[str, Any] | None] = {}
    pools: dict[str, dict[int, Mapping[str, Any] | None]] = defaultdict(dict)
    ids: dict[str, dict[int | None, int]] = defaultdict(dict)
    for policy in Policy.objects.filter(kind__in=list(SCHEMAS)):
        values: Mapping[str, Any] | None = None
        if policy.enabled:
            values = policy_settings_stored(kind=policy.kind, settings=policy.settings, row=str(policy))
        ids[policy.kind][policy.pool_id] = policy.pk
        if policy.pool_id is None:
            fleet[policy.kind] = values
        else:
            pools[policy.kind][policy.pool_id] = values
    return {
        kind: PolicyConfig(kind=kind, fleet=fleet.get(kind), pools=pools[kind], policy_ids=ids[kind])
        for kind in SCHEMAS
    }


def _latest(rows: Iterable[Any], key: str) -> dict[int, Any]:
    latest: dict[int, Any] = {}
    for row in rows:
        latest.setdefault(getattr(row, key), row)
    return latest


def _cold_starts(pool_ids: list[int]) -> dict[int, float | None]:
    """Median starting -> ready seconds over each pool's recent starts."""
    durations: dict[int, list[float]] = defaultdict(list)
    events = (
        InstanceEvent.objects.filter(instance__pool_id__in=pool_ids)
        .order_by("instance_id", "at", "id")
        .values_list("instance_id", "instance__pool_id", "state", "at")
    )
    started: dict[int, datetime] = {}
    for instance_id, pool_id, state, at in events.iterator(chunk_size=5000):
        if state == Instance.Actual.STARTING:
            started[instance_id] = at
        elif state == Instance.Actual.READY and instance_id in started:
            durations[pool_id].append((at - started.pop(instance_id)).total_seconds())
        else:
            started.pop(instance_id, None)
    return {pool_id: cold_start_median(values) for pool_id, values in durations.items()}


def _window_latency(pool: Pool, samples: list[InstanceSample], metric: str | None = None) -> float | None:
    """The pool's SLA percentile of its SLA metric (or of ``metric``) over the window's reports, in ms
    (``pool_latency``)."""
    field = "ttft_histogram" if (metric or pool.sla_metric) == Pool.SlaMetric.TTFT else "e2e_histogram"
    seconds = pool_latency((getattr(sample, field) for sample in samples), pool.sla_percentile)
    return None if seconds is None else seconds * 1000


def judged_requests(pools: Iterable[Pool], since: datetime, until: datetime) -> dict[int, list[JudgedRequest]]:
    """The requests the gateway logged as received from ``since`` to before ``until`` that had a first token
    and a prompt count, per pool whose TTFT bound grows with the prompt (``Pool.ttft_bound_grows``): what
    such a pool's SLA is judged on, each request against its own bound. Each is placed at the moment its
    first token came (received + TTFT), where windows place it, as the simulator does."""
    growing = [pool.pk for pool in pools if pool.ttft_bound_grows]
    judged: dict[int, list[JudgedRequest]] = defaultdict(list)
    if not growing:
        return judged
    rows = RequestLog.objects.filter(
        pool_id__in=growing,
        at__gte=since,
        at__lt=until,
        ttft_ms__isnull=False,
        prompt_tokens__isnull=False,
    ).values_list("pool_id", "at", "ttft_ms", "prompt_tokens")
    for pool_id, at, ttft_ms, prompt_tokens in rows:
        if ttft_ms is not None and prompt_tokens is not None:  # as filtered: typing cannot see it
            judged[pool_id].append((at + timedelta(milliseconds=ttft_ms), ttft_ms, prompt_tokens))
    return judged


def request_log_attainment(
    pools: Iterable[Pool], start: datetime, end: datetime
) -> dict[int, tuple[int, float | None]]:
    """Per pool whose TTFT bound grows with the prompt: how many of its requests received from ``start`` to
    before ``end`` were judged (``judged_requests``) and the share within their own bound
    (``requests_attainment``; None with none judged). The SLA attainment of such pools wherever it is read
    (the dashboard, SLA alerts); other pools' comes from their histograms (``attainment``)."""
    pools = list(pools)
    judged = judged_requests(pools, start, end)
    return {
        pool.pk: (
            len(judged[pool.pk]),
            requests_attainment(
                ((ttft, tokens) for _, ttft, tokens in judged[pool.pk]),
                pool.sla_latency_ms,
                pool.sla_ms_per_1k_prompt_tokens,
            ),
        )
        for pool in pools
        if pool.ttft_bound_grows
    }


def _pool_windows(
    pool: Pool,
    serving: list[Instance],
    gpu_rows: list[GpuSample],
    instance_rows: list[InstanceSample],
    now: datetime,
    judged: list[JudgedRequest] | None = None,
) -> tuple[PoolWindow, ...]:
    """``pool_windows`` over the serving instances' reports and their GPUs' duty cycles; ``judged``, the
    pool's logged requests where its TTFT bound grows with the prompt, give each window's share over
    their own bound."""
    gpu_ids = {i.gpu_id for i in serving if i.gpu_id and not i.mig_device_id}
    ids = {i.pk for i in serving}
    return pool_windows(
        now=now,
        samples=[s for s in instance_rows if s.instance_id in ids],
        duty=[
            (s.at, s.utilization_gpu_pct / 100)
            for s in gpu_rows
            if s.gpu_id in gpu_ids and s.utilization_gpu_pct is not None
        ],
        max_num_seqs=pool.model_profile.max_num_seqs,
        latency=lambda start, end, samples: _window_latency(pool, samples),
        e2e_latency=(
            (lambda start, end, samples: _window_latency(pool, samples, Pool.SlaMetric.E2E))
            if pool.sla_e2e_latency_ms is not None
            else None
        ),
        over_bound=(
            (
                lambda start, end: over_bound_share(
                    ((ttft, tokens) for at, ttft, tokens in judged if start <= at < end),
                    pool.sla_latency_ms,
                    pool.sla_ms_per_1k_prompt_tokens,
                )
            )
            if judged is not None
            else None
        ),
    )


def fleet_snapshot(*, now: datetime | None = None) -> FleetSnapshot:
    """The fleet as policies see it: enabled pools, their instances, GPUs and recent telemetry.

    Cards that left the fleet (decommissioned hosts, swapped-out cards) are not in it: nothing
    is placed on them.
    """
    now = now or timezone.now()
    fresh = now - timedelta(seconds=SAMPLE_FRESH_S)
    history = now - timedelta(seconds=WINDOW_S * WINDOWS)
    pools = list(Pool.objects.filter(enabled=True).select_related("model_profile"))
    pool_ids = [pool.pk for pool in pools]
    instances = list(Instance.objects.filter(pool_id__in=pool_ids).order_by("id"))
    gpus = list(Gpu.objects.filter(decommissioned_at__isnull=True).select_related("node").order_by("id"))
    jobs = list(BatchJob.objects.exclude(state__in=states.JOB_ENDED))
    gpu_rows = list(GpuSample.objects.filter(at__gte=min(fresh, history), at__lte=now).order_by("gpu_id", "-at"))
    instance_rows = list(
        InstanceSample.objects.filter(
            instance_id__in=[i.pk for i in instances], at__gte=min(fresh, history), at__lte=now
        ).order_by("instance_id", "-at")
    )
    latest_gpu = _latest((s for s in gpu_rows if s.at >= fresh), "gpu_id")
    latest_instance = _latest((s for s in instance_rows if s.at >= fresh), "instance_id")
    cold = _cold_starts(pool_ids)
    # From a window before the first: a slow first token still lands in the window it came in.
    judged = judged_requests(pools, history - timedelta(seconds=WINDOW_S), now)
    scaled = {
        (row["pool_id"], row["action"]): row["last"]
        # The gateway's scale-outs under pressure (``policies.pressure``) share autoscale's cool-down.
        for row in Decision.objects.filter(
            policy_kind__in=["autoscale", "gateway"], action__in=["scale_out", "scale_in"]
        )
        .values("pool_id", "action")
        .annotate(last=Max("created_at"))
    }
    pool_views = []
    for pool in pools:
        profile = pool.model_profile
        serving = [i for i in instances if i.pool_id == pool.pk and i.desired_state == Instance.Desired.RUNNING]
        pool_views.append(
            PoolView(
                id=pool.pk,
                name=pool.name,
                isolation=pool.isolation,
                min_instances=pool.min_instances,
                max_instances=pool.max_instances,
                gpu_model=pool.gpu_model,
                mig_profile=pool.mig_profile,
                sla_metric=pool.sla_metric,
                sla_percentile=pool.sla_percentile,
                sla_latency_ms=pool.sla_latency_ms,
                sla_e2e_latency_ms=pool.sla_e2e_latency_ms,
                sla_ms_per_1k_prompt_tokens=pool.sla_ms_per_1k_prompt_tokens,
                util_band_low=pool.util_band_low,
                util_band_high=pool.util_band_high,
                idle_minimize_after_s=pool.idle_minimize_after_s,
                idle_stop_after_s=pool.idle_stop_after_s,
                prewarm_margin_s=pool.prewarm_margin_s,
                enable_sleep_mode=profile.enable_sleep_mode,
                gpu_memory_utilization=profile.gpu_memory_utilization,
                max_num_seqs=profile.max_num_seqs,
                max_model_len=profile.max_model_len,
                estimate=vram_estimate_for(profile),
                cold_start_s=cold.get(pool.pk),
                last_scale_out_at=scaled.get((pool.pk, "scale_out")),
                last_scale_in_at=scaled.get((pool.pk, "scale_in")),
                windows=_pool_windows(pool, serving, gpu_rows, instance_rows, now, judged.get(pool.pk)),
            )
        )
    pool_views = static_guard_fill(pool_views, pools, now)
    instance_views = tuple(
        InstanceView(
            id=i.pk,
            pool_id=i.pool_id,
            desired_state=i.desired_state,
            actual_state=i.actual_state,
            generation=i.generation,
            created_at=i.created_at,
            gpu_id=i.gpu_id,
            mig_device_id=i.mig_device_id,
            ready_at=i.ready_at,
            last_request_at=i.last_request_at,
            expires_at=i.expires_at,
            desired_changed_at=i.desired_changed_at,
            requests_running=getattr(latest_instance.get(i.pk), "requests_running", None),
            requests_waiting=getattr(latest_instance.get(i.pk), "requests_waiting", None),
        )
        for i in instances
    )
    skeleton = FleetSnapshot(
        at=now,
        pools=tuple(pool_views),
        instances=instance_views,
        mig_devices=tuple(
            MigView(id=d.pk, gpu_id=d.gpu_id, uuid=d.uuid, profile=d.profile, memory_total_bytes=d.memory_total_bytes)
            for d in MigDevice.objects.filter(gpu__decommissioned_at__isnull=True).order_by("id")
        ),
        batch_jobs=tuple(
            BatchJobView(
                id=j.pk,
                state=j.state,
                generation=j.generation,
                memory_bytes=j.memory_bytes,
                created_at=j.created_at,
                priority=j.priority,
                gpu_id=j.gpu_id,
            )
            for j in jobs
        ),
        orphans=tuple(
            OrphanView(
                id=o.pk,
                node_id=o.node_id,
                container_id=o.container_id,
                first_seen_at=o.first_seen_at,
                name=o.name,
                instance_id=o.instance_id,
                stop_requested_at=o.stop_requested_at,
            )
            for o in OrphanContainer.objects.order_by("id")
        ),
    )
    # Grouped once: a scan of every instance and job for every GPU grows with their product.
    instances_on: dict[int, list[InstanceView]] = defaultdict(list)
    for view in instance_views:
        if view.gpu_id is not None:
            instances_on[view.gpu_id].append(view)
    jobs_on: dict[int, list[BatchJob]] = defaultdict(list)
    for job in jobs:
        if job.gpu_id is not None:
            jobs_on[job.gpu_id].append(job)
    gpu_views = tuple(
        _gpu_view(skeleton, gpu, latest_gpu.get(gpu.pk), jobs_on.get(gpu.pk, []), instances_on.get(gpu.pk, []))
        for gpu in gpus
    )
    return replace(skeleton, gpus=gpu_views)


def _gpu_view(
    snapshot: FleetSnapshot,
    gpu: Gpu,
    sample: GpuSample | None,
    jobs: list[BatchJob],
    instances: list[InstanceView],
) -> GpuView:
    """The GPU with its latest reading; foreign memory is what NVML counts beyond what is ours.

    ``jobs`` and ``instances`` may be every one or only those placed on this GPU (the caller
    groups them once); either way only this GPU's count.

    Ours: the budgets of instances holding memory on it (``states.gpu_holding_states``, as
    placement counts them) and the memory of batch jobs running there. Pools outside the
    snapshot count as foreign.
    """
    pools = {pool.id for pool in snapshot.pools}
    holding = states.gpu_holding_states(sleeping_holds_gpu=False)
    used = sample.memory_used_bytes if sample else None
    ours = sum(
        int(gpu.memory_total_bytes * snapshot.pool(i.pool_id).gpu_memory_utilization)
        for i in instances
        if i.gpu_id == gpu.pk and i.mig_device_id is None and i.actual_state in holding and i.pool_id in pools
    ) + sum(j.memory_bytes for j in jobs if j.gpu_id == gpu.pk and j.state == states.JOB_RUNNING)
    foreign_containers = sum(
        1
        for c in gpu.node.containers
        if isinstance(c, dict) and not c.get("managed") and gpu.uuid in c.get("gpu_uuids", [])
    )
    return GpuView(
        id=gpu.pk,
        node_id=gpu.node_id,
        uuid=gpu.uuid,
        model_name=gpu.model_name,
        memory_total_bytes=gpu.memory_total_bytes,
        node_name=gpu.node.name,
        node_online=gpu.node.status == Node.Status.ONLINE,
        mig_enabled=gpu.mig_enabled,
        memory_used_bytes=used,
        utilization_pct=sample.utilization_gpu_pct if sample else None,
        sm_activity_pct=sample.sm_activity_pct if sample else None,
        foreign_memory_bytes=max(0, used - ours) if used is not None else 0,
        foreign_containers=foreign_containers,
    )


def join_tokens_recent(limit: int = 10) -> list[JoinToken]:
    """The newest join tokens with the hosts that registered with each."""
    return list(JoinToken.objects.prefetch_related("nodes").order_by("-created_at")[:limit])


# ---- telemetry: the queries charts, /metrics and the benchmarks use -------------------------
#
# Resolution follows the range so a chart never reads more than about 1,500 points per
# series: raw samples up to RAW_MAX_RANGE, minute rollups up to MINUTE_MAX_RANGE, hour
# rollups beyond. History pages never read raw samples past RAW_MAX_RANGE.

RAW_MAX_RANGE = timedelta(hours=2)
MINUTE_MAX_RANGE = timedelta(hours=25)
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
        samples = (
            GpuSample.objects.filter(gpu_id=gpu_id, at__gte=start, at__lt=end)
            .order_by("at")
            .values_list("at", "utilization_gpu_pct", "sm_activity_pct", "memory_used_bytes", "power_watts")
        )
        columns = list(zip(*samples, strict=True)) or [()] * 5
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


class PoolSeriesRow(TypedDict):
    """One bucket of ``pool_series``: a minute or an hour of one pool."""

    bucket: datetime
    instances: int
    requests: float
    prompt_tokens: float
    generation_tokens: float
    requests_waiting_mean: float | None
    requests_waiting_max: float | None
    kv_cache_usage_mean: float | None
    ttft_p95_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    e2e_p99_s: float | None


def pool_series(*, pool_id: int, start: datetime, end: datetime) -> list[PoolSeriesRow]:
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


def gpus_latest(*, fresh_for: timedelta | None = SAMPLE_FRESH_FOR) -> list[Mapping[str, Any]]:
    """Every GPU's newest sample with its node, in two index-backed queries.

    The newest sample id per GPU is one probe of the ``(gpu, at DESC)`` index each, so
    this stays fast however long the table grows. GPUs whose newest sample is older than
    ``fresh_for`` (None: any age) are left out: a host that stopped reporting must not
    show its last utilization as if it were current. So are cards that left the fleet.
    Rows are read-only mappings (not a TypedDict): the metrics exporter reads their fields by name in a loop.
    """
    newest = GpuSample.objects.filter(gpu_id=OuterRef("pk")).order_by("-at").values("pk")[:1]
    live = Gpu.objects.filter(decommissioned_at__isnull=True)
    ids = live.annotate(sample_id=Subquery(newest)).exclude(sample_id=None).values("sample_id")
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


def instances_latest(*, fresh_for: timedelta = SAMPLE_FRESH_FOR) -> list[Mapping[str, Any]]:
    """Every instance's newest sample (queue, latency) with its pool, if fresh.

    Rows are read-only mappings (not a TypedDict): the metrics exporter reads their fields by name in a loop.
    """
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


def gateway_api_keys() -> QuerySet[ApiKey, tuple[int, int, str, str, int | None, int | None]]:
    """(key id, team id, digest, allowed models, requests and tokens per minute) of every usable key.

    What the gateway authenticates against and limits by; the pools each may use are in
    ``gateway_api_key_pools``.
    """
    return ApiKey.objects.filter(revoked_at__isnull=True).values_list(
        "pk", "team_id", "key_hash", "allowed_models", "requests_per_minute", "tokens_per_minute"
    )


def gateway_api_key_pools() -> list[tuple[int, int]]:
    """(key id, pool id) for every pool a usable key is limited to."""
    through = ApiKey.allowed_pools.through
    rows = through.objects.filter(apikey__revoked_at__isnull=True).values_list("apikey_id", "pool_id")
    return list(rows)


def gateway_pools() -> QuerySet[Pool]:
    return Pool.objects.filter(enabled=True).select_related("model_profile").order_by("tier", "name")


def gateway_ready_instances() -> QuerySet[Instance, tuple[int, int, str]]:
    """(instance id, pool id, endpoint) of instances the agent reports ready, in enabled pools.

    Only those the panel still wants running: one a policy decided to stop or put to sleep
    gets no new request from the next refresh on, so it drains while the agent stops it.
    """
    return (
        Instance.objects.filter(
            actual_state=Instance.Actual.READY, desired_state=Instance.Desired.RUNNING, pool__enabled=True
        )
        .exclude(endpoint="")
        .order_by("pk")
        .values_list("pk", "pool_id", "endpoint")
    )


def gateway_pool_counts() -> dict[int, tuple[int, int, datetime | None]]:
    """Per enabled pool: instances desired running, instances not desired stopped, and its last scale-out
    (autoscale's or the gateway's), for the gateway's scale-out under pressure (``policies.pressure``)."""
    counts: dict[int, tuple[int, int, datetime | None]] = {}
    rows = (
        Instance.objects.filter(pool__enabled=True)
        .exclude(desired_state=Instance.Desired.STOPPED)
        .values("pool_id")
        .annotate(
            serving=Count("pk", filter=Q(desired_state=Instance.Desired.RUNNING)),
            active=Count("pk"),
        )
    )
    for row in rows:
        counts[row["pool_id"]] = (row["serving"], row["active"], None)
    last_out = (
        Decision.objects.filter(
            policy_kind__in=["autoscale", "gateway"],
            action="scale_out",
            # The longest scale-out cool-down a setting allows: an older scale-out holds nothing back.
            created_at__gte=timezone.now() - timedelta(seconds=DAY),
        )
        .values("pool_id")
        .annotate(last=Max("created_at"))
    )
    for scaled in last_out:
        if scaled["pool_id"] is not None:
            serving, active, _last = counts.get(scaled["pool_id"], (0, 0, None))
            counts[scaled["pool_id"]] = (serving, active, scaled["last"])
    return counts


def routing_policy_settings() -> tuple[dict[str, float | int | bool], bool]:
    """The fleet-wide routing policy's settings (defaults filled in) and whether it is enabled.

    Settings that fail validation mean what they mean everywhere (``policy_settings_stored``).
    """
    policy = Policy.objects.filter(kind=Policy.Kind.ROUTING, pool=None).first()
    if policy is None:
        return policy_defaults("routing"), True
    return policy_settings_stored(kind="routing", settings=policy.settings, row=str(policy)), policy.enabled


def static_guard_fill(views: list[PoolView], pools: list[Pool], now: datetime) -> list[PoolView]:
    """The static-spend guard's figures on the views of pools whose ``static_hold`` policy states a
    static size (``fleet.policies.static_hold``): billed instance-hours over the trailing window, from
    the instances' state events as billing counts them (``holds_from_events`` with the billing's
    holding states) summed by ``held_hours``, the definition the simulator uses; and the hold's
    state, from the guard's own decisions. Where no pool has the policy, the views are returned as
    they were (no query beyond the policies').
    """
    configs = policy_configs()[static_hold.KIND]
    wanted = {pool.pk: settings for pool in pools if (settings := configs.for_pool(pool.pk)) is not None}
    if not wanted:
        return views
    last = {
        (row["pool_id"], row["action"]): row["last"]
        for row in Decision.objects.filter(policy_kind=static_hold.KIND, pool_id__in=[pool.pk for pool in pools])
        .values("pool_id", "action")
        .annotate(last=Max("created_at"))
    }
    holding = states.gpu_holding_states(sleeping_holds_gpu=django_settings.FLEET_COST_SLEEPING_HOLDS_GPU)
    filled = []
    for view in views:
        settings = wanted.get(view.id)
        started, ended = last.get((view.id, static_hold.HOLD_START)), last.get((view.id, static_hold.HOLD_END))
        held_since = started if started is not None and (ended is None or started > ended) else None
        fields: dict[str, Any] = {
            "static_held_since": held_since,
            "static_released_at": ended,
            "static_refused_at": last.get((view.id, static_hold.REFUSE)),
        }
        if settings is not None and settings["static_replicas"]:
            start = static_hold.window_start(now=now, hours=settings["window_hours"], since=None, released_at=ended)
            fields["static_window_start"] = start
            fields["static_paid_hours"] = static_hold.held_hours(
                ((hold.start, hold.end) for hold in _pool_holds(view.id, start, now, holding)), since=start, until=now
            )
        filled.append(replace(view, **fields))
    return filled


def _pool_holds(pool_id: int, start: datetime, end: datetime, holding: frozenset[str]) -> list[Hold]:
    """The pool's instances' holds in [start, end): their events in it and each one's last before it."""
    fields = ("instance_id", "at", "state", "gpu_id", "mig_device_id")
    mine = InstanceEvent.objects.filter(instance__pool_id=pool_id)
    newest_before = (
        InstanceEvent.objects.filter(instance=OuterRef("pk"), at__lt=start).order_by("-at", "-id").values("pk")[:1]
    )
    prior = Instance.objects.filter(pool_id=pool_id).annotate(prior=Subquery(newest_before)).exclude(prior=None)
    rows = [
        *InstanceEvent.objects.filter(pk__in=prior.values("prior")).values_list(*fields),
        *mine.filter(at__gte=start, at__lt=end).order_by("at", "id").values_list(*fields),
    ]
    return holds_from_events([StateEvent(*row) for row in rows], start=start, end=end, states=holding)
