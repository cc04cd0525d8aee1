"""Reads of spend: periods, reports, savings, tokens, run rate, budgets' blocks, metrics rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import DateTimeField, Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from fleet import catalog
from fleet.costs.allocation import (
    Allocation,
    Hold,
    StateEvent,
    allocations_split,
    holds_from_events,
    uptime_runs,
)
from fleet.costs.effects import (
    ADDING,
    COSTS,
    NONE,
    RELEASING,
    SAVES,
    DecisionEffect,
    DecisionRow,
    Device,
    action_direction,
    amount_by_day,
    decision_effects,
)
from fleet.costs.money import CONTEXT, ZERO, duration_us, money_cents, money_sum
from fleet.costs.prices import PriceBook, RateRow
from fleet.costs.sleep import JobMove, SleepReport, batch_runs, sleep_pieces, sleep_use
from fleet.costs.spend import (
    BASELINE,
    GpuInfo,
    PeriodUtilization,
    SpendReport,
    TieredUtilization,
    Totals,
    UtilizationIndex,
    baseline_lines,
    spend_lines,
)
from fleet.costs.teams import Basis, UsageSource, team_shares
from fleet.models import (
    BatchJob,
    Budget,
    Decision,
    Gpu,
    GpuDay,
    GpuHour,
    GpuMinute,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    MigDevice,
    Pool,
    PoolHour,
    PoolMinute,
    PriceRate,
    RollupWatermark,
)
from fleet.states import gpu_holding_states
from fleet.telemetry.rollups import DAY, MAX_GAP_S, floor_day, floor_hour, floor_minute, gpu_period_sums, series_pairs

PERIODS = ("day", "week", "month")


def billing_tz() -> ZoneInfo:
    return ZoneInfo(settings.FLEET_BILLING_TIMEZONE)


def billing_currency() -> str:
    return settings.FLEET_BILLING_CURRENCY


def period_bounds(*, period: str, now: datetime) -> tuple[datetime, datetime]:
    """The calendar day, week (from Monday) or month holding ``now``, in the billing time zone.

    Bounds are local midnights, so a day is 23 or 25 hours across a daylight-saving change.
    """
    tz = billing_tz()
    local = now.astimezone(tz).date()
    if period == "day":
        first, following = local, local + timedelta(days=1)
    elif period == "week":
        first = local - timedelta(days=local.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = local.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")
    return datetime.combine(first, time(0), tzinfo=tz), datetime.combine(following, time(0), tzinfo=tz)


def price_book(*, currency: str | None = None) -> PriceBook:
    rows = PriceRate.objects.filter(currency=currency or billing_currency()).values_list(
        "pk", "gpu_model", "node_id", "effective_from", "price_per_gpu_hour"
    )
    return PriceBook((RateRow(*row) for row in rows), tz=billing_tz())


def _gpus() -> dict[int, GpuInfo]:
    return {
        pk: GpuInfo(pk, node_id, model) for pk, node_id, model in Gpu.objects.values_list("pk", "node_id", "model_name")
    }


def _mig_slices() -> dict[int, int]:
    """Slices per MIG device (``_profile_slices``)."""
    return {pk: _profile_slices(profile) for pk, profile in MigDevice.objects.values_list("pk", "profile")}


def _profile_slices(profile: str) -> int:
    """Slices of a MIG profile; one the catalogue cannot read is priced as the whole GPU."""
    try:
        return catalog.mig_slices(profile)
    except ValueError:
        return 7


def _events(*, start: datetime, end: datetime) -> list[StateEvent]:
    """Events in the window, plus each instance's last event before it (its state at ``start``)."""
    newest_before = (
        InstanceEvent.objects.filter(instance=OuterRef("pk"), at__lt=start).order_by("-at", "-id").values("pk")[:1]
    )
    prior = Instance.objects.annotate(prior=Subquery(newest_before)).exclude(prior=None).values("prior")
    fields = ("instance_id", "at", "state", "gpu_id", "mig_device_id")
    rows = InstanceEvent.objects.filter(pk__in=prior).values_list(*fields).order_by("at", "id")
    rows_in = InstanceEvent.objects.filter(at__gte=start, at__lt=end).values_list(*fields).order_by("at", "id")
    return [StateEvent(*row) for row in [*rows, *rows_in]]


def _gap() -> timedelta:
    return timedelta(seconds=settings.FLEET_COST_SAMPLE_GAP_S)


def _clip(runs: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    return [(max(first, start), min(last, end)) for first, last in runs if max(first, start) < min(last, end)]


@dataclass
class FleetWindow:
    """What one period's arithmetic reads from the database, loaded once."""

    start: datetime
    end: datetime
    gpus: dict[int, GpuInfo]
    allocations: list[Allocation]
    up: dict[int, list[tuple[datetime, datetime]]]
    utilization: UtilizationIndex
    pools: dict[int, int]
    complete_until: datetime

    def complete(self) -> FleetWindow:
        """The window cut at ``complete_until`` (``Tiers``), so holds and up time end at the same instant."""
        cut = self.complete_until
        if cut >= self.end:
            return self
        return replace(
            self,
            end=cut,
            allocations=[replace(row, end=min(row.end, cut)) for row in self.allocations if row.start < cut],
            up={gpu_id: clipped for gpu_id, runs in self.up.items() if (clipped := _clip(runs, self.start, cut))},
        )


def _day_events(events: list[StateEvent], *, start: datetime, end: datetime) -> list[StateEvent]:
    """What ``_events`` reads for [start, end), taken from ``events`` of a range holding it.

    ``_events`` lists are in (time, id) order: an instance's last event before a range and
    the events in it, and the range's events all come after the former. So each instance's
    last entry before ``start`` is its state then, in the same order the query would list it.
    """
    last_before: dict[int, int] = {}
    inside: list[StateEvent] = []
    for index, event in enumerate(events):
        if event.at < start:
            last_before[event.instance_id] = index
        elif event.at < end:
            inside.append(event)
    return [events[index] for index in sorted(last_before.values())] + inside


@dataclass(frozen=True)
class Holdings:
    """What windows of a range read the same, read once: its state events with each instance's
    last one before it (``_events``), which states hold a GPU, GPUs, MIG slices and instances' pools.

    ``window`` builds the ``FleetWindow`` of any [start, end) inside the range, its holds
    cut from the events as ``_events`` of [start, end) would give them: the one way a
    window is built, whether of the range itself or of each of its days.
    """

    start: datetime
    end: datetime
    events: list[StateEvent]
    states: frozenset[str]
    gpus: dict[int, GpuInfo]
    mig_slices: dict[int, int]
    pools: dict[int, int]

    @classmethod
    def read(cls, *, start: datetime, end: datetime, sleeping_holds_gpu: bool | None = None) -> Holdings:
        if sleeping_holds_gpu is None:
            sleeping_holds_gpu = settings.FLEET_COST_SLEEPING_HOLDS_GPU
        return cls(
            start=start,
            end=end,
            events=_events(start=start, end=end),
            states=gpu_holding_states(sleeping_holds_gpu=sleeping_holds_gpu),
            gpus=_gpus(),
            mig_slices=_mig_slices(),
            pools=dict(Instance.objects.values_list("pk", "pool_id")),
        )

    def window(
        self,
        *,
        start: datetime,
        end: datetime,
        up: dict[int, list[tuple[datetime, datetime]]],
        utilization: UtilizationIndex,
        complete_until: datetime,
    ) -> FleetWindow:
        """[start, end) with its holds, and the up time and duty cycle given (read per window: ``gpu_activity``)."""
        if start < self.start or end > self.end:
            raise ValueError(f"[{start}, {end}) is not inside the range read, [{self.start}, {self.end})")
        events = _day_events(self.events, start=start, end=end)
        holds = holds_from_events(events, start=start, end=end, states=self.states)
        return FleetWindow(
            start=start,
            end=end,
            gpus=self.gpus,
            allocations=allocations_split(holds, mig_slices=self.mig_slices),
            up=up,
            utilization=utilization,
            pools=self.pools,
            complete_until=complete_until,
        )


MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def rollup_marks() -> dict[str, datetime]:
    """How far each rollup has run, by its name (minute, hour, day)."""
    return dict(RollupWatermark.objects.values_list("name", "done_until"))


@dataclass(frozen=True)
class Tiers:
    """Where each part of a window is read from: hour rollups, then minute rollups, then raw.

    Raw samples are kept 48 h by default and minute rollups 30 days, so a month's spend
    cannot come from raw samples alone, and reading a month of minutes for a thousand GPUs
    would be slow. Complete hours older than ``FLEET_COST_MINUTE_DETAIL_HOURS`` (and any
    older than the minute retention) come from hour rollups, complete minutes after them
    from minute rollups, the rest from raw samples. Rollups count a GPU that reported in a
    bucket as up for the whole bucket. Without a watermark (rollups never ran) everything
    is raw.

    ``complete_until`` is how far the window's up time is known: ``end`` when raw samples
    are read; for rollups only, the minute watermark (the end of the last complete minute,
    the window's start if rollups never ran), as up time past it is not rolled up yet while
    holds, read from state events, run to ``end``.

    ``days_done`` is the day watermark read with the others (None where day rollups never
    ran): complete UTC days before it are read from day rollups (``_day_periods``).
    """

    hours_until: datetime
    minutes_until: datetime
    complete_until: datetime
    raw: bool = True
    days_done: datetime | None = None

    @classmethod
    def for_window(
        cls,
        *,
        start: datetime,
        end: datetime,
        now: datetime | None = None,
        raw: bool = True,
        marks: Mapping[str, datetime] | None = None,
    ) -> Tiers:
        """``raw=False`` reads rollups only, as history pages do: complete hours from hour rollups, the
        minutes of the current hour after them; what is not rolled up yet is missing. ``marks``
        (``rollup_marks``) spares the read where a caller cuts many windows at once."""
        now = now or timezone.now()
        if marks is None:
            marks = rollup_marks()
        if raw and "minute" not in marks:
            return cls(hours_until=start, minutes_until=start, complete_until=end, days_done=marks.get("day"))
        rolled_up = min(max(marks.get("minute", start), start), end)
        minutes_until = rolled_up if raw else end
        # History pages take every complete hour from hour rollups: a chart of a day or a month
        # of a thousand GPUs must not sum a million minute rows.
        detail_from = (
            floor_hour(now - timedelta(hours=settings.FLEET_COST_MINUTE_DETAIL_HOURS)) if raw else floor_hour(end)
        )
        oldest_minute = floor_hour(now - timedelta(days=settings.TELEMETRY_MINUTE_RETENTION_DAYS)) + HOUR
        # Hours never rolled up count as incomplete for billing; history pages take what is there.
        hours_done = min(marks.get("hour", start if raw else floor_hour(end)), detail_from)
        hours_until = min(max(oldest_minute, hours_done, start), minutes_until)
        return cls(
            hours_until=hours_until,
            minutes_until=minutes_until,
            complete_until=end if raw else rolled_up,
            raw=raw,
            days_done=marks.get("day"),
        )


# Rollup rows are summed in the database per GPU into periods: hour rows per day, minute
# rows per hour, once the part of the window they cover is longer than this (a day's cost
# page of a thousand GPUs then reads about 3,000 rows, not 40,000).
PERIOD_AFTER = {HOUR: timedelta(hours=6), MINUTE: timedelta(minutes=15)}
PERIOD_TRUNC = {HOUR: TruncDay, MINUTE: TruncHour}


def _after(field: str, origin: datetime) -> Any:
    """The time from ``origin`` (UTC) to a row's ``field``, read back as a ``timedelta``.

    Rollup rows are read by the thousand: the driver decodes an interval natively, while
    every timestamp passes through a time zone loader written in Python (six thousand day
    rollups: about 20 ms of decoding as timestamps, 3 ms as intervals). ``origin`` plus
    it is the very instant, in UTC as the timestamp would be read.
    """
    return F(field) - Value(origin, output_field=DateTimeField())


def _rollup_periods(
    model: type[GpuHour] | type[GpuMinute],
    width: timedelta,
    first: datetime,
    until: datetime,
    *,
    days_done: datetime | None = None,
) -> list[tuple[int, datetime, timedelta, float | None, int]]:
    """(gpu, period start, up time, mean duty cycle, raw samples) per GPU and period.

    A period of n reporting buckets counts as n buckets of up time from its first bucket:
    exact for a GPU that reported throughout, and where a period has gaps its up time is
    right but placed from its first bucket. A month of a thousand GPUs is 30,000 rows.
    Complete UTC days before ``days_done`` (the day watermark, ``Tiers.days_done``) are read
    from day rollups; with None, hour rollups are summed for them.
    """
    if width == HOUR and until - first > PERIOD_AFTER[HOUR]:
        days = _day_periods(first, until, days_done)
        if days is not None:
            return days
    start = floor_hour(first) if width == HOUR else floor_minute(first)
    if until - first <= PERIOD_AFTER[width]:
        # Each bucket is its own period, and a GPU has one row per bucket: the rows as they are
        # (what ``gpu_period_sums`` would sum them to, without grouping or a second timestamp).
        origin = start.astimezone(UTC)
        rows = model.objects.filter(bucket__gte=start, bucket__lt=until, samples__gt=0).annotate(
            after=_after("bucket", origin)
        )
        return [
            (gpu_id, origin + after, width, mean, weight)
            for gpu_id, after, mean, weight in rows.values_list("gpu_id", "after", "utilization_mean", "samples")
        ]
    # Rows all of one period (today's hours, the current hour's minutes) are grouped by GPU alone:
    # the database then hashes a thousand groups where truncating each row's bucket has it sort
    # every row first (the minutes of an hour of a thousand GPUs spill that sort to disk).
    period_start = floor_day(start) if width == HOUR else floor_hour(start.astimezone(UTC))
    period = (
        Value(period_start, output_field=DateTimeField())
        if until <= period_start + (DAY if width == HOUR else HOUR)
        else PERIOD_TRUNC[width]("bucket", tzinfo=UTC)
    )
    return [
        (gpu_id, begin, n * width, mean, weight)
        for gpu_id, _, begin, n, mean, weight in gpu_period_sums(model, start=start, end=until, period=period)
    ]


def _day_periods(
    first: datetime, until: datetime, done: datetime | None
) -> list[tuple[int, datetime, timedelta, float | None, int]] | None:
    """Hour periods of [first, until) with every complete day inside it read from day rollups.

    The same rows summing hour rollups per day gives (``GpuDay`` is that sum, kept), for
    the days the ``day`` watermark (``done``) says are done; the hours either side are summed
    as before. None when no whole rolled-up day lies inside.
    """
    day_from = floor_day(first) + (DAY if floor_day(first) < first else timedelta(0))
    day_to = min(floor_day(until), done) if done is not None else day_from
    if day_to <= day_from:
        return None
    days = [
        (gpu_id, day_from + after, hours * HOUR, mean, samples)
        for gpu_id, after, hours, mean, samples in GpuDay.objects.filter(bucket__gte=day_from, bucket__lt=day_to)
        .annotate(after=_after("first_hour", day_from))
        .values_list("gpu_id", "after", "hours", "utilization_mean", "samples")
    ]
    before = _rollup_periods(GpuHour, HOUR, first, day_from, days_done=done) if first < day_from else []
    after = _rollup_periods(GpuHour, HOUR, day_to, until, days_done=done) if day_to < until else []
    return before + days + after


def gpu_activity(
    *, start: datetime, end: datetime, tiers: Tiers | None = None, duty_cycle: bool = True
) -> tuple[dict[int, list[tuple[datetime, datetime]]], UtilizationIndex]:
    """When each GPU was up in [start, end), and its duty cycle, from the cheapest complete source.

    ``duty_cycle=False`` leaves the index empty for callers that read spend only: indexing a
    week of a thousand GPUs' periods costs as much as placing their up time.
    """
    tiers = tiers or Tiers.for_window(start=start, end=end)
    gap = _gap()
    periods: list[tuple[int, datetime, timedelta, float | None, int]] = []
    parts = ((GpuHour, HOUR, start, tiers.hours_until), (GpuMinute, MINUTE, tiers.hours_until, tiers.minutes_until))
    for model, width, first, until in parts:
        if first < until:
            periods += _rollup_periods(model, width, first, until, days_done=tiers.days_done)
    periods.sort(key=itemgetter(0, 1))
    # Touching periods make one run.
    runs: dict[int, list[list[datetime]]] = defaultdict(list)
    for gpu_id, begin, up_time, _, _ in periods:
        first, last = max(begin, start), min(begin + up_time, tiers.minutes_until)
        merged = runs[gpu_id]
        if first >= last:
            continue
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    # Raw samples a gap either side, so a run that crosses the window's edges is cut there,
    # not at the last sample inside it.
    raw = (
        list(
            GpuSample.objects.filter(at__gte=tiers.minutes_until - gap, at__lte=end + gap)
            .order_by("gpu_id", "at")
            .values_list("gpu_id", "at", "utilization_gpu_pct")
        )
        if tiers.raw
        else []
    )
    times: dict[int, list[datetime]] = defaultdict(list)
    for gpu_id, at, _ in raw:
        times[gpu_id].append(at)
    for gpu_id, moments in times.items():
        merged = runs[gpu_id]
        for first, last in _clip(uptime_runs(moments, gap=gap), tiers.minutes_until, end):
            # A raw run that starts within a gap of where the rollups stop continues their run.
            if merged and first - merged[-1][1] <= gap and merged[-1][1] == tiers.minutes_until:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
    up = {gpu_id: [(first, last) for first, last in merged] for gpu_id, merged in runs.items() if merged}
    if not duty_cycle:
        return up, UtilizationIndex(())
    utilization = TieredUtilization(
        periods=PeriodUtilization((gpu_id, begin, mean, weight) for gpu_id, begin, _, mean, weight in periods),
        raw=UtilizationIndex((gpu_id, at, percent) for gpu_id, at, percent in raw if at >= tiers.minutes_until),
        split=tiers.minutes_until,
    )
    return up, utilization


def fleet_window(
    *,
    start: datetime,
    end: datetime,
    sleeping_holds_gpu: bool | None = None,
    raw: bool = True,
    holdings: Holdings | None = None,
) -> FleetWindow:
    """What spend arithmetic needs of [start, end); ``raw=False`` for history pages (``Tiers``).
    ``holdings``: the range's, already read for another figure of the same page."""
    holdings = holdings or Holdings.read(start=start, end=end, sleeping_holds_gpu=sleeping_holds_gpu)
    tiers = Tiers.for_window(start=start, end=end, raw=raw)
    up, utilization = gpu_activity(start=start, end=end, tiers=tiers)
    return holdings.window(start=start, end=end, up=up, utilization=utilization, complete_until=tiers.complete_until)


def spend_report(
    *, start: datetime, end: datetime, currency: str | None = None, window: FleetWindow | None = None
) -> SpendReport:
    """Allocated and unallocated spend of [start, end), line by line."""
    window = window or fleet_window(start=start, end=end)
    return _report(
        start=start,
        end=end,
        window=window,
        prices=price_book(currency=currency),
        currency=currency or billing_currency(),
    )


def _report(*, start: datetime, end: datetime, window: FleetWindow, prices: PriceBook, currency: str) -> SpendReport:
    """The lines of ``window`` at ``prices`` (``spend_lines``), as a report of [start, end) in ``currency``."""
    lines = spend_lines(
        allocations=window.allocations,
        up=window.up,
        gpus=window.gpus,
        pools=window.pools,
        prices=prices,
        utilization=window.utilization,
    )
    return SpendReport(start=start, end=end, currency=currency, lines=lines)


def _job_moves(*, start: datetime, end: datetime) -> list[JobMove]:
    """Where batch jobs ran, from their decisions: a ``colocate`` puts a job on the GPU its inputs
    name, a ``preempt`` takes it off, as does its end (``finished_at``, kept even before ``start``: a
    job that ended then is not running since). Moves in [start, end) and each job's last move
    before ``start`` (where it was when the window opened)."""
    moving = Q(batch_job__isnull=False, action__in=("colocate", "preempt"))
    newest_before = (
        Decision.objects.filter(moving, batch_job=OuterRef("pk"), applied_at__lt=start)
        .order_by("-applied_at", "-id")
        .values("pk")[:1]
    )
    prior = BatchJob.objects.annotate(prior=Subquery(newest_before)).exclude(prior=None).values("prior")
    fields = ("batch_job_id", "applied_at", "action", "inputs")
    rows = [
        *Decision.objects.filter(pk__in=prior).values_list(*fields),
        *Decision.objects.filter(moving, applied_at__gte=start, applied_at__lt=end).values_list(*fields),
    ]
    moves = [
        JobMove(job_id, at, inputs.get("gpu") if action == "colocate" else None)
        for job_id, at, action, inputs in rows
        if at is not None
    ]
    ended = BatchJob.objects.filter(pk__in={move.job_id for move in moves}, finished_at__lt=end).values_list(
        "pk", "finished_at"
    )
    return moves + [JobMove(job_id, at, None) for job_id, at in ended if at is not None]


def sleep_report(*, start: datetime, end: datetime, holdings: Holdings | None = None) -> SleepReport:
    """What instances' sleep over [start, end) cost and what batch work used of it (``fleet.costs.sleep``).

    Sleep is read whatever ``FLEET_COST_SLEEPING_HOLDS_GPU`` says (the report says where its
    spend sits), at the share of the card spend gives it when sleeping holds the card.
    ``holdings``: the range's, already read for its spend (its events are the same whichever
    states hold a card).
    """
    holdings = holdings or Holdings.read(start=start, end=end)
    holds = holds_from_events(holdings.events, start=start, end=end, states=gpu_holding_states(sleeping_holds_gpu=True))
    pieces = sleep_pieces(
        allocations=allocations_split(holds, mig_slices=holdings.mig_slices),
        runs=batch_runs(_job_moves(start=start, end=end), start=start, end=end),
    )
    return SleepReport(
        start=start,
        end=end,
        currency=billing_currency(),
        billed=settings.FLEET_COST_SLEEPING_HOLDS_GPU,
        rows=sleep_use(pieces=pieces, gpus=holdings.gpus, prices=price_book()),
    )


def spend_reports_by_day(
    *, days: Sequence[tuple[datetime, datetime]], currency: str | None = None
) -> list[SpendReport]:
    """The history report (``fleet_window(raw=False)``) of each of ``days`` (touching periods in
    order), for spend only: no duty cycle is read, so its lines count nothing busy (idle is
    their whole spend); pages that split busy from idle read ``spend_report``.

    Each report's lines price exactly what ``spend_report`` over that day's own window prices: state
    events, GPUs, MIG slices, pools (``Holdings``), prices and watermarks are read once for the
    whole range and each day's window is built from them as that day's read would give it. Up time is
    still read per day (one grouped rollup query each): rollup periods place their up time
    from their first bucket (``_rollup_periods``), so periods summed over the whole range
    would move a GPU's up time across a billing midnight wherever it has gaps (up 00:00-02:00
    and 10:00-12:00 UTC, billing midnight at 05:00 UTC: per day 2 h either side, a period of
    the UTC day 4 h before it), and the day's amounts would no longer be its own.
    """
    if not days:
        return []
    holdings = Holdings.read(start=days[0][0], end=days[-1][1])
    marks, now = rollup_marks(), timezone.now()
    prices, currency = price_book(currency=currency), currency or billing_currency()
    reports = []
    for first, last in days:
        tiers = Tiers.for_window(start=first, end=last, now=now, raw=False, marks=marks)
        up, utilization = gpu_activity(start=first, end=last, tiers=tiers, duty_cycle=False)
        window = holdings.window(
            start=first, end=last, up=up, utilization=utilization, complete_until=tiers.complete_until
        )
        reports.append(_report(start=first, end=last, window=window, prices=prices, currency=currency))
    return reports


@dataclass(frozen=True)
class Savings:
    baseline: Decimal
    actual: Decimal
    savings: Decimal
    reclaimable: Decimal
    currency: str
    method: str = (
        "Baseline: the static layout the method starts from, one always-on instance on every GPU, "
        "each GPU counted from the period start (or from when it first reported or held an instance "
        "in the period, if it is new) until it left the fleet, if it did, at the same prices. Actual: "
        "allocated plus unallocated spend, "
        "i.e. what was paid for GPUs while they were up. Both run to the same end: the period end, or "
        "the last complete minute where spend is read from rollups. Savings = baseline - actual. "
        "Reclaimable: the unallocated part, paid for capacity no instance held; releasing those GPUs "
        "would save it too."
    )


def savings_compute(
    *,
    start: datetime,
    end: datetime,
    currency: str | None = None,
    window: FleetWindow | None = None,
    report: SpendReport | None = None,
) -> Savings:
    """Savings against the static baseline, the one definition every page and metric reads.

    Baseline and actual both cover [start, until), ``until`` being ``end`` where the window
    reads raw samples and the last complete minute where it reads rollups only
    (``FleetWindow.complete``): past it no GPU's up time is known, so a baseline running
    on to ``end`` would count those seconds of every unallocated or departed GPU as saved.
    Pass the period's window, and a report of that window's complete part, where the caller
    has them.
    """
    window = (window or fleet_window(start=start, end=end)).complete()
    until = window.end
    if report is None or report.end != until:
        report = spend_report(start=start, end=until, currency=currency, window=window)
    gpu_ids = set(window.up) | {row.gpu_id for row in window.allocations}
    seen_before = set(
        Gpu.objects.filter(pk__in=gpu_ids)
        .filter(
            Exists(GpuSample.objects.filter(gpu=OuterRef("pk"), at__lt=start))
            | Exists(GpuMinute.objects.filter(gpu=OuterRef("pk"), bucket__lt=start))
            | Exists(GpuHour.objects.filter(gpu=OuterRef("pk"), bucket__lt=start))
            | Exists(InstanceEvent.objects.filter(gpu=OuterRef("pk"), at__lt=start))
        )
        .values_list("pk", flat=True)
    )
    held_from: dict[int, datetime] = {}
    for row in window.allocations:
        if row.gpu_id not in held_from or row.start < held_from[row.gpu_id]:
            held_from[row.gpu_id] = row.start
    # A card that left the fleet (its host decommissioned, or swapped out) is in the static layout until then.
    # (decommissioned_at is nullable: the filter keeps only cards that have one, the check narrows the type.)
    left = {
        pk: at
        for pk, at in Gpu.objects.filter(pk__in=gpu_ids, decommissioned_at__lt=until).values_list(
            "pk", "decommissioned_at"
        )
        if at is not None
    }
    spans: dict[int, tuple[datetime, datetime]] = {}
    for gpu_id in gpu_ids:
        firsts = [run[0] for run in window.up.get(gpu_id, [])]
        if gpu_id in held_from:
            firsts.append(held_from[gpu_id])
        spans[gpu_id] = (start if gpu_id in seen_before else min(firsts), left.get(gpu_id, until))
    lines = baseline_lines(spans=spans, gpus=window.gpus, prices=price_book(currency=currency))
    with localcontext(CONTEXT):
        baseline = sum((line.spend for line in lines if line.kind == BASELINE), ZERO)
        actual = report.total
        return Savings(
            baseline=baseline,
            actual=actual,
            savings=baseline - actual,
            reclaimable=report.unallocated.spend,
            currency=report.currency,
        )


def totals_by_pool(report: SpendReport) -> dict[int | None, Totals]:
    """The report's allocated totals per pool; None holds lines whose instance has no known pool.

    ``SpendReport.by`` groups by any hashable key; the check keeps the keys this grouping gives
    (a pool id or None, so it drops nothing) and tells the type checker so.
    """
    return {
        pool_id: totals
        for pool_id, totals in report.by(lambda line: line.pool_id).items()
        if pool_id is None or isinstance(pool_id, int)
    }


def totals_by_instance(report: SpendReport) -> dict[int, Totals]:
    """The report's allocated totals per instance (every allocated line names its instance)."""
    return {key: totals for key, totals in report.by(lambda line: line.instance_id).items() if isinstance(key, int)}


def tokens_by_pool(*, start: datetime, end: datetime, tiers: Tiers | None = None) -> dict[int, Decimal]:
    """Tokens (prompt + generated) each pool served in [start, end).

    A sample's token rates cover the interval since the instance's previous sample (no more
    than the rollups' gap), as the agent measures them. Where pool rollups are complete they
    are read instead (a bucket cut by the window counts by its overlap); the raw part takes
    the samples after them, each interval clipped to the window.
    """
    tiers = tiers or Tiers.for_window(start=start, end=end)
    tokens: dict[int, Decimal] = defaultdict(Decimal)
    parts = ((PoolHour, HOUR, start, tiers.hours_until), (PoolMinute, MINUTE, tiers.hours_until, tiers.minutes_until))
    with localcontext(CONTEXT):
        for model, width, first, until in parts:
            if first >= until:
                continue
            floor = floor_hour(first) if width == HOUR else floor_minute(first)
            for pool_id, bucket, prompt, generated in model.objects.filter(
                bucket__gte=floor, bucket__lt=until
            ).values_list("pool_id", "bucket", "prompt_tokens", "generation_tokens"):
                begin, stop = max(bucket, first), min(bucket + width, until)
                if begin < stop:
                    share = Decimal(duration_us(begin, stop)) / Decimal(duration_us(bucket, bucket + width))
                    tokens[pool_id] += (Decimal(str(prompt)) + Decimal(str(generated))) * share
        lookback = timedelta(seconds=MAX_GAP_S)
        rows = (
            list(
                InstanceSample.objects.filter(at__gte=tiers.minutes_until - lookback, at__lt=end + lookback)
                .order_by("instance_id", "at")
                .values_list("instance_id", "at", "instance__pool_id", "prompt_tokens_rate", "generation_tokens_rate")
            )
            if tiers.raw
            else []
        )
        for previous, (_, at, pool_id, prompt_rate, generated_rate) in series_pairs(rows, tiers.minutes_until):
            begin, stop = (max(previous[1], start), min(at, end)) if previous else (at, at)
            if begin < stop:
                rate = Decimal(str(prompt_rate or 0)) + Decimal(str(generated_rate or 0))
                tokens[pool_id] += rate * Decimal(duration_us(begin, stop)) / Decimal(1_000_000)
    return dict(tokens)


@dataclass(frozen=True)
class TokenCost:
    """Cost per million tokens of one pool on two bases.

    allocation: all spend of keeping the pool's instances on their GPUs / tokens x 1e6.
    usage: the busy part of that spend only / tokens x 1e6.
    """

    pool_id: int | None
    tokens: Decimal
    spend: Decimal
    busy: Decimal
    per_million_allocation: Decimal | None
    per_million_usage: Decimal | None


def cost_per_million_tokens(
    *, start: datetime, end: datetime, report: SpendReport | None = None, raw: bool = True
) -> dict[int | None, TokenCost]:
    """Each pool's cost per million tokens on both bases; ``raw=False`` reads rollups only (``Tiers``).

    Keyed as ``totals_by_pool``: None holds spend whose instance has no known pool (it served no tokens).
    """
    report = report or spend_report(start=start, end=end)
    tokens = tokens_by_pool(start=start, end=end, tiers=Tiers.for_window(start=start, end=end, raw=raw))
    result: dict[int | None, TokenCost] = {}
    with localcontext(CONTEXT):
        for pool_id, totals in totals_by_pool(report).items():
            count = tokens.get(pool_id, ZERO) if pool_id is not None else ZERO
            million = count / Decimal(1_000_000)
            result[pool_id] = TokenCost(
                pool_id=pool_id,
                tokens=count,
                spend=totals.spend,
                busy=totals.busy,
                per_million_allocation=totals.spend / million if count else None,
                per_million_usage=totals.busy / million if count else None,
            )
    return result


@dataclass(frozen=True)
class RunRate:
    allocated_per_hour: Decimal
    unallocated_per_hour: Decimal
    currency: str

    @property
    def per_hour(self) -> Decimal:
        with localcontext(CONTEXT):
            return self.allocated_per_hour + self.unallocated_per_hour


def run_rate(*, now: datetime | None = None) -> RunRate:
    """Spend of the next hour if nothing changes: instances holding devices now keep them, GPUs
    of online nodes stay up, at the prices in effect (the same arithmetic as any period).
    """
    report = next_hour_report(now=now)
    return RunRate(
        allocated_per_hour=report.allocated.spend,
        unallocated_per_hour=report.unallocated.spend,
        currency=report.currency,
    )


def next_hour_report(*, now: datetime | None = None, unallocated: bool = True) -> SpendReport:
    """The lines of the run rate: the next hour's spend if nothing changes, line by line, so an
    instance's cost per hour is its lines' total (``report.by(lambda line: line.instance_id)``).

    ``unallocated=False`` leaves out the unallocated lines, for a page of instances' own costs:
    pricing the free share of every up GPU of a thousand would be most of the work.
    """
    now = now or timezone.now()
    end = now + timedelta(hours=1)
    states = gpu_holding_states(sleeping_holds_gpu=settings.FLEET_COST_SLEEPING_HOLDS_GPU)
    holders = Instance.objects.filter(actual_state__in=states, gpu__isnull=False).values_list(
        "pk", "gpu_id", "mig_device_id", "actual_state"
    )
    holds = [Hold(pk, gpu_id, mig_id, now, end, state) for pk, gpu_id, mig_id, state in holders]
    up_ids = (
        set(Gpu.objects.filter(node__status="online", decommissioned_at__isnull=True).values_list("pk", flat=True))
        if unallocated
        else set()
    )
    window = FleetWindow(
        start=now,
        end=end,
        gpus=_gpus(),
        allocations=allocations_split(holds, mig_slices=_mig_slices()),
        up={gpu_id: [(now, end)] for gpu_id in up_ids},
        utilization=UtilizationIndex([]),
        pools=dict(Instance.objects.values_list("pk", "pool_id")),
        complete_until=end,
    )
    return spend_report(start=now, end=end, window=window)


def holds_window(*, start: datetime, end: datetime) -> FleetWindow:
    """[start, end) with its holds only, for instances' own spend (the instances page's today).

    An allocated line is priced from its hold alone (hours x share x price, ``spend_lines``); up
    time only adds the unallocated lines and the duty cycle only splits spend into busy and idle.
    A report of this window has ``fleet_window``'s allocated lines with the same spend, nothing
    counted busy and no unallocated lines, and reads no rollups: a day of a thousand GPUs' is
    most of what a full window costs.
    """
    return Holdings.read(start=start, end=end).window(
        start=start, end=end, up={}, utilization=UtilizationIndex([]), complete_until=end
    )


@dataclass(frozen=True)
class MonthToDate:
    month_start: datetime
    month_end: datetime
    spent: Decimal
    run_rate: RunRate
    projected: Decimal
    method: str = "Projection = spent so far + current run rate x hours left in the month (billing time zone)."


def month_to_date(*, now: datetime | None = None) -> MonthToDate:
    now = now or timezone.now()
    first, following = period_bounds(period="month", now=now)
    spent = spend_report(start=first, end=now).total
    rate = run_rate(now=now)
    projected = month_end_forecast(spent=spent, per_hour=rate.per_hour, until=now)
    return MonthToDate(month_start=first, month_end=following, spent=spent, run_rate=rate, projected=projected)


def month_end_forecast(*, spent: Decimal, per_hour: Decimal, until: datetime) -> Decimal:
    """The billing month's spend at its end if nothing changes: what was spent up to ``until``
    plus the run rate per hour x the hours from ``until`` to the end of the month holding it
    (billing time zone). E.g. 100.00 spent by 1 March 00:00 UTC, at 2.00/h over the 744 hours
    of March: 100.00 + 2.00 x 744 = 1,588.00."""
    _, following = period_bounds(period="month", now=until)
    with localcontext(CONTEXT):
        hours_left = Decimal(duration_us(until, following)) / Decimal(3_600_000_000)
        return spent + per_hour * hours_left


@dataclass(frozen=True)
class BusyShare:
    """How much of what the fleet was billed did work.

    busy: the allocated lines' busy part (spend x the GPU's mean duty cycle, ``spend_lines``);
    idle: everything else billed, the allocated lines' idle part plus the unallocated spend;
    share: busy / (busy + idle), None where nothing was billed.
    """

    busy: Decimal
    idle: Decimal
    share: Decimal | None


def busy_share(report: SpendReport) -> BusyShare:
    """The efficiency of a period: the busy share of its billed GPU time, and the idle cost beside it."""
    allocated, unallocated = report.allocated, report.unallocated
    with localcontext(CONTEXT):
        idle = allocated.idle + unallocated.spend
        billed = allocated.busy + idle
        return BusyShare(busy=allocated.busy, idle=idle, share=allocated.busy / billed if billed else None)


def team_spend(
    *, report: SpendReport, usage_source: UsageSource, basis: Basis = "gpu_seconds"
) -> dict[int, dict[int, Decimal]]:
    """Each pool's allocated spend shared among the teams that used it (``pool_shares``)."""
    usage = usage_source(start=report.start, end=report.end, basis=basis)
    return pool_shares(pools=totals_by_pool(report), usage=usage)


def pool_shares(
    *, pools: Mapping[int | None, Totals], usage: Mapping[tuple[int, int], Decimal]
) -> dict[int, dict[int, Decimal]]:
    """Each pool's spend (``totals_by_pool``) shared among the teams (or keys) by their ``usage``
    of it, ``{(pool, team): amount}`` (``teams.team_shares``).

    A pool with spend but no recorded usage has no team shares: its spend stays the pool's.
    """
    per_pool: dict[int, dict[int, Decimal]] = defaultdict(dict)
    for (pool_id, team_id), amount in usage.items():
        per_pool[pool_id][team_id] = amount
    return {
        pool_id: team_shares(total=totals.spend, usage=per_pool.get(pool_id, {}))
        for pool_id, totals in pools.items()
        if pool_id is not None
    }


def teams_blocked(*, now: datetime | None = None) -> dict[int, str]:
    """Every team the gateway must refuse now, with why; one indexed query for the whole fleet.

    Cheap by design (the spend was computed by the budget task): the gateway calls it on
    every routing refresh. A block holds for the period in which the hard threshold was
    reached, unless an admin lifted it for that period.
    """
    now = now or timezone.now()
    blocked: dict[int, str] = {}
    budgets = Budget.objects.filter(
        team__isnull=False, enabled=True, blocked_period_start__isnull=False
    ).select_related("team")
    for budget in budgets:
        team = budget.team
        if team is None:  # the column is nullable; team__isnull=False leaves such budgets out
            continue
        first, following = period_bounds(period=budget.period, now=now)
        if budget.blocked_period_start == first and budget.lifted_period_start != first:
            blocked.setdefault(
                team.pk,
                f"Team {team.name} reached the hard limit ({budget.hard_threshold_pct}%) of its "
                f"{budget.get_period_display()} budget '{budget.name}' ({budget.amount} {billing_currency()}); "
                f"requests are refused until {following.astimezone(billing_tz()):%Y-%m-%d %H:%M %Z} "
                "or until an admin lifts the block.",
            )
    return blocked


def team_budget_block(team_id: int, *, now: datetime | None = None) -> str | None:
    """Why the gateway must refuse this team's requests now, or None."""
    return teams_blocked(now=now).get(team_id)


def spend_metric_rows(*, now: datetime | None = None) -> list[tuple[dict[str, str], Decimal]]:
    """Rows for ``gpufleet_spend_total{currency,pool}`` and ``gpufleet_savings_total{currency}``.

    Counters in currency units over the current billing month: they grow through the month
    and drop to zero at its start, which Prometheus' ``rate()`` and ``increase()`` read as a
    counter reset. ``pool=""`` is capacity no pool held (the unallocated line). Each row
    carries ``__name__`` in its labels; values are Decimal, converted to float only at
    exposition. A collector should cache the rows for a scrape interval: each call computes
    the month's spend from history.
    """
    now = now or timezone.now()
    first, _ = period_bounds(period="month", now=now)
    window = fleet_window(start=first, end=now)
    report = spend_report(start=first, end=now, window=window)
    names = dict(Pool.objects.values_list("pk", "name"))
    currency = report.currency
    rows: list[tuple[dict[str, str], Decimal]] = [
        (
            {
                "__name__": "gpufleet_spend_total",
                "currency": currency,
                "pool": names.get(pool_id, "") if pool_id is not None else "",
            },
            totals.spend,
        )
        for pool_id, totals in sorted(totals_by_pool(report).items(), key=lambda item: str(item[0]))
    ]
    rows.append(({"__name__": "gpufleet_spend_total", "currency": currency, "pool": ""}, report.unallocated.spend))
    savings = savings_compute(start=first, end=now, window=window, report=report)
    rows.append(({"__name__": "gpufleet_savings_total", "currency": currency}, savings.savings))
    return rows


@dataclass(frozen=True)
class DecisionMeta:
    """Who decided what about which pool, for grouping effects."""

    policy_kind: str
    pool_id: int | None
    action: str
    at: datetime


def decision_effects_read(
    *,
    start: datetime,
    end: datetime,
    gpus: dict[int, GpuInfo] | None = None,
    decision_ids: Collection[int] | None = None,
) -> tuple[dict[int, DecisionEffect], dict[int, DecisionMeta]]:
    """Every instance decision of [start, end) with its effect accrued inside it (``fleet.costs.effects``).

    Reads the instances with their devices, then, per instance, its newest decision before the
    range (what was in effect when it opened) and its decisions in the range: five queries at most
    whatever the number of decisions. A scale-out is taken as the start, wake or launch it was
    done by. ``gpus`` (a window's cards) limits the GPUs priced; by default every card an
    instance is on.

    ``decision_ids`` (a page's rows) narrows it to those decisions' effects, the same as read
    whole: one decision's effect depends only on the decisions of its own instance and of the
    instances sharing its GPU (``decision_effects``), so only those instances are read, and only
    the asked ones are priced. A week of decisions is then no longer priced to show five hundred.
    """
    sleeping_holds_gpu = settings.FLEET_COST_SLEEPING_HOLDS_GPU
    moving = [
        action
        for action in (*RELEASING, *ADDING, "sleep", "wake")
        if action_direction(action, sleeping_holds_gpu=sleeping_holds_gpu) != NONE
    ]
    instances = Instance.objects.order_by()
    if decision_ids is not None:
        asked = list(
            Decision.objects.filter(pk__in=list(decision_ids), instance__isnull=False)
            .order_by()
            .values_list("instance_id", flat=True)
            .distinct()
        )
        cards = Instance.objects.filter(pk__in=asked, gpu__isnull=False).order_by().values("gpu_id")
        instances = instances.filter(Q(pk__in=asked) | Q(gpu_id__in=cards))
    held = list(
        instances.values_list("pk", "gpu_id", "mig_device_id", "gpu__node_id", "gpu__model_name", "mig_device__profile")
    )
    devices = {
        pk: Device(gpu_id, mig_id, Fraction(_profile_slices(profile), 7) if mig_id else Fraction(1))
        for pk, gpu_id, mig_id, _, _, profile in held
        if gpu_id is not None
    }
    if gpus is None:
        gpus = {
            gpu_id: GpuInfo(gpu_id, node_id, model) for _, gpu_id, _, node_id, model, _ in held if gpu_id is not None
        }
    # Narrowed to the instances read where a page asked; otherwise every instance's decisions.
    ids = [pk for pk, *_ in held] if decision_ids is not None else None
    newest_before = (
        Decision.objects.filter(instance=OuterRef("pk"), action__in=moving, created_at__lt=start)
        .order_by("-created_at", "-id")
        .values("pk")[:1]
    )
    # Read as a list of ids, not joined as a subquery: PostgreSQL would hash the whole decision
    # log (a week's is tens of thousands of rows) to find one decision per instance. Instances
    # without one are dropped here: excluded in SQL, the subquery would run twice per instance.
    prior = [
        pk
        for pk in Instance.objects.filter(Q(pk__in=ids) if ids is not None else Q())
        .order_by()
        .annotate(prior=Subquery(newest_before))
        .values_list("prior", flat=True)
        if pk is not None
    ]
    in_range = Q(instance__isnull=False, created_at__gte=start, created_at__lt=end)
    if ids is not None:
        in_range &= Q(instance_id__in=ids)
    # Those and the range's in one read, each with the time it took effect read once (parsing
    # timestamps is much of reading a week's log).
    at = Coalesce("applied_at", "created_at")
    fields = ("pk", "instance_id", "action", "inputs__via", at, "policy_kind", "pool_id")
    rows = Decision.objects.filter(Q(pk__in=prior) | in_range).order_by().values_list(*fields)
    decisions, meta = [], {}
    for pk, instance_id, action, via, at, kind, pool_id in rows:
        moved = via if action == "scale_out" and isinstance(via, str) and via else action
        decisions.append(DecisionRow(pk, instance_id, moved, at))
        meta[pk] = DecisionMeta(kind, pool_id, action, at)
    effects = decision_effects(
        decisions=decisions,
        devices=devices,
        gpus=gpus,
        prices=price_book(),
        start=start,
        end=end,
        sleeping_holds_gpu=sleeping_holds_gpu,
        wanted=decision_ids,
    )
    return effects, meta


@dataclass(frozen=True)
class Attribution:
    """Savings attributed to decisions over a range, beside the headline of the same range.

    headline = attributed - reclaimable + outside: the headline (``savings_compute``) counts every
    GPU-hour the static layout would have paid and nothing paid for; decisions account for the
    capacity they released, less what stayed paid because its GPU stayed up with nothing on it
    (reclaimable), and the rest changed outside decisions: GPUs that joined, left or went down,
    instances that stopped or crashed without a decision, the seconds between a decision and
    the stop it asked for, instances sharing a device.
    """

    start: datetime
    end: datetime
    currency: str
    headline: Savings
    effects: dict[int, DecisionEffect]
    decisions: dict[int, DecisionMeta]

    def _saving(self) -> list[tuple[int, DecisionEffect]]:
        return [(pk, effect) for pk, effect in self.effects.items() if effect.direction == SAVES and effect.lines]

    @property
    def attributed(self) -> Decimal:
        return money_sum([effect.amount for _, effect in self._saving()])

    @property
    def attributed_gpu_hours(self) -> Decimal:
        return money_sum([effect.gpu_hours for _, effect in self._saving()])

    @property
    def added_cost(self) -> Decimal:
        """What decisions that added capacity cost over the range (a positive amount)."""
        return -money_sum([effect.amount for effect in self.effects.values() if effect.direction == COSTS])

    @property
    def reclaimable(self) -> Decimal:
        return self.headline.reclaimable

    @property
    def outside(self) -> Decimal:
        with localcontext(CONTEXT):
            return self.headline.savings - self.attributed + self.reclaimable

    @property
    def outside_cents(self) -> Decimal:
        """``outside`` as the page shows it: from the other three figures each rounded to the cent,
        so the sum a reader checks on the page holds to the cent (the rounding of the three lands
        here, at most 1.5 cents from ``outside`` rounded on its own)."""
        return money_cents(self.headline.savings) - money_cents(self.attributed) + money_cents(self.reclaimable)

    def by(self, key: str) -> dict[Any, Decimal]:
        """Attributed savings by ``policy_kind``, ``pool_id`` or ``day`` (billing time zone)."""
        groups: dict[Any, Decimal] = defaultdict(Decimal)
        with localcontext(CONTEXT):
            for pk, effect in self._saving():
                if key == "day":
                    for day, amount in amount_by_day(effect, tz=billing_tz()).items():
                        groups[day] += amount
                else:
                    groups[getattr(self.decisions[pk], key)] += effect.amount
        return dict(groups)


def savings_attribution(*, start: datetime, end: datetime, window: FleetWindow | None = None) -> Attribution:
    """Decisions' savings over [start, until) and the headline over the same span, ``until`` the end
    ``savings_compute`` reaches (the last complete minute where spend is read from rollups)."""
    window = (window or fleet_window(start=start, end=end)).complete()
    headline = savings_compute(start=start, end=end, window=window)
    effects, meta = decision_effects_read(start=start, end=window.end, gpus=window.gpus)
    return Attribution(
        start=start, end=window.end, currency=headline.currency, headline=headline, effects=effects, decisions=meta
    )
