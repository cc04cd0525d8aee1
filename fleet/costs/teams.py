"""Who used a pool: team shares of its spend that add up to it to the cent.

The gateway's request log is the source of usage. It plugs in through a *usage source*: any
callable ``(*, start, end, basis) -> {(pool_id, team_id): amount}``, named by dotted path in
``FLEET_TEAM_USAGE_SOURCE``; the default, ``request_log_usage``, reads ``RequestLog``.
GPU-seconds of a request are its end-to-end seconds on the instance: the time it kept a share
of the card busy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, localcontext
from itertools import pairwise
from typing import Any, Literal, Protocol

from fleet.costs.money import CENT, CONTEXT, money_cents

Basis = Literal["gpu_seconds", "tokens"]
MICROSECOND_IN_MS = Decimal("0.001")
HOUR = timedelta(hours=1)
BASES: tuple[Basis, ...] = ("gpu_seconds", "tokens")


class UsageSource(Protocol):
    def __call__(self, *, start: object, end: object, basis: Basis) -> Mapping[tuple[int, int], Decimal]: ...


def team_shares(*, total: Decimal, usage: Mapping[int, Decimal]) -> dict[int, Decimal]:
    """Split ``total`` (rounded to cents) across teams in proportion to ``usage``, exactly.

    Largest remainder on cents: each team first gets its proportional amount rounded down to
    the cent; the cents left over go one each to the teams with the largest remainders (ties
    to the lower team id, so the split is the same every time). The shares add up to the
    rounded total with no cent lost or invented. No usage at all: no shares.
    """
    usage = {team: amount for team, amount in usage.items() if amount > 0}
    used = sum(usage.values(), Decimal(0))
    if not usage or used <= 0:
        return {}
    cents_total = int(money_cents(total) / CENT)
    exact: dict[int, Decimal] = {}
    floors: dict[int, int] = {}
    with localcontext(CONTEXT):
        for team, amount in usage.items():
            exact[team] = Decimal(cents_total) * amount / used
            floors[team] = int(exact[team].to_integral_value(rounding=ROUND_DOWN))
    left = cents_total - sum(floors.values())
    by_remainder = sorted(usage, key=lambda team: (-(exact[team] - floors[team]), team))
    for team in by_remainder[:left]:
        floors[team] += 1
    return {team: Decimal(cents) * CENT for team, cents in floors.items()}


def request_log_usage(*, start: object, end: object, basis: Basis) -> dict[tuple[int, int], Decimal]:
    """Team usage per pool from the gateway's request log, in one grouped query."""
    return _request_log_usage(start=start, end=end, basis=basis, by="team_id")


def request_log_key_usage(*, start: object, end: object, basis: Basis) -> dict[tuple[int, int], Decimal]:
    """API-key usage per pool from the gateway's request log: a usage source whose second id is a key's.

    ``team_spend`` with it shares each pool's spend among keys as it does among teams. Rows
    logged before keys were recorded name no key and are left out.
    """
    return _request_log_usage(start=start, end=end, basis=basis, by="api_key_id")


def request_gpu_ms() -> Any:
    """GPU-milliseconds of a group of requests: each latency as a decimal to the microsecond, summed.

    A sum of floats depends on the order the database adds them in (PostgreSQL's parallel
    aggregation varies it), and a share on a half cent would then flip between two reads of
    the same rows. The raw read and the hourly usage rollup both sum with this.
    """
    from django.db.models import DecimalField, Sum
    from django.db.models.functions import Cast

    return Sum(Cast("latency_ms", DecimalField(max_digits=18, decimal_places=3)))


def request_tokens() -> Any:
    """Tokens of a group of requests, prompt plus output, a missing count as 0: the raw read's and the rollup's."""
    from django.db.models import Sum
    from django.db.models.functions import Coalesce

    return Sum(Coalesce("prompt_tokens", 0) + Coalesce("output_tokens", 0))


def _request_log_usage(*, start: object, end: object, basis: Basis, by: str) -> dict[tuple[int, int], Decimal]:
    """Usage of [start, end) summed exactly: ``_request_log_usage_of_days`` of that one day."""
    return _request_log_usage_of_days(days=[(start, end)], basis=basis, by=by)[0]


# The request log's sources and the id each groups by: ``usage_of_days`` reads their days together.
REQUEST_LOG_SOURCES: dict[object, str] = {request_log_usage: "team_id", request_log_key_usage: "api_key_id"}


def usage_of_days(
    *, source: UsageSource, days: Sequence[tuple[datetime, datetime]], basis: Basis
) -> list[Mapping[tuple[int, int], Decimal]]:
    """What ``source`` gives for each of ``days`` (disjoint [start, end) ranges in time order), in their order.

    The request log's own sources (``REQUEST_LOG_SOURCES``) read every day in the same few
    queries, each day's usage the very decimals its own read gives; any other source is
    asked for each day in turn, as it takes one range at a time.
    """
    by = REQUEST_LOG_SOURCES.get(source)
    if by is None:
        return [source(start=start, end=end, basis=basis) for start, end in days]
    return list(_request_log_usage_of_days(days=days, basis=basis, by=by))


def _request_log_usage_of_days(
    *, days: Sequence[tuple[object, object]], basis: Basis, by: str
) -> list[dict[tuple[int, int], Decimal]]:
    """Usage of each day summed exactly, in milliseconds to the microsecond or tokens, then GPU-seconds.

    Whole UTC hours the usage rollup has completed (``UsageHour``, below the ``usage``
    watermark, read once for all days) are read from it; the rest of each day (a start or
    end inside an hour, as a billing day in a half-hour time zone has, and hours after the
    watermark) from the raw log. The rollup holds the very sums the raw read computes, so
    the pieces add up to the raw read of the whole day. All days' rollup hours are one
    grouped query and all their raw pieces another, each row told to its day by its time.
    """
    checked: list[tuple[datetime, datetime]] = []
    for start, end in days:
        if not isinstance(start, datetime) or not isinstance(end, datetime):
            raise TypeError(f"usage is read between two datetimes, not {start!r} and {end!r}")
        checked.append((start, end))
    days = checked
    if any(start > end for start, end in days) or any(later[0] < day[1] for day, later in pairwise(days)):
        raise ValueError("usage days must be disjoint [start, end) ranges in time order")
    whole = [whole_hours(start=start, end=end) for start, end in days]
    done = usage_watermark() if any(first < last for first, last in whole) else None
    raw: list[tuple[int, datetime, datetime]] = []
    rolled: list[tuple[int, datetime, datetime]] = []
    for index, ((start, end), (first, last)) in enumerate(zip(days, whole, strict=True)):
        last = max(first, min(last, done)) if done is not None else first
        if first < last:
            rolled.append((index, first, last))
            raw += [(index, start, first), (index, last, end)]
        else:
            raw.append((index, start, end))
    amounts = _raw_amounts(pieces=[piece for piece in raw if piece[1] < piece[2]], basis=basis, by=by)
    amounts += _rolled_up_amounts(pieces=rolled, basis=basis, by=by)
    totals: list[dict[tuple[int, int], Decimal]] = [{} for _ in days]
    with localcontext(CONTEXT):
        for index, group, amount in amounts:
            total = totals[index]
            total[group] = total.get(group, Decimal(0)) + amount
        if basis == "tokens":
            return totals
        return [{group: amount / 1000 for group, amount in total.items()} for total in totals]


def exact_ms(amount: Decimal | float | None) -> Decimal:
    """A sum of milliseconds to the microsecond. PostgreSQL's is exact already; SQLite has no
    decimal arithmetic (its sum is of floats, in an order of its own, the same each time), and
    to the microsecond it is the exact one."""
    with localcontext(CONTEXT):
        return Decimal(amount or 0).quantize(MICROSECOND_IN_MS)


Piece = tuple[int, datetime, datetime]


def _raw_amounts(*, pieces: list[Piece], basis: Basis, by: str) -> list[tuple[int, tuple[int, int], Decimal]]:
    """Usage per pool and team (or key) of each (day, start, end) piece from the raw log: milliseconds or tokens."""
    from fleet.models import RequestLog

    rows = RequestLog.objects.filter(pool__isnull=False, **{f"{by}__isnull": False})
    return _piece_amounts(
        rows, "at", pieces, request_gpu_ms() if basis == "gpu_seconds" else request_tokens(), basis=basis, by=by
    )


def _rolled_up_amounts(*, pieces: list[Piece], basis: Basis, by: str) -> list[tuple[int, tuple[int, int], Decimal]]:
    """Usage per pool and team (or key) of each (day, first, last) run of rolled-up hours: milliseconds or tokens."""
    from django.db.models import Sum

    from fleet.models import UsageHour

    rows = UsageHour.objects.filter(**{f"{by}__isnull": False})
    return _piece_amounts(
        rows, "hour", pieces, Sum("gpu_ms" if basis == "gpu_seconds" else "tokens"), basis=basis, by=by
    )


def _piece_amounts(
    rows: Any, field: str, pieces: list[Piece], amount: Any, *, basis: Basis, by: str
) -> list[tuple[int, tuple[int, int], Decimal]]:
    """(day, (pool, team or key), amount) of ``rows`` summed by ``amount`` in each piece, in one query.

    Each piece is its own grouped read of its range, as a query of that piece alone reads it
    (SQLite sums floats, so two pieces summed together could differ in the last digit), the
    pieces' reads joined with UNION ALL.
    """
    from django.db.models import IntegerField, Value

    reads = [
        rows.filter(**{f"{field}__gte": start, f"{field}__lt": end})
        .values("pool_id", by)
        .annotate(amount=amount, piece=Value(number, output_field=IntegerField()))
        .order_by()
        for number, (_, start, end) in enumerate(pieces)
    ]
    if not reads:
        return []
    exact = _exact_tokens if basis == "tokens" else exact_ms
    grouped = reads[0].union(*reads[1:], all=True) if len(reads) > 1 else reads[0]
    return [(pieces[row["piece"]][0], (row["pool_id"], row[by]), exact(row["amount"])) for row in grouped]


def _exact_tokens(amount: int | None) -> Decimal:
    return Decimal(amount or 0)


def utc_hour(at: datetime) -> datetime:
    """Start of the UTC hour of ``at``: usage hours are UTC hours whatever zone a range is given in."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def whole_hours(*, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours of [start, end), as [first, last); empty if first >= last."""
    first = utc_hour(start)
    if first < start:
        first += HOUR
    last = utc_hour(end)
    return (first, last) if first < last else (first, first)


def usage_watermark() -> datetime | None:
    """The end of the hours the usage rollup has completed; None before it first ran."""
    from fleet.models import RollupWatermark

    return RollupWatermark.objects.filter(name="usage").values_list("done_until", flat=True).first()
