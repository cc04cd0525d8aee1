"""Recommendations with a price: what the fleet pays for now that it could stop paying.

Each recommendation carries its saving per hour, taken from the run rate's lines
(``next_hour_report``) or from the price book, and the same saving per month from one
function, ``per_month``. Three kinds:

- ``idle_card``: a GPU billed with nothing on it (the unallocated part of the run rate, the
  cost page's "reclaimable" figure), per card.
- ``pool_minimum``: a pool whose ``min_instances`` is above the most instances its busiest
  hour of the last 7 days needed; lowering the minimum by one lets the policies stop one
  instance, saving what one of its instances costs per hour now (the cheapest one).
- ``cheaper_gpu``: an exclusive-GPU pool whose model profile's VRAM estimate
  (``vram_estimate_for``) fits a GPU model the price book prices lower than the one its
  instances run on now.

Only ``pool_minimum`` is a setting, applied through ``pool_setting_claim``; the others need
hardware moved and say what to do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

from django.utils import timezone

from fleet import catalog
from fleet.costs.money import CONTEXT
from fleet.costs.selectors import next_hour_report, price_book, totals_by_instance
from fleet.costs.spend import ALLOCATED, UNALLOCATED, CostLine, SpendReport
from fleet.models import Gpu, Instance, Pool, PoolHour, PriceRate
from fleet.policies.vram import gib, vram_estimate_for

HOURS_PER_MONTH = Decimal(730)  # 8,760 hours a year / 12
PEAK_WINDOW = timedelta(days=7)

IDLE_CARD = "idle_card"
POOL_MINIMUM = "pool_minimum"
CHEAPER_GPU = "cheaper_gpu"


def per_month(per_hour: Decimal) -> Decimal:
    """A cost or saving per hour as one per month of 730 hours (8,760 h a year / 12): 2.00/h -> 1,460.00."""
    with localcontext(CONTEXT):
        return per_hour * HOURS_PER_MONTH


@dataclass(frozen=True)
class Recommendation:
    kind: str
    key: str
    title: str
    arithmetic: str
    saving_per_hour: Decimal
    pool_id: int | None = None
    node_id: int | None = None
    setting: str = ""
    current: int | None = None
    proposed: int | None = None

    @property
    def saving_per_month(self) -> Decimal:
        return per_month(self.saving_per_hour)

    @property
    def applicable(self) -> bool:
        """Whether one click applies it: it changes a pool setting from ``current`` to ``proposed``."""
        return bool(self.setting) and self.pool_id is not None and self.proposed is not None


def hour_needed(*, running_mean: float | None, instances: int, max_num_seqs: int, band_high: float) -> int:
    """Instances an hour needed: its mean running sequences across the pool (mean per instance x
    instances that reported) over what one instance runs at the top of the pool's load band
    (``max_num_seqs`` x ``util_band_high``), rounded up. 3.0 running on 4 instances, 16 seqs, band
    0.75: 12 / 12 = 1."""
    if not running_mean or not instances or not max_num_seqs or band_high <= 0:
        return 0
    return math.ceil(running_mean * instances / (max_num_seqs * band_high) - 1e-9)


def recommendations(*, now: datetime | None = None) -> list[Recommendation]:
    """Every recommendation that saves money now, the largest saving first."""
    now = now or timezone.now()
    report = next_hour_report(now=now)
    found = _idle_cards(report_lines=report.lines, now=now) + _pool_minimums(report=report, now=now)
    found += _cheaper_gpus(report=report, now=now)
    return sorted(found, key=lambda item: (-item.saving_per_hour, item.key))


def _idle_cards(*, report_lines: list[CostLine], now: datetime) -> list[Recommendation]:
    per_gpu: dict[tuple[int, int, str], Decimal] = defaultdict(Decimal)
    with localcontext(CONTEXT):
        for line in report_lines:
            if line.kind == UNALLOCATED and line.spend:
                per_gpu[(line.gpu_id, line.node_id, line.gpu_model)] += line.spend
    names = dict(Gpu.objects.filter(pk__in=[key[0] for key in per_gpu]).values_list("pk", "node__name"))
    rows = []
    for (gpu_id, node_id, model), per_hour in per_gpu.items():
        rows.append(
            Recommendation(
                kind=IDLE_CARD,
                key=f"{IDLE_CARD}:{gpu_id}",
                title=f"{model} (GPU {gpu_id}) on {names.get(gpu_id, f'node {node_id}')} is billed with nothing on it: "
                "place work on it or release it",
                arithmetic=f"{per_hour:.2f}/h unallocated x {HOURS_PER_MONTH} h = {per_month(per_hour):.2f} a month",
                saving_per_hour=per_hour,
                node_id=node_id,
            )
        )
    return rows


def _pool_minimums(*, report: SpendReport, now: datetime) -> list[Recommendation]:
    pools = {
        pool.pk: pool for pool in Pool.objects.filter(enabled=True, min_instances__gt=0).select_related("model_profile")
    }
    peaks: dict[int, int] = {}
    for pool_id, instances, running in PoolHour.objects.filter(
        pool_id__in=list(pools), bucket__gte=now - PEAK_WINDOW, bucket__lt=now
    ).values_list("pool_id", "instances", "requests_running_mean"):
        pool = pools[pool_id]
        needed = hour_needed(
            running_mean=running,
            instances=instances,
            max_num_seqs=pool.model_profile.max_num_seqs,
            band_high=pool.util_band_high,
        )
        peaks[pool_id] = max(peaks.get(pool_id, 0), needed)
    per_instance = totals_by_instance(report)
    held: dict[int, list[Decimal]] = defaultdict(list)
    for instance_id, pool_id in Instance.objects.filter(pk__in=list(per_instance), pool_id__in=list(peaks)).values_list(
        "pk", "pool_id"
    ):
        held[pool_id].append(per_instance[instance_id].spend)
    rows = []
    for pool_id, peak in peaks.items():
        pool = pools[pool_id]
        if peak >= pool.min_instances or not held[pool_id]:
            continue
        cheapest = min(held[pool_id])
        rows.append(
            Recommendation(
                kind=POOL_MINIMUM,
                key=f"{POOL_MINIMUM}:{pool_id}",
                title=f"Pool {pool.name} keeps at least {pool.min_instances} instances; its busiest hour of the last "
                f"7 days needed {peak}: lower its minimum to {pool.min_instances - 1}",
                arithmetic=f"one instance {cheapest:.2f}/h x {HOURS_PER_MONTH} h = {per_month(cheapest):.2f} a month",
                saving_per_hour=cheapest,
                pool_id=pool_id,
                setting="min_instances",
                current=pool.min_instances,
                proposed=pool.min_instances - 1,
            )
        )
    return rows


def _cheaper_gpus(*, report: SpendReport, now: datetime) -> list[Recommendation]:
    prices = price_book()
    models = sorted(set(PriceRate.objects.filter(node__isnull=True).values_list("gpu_model", flat=True)))
    pools = {
        pool.pk: pool
        for pool in Pool.objects.filter(enabled=True, isolation=Pool.Isolation.EXCLUSIVE).select_related(
            "model_profile"
        )
    }
    # The pool's instances holding a whole card now, with the card's model, node and price.
    cards: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for line in report.lines:
        if line.kind == ALLOCATED and line.pool_id in pools and line.share == 1 and line.mig_device_id is None:
            cards[line.pool_id].append((line.gpu_model, line.node_id))
    rows = []
    for pool_id, held in cards.items():
        pool = pools[pool_id]
        estimate = vram_estimate_for(pool.model_profile)
        if estimate is None:
            continue
        saving = Decimal(0)
        moves: dict[tuple[str, Decimal, str, Decimal], int] = defaultdict(int)
        for model, node_id in held:
            rate = prices.rate_at(gpu_model=model, node_id=node_id, at=now)
            if rate is None:
                continue
            options = []
            for other in models:
                spec = catalog.gpu_spec(other)
                other_rate = prices.rate_at(gpu_model=other, node_id=node_id, at=now)
                fits = spec is not None and spec.memory_gib * catalog.GIB >= estimate.required_bytes
                if fits and other_rate is not None and other_rate.price_per_gpu_hour < rate.price_per_gpu_hour:
                    options.append((other_rate.price_per_gpu_hour, other))
            if options:
                price, other = min(options)
                with localcontext(CONTEXT):
                    saving += rate.price_per_gpu_hour - price
                moves[(model, rate.price_per_gpu_hour, other, price)] += 1
        if not saving:
            continue
        steps = "; ".join(
            f"{count} x ({old_price:.2f} - {new_price:.2f})/h ({old} to {new})"
            for (old, old_price, new, new_price), count in sorted(moves.items())
        )
        rows.append(
            Recommendation(
                kind=CHEAPER_GPU,
                key=f"{CHEAPER_GPU}:{pool_id}",
                title=f"Pool {pool.name} needs {gib(estimate.required_bytes)} a card ({pool.model_profile.name}): "
                f"it fits a cheaper GPU model; set the pool's GPU model and move its instances",
                arithmetic=f"{steps} = {saving:.2f}/h x {HOURS_PER_MONTH} h = {per_month(saving):.2f} a month",
                saving_per_hour=saving,
                pool_id=pool_id,
            )
        )
    return rows
