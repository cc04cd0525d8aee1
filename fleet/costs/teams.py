"""Who used a pool: team shares of its spend that add up to it to the cent.

The gateway's request log is the source of usage. It plugs in through a *usage source*: any
callable ``(*, start, end, basis) -> {(pool_id, team_id): amount}``, named by dotted path in
``FLEET_TEAM_USAGE_SOURCE``; the default, ``request_log_usage``, reads ``RequestLog``.
GPU-seconds of a request are its end-to-end seconds on the instance: the time it kept a share
of the card busy.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Literal, Protocol

from fleet.costs.money import CENT, CONTEXT, money_cents

Basis = Literal["gpu_seconds", "tokens"]
MICROSECOND_IN_MS = Decimal("0.001")
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


def _request_log_usage(*, start: object, end: object, basis: Basis, by: str) -> dict[tuple[int, int], Decimal]:
    """Usage summed exactly: latencies as decimals of a microsecond. A sum of floats depends on the
    order the database adds them in (PostgreSQL's parallel aggregation varies it), and a share on
    a half cent would then flip between two reads of the same rows."""
    from django.db.models import DecimalField, Sum
    from django.db.models.functions import Cast, Coalesce

    from fleet.models import RequestLog

    latency_ms = DecimalField(max_digits=18, decimal_places=3)
    rows = (
        RequestLog.objects.filter(at__gte=start, at__lt=end, pool__isnull=False, **{f"{by}__isnull": False})
        .values("pool_id", by)
        .annotate(
            amount=Sum(Cast("latency_ms", latency_ms))
            if basis == "gpu_seconds"
            else Sum(Coalesce("prompt_tokens", 0) + Coalesce("output_tokens", 0))
        )
    )
    if basis == "tokens":
        return {(row["pool_id"], row[by]): Decimal(row["amount"] or 0) for row in rows}
    # SQLite has no decimal arithmetic (its sum is of floats, in an order of its own, the same
    # each time): to the microsecond, the sum is the exact one.
    with localcontext(CONTEXT):
        return {
            (row["pool_id"], row[by]): Decimal(row["amount"] or 0).quantize(MICROSECOND_IN_MS) / 1000 for row in rows
        }
