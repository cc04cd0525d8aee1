"""The demo seeds a budget and alert rules, so its costs and alerts pages have something to show."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.demo.runner import DEMO_ALERT_RULES, DEMO_BUDGET, TEAM_SLUG, DemoOptions, demo_prepare
from fleet.models import AlertRule, Budget

pytestmark = pytest.mark.django_db(transaction=True)


def test_demo_prepare_seeds_one_budget_and_a_few_alert_rules_once() -> None:
    """A daily 25.00 budget of the demo team warning at 80 % and never blocking its traffic, and four enabled
    fleet-wide rules (budget, SLA breach, idle waste over 1/h, node silent 60 s); a second run adds none."""
    options = DemoOptions(speedup=10, hosts=1, gpus_per_host=1)
    for _run in range(2):
        demo_prepare(options=options)
        budget = Budget.objects.get(name=DEMO_BUDGET)
        assert budget.team is not None and budget.team.slug == TEAM_SLUG
        assert (budget.period, budget.amount, budget.soft_threshold_pct, budget.hard_threshold_pct) == (
            "day",
            Decimal("25.00"),
            80,
            None,
        )
        rules = {rule.name: (rule.kind, rule.threshold, rule.pool_id, rule.enabled) for rule in AlertRule.objects.all()}
        assert rules == {
            "demo: budget threshold": ("budget", None, None, True),
            "demo: SLA breach": ("sla_breach", None, None, True),
            "demo: idle waste over 1/h": ("idle_waste", Decimal("1.0000"), None, True),
            "demo: node silent for 60 s": ("node_silent", Decimal("60.0000"), None, True),
        }
        assert len(rules) == len(DEMO_ALERT_RULES)
    assert Budget.objects.count() == 1
