"""Budgets and alert rules in the admin: validation on save, and the lift action."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.costs.selectors import period_bounds, team_budget_block
from fleet.models import AlertRule, Budget, Team
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def test_the_lift_action_unblocks_the_team_for_this_period(admin_client: Client) -> None:
    team = Team.objects.create(name="Search", slug="search")
    first, _ = period_bounds(period="day", now=timezone.now())
    budget = Budget.objects.create(
        name="search daily", team=team, period="day", amount=Decimal(10), spent=Decimal(12), blocked_period_start=first
    )
    assert team_budget_block(team.pk) is not None
    changelist = admin_client.get(reverse("admin:fleet_budget_changelist")).content.decode()
    assert "12.00 USD" in changelist and "120%" in changelist

    response = admin_client.post(
        reverse("admin:fleet_budget_changelist"), {"action": "lift_block", "_selected_action": [budget.pk]}, follow=True
    )
    assert "Lifted for this period: search daily." in response.content.decode()
    assert team_budget_block(team.pk) is None


def test_an_alert_rule_without_its_threshold_is_refused_with_the_reason(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:fleet_alertrule_add"),
        {"name": "idle", "kind": "idle_waste", "window_s": 900, "for_s": 600, "email_to": "ops@example.com"},
    )
    assert response.status_code == 200
    assert "needs a positive threshold" in response.content.decode()
    assert not AlertRule.objects.exists()


def test_a_pool_budget_with_a_hard_stop_is_refused(admin_client: Client) -> None:
    pool = make_pool()
    response = admin_client.post(
        reverse("admin:fleet_budget_add"),
        {
            "name": "pool",
            "pool": pool.pk,
            "period": "month",
            "amount": "100",
            "soft_threshold_pct": 80,
            "hard_threshold_pct": 100,
            "enabled": "on",
        },
    )
    assert "Only team budgets can block requests" in response.content.decode()
    assert not Budget.objects.exists()
