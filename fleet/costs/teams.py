"""Who used a pool: team shares of its spend that add up to it to the cent.

The gateway's request log is the source of usage. It plugs in through a *usage source*: any
callable ``(*, start, end, basis) -> {(pool_id, team_id): amount}``, named by dotted path in
``FLEET_TEAM_USAGE_SOURCE``; the default, ``request_log_usage``, reads ``RequestLog``.
GPU-seconds of a request are its end-to-end seconds on the instance: the time it kept a share
of the card busy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, localcontext
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
    """Usage summed exactly, in milliseconds to the microsecond or tokens, then GPU-seconds.

    Whole UTC hours the usage rollup has completed (``UsageHour``, below the ``usage``
    watermark) are read from it; the rest of the range (a start or end inside an hour, as
    a billing day in a half-hour time zone has, and hours after the watermark) from the
    raw log. The rollup holds the very sums the raw read computes, so the pieces add up to
    the raw read of the whole range.
    """
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        raise TypeError(f"usage is read between two datetimes, not {start!r} and {end!r}")
    hours_from, hours_to = usage_hours_done(start=start, end=end)
    if hours_from < hours_to:
        pieces = [
            _request_log_raw(start=start, end=hours_from, basis=basis, by=by) if start < hours_from else {},
            _usage_hours(start=hours_from, end=hours_to, basis=basis, by=by),
            _request_log_raw(start=hours_to, end=end, basis=basis, by=by) if hours_to < end else {},
        ]
    else:
        pieces = [_request_log_raw(start=start, end=end, basis=basis, by=by)]
    total: dict[tuple[int, int], Decimal] = {}
    with localcontext(CONTEXT):
        for piece in pieces:
            for group, amount in piece.items():
                total[group] = total.get(group, Decimal(0)) + amount
        if basis == "tokens":
            return total
        return {group: amount / 1000 for group, amount in total.items()}


def exact_ms(amount: Decimal | float | None) -> Decimal:
    """A sum of milliseconds to the microsecond. PostgreSQL's is exact already; SQLite has no
    decimal arithmetic (its sum is of floats, in an order of its own, the same each time), and
    to the microsecond it is the exact one."""
    with localcontext(CONTEXT):
        return Decimal(amount or 0).quantize(MICROSECOND_IN_MS)


def _request_log_raw(*, start: object, end: object, basis: Basis, by: str) -> dict[tuple[int, int], Decimal]:
    """Usage per pool and team (or key) in [start, end) from the raw log: milliseconds or tokens."""
    from fleet.models import RequestLog

    rows = (
        RequestLog.objects.filter(at__gte=start, at__lt=end, pool__isnull=False, **{f"{by}__isnull": False})
        .values("pool_id", by)
        .annotate(amount=request_gpu_ms() if basis == "gpu_seconds" else request_tokens())
    )
    return _amounts(rows, basis=basis, by=by)


def _usage_hours(*, start: object, end: object, basis: Basis, by: str) -> dict[tuple[int, int], Decimal]:
    """Usage per pool and team (or key) over whole rolled-up hours in [start, end): milliseconds or tokens."""
    from django.db.models import Sum

    from fleet.models import UsageHour

    rows = (
        UsageHour.objects.filter(hour__gte=start, hour__lt=end, **{f"{by}__isnull": False})
        .values("pool_id", by)
        .annotate(amount=Sum("gpu_ms" if basis == "gpu_seconds" else "tokens"))
    )
    return _amounts(rows, basis=basis, by=by)


def _amounts(rows: Any, *, basis: Basis, by: str) -> dict[tuple[int, int], Decimal]:
    if basis == "tokens":
        return {(row["pool_id"], row[by]): Decimal(row["amount"] or 0) for row in rows}
    return {(row["pool_id"], row[by]): exact_ms(row["amount"]) for row in rows}


def utc_hour(at: datetime) -> datetime:
    """Start of the UTC hour of ``at``: usage hours are UTC hours whatever zone a range is given in."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def usage_hours_done(*, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours of [start, end) the usage rollup holds, as [first, last); empty if first >= last.

    A range that holds no whole hour costs no query.
    """
    first = utc_hour(start)
    if first < start:
        first += HOUR
    last = utc_hour(end)
    if first >= last:
        return first, first
    from fleet.models import RollupWatermark

    done = RollupWatermark.objects.filter(name="usage").values_list("done_until", flat=True).first()
    return first, max(first, min(last, done)) if done is not None else first
