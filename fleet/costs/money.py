"""Decimal arithmetic for money: one precision, one rounding, one place."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, localcontext
from fractions import Fraction

# 34 significant digits (IEEE decimal128) keep a year of micro-second GPU-hours at four-decimal
# prices exact to far below a cent; every intermediate sum is carried at this precision.
CONTEXT = Context(prec=34, rounding=ROUND_HALF_EVEN)
CENT = Decimal("0.01")
ZERO = Decimal(0)
MICROSECONDS_PER_HOUR = 3_600_000_000


def duration_us(start: datetime, end: datetime) -> int:
    """Whole microseconds between two instants: integer time, so no float creeps into money."""
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def money_cost(*, price_per_hour: Decimal, micros: int, share: Fraction) -> Decimal:
    """price x hours x share, with the one division done last so the error stays at 1e-34."""
    with localcontext(CONTEXT):
        numerator = price_per_hour * Decimal(micros) * Decimal(share.numerator)
        return numerator / (Decimal(MICROSECONDS_PER_HOUR) * Decimal(share.denominator))


def money_sum(values: list[Decimal] | tuple[Decimal, ...]) -> Decimal:
    with localcontext(CONTEXT):
        return sum(values, ZERO)


def money_cents(amount: Decimal) -> Decimal:
    """Round to cents for display, half up (the rule invoices use)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def gpu_hours(*, micros: int, share: Fraction) -> Decimal:
    with localcontext(CONTEXT):
        return (
            Decimal(micros) * Decimal(share.numerator) / (Decimal(MICROSECONDS_PER_HOUR) * Decimal(share.denominator))
        )
