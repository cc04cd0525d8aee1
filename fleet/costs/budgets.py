"""Budget evaluation and the admin's lift: the writes behind ``team_budget_block``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from fleet.costs.money import CONTEXT, ZERO
from fleet.costs.selectors import period_bounds, spend_report, team_spend
from fleet.costs.teams import UsageSource
from fleet.events import event_publish
from fleet.models import Budget


def usage_source_configured() -> UsageSource | None:
    """The team usage source ``FLEET_TEAM_USAGE_SOURCE`` names, or None while there is none."""
    path = settings.FLEET_TEAM_USAGE_SOURCE
    return import_string(path) if path else None


@dataclass(frozen=True)
class BudgetResult:
    budget_id: int
    spent: Decimal | None
    blocked_now: bool
    note: str = ""


def budget_threshold(*, budget: Budget, pct: int) -> Decimal:
    with localcontext(CONTEXT):
        return budget.amount * Decimal(pct) / Decimal(100)


def budgets_evaluate(*, now: datetime | None = None, usage_source: UsageSource | None = None) -> list[BudgetResult]:
    """Compute each enabled budget's spend in its current period and record it.

    Pool budgets read the pool's allocated spend; team budgets the team's share of every pool
    (``team_spend``), which needs a usage source: without one they are left unevaluated and
    say so. Reaching the hard threshold sets the block for the period with a conditional
    update, so two workers evaluating at once block (and announce) it once.
    """
    now = now or timezone.now()
    source = usage_source or usage_source_configured()
    reports = {}
    results = []
    for budget in Budget.objects.filter(enabled=True):
        first, _ = period_bounds(period=budget.period, now=now)
        if budget.period not in reports:
            reports[budget.period] = spend_report(start=first, end=now)
        report = reports[budget.period]
        if budget.pool_id:
            totals = report.by(lambda line: line.pool_id).get(budget.pool_id)
            spent = totals.spend if totals else ZERO
        elif source is None:
            results.append(BudgetResult(budget.pk, None, False, "no team usage source (FLEET_TEAM_USAGE_SOURCE)"))
            continue
        else:
            team_id = budget.team_id
            assert team_id is not None  # a budget is a pool's or a team's (budget_team_xor_pool)
            shares = team_spend(report=report, usage_source=source)
            with localcontext(CONTEXT):
                spent = sum((teams.get(team_id, ZERO) for teams in shares.values()), ZERO)
        Budget.objects.filter(pk=budget.pk).update(spent=spent, spent_period_start=first, evaluated_at=now)
        blocked_now = False
        hard = budget.hard_threshold_pct
        if budget.team_id and hard is not None and spent >= budget_threshold(budget=budget, pct=hard):
            blocked_now = (
                Budget.objects.filter(pk=budget.pk)
                .exclude(blocked_period_start=first)
                .update(blocked_period_start=first)
                == 1
            )
            if blocked_now:
                event_publish(kind="budget_block", payload={"budget": budget.pk, "team": budget.team_id})
        results.append(BudgetResult(budget.pk, spent, blocked_now))
    return results


def budget_block_lift(*, budget: Budget, now: datetime | None = None) -> bool:
    """Let the team's requests through again for the rest of the current period.

    The lift holds for this period only: the next period starts unblocked anyway, and a block
    reached in it is not lifted by this one.
    """
    first, _ = period_bounds(period=budget.period, now=now or timezone.now())
    lifted = Budget.objects.filter(pk=budget.pk, blocked_period_start=first).update(lifted_period_start=first) == 1
    if lifted:
        event_publish(kind="budget_lift", payload={"budget": budget.pk, "team": budget.team_id})
    return lifted
