"""Reads shaped for the dashboard's pages: history from rollups, never from raw samples.

Every range a page shows (1 h, 24 h, 7 d, 30 d or custom) reads minute rollups up to a
day and hour rollups beyond, so a chart holds at most about 1,500 points per series.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.db import connection
from django.db.models import Avg, Count, F, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDay
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from fleet.costs.budgets import usage_source_configured
from fleet.costs.effects import DecisionEffect
from fleet.costs.recommendations import Recommendation, recommendations
from fleet.costs.selectors import (
    Attribution,
    BusyShare,
    Holdings,
    billing_currency,
    busy_share,
    cost_per_million_tokens,
    decision_effects_read,
    fleet_window,
    holds_window,
    month_end_forecast,
    next_hour_report,
    period_bounds,
    run_rate,
    savings_attribution,
    savings_compute,
    sleep_report,
    spend_report,
    team_spend,
    totals_by_instance,
    totals_by_pool,
)
from fleet.costs.sleep import SleepReport
from fleet.costs.spend import ALLOCATED, UNALLOCATED, SpendReport
from fleet.models import (
    Alert,
    BatchJob,
    Budget,
    Decision,
    Gpu,
    GpuHour,
    GpuMinute,
    Instance,
    InstanceEvent,
    Node,
    Policy,
    Pool,
    PoolHour,
    PoolMinute,
    RequestLog,
    Team,
)
from fleet.policies.idle import KIND as IDLE_KIND
from fleet.policies.idle import IdleClock, idle_clock
from fleet.policies.snapshot import FleetSnapshot
from fleet.selectors import idle_snapshot, policy_configs, pool_sla
from fleet.states import RUNNING, STOPPED

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
DEFAULT_RANGE = "24h"
MINUTE_ROLLUPS_UP_TO = timedelta(hours=25)
HEATMAP_MINUTES_UP_TO = timedelta(hours=2)
HEATMAP_HOURS_UP_TO = timedelta(days=8)
HEATMAP_GPU_ROWS = 100
CUSTOM_MAX = timedelta(days=400)
DECISIONS_SHOWN = 500


@dataclass(frozen=True)
class TimeRange:
    key: str
    start: datetime
    end: datetime

    @property
    def bucket(self) -> timedelta:
        return timedelta(minutes=1) if self.end - self.start <= MINUTE_ROLLUPS_UP_TO else timedelta(hours=1)

    @property
    def resolution(self) -> str:
        return "minute" if self.bucket == timedelta(minutes=1) else "hour"

    @property
    def span(self) -> tuple[datetime, datetime]:
        return self.start, self.end


def time_range_parse(*, params: Mapping[str, str], now: datetime | None = None) -> TimeRange:
    """The range a page asked for: ``range=1h|24h|7d|30d``, or ``start``/``end`` (ISO) for a custom one.

    Anything unreadable falls back to the last 24 hours rather than an error page.
    """
    now = now or timezone.now()
    key = params.get("range", DEFAULT_RANGE)
    if key == "custom":
        start, end = parse_datetime(params.get("start", "") or ""), parse_datetime(params.get("end", "") or "")
        if start and end:
            start = start if timezone.is_aware(start) else timezone.make_aware(start)
            end = end if timezone.is_aware(end) else timezone.make_aware(end)
            if start < end and end - start <= CUSTOM_MAX:
                return TimeRange(key="custom", start=start, end=end)
        key = DEFAULT_RANGE
    span = RANGES.get(key, RANGES[DEFAULT_RANGE])
    return TimeRange(key=key if key in RANGES else DEFAULT_RANGE, start=now - span, end=now)


def _gpu_rollups(time_range: TimeRange) -> QuerySet[Any]:
    model = GpuMinute if time_range.resolution == "minute" else GpuHour
    return model.objects.filter(bucket__gte=time_range.start, bucket__lt=time_range.end)


def gpu_labels(*, gpus: QuerySet[Gpu]) -> list[dict[str, Any]]:
    """``node/index`` labels of GPUs in display order, with the node's simulated flag."""
    return [
        {"gpu": pk, "label": f"{name}/{index}", "simulated": simulated}
        for pk, name, index, simulated in gpus.order_by("node__name", "index").values_list(
            "pk", "node__name", "index", "node__simulated"
        )
    ]


def gpu_utilization_grid(*, time_range: TimeRange) -> dict[str, Any]:
    """Mean duty cycle per row per column: rows GPUs (or nodes), columns minutes, hours or days (``step``).

    The grid stays small whatever the fleet: columns are minute rollups up to two hours,
    hour rollups up to eight days, hour rollups averaged per day beyond; a fleet of more
    than ``HEATMAP_GPU_ROWS`` GPUs gets a row per node (the mean of its GPUs). Averages
    are taken in the database. A cell without data stays None.
    """
    span = time_range.end - time_range.start
    by_node = Gpu.objects.filter(decommissioned_at__isnull=True).count() > HEATMAP_GPU_ROWS
    key = "gpu__node_id" if by_node else "gpu_id"
    window = {"bucket__gte": time_range.start, "bucket__lt": time_range.end}
    cells: QuerySet[GpuMinute] | QuerySet[GpuHour]
    if span <= HEATMAP_MINUTES_UP_TO:
        step, cells = timedelta(minutes=1), GpuMinute.objects.filter(**window).annotate(column=F("bucket"))
    elif span <= HEATMAP_HOURS_UP_TO:
        step, cells = timedelta(hours=1), GpuHour.objects.filter(**window).annotate(column=F("bucket"))
    else:
        step = timedelta(days=1)
        cells = GpuHour.objects.filter(**window).annotate(column=TruncDay("bucket", tzinfo=UTC))
    rows = list(cells.values(key, "column").annotate(mean=Avg("utilization_mean")).values_list(key, "column", "mean"))
    # Hosts and cards that left the fleet keep a row where the range holds some of their history.
    seen = {row_key for row_key, _column, _value in rows}
    if by_node:
        labels = [
            {"id": pk, "label": f"{name} ({count} GPU{pluralize(count)})", "simulated": simulated}
            for pk, name, simulated, count in Node.objects.filter(Q(decommissioned_at__isnull=True) | Q(pk__in=seen))
            .annotate(count=Count("gpus"))
            .filter(count__gt=0)
            .order_by("name")
            .values_list("pk", "name", "simulated", "count")
        ]
    else:
        shown = Gpu.objects.filter(Q(decommissioned_at__isnull=True) | Q(pk__in=seen))
        labels = [{"id": gpu["gpu"], **gpu} for gpu in gpu_labels(gpus=shown)]
    index = {row["id"]: i for i, row in enumerate(labels)}
    columns = sorted({column for _key, column, _value in rows})
    position = {column: i for i, column in enumerate(columns)}
    grid: list[list[float | None]] = [[None] * len(columns) for _ in labels]
    for row_key, column, value in rows:
        if row_key in index:
            grid[index[row_key]][position[column]] = value
    return {"at": columns, "step": step, "rows": labels, "by_node": by_node, "utilization": grid}


def gpu_series_by_gpu(*, gpus: QuerySet[Gpu], time_range: TimeRange) -> list[dict[str, Any]]:
    """Each GPU's utilization (%), memory used (bytes), power (W) and hottest temperature (°C) per bucket."""
    labels = gpu_labels(gpus=gpus)
    series = {
        gpu["gpu"]: {**gpu, "at": [], "utilization": [], "memory_used": [], "power": [], "temperature": []}
        for gpu in labels
    }
    rows = (
        _gpu_rollups(time_range)
        .filter(gpu_id__in=list(series))
        .order_by("gpu_id", "bucket")
        .values_list("gpu_id", "bucket", "utilization_mean", "memory_used_mean", "power_mean", "temperature_max")
    )
    for gpu_id, bucket, utilization, memory, power, temperature in rows:
        one = series[gpu_id]
        one["at"].append(bucket)
        one["utilization"].append(utilization)
        one["memory_used"].append(memory)
        one["power"].append(power)
        one["temperature"].append(temperature)
    return [series[gpu["gpu"]] for gpu in labels]


def gpu_history_before(*, gpus: QuerySet[Gpu], before: datetime) -> bool:
    """Whether any of these GPUs has rollups older than ``before``: only then does a longer range show more."""
    return any(model.objects.filter(gpu__in=gpus, bucket__lt=before).exists() for model in (GpuMinute, GpuHour))


def pool_history_before(*, pool: Pool, before: datetime) -> bool:
    """Whether the pool has traffic rollups older than ``before``."""
    return any(model.objects.filter(pool=pool, bucket__lt=before).exists() for model in (PoolMinute, PoolHour))


def _pool_rollups(time_range: TimeRange) -> QuerySet[Any]:
    model = PoolMinute if time_range.resolution == "minute" else PoolHour
    return model.objects.filter(bucket__gte=time_range.start, bucket__lt=time_range.end)


def pool_history(*, pool: Pool, time_range: TimeRange) -> dict[str, list[Any]]:
    """A pool's latency percentiles of its SLA metric (ms), queue and traffic per bucket."""
    prefix = "ttft" if pool.sla_metric == Pool.SlaMetric.TTFT else "e2e"
    quantiles = ("p50", "p95", "p99")
    out: dict[str, list[Any]] = defaultdict(list)
    rows = (
        _pool_rollups(time_range)
        .filter(pool=pool)
        .order_by("bucket")
        .values(
            "bucket",
            "requests",
            "instances",
            "requests_waiting_mean",
            "requests_waiting_max",
            *(f"{prefix}_{q}_s" for q in quantiles),
        )
    )
    for row in rows:
        out["at"].append(row["bucket"])
        for q in quantiles:
            value = row[f"{prefix}_{q}_s"]
            out[q].append(None if value is None else value * 1000)
        out["queue_mean"].append(row["requests_waiting_mean"])
        out["queue_max"].append(row["requests_waiting_max"])
        out["requests"].append(row["requests"])
        out["instances"].append(row["instances"])
    return dict(out)


def sla_attainment(*, time_range: TimeRange) -> list[dict[str, Any]]:
    """Per enabled pool: the share of its requests in the range served within its SLA latency
    (``attainment``), the share its SLA asks for (``target``, the SLA's percentile) and whether it met
    its SLA (``met``): "P95 TTFT <= 500 ms" is met when at least 95 % of requests got their first token
    within 500 ms.

    Read by ``fleet.selectors.pool_sla``, the one reading of "SLA met" the recommendations rely on too:
    a flat bound from the pool's histograms of its SLA metric merged over the range (the minute or hour
    rollups, as the range is drawn), a time-to-first-token bound that grows with the prompt request by
    request from the gateway's request log (``requests`` then counting those judged), and an end-to-end
    bound, where the pool has one, counted in ``met``. None where the pool served no request in the range.
    """
    pools = list(Pool.objects.filter(enabled=True).order_by("tier", "name"))
    rollup = PoolMinute if time_range.resolution == "minute" else PoolHour
    readings = pool_sla(pools, time_range.start, time_range.end, rollup=rollup)
    return [
        {
            "pool": pool.pk,
            "name": pool.name,
            "sla": pool.sla_label,
            "target": pool.sla_percentile / 100,
            "requests": readings[pool.pk].requests,
            "attainment": readings[pool.pk].attainment,
            "met": readings[pool.pk].met,
        }
        for pool in pools
    ]


def instance_states_over_time(*, pool: Pool, time_range: TimeRange) -> dict[str, Any]:
    """How many of the pool's instances were in each actual state, as steps at every change.

    Read from the instance event log (one row per state change), not from samples.
    """
    events = (
        InstanceEvent.objects.filter(instance__pool=pool, at__lt=time_range.end)
        .order_by("at", "id")
        .values_list("instance_id", "at", "state")
    )
    state: dict[int, str] = {}
    steps: list[tuple[datetime, dict[str, int]]] = []
    for instance_id, at, new in events:
        state[instance_id] = new
        counts: dict[str, int] = defaultdict(int)
        for value in state.values():
            counts[value] += 1
        steps.append((max(at, time_range.start), dict(counts)))
    states = [s for s in Instance.Actual.values if any(s in counts for _at, counts in steps)]
    if steps:
        steps.append((time_range.end, steps[-1][1]))
    return {"at": [at for at, _ in steps], "states": {s: [counts.get(s, 0) for _at, counts in steps] for s in states}}


def tier_traffic(*, pool: Pool, time_range: TimeRange) -> dict[str, int]:
    """Requests the pool served in the range by the tier their complexity chose (fallbacks show up here)."""
    rows = (
        RequestLog.objects.filter(pool=pool, at__gte=time_range.start, at__lt=time_range.end)
        .values("tier")
        .annotate(n=Count("id"))
        .order_by("tier")
    )
    return {row["tier"]: row["n"] for row in rows}


class SpendBuckets(TypedDict):
    """Spend per bar of the cost page's chart: the bars' starts, their width, and each part's amount."""

    at: list[datetime]
    step: timedelta
    busy: list[float]
    idle: list[float]
    unallocated: list[float]


def spend_buckets(*, report: SpendReport, size: timedelta) -> SpendBuckets:
    """Busy, idle and unallocated spend per time bucket, each line shared by its overlap with the bucket.

    For a chart: in floats, spread evenly over each line's time. Totals come from the report.
    """
    sums: dict[datetime, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    step = size.total_seconds()
    for line in report.lines:
        parts: tuple[tuple[int, float], ...]
        if line.kind == ALLOCATED:
            parts = ((0, float(line.busy)), (1, float(line.idle)))
        elif line.kind == UNALLOCATED:
            parts = ((2, float(line.spend)),)
        else:
            continue
        begin, finish = line.start.timestamp(), line.end.timestamp()
        if finish <= begin:
            continue
        at = begin // step * step
        while at < finish:
            share = (min(at + step, finish) - max(at, begin)) / (finish - begin)
            row = sums[datetime.fromtimestamp(at, tz=UTC)]
            for index, amount in parts:
                row[index] += amount * share
            at += step
    ordered = sorted(sums)
    return {
        "at": ordered,
        "step": size,
        "busy": [sums[at][0] for at in ordered],
        "idle": [sums[at][1] for at in ordered],
        "unallocated": [sums[at][2] for at in ordered],
    }


SPEND_BARS = (
    (timedelta(hours=2), timedelta(minutes=5)),
    (timedelta(days=2), timedelta(hours=1)),
    (timedelta(days=8), timedelta(hours=6)),
)


def spend_display_bucket(time_range: TimeRange) -> timedelta:
    """The width of a bar of the spend chart: a few dozen bars whatever the range."""
    span = time_range.end - time_range.start
    return next((width for up_to, width in SPEND_BARS if span <= up_to), timedelta(days=1))


class PoolSpendRow(TypedDict):
    """One pool's spend in the range (``pool`` None: the unallocated row, or spend of no known pool)."""

    pool: int | None
    name: str
    busy: Decimal
    idle: Decimal
    unallocated: Decimal
    spend: Decimal


class TokenCostRow(TypedDict):
    """One pool's tokens and cost per million tokens (allocation basis; None where it served none)."""

    name: str
    tokens: float
    cost: Decimal | None


@dataclass(frozen=True)
class CostPage:
    currency: str
    report: SpendReport
    over_time: SpendBuckets
    by_pool: list[PoolSpendRow]
    by_team: list[dict[str, Any]]
    per_million_tokens: list[TokenCostRow]
    # What sleeping instances' cards cost and what batch work used of that time (``fleet.costs.sleep``).
    sleep: SleepReport


def cost_page(*, time_range: TimeRange) -> CostPage:
    """Spend of the range from rollups: over time (busy/idle/unallocated), by pool, by team, per token."""
    holdings = Holdings.read(start=time_range.start, end=time_range.end)
    window = fleet_window(start=time_range.start, end=time_range.end, raw=False, holdings=holdings)
    report = spend_report(start=time_range.start, end=time_range.end, window=window)
    # Keyed by int | None as the totals are: spend whose instance has no known pool reads "unknown pool".
    names: dict[int | None, str] = dict(Pool.objects.values_list("pk", "name"))
    by_pool: list[PoolSpendRow] = [
        {
            "pool": pool_id,
            "name": names.get(pool_id, "unknown pool"),
            "busy": t.busy,
            "idle": t.idle,
            "unallocated": Decimal(0),
            "spend": t.spend,
        }
        for pool_id, t in sorted(totals_by_pool(report).items(), key=lambda item: str(names.get(item[0])))
    ]
    unallocated = report.unallocated
    if unallocated.spend:
        by_pool.append(
            {
                "pool": None,
                "name": "unallocated",
                "busy": Decimal(0),
                "idle": Decimal(0),
                "unallocated": unallocated.spend,
                "spend": unallocated.spend,
            }
        )
    token_costs = cost_per_million_tokens(start=time_range.start, end=time_range.end, report=report, raw=False)
    per_million: list[TokenCostRow] = [
        {
            "name": row["name"],
            "tokens": float(token_costs[row["pool"]].tokens),
            "cost": token_costs[row["pool"]].per_million_allocation,
        }
        for row in by_pool
        if row["pool"] is not None
    ]
    source = usage_source_configured()
    teams = dict(Team.objects.values_list("pk", "name"))
    by_team_sum: dict[str, Decimal] = defaultdict(Decimal)
    if source is not None:
        for shares in team_spend(report=report, usage_source=source).values():
            for team_id, amount in shares.items():
                by_team_sum[teams.get(team_id, f"team {team_id}")] += amount
    return CostPage(
        currency=report.currency,
        report=report,
        over_time=spend_buckets(report=report, size=spend_display_bucket(time_range)),
        by_pool=by_pool,
        by_team=[{"name": name, "spend": amount} for name, amount in sorted(by_team_sum.items())],
        per_million_tokens=per_million,
        sleep=sleep_report(start=time_range.start, end=time_range.end, holdings=holdings),
    )


@dataclass(frozen=True)
class SpendSummary:
    currency: str
    rate_per_hour: Decimal
    today: Decimal
    month_to_date: Decimal
    savings_month_to_date: Decimal
    baseline_month_to_date: Decimal
    forecast_month_end: Decimal
    efficiency: BusyShare


def spend_summary(*, now: datetime | None = None) -> SpendSummary:
    """Run rate, today and month to date and the month's savings, all from rollups.

    All but the run rate stop at the last complete minute (``FleetWindow.complete``), the end
    savings are computed to, so month to date + savings = baseline holds on the page.
    """
    now = now or timezone.now()
    month_start, _ = period_bounds(period="month", now=now)
    day_start, _ = period_bounds(period="day", now=now)
    window = fleet_window(start=month_start, end=now, raw=False).complete()
    report = spend_report(start=month_start, end=window.end, window=window)
    today = sum((line.spend * _overlap(line.start, line.end, day_start, now) for line in report.lines), Decimal(0))
    savings = savings_compute(start=month_start, end=now, window=window, report=report)
    rate = run_rate(now=now).per_hour
    return SpendSummary(
        currency=billing_currency(),
        rate_per_hour=rate,
        today=today,
        month_to_date=report.total,
        savings_month_to_date=savings.savings,
        baseline_month_to_date=savings.baseline,
        forecast_month_end=month_end_forecast(spent=report.total, per_hour=rate, until=window.end),
        efficiency=busy_share(report),
    )


def _overlap(start: datetime, end: datetime, first: datetime, last: datetime) -> Decimal:
    """The share of [start, end) that falls in [first, last)."""
    span = (end - start).total_seconds()
    inside = (min(end, last) - max(start, first)).total_seconds()
    return Decimal(max(inside, 0) / span) if span > 0 else Decimal(0)


def budgets_burn() -> list[dict[str, Any]]:
    """Enabled budgets with what their period has spent, as the budget task last computed it."""
    rows = []
    for budget in Budget.objects.filter(enabled=True).select_related("team", "pool").order_by("name"):
        owner = budget.team or budget.pool
        if owner is None:  # a check constraint gives every budget a team or a pool
            continue
        rows.append(
            {
                "id": budget.pk,
                "name": budget.name,
                "scope": owner.name,
                "period": budget.get_period_display(),
                "amount": budget.amount,
                "spent": budget.spent,
                "soft_pct": budget.soft_threshold_pct,
                "hard_pct": budget.hard_threshold_pct,
                "evaluated_at": budget.evaluated_at,
            }
        )
    return rows


def alerts_firing() -> QuerySet[Alert]:
    return Alert.objects.filter(state=Alert.State.FIRING).select_related("rule").order_by("-fired_at")


def decisions_filtered(
    *,
    time_range: TimeRange,
    kind: str = "",
    pool_id: int | None = None,
    person: str = "",
    policy_id: int | None = None,
    limit: int = DECISIONS_SHOWN,
) -> list[Decision]:
    """Newest policy actions in the range, optionally of one policy kind, pool, person or policy.

    A person is the user a manual decision records in its inputs (``inputs.user``).
    """
    decisions = Decision.objects.filter(created_at__gte=time_range.start, created_at__lt=time_range.end)
    if kind:
        decisions = decisions.filter(policy_kind=kind)
    if pool_id:
        decisions = decisions.filter(pool_id=pool_id)
    if person:
        decisions = decisions.filter(inputs__user=person)
    if policy_id:
        decisions = decisions.filter(policy_id=policy_id)
    # Only the pool's name is shown, so only pools are read (the instance and policy are linked by
    # id), each once rather than joined to every one of hundreds of rows.
    return list(decisions.prefetch_related("pool").order_by("-created_at", "-id")[:limit])


def decision_kinds() -> list[str]:
    """The kinds the log holds, for the filter.

    Read down the (policy_kind, created_at) index one kind at a time, each step the first kind
    after the last found: a few index probes however long the log. A DISTINCT would read every
    decision (tens of thousands a week) for the few kinds."""
    table = connection.ops.quote_name(Decision._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE kinds (kind) AS (SELECT MIN(policy_kind) FROM {table} UNION ALL "
            f"SELECT (SELECT MIN(policy_kind) FROM {table} WHERE policy_kind > kinds.kind) FROM kinds "
            "WHERE kinds.kind IS NOT NULL) SELECT kind FROM kinds WHERE kind IS NOT NULL"
        )
        return sorted(kind for (kind,) in cursor.fetchall())


def decision_people() -> list[str]:
    """Everyone a manual decision names, for the decisions page's filter."""
    names = Decision.objects.filter(inputs__has_key="user").order_by().values_list("inputs__user", flat=True).distinct()
    return sorted({str(name) for name in names if name})


def decision_policies() -> list[Policy]:
    return list(Policy.objects.select_related("pool").order_by("kind", "pool__name"))


def decision_detail(*, decision_id: int) -> tuple[Decision, DecisionEffect] | None:
    """One decision with its effect from when it was applied until now (or the decision that ended it)."""
    decision = Decision.objects.select_related("pool", "instance", "policy", "batch_job").filter(pk=decision_id).first()
    if decision is None:
        return None
    effects, _ = decision_effects_read(start=decision.created_at, end=timezone.now(), decision_ids=[decision.pk])
    return decision, effects.get(decision.pk) or DecisionEffect(decision.pk, 0, note="changes no instance's GPU hold")


def decisions_effects(*, decisions: list[Decision], time_range: TimeRange) -> list[Decision]:
    """The decisions, each given ``effect``: accrued from when it was applied until now or until ended
    (a fixed number of queries for any number of rows).

    Only these rows' instances are read, from the oldest row on with each instance's last decision
    before it (what ``decision_effects_read`` takes at a range's start), and only these rows are
    priced: a page of the newest decisions then reads hours of the log, not the range's week. Each
    row's effect accrues from its own time, after that start, so its amount is the same; a repeat
    whose run began before the oldest row names, in its note, that last decision rather than the
    run's first (as any range's start does)."""
    effects, _ = decision_effects_read(
        start=min((decision.created_at for decision in decisions), default=time_range.start),
        end=max(timezone.now(), time_range.end),
        decision_ids=[decision.pk for decision in decisions],
    )
    for decision in decisions:
        setattr(decision, "effect", effects.get(decision.pk))  # noqa: B010 (a page attribute, not a model field)
    return decisions


@dataclass(frozen=True)
class SavingsPage:
    attribution: Attribution
    by_kind: list[tuple[str, Decimal]]
    by_pool: list[tuple[str, Decimal]]
    by_day: list[tuple[Any, Decimal]]


def savings_page(*, time_range: TimeRange) -> SavingsPage:
    """Decisions' attributed savings of the range by kind, pool and day, beside the headline of the
    same range read as the costs page reads spend (rollups, up to the last complete minute)."""
    holdings = Holdings.read(start=time_range.start, end=time_range.end)
    window = fleet_window(start=time_range.start, end=time_range.end, raw=False, holdings=holdings)
    attribution = savings_attribution(start=time_range.start, end=time_range.end, window=window)
    names = dict(Pool.objects.values_list("pk", "name"))
    return SavingsPage(
        attribution=attribution,
        by_kind=sorted(attribution.by("policy_kind").items()),
        by_pool=sorted(
            (
                (names.get(pool_id, "fleet") if pool_id else "fleet", amount)
                for pool_id, amount in attribution.by("pool_id").items()
            )
        ),
        by_day=sorted(attribution.by("day").items()),
    )


def node_detail(*, node_id: int) -> Node:
    """A node with its GPUs, and on each GPU its instances (with pools) and batch jobs."""
    return Node.objects.prefetch_related(
        Prefetch(
            "gpus",
            queryset=Gpu.objects.order_by("index").prefetch_related(
                Prefetch(
                    "instances",
                    queryset=Instance.objects.select_related("pool").exclude(
                        desired_state=Instance.Desired.STOPPED, actual_state=Instance.Actual.STOPPED
                    ),
                ),
                Prefetch("batch_jobs", queryset=BatchJob.objects.exclude(state=BatchJob.State.DONE)),
            ),
        )
    ).get(pk=node_id)


def pools() -> QuerySet[Pool]:
    """The pools by name, with their profiles: the pool page and the pages' pool filters."""
    return Pool.objects.select_related("model_profile").order_by("name")


def pool_instances(*, pool: Pool) -> QuerySet[Instance]:
    return Instance.objects.filter(pool=pool).select_related("gpu__node").order_by("pk")


def nodes() -> QuerySet[Node]:
    return Node.objects.all()


def gpus(*, node_id: int | None = None, live: bool = False) -> QuerySet[Gpu]:
    """A node's GPUs, or the fleet's; ``live`` leaves out the decommissioned."""
    chosen = Gpu.objects.all() if node_id is None else Gpu.objects.filter(node_id=node_id)
    return chosen.filter(decommissioned_at__isnull=True) if live else chosen


def requests_any() -> bool:
    return RequestLog.objects.exists()


@dataclass(frozen=True)
class InstanceRow:
    """One row of the instances page: where it runs, its states, its cost and its idle clock."""

    instance: Instance
    # Since it was last told to run (launched, started or woken: its desired state set to running),
    # not since its row was created, which a stop and a start later would not move; None while it
    # is to sleep or stop.
    age: timedelta | None
    cost_per_hour: Decimal
    cost_today: Decimal
    requests_last_hour: int
    idle: IdleClock | None
    idle_note: str


@dataclass(frozen=True)
class PoolScaleRow:
    """A pool with the count its +1/-1 buttons claim on (instances not desired stopped)."""

    pool: Pool
    active: int
    can_grow: bool
    can_shrink: bool

    @property
    def buttons(self) -> tuple[tuple[int, str, bool], ...]:
        """(step, label, allowed) of the pool's scale buttons."""
        return ((-1, "−1", self.can_shrink), (1, "+1", self.can_grow))


@dataclass(frozen=True)
class InstancesPage:
    currency: str
    rows: list[InstanceRow]
    pools: list[PoolScaleRow]


def instances_page(*, now: datetime | None = None) -> InstancesPage:
    """Every instance with its cost per hour (the run rate's lines), its spend so far today (the
    billing day's allocated lines), its requests in the last hour (the gateway's log) and where
    it stands on idle reclaim's clock (``idle_clock``, on the pools and instances as the policy reads them:
    ``idle_snapshot``)."""
    now = now or timezone.now()
    day_start, _ = period_bounds(period="day", now=now)
    # Only the instances' own lines are priced: their spend needs neither the GPUs' up time nor
    # their duty cycle (``holds_window``), which for a thousand GPUs is most of the page's work.
    per_hour = totals_by_instance(next_hour_report(now=now, unallocated=False))
    today = totals_by_instance(spend_report(start=day_start, end=now, window=holds_window(start=day_start, end=now)))
    requests = dict(
        RequestLog.objects.filter(at__gte=now - timedelta(hours=1), at__lte=now, instance__isnull=False)
        .values("instance_id")
        .annotate(n=Count("id"))
        .values_list("instance_id", "n")
    )
    snapshot = idle_snapshot(now=now)
    idle_config = policy_configs()[IDLE_KIND]
    views = {view.id: view for view in snapshot.instances}
    instances = Instance.objects.select_related("pool", "gpu__node", "mig_device").order_by("pool__name", "pk")
    serving = Counter(view.pool_id for view in snapshot.instances if view.desired_state == RUNNING)
    rows = []
    for instance in instances:
        view, clock, note = views.get(instance.pk), None, ""
        if view is None:
            note = "pool disabled: no policy runs it"
        elif view.desired_state == STOPPED:
            note = "stopped"
        elif idle_config.for_pool(view.pool_id) is None:
            note = "idle reclaim is off for this pool"
        else:
            pool_view = snapshot.pool(view.pool_id)
            clock = idle_clock(pool_view, view, now)
            if clock is None:
                note = "busy: requests running or waiting"
            elif view.desired_state == RUNNING and serving[view.pool_id] <= pool_view.min_instances:
                note = f"kept: the pool is at its minimum of {pool_view.min_instances} serving"
        rows.append(
            InstanceRow(
                instance=instance,
                age=now - instance.desired_changed_at if instance.desired_state == RUNNING else None,
                cost_per_hour=per_hour[instance.pk].spend if instance.pk in per_hour else Decimal(0),
                cost_today=today[instance.pk].spend if instance.pk in today else Decimal(0),
                requests_last_hour=requests.get(instance.pk, 0),
                idle=clock,
                idle_note=note,
            )
        )
    return InstancesPage(currency=billing_currency(), rows=rows, pools=_pool_scale_rows(snapshot))


def _pool_scale_rows(snapshot: FleetSnapshot) -> list[PoolScaleRow]:
    enabled = {view.id for view in snapshot.pools}
    # Instances not asked to stop, per pool, in one grouped query rather than one count per pool.
    counts = dict(
        Instance.objects.exclude(desired_state=Instance.Desired.STOPPED)
        .order_by()
        .values("pool_id")
        .annotate(n=Count("id"))
        .values_list("pool_id", "n")
    )
    rows = []
    for pool in Pool.objects.order_by("name"):
        active = counts.get(pool.pk, 0)
        rows.append(
            PoolScaleRow(
                pool=pool,
                active=active,
                can_grow=pool.pk in enabled and active < pool.max_instances,
                can_shrink=pool.pk in enabled and active > pool.min_instances,
            )
        )
    return rows


def instance_for_action(*, instance_id: int) -> Instance | None:
    return Instance.objects.select_related("pool__model_profile").filter(pk=instance_id).first()


def pool_for_action(*, pool_id: int) -> Pool | None:
    return Pool.objects.filter(pk=pool_id).first()


def recommendations_list(*, now: datetime | None = None) -> list[Recommendation]:
    """Every recommendation with its price (``fleet.costs.recommendations``), the largest saving first."""
    return recommendations(now=now)


def recommendation_find(*, key: str, now: datetime | None = None) -> Recommendation | None:
    """The recommendation of ``key`` as it stands now, or None where it no longer applies."""
    return next((item for item in recommendations(now=now) if item.key == key), None)
