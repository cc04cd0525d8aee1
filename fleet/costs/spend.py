"""Spend lines: every priced piece of GPU time, allocated or not, with its arithmetic kept.

A line is one GPU share over one interval at one price, so any total on any page can be
traced back to lines a person can re-add by hand: hours x share x price = spend.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from fractions import Fraction

from fleet.costs.allocation import Allocation, unallocated_pieces
from fleet.costs.money import CONTEXT, ZERO, duration_us, gpu_hours, money_cost
from fleet.costs.prices import PriceBook

ALLOCATED = "allocated"
UNALLOCATED = "unallocated"
BASELINE = "baseline"
EFFECT = "effect"
SLEEP = "sleep"


@dataclass(frozen=True)
class GpuInfo:
    gpu_id: int
    node_id: int
    model_name: str


@dataclass(frozen=True)
class CostLine:
    kind: str
    gpu_id: int
    node_id: int
    gpu_model: str
    start: datetime
    end: datetime
    share: Fraction
    gpu_hours: Decimal
    price_per_gpu_hour: Decimal | None
    rate_id: int | None
    spend: Decimal
    busy: Decimal
    idle: Decimal
    utilization: Decimal | None = None
    instance_id: int | None = None
    pool_id: int | None = None
    mig_device_id: int | None = None
    state: str = ""

    @property
    def priced(self) -> bool:
        return self.price_per_gpu_hour is not None

    def arithmetic(self) -> str:
        """The line's sum as a person would write it."""
        if self.price_per_gpu_hour is None:
            return f"{self.gpu_hours} GPU-h with no price in effect"
        return f"{self.gpu_hours} GPU-h x {self.price_per_gpu_hour}/GPU-h = {self.spend}"


@dataclass
class Totals:
    spend: Decimal = ZERO
    busy: Decimal = ZERO
    idle: Decimal = ZERO
    gpu_hours: Decimal = ZERO
    unpriced_gpu_hours: Decimal = ZERO

    def add(self, line: CostLine) -> None:
        self.add_all((line,))

    def add_all(self, lines: Iterable[CostLine]) -> None:
        """Add ``lines`` one after the other, as ``add`` does each."""
        with localcontext(CONTEXT):
            for line in lines:
                self.spend += line.spend
                self.busy += line.busy
                self.idle += line.idle
                self.gpu_hours += line.gpu_hours
                if line.price_per_gpu_hour is None:
                    self.unpriced_gpu_hours += line.gpu_hours


class UtilizationIndex:
    """Mean GPU duty cycle over any interval, from prefix sums of the samples in it.

    The mean of the samples taken in [start, end) stands for the interval: the agent samples
    at a fixed cadence, so a plain mean is a time-weighted one. A rollup row stands for the
    raw samples behind it: its mean counts with its sample count as weight (an optional
    fourth element), so minutes and raw samples mix without bias. A MIG device has no duty
    cycle of its own in NVML; its GPU's stands in for it.
    """

    def __init__(
        self, samples: Iterable[tuple[int, datetime, float | None] | tuple[int, datetime, float | None, int]]
    ) -> None:
        by_gpu: dict[int, list[tuple[datetime, Decimal, int]]] = defaultdict(list)
        for gpu_id, at, percent, *weight in samples:
            count = weight[0] if weight else 1
            if percent is not None and count > 0:
                by_gpu[gpu_id].append((at, Decimal(str(percent)) / 100, count))
        self._times: dict[int, list[datetime]] = {}
        self._prefix: dict[int, list[tuple[Decimal, int]]] = {}
        with localcontext(CONTEXT):
            for gpu_id, rows in by_gpu.items():
                rows.sort(key=lambda row: row[0])
                self._times[gpu_id] = [at for at, _, _ in rows]
                running = [(ZERO, 0)]
                for _, value, count in rows:
                    total, n = running[-1]
                    running.append((total + min(max(value, ZERO), Decimal(1)) * count, n + count))
                self._prefix[gpu_id] = running

    def sums(self, *, gpu_id: int, start: datetime, end: datetime) -> tuple[Decimal, int]:
        """Sum of the weighted duty cycles in [start, end) and their total weight."""
        times = self._times.get(gpu_id)
        if not times:
            return ZERO, 0
        first, last = self._first(times, start), bisect.bisect_left(times, end)
        if first >= last:
            return ZERO, 0
        prefix = self._prefix[gpu_id]
        with localcontext(CONTEXT):
            return prefix[last][0] - prefix[first][0], prefix[last][1] - prefix[first][1]

    def _first(self, times: list[datetime], start: datetime) -> int:
        return bisect.bisect_left(times, start)

    def mean(self, *, gpu_id: int, start: datetime, end: datetime) -> Decimal | None:
        total, weight = self.sums(gpu_id=gpu_id, start=start, end=end)
        if not weight:
            return None
        with localcontext(CONTEXT):
            return total / weight


class PeriodUtilization(UtilizationIndex):
    """Rows that each stand for a period from their time on (rollups summed per hour or day):
    an interval starting inside a period reads it whole."""

    def _first(self, times: list[datetime], start: datetime) -> int:
        return max(bisect.bisect_right(times, start) - 1, 0)


class TieredUtilization(UtilizationIndex):
    """Rollup periods up to ``split``, raw samples from it, combined by their weights."""

    def __init__(self, *, periods: PeriodUtilization, raw: UtilizationIndex, split: datetime) -> None:
        self.periods, self.raw, self.split = periods, raw, split

    def sums(self, *, gpu_id: int, start: datetime, end: datetime) -> tuple[Decimal, int]:
        total, weight = ZERO, 0
        if start < self.split:
            total, weight = self.periods.sums(gpu_id=gpu_id, start=start, end=min(end, self.split))
        if end > self.split:
            more, extra = self.raw.sums(gpu_id=gpu_id, start=max(start, self.split), end=end)
            with localcontext(CONTEXT):
                total, weight = total + more, weight + extra
        return total, weight


class LineFigures:
    """Each distinct (price, duration, share) of lines worked out once: its spend (``money_cost``),
    GPU-hours (``gpu_hours``) and idle part where nothing was busy (spend - 0).

    The figures are those of the arithmetic itself, so a line reads the same whether or not
    another line had its price, length and share: a day of a thousand idle cards up all day
    is a thousand lines of the same hours at the same price. A price is told apart by its
    digits and exponent, not its value (2.0 and 2.00 give a spend of different exponents).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[object, int, int, int], tuple[Decimal, Decimal, Decimal]] = {}

    def __call__(self, *, price: Decimal | None, micros: int, share: Fraction) -> tuple[Decimal, Decimal, Decimal]:
        key = (price.as_tuple() if price is not None else None, micros, share.numerator, share.denominator)
        known = self._known.get(key)
        if known is None:
            spend = money_cost(price_per_hour=price, micros=micros, share=share) if price is not None else ZERO
            with localcontext(CONTEXT):
                idle = spend - ZERO
            known = self._known[key] = (spend, gpu_hours(micros=micros, share=share), idle)
        return known


def _line(
    *,
    kind: str,
    gpu: GpuInfo,
    start: datetime,
    end: datetime,
    share: Fraction,
    prices: PriceBook,
    utilization: UtilizationIndex | None,
    figures: LineFigures | None = None,
    **extra: object,
) -> list[CostLine]:
    figures = figures or LineFigures()
    lines = []
    for span in prices.spans(gpu_model=gpu.model_name, node_id=gpu.node_id, start=start, end=end):
        micros = duration_us(span.start, span.end)
        price = span.rate.price_per_gpu_hour if span.rate else None
        spend, hours, idle = figures(price=price, micros=micros, share=share)
        mean = utilization.mean(gpu_id=gpu.gpu_id, start=span.start, end=span.end) if utilization else None
        busy = ZERO
        if mean is not None:
            with localcontext(CONTEXT):
                busy = spend * mean
                idle = spend - busy
        lines.append(
            CostLine(
                kind=kind,
                gpu_id=gpu.gpu_id,
                node_id=gpu.node_id,
                gpu_model=gpu.model_name,
                start=span.start,
                end=span.end,
                share=share,
                gpu_hours=hours,
                price_per_gpu_hour=price,
                rate_id=span.rate.rate_id if span.rate else None,
                spend=spend,
                busy=busy,
                idle=idle,
                utilization=mean,
                **extra,  # type: ignore[arg-type]
            )
        )
    return lines


def spend_lines(
    *,
    allocations: Iterable[Allocation],
    up: Mapping[int, list[tuple[datetime, datetime]]],
    gpus: Mapping[int, GpuInfo],
    pools: Mapping[int, int],
    prices: PriceBook,
    utilization: UtilizationIndex,
) -> list[CostLine]:
    """Allocated lines (busy/idle split by the GPU's mean duty cycle over each line: busy =
    spend x mean utilization, idle = the rest; no samples means nothing was seen busy) and
    unallocated lines (all idle) for the GPUs' up time that no allocation held.
    """
    allocations = list(allocations)
    lines: list[CostLine] = []
    figures = LineFigures()
    for row in allocations:
        lines += _line(
            kind=ALLOCATED,
            gpu=gpus[row.gpu_id],
            start=row.start,
            end=row.end,
            share=row.share,
            prices=prices,
            utilization=utilization,
            figures=figures,
            instance_id=row.instance_id,
            pool_id=pools.get(row.instance_id),
            mig_device_id=row.mig_device_id,
            state=row.state,
        )
    by_gpu: dict[int, list[Allocation]] = defaultdict(list)
    for row in allocations:
        by_gpu[row.gpu_id].append(row)
    for gpu_id, runs in up.items():
        for begin, finish, free in unallocated_pieces(up=runs, allocations=by_gpu.get(gpu_id, [])):
            lines += _line(
                kind=UNALLOCATED,
                gpu=gpus[gpu_id],
                start=begin,
                end=finish,
                share=free,
                prices=prices,
                utilization=None,
                figures=figures,
            )
    return lines


def baseline_lines(
    *, spans: Mapping[int, tuple[datetime, datetime]], gpus: Mapping[int, GpuInfo], prices: PriceBook
) -> list[CostLine]:
    """The static layout: each GPU holds one always-on instance, the whole card paid throughout."""
    lines: list[CostLine] = []
    figures = LineFigures()
    for gpu_id, (begin, finish) in spans.items():
        if begin < finish:
            lines += _line(
                kind=BASELINE,
                gpu=gpus[gpu_id],
                start=begin,
                end=finish,
                share=Fraction(1),
                prices=prices,
                utilization=None,
                figures=figures,
            )
    return lines


def effect_lines(*, gpu: GpuInfo, start: datetime, end: datetime, share: Fraction, prices: PriceBook) -> list[CostLine]:
    """The GPU share a decision released or took over [start, end), priced as any spend line
    (``fleet.costs.effects``): hours x share x price, split wherever the price changes."""
    if start >= end:
        return []
    return _line(kind=EFFECT, gpu=gpu, start=start, end=end, share=share, prices=prices, utilization=None)


def sleep_lines(
    *, gpu: GpuInfo, start: datetime, end: datetime, share: Fraction, prices: PriceBook, instance_id: int
) -> list[CostLine]:
    """A sleeping instance's share of its card over [start, end) (``fleet.costs.sleep``), priced as
    any spend line: hours x share x price, split wherever the price changes."""
    if start >= end:
        return []
    return _line(
        kind=SLEEP,
        gpu=gpu,
        start=start,
        end=end,
        share=share,
        prices=prices,
        utilization=None,
        instance_id=instance_id,
        state="sleeping",
    )


@dataclass
class SpendReport:
    """Lines of one period in one currency, with the totals pages and metrics read."""

    start: datetime
    end: datetime
    currency: str
    lines: list[CostLine] = field(default_factory=list)

    def _total(self, kind: str) -> Totals:
        totals = Totals()
        totals.add_all(line for line in self.lines if line.kind == kind)
        return totals

    @property
    def allocated(self) -> Totals:
        return self._total(ALLOCATED)

    @property
    def unallocated(self) -> Totals:
        return self._total(UNALLOCATED)

    @property
    def total(self) -> Decimal:
        """What the fleet was billed: allocated plus unallocated."""
        with localcontext(CONTEXT):
            return self.allocated.spend + self.unallocated.spend

    def by(
        self, key: Callable[[CostLine], Hashable], *, kinds: tuple[str, ...] = (ALLOCATED,)
    ) -> dict[Hashable, Totals]:
        """Totals grouped by ``key`` (e.g. ``lambda line: line.pool_id``) over lines of ``kinds``."""
        groups: dict[Hashable, list[CostLine]] = defaultdict(list)
        for line in self.lines:
            if line.kind in kinds:
                groups[key(line)].append(line)
        totals = {group: Totals() for group in groups}
        for group, lines in groups.items():
            totals[group].add_all(lines)
        return totals
