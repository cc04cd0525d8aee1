"""Which price per GPU-hour applies to a GPU at each moment."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class RateRow:
    """A ``PriceRate`` reduced to what pricing needs, so the arithmetic needs no database."""

    rate_id: int
    gpu_model: str
    node_id: int | None
    effective_from: date
    price_per_gpu_hour: Decimal


@dataclass(frozen=True)
class PricedSpan:
    """A stretch of time with one price; ``rate`` is None where no rate was in effect yet."""

    start: datetime
    end: datetime
    rate: RateRow | None


class PriceBook:
    """Rates by GPU model and node, each starting at midnight of its day in the billing time zone.

    A node's own rate beats the fleet rate from its effective day on (reserved or on-premises
    hosts); before it, the fleet rate applies. Later rates replace earlier ones.
    """

    def __init__(self, rates: Iterable[RateRow], *, tz: ZoneInfo) -> None:
        self.tz = tz
        grouped: dict[tuple[str, int | None], list[RateRow]] = defaultdict(list)
        for rate in rates:
            grouped[(rate.gpu_model, rate.node_id)].append(rate)
        self._rates = {key: sorted(rows, key=lambda row: row.effective_from) for key, rows in grouped.items()}
        # Each rate's first instant, worked out once: a week's spend prices thousands of lines.
        self._starts = {key: [self.starts_at(row) for row in rows] for key, rows in self._rates.items()}
        # Spans as worked out, per model, node (None for a node with no rate of its own: it pays
        # the fleet's, as every other such node) and interval: a day's thousand cards up all day
        # are cut and priced once.
        self._spans: dict[tuple[str, int | None, datetime, datetime], list[PricedSpan]] = {}

    def starts_at(self, rate: RateRow) -> datetime:
        return datetime.combine(rate.effective_from, time(0), tzinfo=self.tz)

    def _in_effect(self, key: tuple[str, int | None], at: datetime) -> RateRow | None:
        index = bisect.bisect_right(self._starts.get(key, []), at) - 1
        return self._rates[key][index] if index >= 0 else None

    def rate_at(self, *, gpu_model: str, node_id: int, at: datetime) -> RateRow | None:
        own = self._in_effect((gpu_model, node_id), at)
        return own or self._in_effect((gpu_model, None), at)

    def spans(self, *, gpu_model: str, node_id: int, start: datetime, end: datetime) -> list[PricedSpan]:
        """Cut [start, end) wherever the applicable rate changes."""
        key = (gpu_model, node_id if (gpu_model, node_id) in self._rates else None, start, end)
        known = self._spans.get(key)
        if known is None:
            cuts = sorted(
                {
                    moment
                    for rates in ((gpu_model, node_id), (gpu_model, None))
                    for moment in self._starts.get(rates, [])
                    if start < moment < end
                }
            )
            bounds = [start, *cuts, end]
            known = self._spans[key] = [
                PricedSpan(begin, finish, self.rate_at(gpu_model=gpu_model, node_id=node_id, at=begin))
                for begin, finish in itertools.pairwise(bounds)
                if begin < finish
            ]
        return list(known)
