"""What the requests, exports and alerts pages read: the gateway's log filtered and paged, spend by day, alert history.

Filters come from the query string and are checked here: a value that names nothing (an
unknown team, a tier that does not exist, a range that cannot be read) is an error the page
shows, never a filter quietly dropped, so an unfiltered table is never shown as a filtered one.
Pages are keyset pages over ``(at, id)`` newest first: the cursor is the last row shown, so
a page stays the same however many requests arrive meanwhile, and no page costs a count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dashboard.selectors import CUSTOM_MAX, DEFAULT_RANGE, RANGES, TimeRange, time_range_parse
from fleet.costs.budgets import usage_source_configured
from fleet.costs.selectors import billing_tz, pool_shares, spend_reports_by_day, totals_by_pool
from fleet.costs.teams import UsageSource, request_log_key_usage, usage_of_days
from fleet.models import Alert, ApiKey, Pool, RequestLog, Team

TIERS = ("S", "M", "L")
STATUSES = {"ok": "below 400", "error": "400 or above"}
COLD = {"yes": True, "no": False}
PAGE_SIZE = 50
PAGE_SIZE_MAX = 200
EXPORT_ROWS_MAX = 100_000
SPEND_EXPORT_DAYS_MAX = 92
ALERTS_SHOWN = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class RequestFilters:
    """A checked filter of the request log; ``errors`` says what in the query string was refused."""

    time_range: TimeRange
    team_id: int | None = None
    key_id: int | None = None
    pool_id: int | None = None
    tier: str = ""
    status: str = ""
    cold: str = ""
    page_size: int = PAGE_SIZE
    before: tuple[datetime, int] | None = None
    errors: list[str] = field(default_factory=list)

    def queryset(self) -> QuerySet[RequestLog]:
        """The matching rows of the range, newest first, before the cursor if there is one."""
        rows = RequestLog.objects.filter(at__gte=self.time_range.start, at__lt=self.time_range.end)
        if self.team_id is not None:
            rows = rows.filter(team_id=self.team_id)
        if self.key_id is not None:
            rows = rows.filter(api_key_id=self.key_id)
        if self.pool_id is not None:
            rows = rows.filter(pool_id=self.pool_id)
        if self.tier:
            rows = rows.filter(tier=self.tier)
        if self.status == "ok":
            rows = rows.filter(status__lt=400)
        elif self.status == "error":
            rows = rows.filter(status__gte=400)
        elif self.status:
            rows = rows.filter(status=int(self.status))
        if self.cold:
            rows = rows.filter(cold_start=COLD[self.cold])
        if self.before is not None:
            at, pk = self.before
            rows = rows.filter(Q(at__lt=at) | Q(at=at, id__lt=pk))
        return rows.order_by("-at", "-id")


@dataclass(frozen=True)
class FilterChoices:
    teams: list[Team]
    keys: list[ApiKey]
    pools: list[Pool]


def filter_choices() -> FilterChoices:
    """What the filter menus offer: three queries, whatever the log holds."""
    return FilterChoices(
        teams=list(Team.objects.order_by("name")),
        keys=list(ApiKey.objects.select_related("team").order_by("team__name", "name")),
        pools=list(Pool.objects.order_by("name")),
    )


def cursor_format(row: RequestLog) -> str:
    """The keyset cursor after ``row``: its time in microseconds since the epoch and its id."""
    return f"{(row.at - EPOCH) // MICROSECOND}_{row.pk}"


def _cursor_parse(value: str) -> tuple[datetime, int] | None:
    at, _, pk = value.partition("_")
    if not (at.isdigit() and pk.isdigit()):
        return None
    try:
        return EPOCH + int(at) * MICROSECOND, int(pk)
    except OverflowError:
        return None


def range_errors(params: Mapping[str, str]) -> list[str]:
    """What is wrong with the range the query string asks for; ``time_range_parse`` itself falls back silently."""
    key = params.get("range", DEFAULT_RANGE)
    if key != "custom":
        return [] if key in RANGES else [f"Unknown range '{key}': choose one of {', '.join(RANGES)} or from/to."]
    start, end = params.get("start", ""), params.get("end", "")
    try:
        first, last = parse_datetime(start), parse_datetime(end)
    except ValueError:
        first = last = None
    if first is None or last is None:
        return [f"The range needs a readable start and end (ISO dates, e.g. 2026-01-31T09:00): '{start}' to '{end}'."]
    first = first if timezone.is_aware(first) else timezone.make_aware(first)
    last = last if timezone.is_aware(last) else timezone.make_aware(last)
    if first >= last:
        return [f"The range must end after it starts; got {start} to {end}."]
    if last - first > CUSTOM_MAX:
        return [f"The range is longer than {CUSTOM_MAX.days} days: choose a shorter one."]
    return []


def _id(params: Mapping[str, str], name: str, label: str, known: set[int], errors: list[str]) -> int | None:
    value = params.get(name, "")
    if value == "":
        return None
    if not value.isdigit() or int(value) not in known:
        errors.append(f"No {label} '{value}': choose one from the list.")
        return None
    return int(value)


def request_filters_parse(
    *, params: Mapping[str, str], choices: FilterChoices, now: datetime | None = None
) -> RequestFilters:
    """The filters of a query string, each checked; every refused value adds a message to ``errors``."""
    errors = range_errors(params)
    team_id = _id(params, "team", "team", {team.pk for team in choices.teams}, errors)
    key_id = _id(params, "key", "API key", {key.pk for key in choices.keys}, errors)
    pool_id = _id(params, "pool", "pool", {pool.pk for pool in choices.pools}, errors)
    tier = params.get("tier", "")
    if tier not in ("", *TIERS):
        errors.append(f"No tier '{tier}': choose S, M or L.")
        tier = ""
    status = params.get("status", "")
    if status not in ("", *STATUSES) and not (status.isdigit() and 100 <= int(status) <= 599):
        errors.append(f"Status '{status}' is neither ok, error nor an HTTP status from 100 to 599.")
        status = ""
    cold = params.get("cold", "")
    if cold not in ("", *COLD):
        errors.append(f"Cold start '{cold}' is neither yes nor no.")
        cold = ""
    per = params.get("per", "")
    page_size = PAGE_SIZE
    if per:
        if per.isdigit() and 1 <= int(per) <= PAGE_SIZE_MAX:
            page_size = int(per)
        else:
            errors.append(f"Page size '{per}' is not a number from 1 to {PAGE_SIZE_MAX}.")
    before = None
    if params.get("before", ""):
        before = _cursor_parse(params["before"])
        if before is None:
            errors.append(f"The page cursor '{params['before']}' cannot be read: go back to the first page.")
    return RequestFilters(
        time_range=time_range_parse(params=params, now=now),
        team_id=team_id,
        key_id=key_id,
        pool_id=pool_id,
        tier=tier,
        status=status,
        cold=cold,
        page_size=page_size,
        before=before,
        errors=errors,
    )


@dataclass(frozen=True)
class RequestPage:
    rows: list[RequestLog]
    next_cursor: str | None


def requests_page_rows(*, filters: RequestFilters) -> RequestPage:
    """One page of matching requests in one query: a row more than the page tells whether another follows."""
    rows = list(
        filters.queryset().select_related("pool", "team", "api_key", "instance__gpu__node")[: filters.page_size + 1]
    )
    more = len(rows) > filters.page_size
    rows = rows[: filters.page_size]
    return RequestPage(rows=rows, next_cursor=cursor_format(rows[-1]) if more and rows else None)


def request_detail(*, request_id: int) -> RequestLog | None:
    return (
        RequestLog.objects.select_related("pool", "team", "api_key", "instance__gpu__node")
        .filter(pk=request_id)
        .first()
    )


# The export's columns: (CSV header, the request log field it reads).
REQUEST_CSV_COLUMNS = (
    ("id", "id"),
    ("at_utc", "at"),
    ("team", "team__name"),
    ("api_key", "api_key__name"),
    ("pool", "pool__name"),
    ("instance", "instance_id"),
    ("endpoint", "endpoint"),
    ("model", "model"),
    ("tier", "tier"),
    ("rcf", "rcf"),
    ("stream", "stream"),
    ("prompt_tokens", "prompt_tokens"),
    ("output_tokens", "output_tokens"),
    ("ttft_ms", "ttft_ms"),
    ("latency_ms", "latency_ms"),
    ("status", "status"),
    ("cold_start", "cold_start"),
    ("retried", "retried"),
    ("error", "error"),
)
REQUEST_CSV_HEADER = tuple(header for header, _ in REQUEST_CSV_COLUMNS)


def requests_export_count(*, filters: RequestFilters) -> int:
    """How many rows an export of ``filters`` would write (the cursor and page size do not apply)."""
    return _export_queryset(filters).count()


def _export_queryset(filters: RequestFilters) -> QuerySet[RequestLog]:
    return replace(filters, before=None).queryset()


def requests_export_rows(*, filters: RequestFilters) -> Iterator[tuple[Any, ...]]:
    """The matching rows as CSV fields, read in chunks so a long export never sits in memory whole."""
    rows = _export_queryset(filters).values_list(*(field for _, field in REQUEST_CSV_COLUMNS))
    for row in rows[:EXPORT_ROWS_MAX].iterator(chunk_size=2000):
        at = row[1].astimezone(UTC)
        yield (row[0], at.isoformat(), *("" if value is None else value for value in row[2:]))


# -- spend by day ------------------------------------------------------------------------


SPEND_GROUPS = ("pool", "team", "key")


@dataclass(frozen=True)
class SpendDayRow:
    day: str
    group: str
    spend: Decimal


def billing_days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at midnights of the billing time zone."""
    tz = billing_tz()
    pieces: list[tuple[datetime, datetime]] = []
    at = start
    while at < end:
        local = at.astimezone(tz)
        following = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
        following = following.astimezone(UTC)
        pieces.append((at, min(following, end)))
        at = min(following, end)
    return pieces


def spend_export_rows(*, time_range: TimeRange, group: str) -> tuple[str, list[SpendDayRow]]:
    """Spend of each billing day of the range by pool, team or API key, from the report of that day.

    Each day is its own report over the cost page's rollups (``raw=False``), the range read
    in one pass (``spend_reports_by_day``), grouped as the
    cost page groups: by pool (``totals_by_pool``; capacity no pool held is "unallocated"), by
    team (``pool_shares`` of the configured usage source's usage, whose shares add up to each pool's
    spend to the cent) or by key (``pool_shares`` of the request log's usage per key), each day's
    usage read with the others (``usage_of_days``). A pool
    with no recorded usage keeps its spend as "pool X (no usage)". The days partition the range,
    so the rows add up to the range's spend.
    """
    names: dict[int | None, str] = dict(Pool.objects.values_list("pk", "name"))
    source: UsageSource | None
    if group == "key":
        owners = {key.pk: f"{key.team.name}: {key.name}" for key in ApiKey.objects.select_related("team")}
        source = request_log_key_usage
    else:
        owners = dict(Team.objects.values_list("pk", "name"))
        source = usage_source_configured() if group == "team" else None
    currency = ""
    out: list[SpendDayRow] = []
    tz = billing_tz()
    days = billing_days(time_range.start, time_range.end)
    usage = usage_of_days(source=source, days=days, basis="gpu_seconds") if source is not None else [{} for _ in days]
    for report, used in zip(spend_reports_by_day(days=days), usage, strict=True):
        currency = report.currency
        day = report.start.astimezone(tz).date().isoformat()
        amounts: dict[str, Decimal] = defaultdict(Decimal)
        pools = totals_by_pool(report)
        shared = pool_shares(pools=pools, usage=used) if source is not None else {}
        for pool_id, totals in pools.items():
            pool_name = names.get(pool_id, "unknown pool")
            shares = shared.get(pool_id) if pool_id is not None else None
            if group != "pool" and shares:
                for owner, amount in shares.items():
                    amounts[owners.get(owner, f"{group} {owner}")] += amount
            elif group != "pool":
                amounts[f"pool {pool_name} (no usage)"] += totals.spend
            else:
                amounts[pool_name] += totals.spend
        if report.unallocated.spend:
            amounts["unallocated"] += report.unallocated.spend
        out.extend(SpendDayRow(day=day, group=name, spend=amount) for name, amount in sorted(amounts.items()))
    return currency, out


# -- alert history -----------------------------------------------------------------------------


def alerts_history(*, limit: int = ALERTS_SHOWN) -> list[Alert]:
    """Alerts that fired, firing or resolved since, newest firing first, with their rules in the same query."""
    return list(
        Alert.objects.filter(fired_at__isnull=False)
        .select_related("rule", "rule__pool")
        .order_by("-fired_at", "-id")[:limit]
    )
