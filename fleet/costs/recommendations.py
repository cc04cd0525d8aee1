"""Recommendations with a price: what the fleet pays for now that it could stop paying.

Each recommendation carries its saving per hour, taken from the run rate's lines
(``next_hour_report``) or from the price book, and the same saving per month from one
function, ``per_month``. Three kinds:

- ``idle_card``: a GPU billed with nothing on it (the unallocated part of the run rate, the
  cost page's "reclaimable" figure), per card.
- ``pool_minimum``: a pool whose ``min_instances`` is above the most instances its busiest
  hour of the last 7 days needed, and which met its SLA over those 7 days (``fleet.selectors.pool_sla``,
  the reading the overview's SLA attainment shows: the share of the week's requests within their
  bound, each against its own where the bound grows with the prompt, at least the SLA's percentile):
  lowering the minimum by one lets the policies stop one instance, saving what one of its instances
  costs per hour now (the cheapest one). A pool that missed its SLA, or served nothing measured, is
  not asked to keep fewer warm.
- ``band_top``: an autoscaled pool whose load band tops out lower than its SLA needed: in the
  hours of the last 7 days whose SLA had the headroom autoscale itself asks before a scale-in
  (``pool_sla_hours`` at its ``scale_in_latency_ratio``: for a flat bound the SLA's share of requests
  within that ratio of the bound; for a bound that grows with the prompt at most that ratio of the
  share the SLA lets exceed their own bound, as autoscale judges it), a band top one step higher
  (``BAND_STEP``, at most ``BAND_TOP_MAX``) would have needed fewer instances (``band_hour_saving``);
  the instance-hours saved, spread over the window's 168 hours, at what one of its instances costs
  per hour now.
- ``cheaper_gpu``: an exclusive-GPU pool whose model profile's VRAM estimate
  (``vram_estimate_for``) fits a GPU model the price book prices lower than the one its
  instances run on now.

``pool_minimum`` and ``band_top`` are pool settings, applied through ``pool_setting_claim``; the
others need hardware moved and say what to do.
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
from fleet.selectors import SlaReading, policy_configs, pool_sla, pool_sla_hours

HOURS_PER_MONTH = Decimal(730)  # 8,760 hours a year / 12
PEAK_WINDOW = timedelta(days=7)

IDLE_CARD = "idle_card"
POOL_MINIMUM = "pool_minimum"
CHEAPER_GPU = "cheaper_gpu"
BAND_TOP = "band_top"

# A band top raised one step at a time, never above BAND_TOP_MAX: the estimate holds for loads the
# pool's SLA was measured at, and autoscale still scales out on any SLA breach or queue, whatever
# the band says.
BAND_STEP = 0.10
BAND_TOP_MAX = 0.85


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
    current: float | None = None
    proposed: float | None = None

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


def band_hour_saving(
    *,
    running_mean: float | None,
    instances: int,
    max_num_seqs: int,
    band_high: float,
    proposed_high: float,
    min_instances: int,
) -> int:
    """Instances an hour would not have needed under a band top of ``proposed_high``: those the
    current top called for (``hour_needed``, but no more than reported in the hour) less those the
    higher top calls for (never under the pool's minimum). Instances held above the current top's
    need (scale-in lag, the minimum) are not the band's doing and count nothing. 3.0 running on 4
    instances of 16 seqs, top 0.25 -> 0.35: 12 / 4 = 3 needed now, 12 / 5.6 = 2.1 -> 3 then: 0;
    4.0 on 4: 16 / 4 = 4 now, 16 / 5.6 -> 3 then: 1."""
    now_needed = min(
        instances,
        hour_needed(running_mean=running_mean, instances=instances, max_num_seqs=max_num_seqs, band_high=band_high),
    )
    then_needed = hour_needed(
        running_mean=running_mean, instances=instances, max_num_seqs=max_num_seqs, band_high=proposed_high
    )
    return max(0, now_needed - max(then_needed, min_instances))


def band_proposed(band_high: float) -> float:
    """The next band top: one ``BAND_STEP`` up, capped at ``BAND_TOP_MAX``, to the hundredth."""
    return round(min(band_high + BAND_STEP, BAND_TOP_MAX), 2)


def recommendations(*, now: datetime | None = None) -> list[Recommendation]:
    """Every recommendation that saves money now, the largest saving first."""
    now = now or timezone.now()
    report = next_hour_report(now=now)
    found = _idle_cards(report_lines=report.lines, now=now) + _pool_minimums(report=report, now=now)
    found += _band_tops(report=report, now=now)
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
    # The week's SLA met at the minimum kept, read as the overview reads it (``pool_sla``): a pool that
    # missed it may have needed the warm instances.
    over = [pool_id for pool_id, peak in peaks.items() if peak < pools[pool_id].min_instances]
    slas = pool_sla([pools[pool_id] for pool_id in over], now - PEAK_WINDOW, now)
    spare = [pool_id for pool_id in over if slas[pool_id].met]
    held = _cheapest_instance(report=report, pool_ids=spare)
    rows = []
    for pool_id in spare:
        pool, peak = pools[pool_id], peaks[pool_id]
        if pool_id not in held:
            continue
        cheapest = held[pool_id]
        rows.append(
            Recommendation(
                kind=POOL_MINIMUM,
                key=f"{POOL_MINIMUM}:{pool_id}",
                title=f"Pool {pool.name} keeps at least {pool.min_instances} instances; its busiest hour of the last "
                f"7 days needed {peak}: lower its minimum to {pool.min_instances - 1}",
                arithmetic=f"SLA met over the last 7 days: {slas[pool_id].text}; one instance "
                f"{cheapest:.2f}/h x {HOURS_PER_MONTH} h = {per_month(cheapest):.2f} a month",
                saving_per_hour=cheapest,
                pool_id=pool_id,
                setting="min_instances",
                current=pool.min_instances,
                proposed=pool.min_instances - 1,
            )
        )
    return rows


def _cheapest_instance(*, report: SpendReport, pool_ids: list[int]) -> dict[int, Decimal]:
    """What the cheapest of each pool's instances costs per hour now: the one a pool would stop first.
    Pools holding nothing now are left out (nothing to price)."""
    per_instance = totals_by_instance(report)
    held: dict[int, Decimal] = {}
    for instance_id, pool_id in Instance.objects.filter(pk__in=list(per_instance), pool_id__in=pool_ids).values_list(
        "pk", "pool_id"
    ):
        spend = per_instance[instance_id].spend
        held[pool_id] = min(spend, held.get(pool_id, spend))
    return held


def _band_tops(*, report: SpendReport, now: datetime) -> list[Recommendation]:
    autoscale = policy_configs()["autoscale"]
    pools = {
        pool.pk: pool
        for pool in Pool.objects.filter(enabled=True, util_band_high__lt=BAND_TOP_MAX).select_related("model_profile")
        if autoscale.for_pool(pool.pk) is not None
    }
    if not pools:
        return []
    ratios = {pool_id: float((autoscale.for_pool(pool_id) or {})["scale_in_latency_ratio"]) for pool_id in pools}
    saved: dict[int, int] = defaultdict(int)
    roomy: dict[int, int] = defaultdict(int)
    hours: dict[int, int] = defaultdict(int)
    rule: dict[int, str] = {}
    # Each hour's SLA at the margin autoscale asks before a scale-in (pools grouped by their ratio).
    headroom: dict[int, dict[datetime, SlaReading]] = {}
    for ratio in set(ratios.values()):
        grouped = [pool for pool_id, pool in pools.items() if ratios[pool_id] == ratio]
        headroom.update(pool_sla_hours(grouped, now - PEAK_WINDOW, now, ratio=ratio))
    for pool_id, bucket, instances, running in PoolHour.objects.filter(
        pool_id__in=list(pools), bucket__gte=now - PEAK_WINDOW, bucket__lt=now
    ).values_list("pool_id", "bucket", "instances", "requests_running_mean"):
        pool = pools[pool_id]
        hours[pool_id] += 1
        reading = headroom.get(pool_id, {}).get(bucket)
        if reading is None or not reading.met:
            continue
        rule[pool_id] = reading.rule
        roomy[pool_id] += 1
        saved[pool_id] += band_hour_saving(
            running_mean=running,
            instances=instances,
            max_num_seqs=pool.model_profile.max_num_seqs,
            band_high=pool.util_band_high,
            proposed_high=band_proposed(pool.util_band_high),
            min_instances=pool.min_instances,
        )
    held = _cheapest_instance(report=report, pool_ids=[pool_id for pool_id, count in saved.items() if count])
    window_hours = Decimal(int(PEAK_WINDOW.total_seconds() // 3600))
    rows = []
    for pool_id, cheapest in held.items():
        pool, instance_hours = pools[pool_id], saved[pool_id]
        proposed = band_proposed(pool.util_band_high)
        with localcontext(CONTEXT):
            per_hour = Decimal(instance_hours) * cheapest / window_hours
        if not per_hour:
            continue
        rows.append(
            Recommendation(
                kind=BAND_TOP,
                key=f"{BAND_TOP}:{pool_id}",
                title=f"Pool {pool.name} scales out at {pool.util_band_high:.0%} load though its SLA had headroom: "
                f"raise its band top to {proposed:.0%}",
                arithmetic=f"{instance_hours} instance-hours fewer in the {roomy[pool_id]} of {hours[pool_id]} hours "
                f"with the SLA headroom autoscale asks before a scale-in ({rule[pool_id]}); "
                f"{instance_hours} x "
                f"{cheapest:.2f}/h / {window_hours} h = {per_hour:.4f}/h x {HOURS_PER_MONTH} h = "
                f"{per_month(per_hour):.2f} a month",
                saving_per_hour=per_hour,
                pool_id=pool_id,
                setting="util_band_high",
                current=pool.util_band_high,
                proposed=proposed,
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
