"""Reads of the fleet, shaped for the pages that show them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings as django_settings
from django.db.models import (
    Count,
    ExpressionWrapper,
    F,
    FloatField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import TruncHour
from django.utils import timezone

from agents.histograms import attainment, histograms_merge, pool_latency
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
from fleet.policies.autoscale import SCALE_MOVES_HORIZON_S, SCALE_MOVES_KEPT, over_bound_share_allowed
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

# How old a report may be and still count as the reporter's present: the policies' cut, as a timedelta.
SAMPLE_FRESH_FOR = timedelta(seconds=SAMPLE_FRESH_S)


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


# ---- a pool's SLA over a span: one reading for the overview, the recommendations and SLA alerts ----


@dataclass(frozen=True)
class SlaTerm:
    """One bound of a pool's SLA over a span: how many requests were judged against it (``requests``;
    a float where read from histograms), the share of them within it (``within``; None with none judged),
    the share it needs (``needed``) and the bound in words (``bound``)."""

    bound: str
    requests: float
    within: float | None
    needed: float

    @property
    def met(self) -> bool:
        """At least the share needed within the bound; a span without a judged request meets nothing."""
        return self.within is not None and self.within >= self.needed

    @property
    def text(self) -> str:
        """What the term relied on: "99.95% of requests within 500 ms to the first token (target 99.9%)"."""
        if self.within is None:
            return f"no request measured against {self.bound}"
        return f"{self.within:.2%} of requests within {self.bound} (target {percent(self.needed)})"

    @property
    def rule(self) -> str:
        """What the term asks: "at least 95% of requests within 350 ms to the first token (70% of 500 ms)"."""
        return f"at least {percent(self.needed)} of requests within {self.bound}"


@dataclass(frozen=True)
class SlaReading:
    """A pool's SLA over a span (``pool_sla``): the term of its SLA metric first, then its end-to-end
    bound's where it has one. The pool met its SLA over the span iff every term is met."""

    terms: tuple[SlaTerm, ...]

    @property
    def met(self) -> bool:
        return all(term.met for term in self.terms)

    @property
    def requests(self) -> float:
        """Requests judged against the SLA metric's bound."""
        return self.terms[0].requests

    @property
    def attainment(self) -> float | None:
        """The share of requests within the SLA metric's bound (the overview's bar)."""
        return self.terms[0].within

    @property
    def text(self) -> str:
        return "; ".join(term.text for term in self.terms)

    @property
    def rule(self) -> str:
        return " and ".join(term.rule for term in self.terms)


def percent(share: float) -> str:
    """A share as a percentage to at most two places, without trailing zeros: 0.95 -> "95%", 0.999 -> "99.9%"."""
    return f"{share * 100:.2f}".rstrip("0").rstrip(".") + "%"


def ttft_bound_sql() -> ExpressionWrapper:
    """Each logged request's own time-to-first-token bound (``agents.histograms.ttft_bound_ms``) in SQL, from
    its pool's settings: the same double-precision operations in the same order (flat + per_1k x tokens /
    1000), so the database counts a request at exactly its bound within, as ``requests_attainment`` does.
    Counted in the database, so a week of requests is one grouped row per pool (or hour), never fetched."""
    per_token = F("pool__sla_ms_per_1k_prompt_tokens") * F("prompt_tokens") / Value(1000.0)
    return ExpressionWrapper(F("pool__sla_latency_ms") + per_token, output_field=FloatField())


def _request_log_counts(
    pools: Iterable[Pool], start: datetime, end: datetime, *, hourly: bool
) -> dict[tuple[int, datetime | None], tuple[int, int]]:
    """Per pool whose TTFT bound grows with the prompt (and per UTC hour of receipt where ``hourly``): the
    requests received from ``start`` to before ``end`` with a first token and a prompt count (the judged),
    and how many of them came within their own bound (``ttft_bound_sql``). One query, none without such pools."""
    growing = [pool.pk for pool in pools if pool.ttft_bound_grows]
    if not growing:
        return {}
    rows = RequestLog.objects.filter(
        pool_id__in=growing, at__gte=start, at__lt=end, ttft_ms__isnull=False, prompt_tokens__isnull=False
    )
    keys = ["pool_id", "hour"] if hourly else ["pool_id"]
    if hourly:
        rows = rows.annotate(hour=TruncHour("at", tzinfo=UTC))
    counted = (
        rows.values(*keys)
        .annotate(judged=Count("id"), within=Count("id", filter=Q(ttft_ms__lte=ttft_bound_sql())))
        .order_by()
    )
    return {(row["pool_id"], row.get("hour")): (row["judged"], row["within"]) for row in counted}


def request_log_attainment(
    pools: Iterable[Pool], start: datetime, end: datetime
) -> dict[int, tuple[int, float | None]]:
    """Per pool whose TTFT bound grows with the prompt: how many of its requests received from ``start`` to
    before ``end`` were judged (a first token and a prompt count logged) and the share within their own
    bound (None with none judged): ``pool_sla``'s term for such a pool, for SLA alerts, which read other
    pools from raw samples."""
    pools = list(pools)
    counts = _request_log_counts(pools, start, end, hourly=False)
    return {
        pool.pk: (judged, within / judged if judged else None)
        for pool in pools
        if pool.ttft_bound_grows
        for judged, within in [counts.get((pool.pk, None), (0, 0))]
    }


def _sla_reading(
    pool: Pool,
    *,
    ratio: float,
    metric: list[Any],
    e2e: list[Any],
    logged: tuple[int, int] | None,
) -> SlaReading:
    """A pool's SLA over a span from its rollups' histograms (``metric``: of its SLA metric; ``e2e``) and,
    where its TTFT bound grows, its logged requests (``logged``: judged, within their own bound).

    At ``ratio`` 1 each term needs the SLA's share (0.95 for P95) within the SLA's bound: the SLA met. Below 1
    it reads the margin autoscale asks before a scale-in (``scale_in_latency_ratio``), as autoscale reads it:
    a flat bound then needs the SLA's share within ``ratio`` x the bound (the histograms' percentile at most
    ``ratio`` x the bound: ``histogram_share_within`` is ``histogram_quantile``'s inverse); a bound that grows
    with the prompt needs at most ``ratio`` x the share the SLA lets exceed their own bound (0.8 x 5 % = 4 %
    for a P95 SLA at 0.8), since each request has its own bound and autoscale judges that share. Scaling
    every request's bound by ``ratio`` instead would ask a margin autoscale does not ask."""
    target = pool.sla_percentile / 100
    terms = []
    if pool.ttft_bound_grows:
        judged, within = logged or (0, 0)
        terms.append(
            SlaTerm(
                bound=f"their bound to the first token ({pool.sla_latency_ms} ms + "
                f"{pool.sla_ms_per_1k_prompt_tokens:g} ms per 1k prompt tokens)",
                requests=judged,
                within=within / judged if judged else None,
                needed=1 - ratio * over_bound_share_allowed(pool.sla_percentile),
            )
        )
    else:
        terms.append(
            _histogram_term(
                metric,
                pool.sla_latency_ms,
                ratio,
                target,
                "to the first token" if pool.sla_metric == Pool.SlaMetric.TTFT else "end to end",
            )
        )
    if pool.sla_e2e_latency_ms is not None:
        terms.append(_histogram_term(e2e, pool.sla_e2e_latency_ms, ratio, target, "end to end"))
    return SlaReading(terms=tuple(terms))


def _histogram_term(histograms: list[Any], bound_ms: float, ratio: float, target: float, what: str) -> SlaTerm:
    merged = histograms_merge(histograms)
    limit_ms = ratio * bound_ms
    bound = f"{limit_ms:g} ms {what}" + ("" if ratio == 1 else f" ({ratio:.0%} of {bound_ms:g} ms)")
    return SlaTerm(
        bound=bound,
        requests=merged["count"] if merged else 0,
        within=attainment([merged], limit_ms / 1000),
        needed=target,
    )


def _sla_readings(
    pools: Iterable[Pool],
    start: datetime,
    end: datetime,
    *,
    ratio: float,
    rollup: type[PoolHour | PoolMinute],
    hourly: bool,
) -> dict[tuple[int, datetime | None], SlaReading]:
    if not 0 < ratio <= 1:
        raise ValueError(f"the latency ratio must be within (0, 1], got {ratio:g}")
    by_id = {pool.pk: pool for pool in pools}
    logged = _request_log_counts(by_id.values(), start, end, hourly=hourly)
    metric: dict[tuple[int, datetime | None], list[Any]] = defaultdict(list)
    e2e: dict[tuple[int, datetime | None], list[Any]] = defaultdict(list)
    rows = rollup.objects.filter(pool_id__in=list(by_id), bucket__gte=start, bucket__lt=end)
    for pool_id, bucket, ttft_histogram, e2e_histogram in rows.values_list(
        "pool_id", "bucket", "ttft_histogram", "e2e_histogram"
    ):
        key = (pool_id, bucket if hourly else None)
        metric[key].append(ttft_histogram if by_id[pool_id].sla_metric == Pool.SlaMetric.TTFT else e2e_histogram)
        e2e[key].append(e2e_histogram)
    keys = (set(metric) | set(logged)) if hourly else {(pool_id, None) for pool_id in by_id}
    return {
        key: _sla_reading(by_id[key[0]], ratio=ratio, metric=metric[key], e2e=e2e[key], logged=logged.get(key))
        for key in keys
    }


def pool_sla(
    pools: Iterable[Pool],
    start: datetime,
    end: datetime,
    *,
    ratio: float = 1.0,
    rollup: type[PoolHour | PoolMinute] = PoolHour,
) -> dict[int, SlaReading]:
    """Each pool's SLA from ``start`` to before ``end`` (``SlaReading``; ``.met`` the verdict): the one reading
    of "SLA met" the overview's attainment, the pool-minimum recommendation and the band recommendation share.

    A term is the share of the span's requests within their bound, against the share the SLA's percentile
    asks ("P95 TTFT <= 500 ms" is met when at least 95 % of requests got their first token within 500 ms).
    A flat bound is read from ``rollup``'s histograms merged over the span (``attainment``), so a bucket
    whose own P95 missed does not make all its requests late; a TTFT bound that grows with the prompt, from
    the gateway's request log, each request against its own bound (``ttft_bound_ms``), since histograms hold
    no prompt lengths. ``ratio`` below 1 reads autoscale's scale-in margin instead (``_sla_reading``)."""
    return {
        pool_id: reading
        for (pool_id, _), reading in _sla_readings(pools, start, end, ratio=ratio, rollup=rollup, hourly=False).items()
    }


def pool_sla_hours(
    pools: Iterable[Pool], start: datetime, end: datetime, *, ratio: float = 1.0
) -> dict[int, dict[datetime, SlaReading]]:
    """``pool_sla`` of each hour rollup (``PoolHour``) from ``start`` to before ``end``, by its bucket; the
    requests of a growing bound placed by the UTC hour they were received in. An hour with neither a rollup
    nor a judged request is absent."""
    hours: dict[int, dict[datetime, SlaReading]] = defaultdict(dict)
    for (pool_id, bucket), reading in _sla_readings(
        pools, start, end, ratio=ratio, rollup=PoolHour, hourly=True
    ).items():
        if bucket is not None:
            hours[pool_id][bucket] = reading
    return hours


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


def instance_samples_newest(
    *, now: datetime, fresh_for: timedelta = SAMPLE_FRESH_FOR, instances: QuerySet[Instance] | None = None
) -> QuerySet[InstanceSample]:
    """Each instance's newest fresh report, in one query: the one definition of an instance's present queue,
    read alike by the policies (``fleet_snapshot``), the idle clock's pages (``idle_snapshot``) and
    ``/metrics`` (``instances_latest``), so a policy, a page and a metric never disagree on it.

    Fresh: taken from ``now - fresh_for`` to ``now``, both ends included. A report after ``now`` (an agent's
    clock ahead, or a snapshot of the past) is not read yet; an instance with no report in the window has
    none. Of two reports of the same moment the one stored first counts: the order the ``(instance, at DESC)``
    index keeps them in, which is what each reader got before, stated here rather than left to the query
    plan. ``instances`` (None: every one) limits whose reports.

    One probe of that index an instance, bounded by the window: not every report of the last minutes, which
    for a fleet reporting every few seconds is most of the read.
    """
    newest = (
        InstanceSample.objects.filter(instance_id=OuterRef("pk"), at__gte=now - fresh_for, at__lte=now)
        .order_by("-at", "pk")
        .values("pk")[:1]
    )
    owners = Instance.objects.all() if instances is None else instances
    # An instance with none gives a NULL, which IN never matches: no second probe to filter it out.
    ids = owners.order_by().annotate(sample_id=Subquery(newest)).values("sample_id")
    return InstanceSample.objects.filter(pk__in=ids)


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
    owners = Instance.objects.filter(pool_id__in=pool_ids)
    instances = list(owners.order_by("id"))
    gpus = list(Gpu.objects.filter(decommissioned_at__isnull=True).select_related("node").order_by("id"))
    jobs = list(BatchJob.objects.exclude(state__in=states.JOB_ENDED))
    gpu_rows = list(GpuSample.objects.filter(at__gte=min(fresh, history), at__lte=now).order_by("gpu_id", "-at"))
    instance_rows = list(
        InstanceSample.objects.filter(
            instance_id__in=[i.pk for i in instances], at__gte=min(fresh, history), at__lte=now
        ).order_by("instance_id", "-at")
    )
    latest_gpu = _latest((s for s in gpu_rows if s.at >= fresh), "gpu_id")
    latest_instance = {sample.instance_id: sample for sample in instance_samples_newest(now=now, instances=owners)}
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
    moves = _scale_moves(pool_ids, now)
    pool_views = []
    for pool in pools:
        profile = pool.model_profile
        serving = [i for i in instances if i.pool_id == pool.pk and i.desired_state == Instance.Desired.RUNNING]
        pool_views.append(
            pool_view(
                pool,
                estimate=vram_estimate_for(profile),
                cold_start_s=cold.get(pool.pk),
                last_scale_out_at=scaled.get((pool.pk, "scale_out")),
                last_scale_in_at=scaled.get((pool.pk, "scale_in")),
                scale_moves=moves.get(pool.pk, ()),
                windows=_pool_windows(pool, serving, gpu_rows, instance_rows, now, judged.get(pool.pk)),
            )
        )
    pool_views = static_guard_fill(pool_views, pools, now)
    instance_views = tuple(_instance_view(i, latest_instance.get(i.pk)) for i in instances)
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


def idle_snapshot(*, now: datetime | None = None) -> FleetSnapshot:
    """The enabled pools and their instances as idle reclaim's clock reads them (``idle.idle_clock``), built as
    ``fleet_snapshot`` builds them: each pool's own settings and each instance's states, moments and newest
    fresh queue. Nothing more: no GPUs, jobs or orphans, and the pools' windows, cold starts, last scalings,
    memory estimate and static-guard figures left at their defaults. For pages that show the clock; a policy
    evaluates on ``fleet_snapshot``.
    """
    now = now or timezone.now()
    pools = list(Pool.objects.filter(enabled=True).select_related("model_profile"))
    owners = Instance.objects.filter(pool_id__in=[pool.pk for pool in pools])
    instances = list(owners.order_by("id"))
    samples = instance_samples_newest(now=now, instances=owners).only(
        "instance_id", "requests_running", "requests_waiting"
    )
    latest = {sample.instance_id: sample for sample in samples}
    return FleetSnapshot(
        at=now,
        pools=tuple(pool_view(pool) for pool in pools),
        instances=tuple(_instance_view(i, latest.get(i.pk)) for i in instances),
    )


def _scale_moves(pool_ids: list[int], now: datetime) -> dict[int, tuple[tuple[datetime, str], ...]]:
    """Each pool's newest scale-outs and scale-ins (autoscale's and the gateway's), oldest first, at most
    ``SCALE_MOVES_KEPT`` of the last ``SCALE_MOVES_HORIZON_S``: what autoscale's scale-in back-off reads."""
    rows = (
        Decision.objects.filter(
            pool_id__in=pool_ids,
            policy_kind__in=["autoscale", "gateway"],
            action__in=["scale_out", "scale_in"],
            created_at__gte=now - timedelta(seconds=SCALE_MOVES_HORIZON_S),
            created_at__lte=now,
        )
        .order_by("created_at", "id")
        .values_list("pool_id", "created_at", "action")
    )
    moves: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for pool_id, created_at, action in rows:
        moves[pool_id].append((created_at, action))
    return {pool_id: tuple(found[-SCALE_MOVES_KEPT:]) for pool_id, found in moves.items()}


def pool_view(pool: Pool, **figures: Any) -> PoolView:
    """The pool's view: its own settings and its profile's, with ``figures`` (its windows, cold start,
    last scalings, memory estimate) where the caller computed them."""
    profile = pool.model_profile
    return PoolView(
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
        **figures,
    )


def _instance_view(instance: Instance, sample: InstanceSample | None) -> InstanceView:
    """The instance's view, with the queue of ``sample``, its newest fresh report (None: no queue known)."""
    return InstanceView(
        id=instance.pk,
        pool_id=instance.pool_id,
        desired_state=instance.desired_state,
        actual_state=instance.actual_state,
        generation=instance.generation,
        created_at=instance.created_at,
        gpu_id=instance.gpu_id,
        mig_device_id=instance.mig_device_id,
        ready_at=instance.ready_at,
        last_request_at=instance.last_request_at,
        expires_at=instance.expires_at,
        desired_changed_at=instance.desired_changed_at,
        requests_running=getattr(sample, "requests_running", None),
        requests_waiting=getattr(sample, "requests_waiting", None),
    )


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
    used = sample.memory_used_bytes if sample else None
    foreign = _memory_foreign(
        gpu,
        used_bytes=used,
        instances=instances,
        fraction=lambda i: snapshot.pool(i.pool_id).gpu_memory_utilization if i.pool_id in pools else None,
        jobs=jobs,
    )
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
        foreign_memory_bytes=foreign,
        foreign_containers=foreign_containers,
    )


def _memory_foreign(
    gpu: Gpu,
    *,
    used_bytes: int | None,
    instances: Iterable[Any],
    fraction: Callable[[Any], float | None],
    jobs: Iterable[Any],
) -> int:
    """What NVML counts used on ``gpu`` beyond what is ours; 0 without a reading. Ours: the budgets of
    the instances holding memory on the whole card (``states.gpu_holding_states``, as placement counts
    them; ``fraction``: their pool's share of the card, None for a pool the fleet does not run, whose
    memory is foreign) and the memory of the batch jobs running there. ``instances`` and ``jobs`` may
    be more than the card's: only its own count."""
    if used_bytes is None:
        return 0
    holding = states.gpu_holding_states(sleeping_holds_gpu=False)
    budgets = sum(
        int(gpu.memory_total_bytes * share)
        for i in instances
        if i.gpu_id == gpu.pk
        and i.mig_device_id is None
        and i.actual_state in holding
        and (share := fraction(i)) is not None
    )
    borrowed = sum(j.memory_bytes for j in jobs if j.gpu_id == gpu.pk and j.state == states.JOB_RUNNING)
    return max(0, used_bytes - budgets - borrowed)


def gpu_foreign_bytes(
    gpu: Gpu, *, instances: Iterable[Instance], jobs: Iterable[BatchJob], now: datetime | None = None
) -> int:
    """A card's foreign memory as the fleet snapshot counts it (``GpuView.foreign_memory_bytes``), for a
    change made under the card's lock (``services.batch_jobs_vacate``): its latest fresh sample, beyond
    the card's ``instances`` and ``jobs`` the caller read (every one that may hold memory there)."""
    now = now or timezone.now()
    sample = (
        GpuSample.objects.filter(gpu=gpu, at__gte=now - timedelta(seconds=SAMPLE_FRESH_S), at__lte=now)
        .order_by("-at")
        .first()
    )
    return _memory_foreign(
        gpu,
        used_bytes=sample.memory_used_bytes if sample else None,
        instances=instances,
        fraction=lambda i: i.pool.model_profile.gpu_memory_utilization if i.pool.enabled else None,
        jobs=jobs,
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
    A reading dated after now (a host's clock ahead, within what ingest allows) is not read yet,
    as ``instance_samples_newest`` has it: it would hide the card's fresh readings until then.
    Rows are read-only mappings (not a TypedDict): the metrics exporter reads their fields by name in a loop.
    """
    now = timezone.now()
    readings = GpuSample.objects.filter(gpu_id=OuterRef("pk"), at__lte=now)
    if fresh_for is not None:
        readings = readings.filter(at__gte=now - fresh_for)
    newest = readings.order_by("-at", "pk").values("pk")[:1]
    live = Gpu.objects.filter(decommissioned_at__isnull=True)
    ids = live.annotate(sample_id=Subquery(newest)).values("sample_id")  # none: NULL, which IN never matches
    samples = GpuSample.objects.filter(pk__in=ids)
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
    """Every instance's newest fresh sample (queue, latency) with its pool (``instance_samples_newest``).

    Rows are read-only mappings (not a TypedDict): the metrics exporter reads their fields by name in a loop.
    """
    return list(
        instance_samples_newest(now=timezone.now(), fresh_for=fresh_for).values(
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
