"""The alerts page names each rule once and gives its threshold once, with its unit."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from fleet.costs.alerts import alert_delivery_send
from fleet.demo.runner import DEMO_ALERT_RULES
from fleet.models import Alert, AlertDelivery, AlertRule
from tests.costs.history import utc
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def fired(rule: AlertRule) -> Alert:
    return Alert.objects.create(
        rule=rule, key="fleet", state="firing", message="m", started_at=utc(2024, 3, 1, 9), fired_at=utc(2024, 3, 1, 9)
    )


def rule_and_threshold_cells(page: str) -> dict[str, str]:
    """Each alert row's rule cell (the 4th) with its threshold cell (the 7th)."""
    rows = re.findall(r'<tr data-alert="\d+">(.*?)</tr>', re.sub(r"\s+", " ", page))
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    return {row[3]: row[6] for row in cells}


@override_settings(FLEET_BILLING_CURRENCY="EUR")
def test_alert_rules_show_their_name_once_and_their_threshold_with_its_unit(admin_client: Client) -> None:
    """The demo's rules, each fired once, and a pool's SLA rule. The kind shows beside a name only where
    the name does not say it already: "demo: SLA breach" is not followed by "(SLA breach)", "demo: node
    silent for 60 s" is by "(node stopped reporting)"; a pool rule names its pool. A threshold shows once
    with its unit: the idle-waste rule's 1 as money per hour in the billing currency, 1.00 EUR/h (not a
    bare 1), the silent rule's 60 as 60 s; kinds that take none say why."""
    rules = [
        AlertRule.objects.create(name=name, kind=kind, threshold=threshold)
        for name, kind, threshold in DEMO_ALERT_RULES
    ]
    rules.append(AlertRule.objects.create(name="latency", kind="sla_breach", pool=make_pool("chat-s")))
    for rule in rules:
        fired(rule)
    cells = rule_and_threshold_cells(admin_client.get(reverse("dashboard:alerts")).content.decode())
    budget_unused = '<span class="muted">not used: each budget&#x27;s own soft and hard thresholds apply</span>'
    sla_unused = '<span class="muted">not used: each pool&#x27;s own SLA latency applies</span>'
    assert cells == {
        "demo: budget threshold": budget_unused,
        "demo: SLA breach": sla_unused,
        "demo: idle waste over 1/h": "1.00 EUR/h",
        'demo: node silent for 60 s <span class="muted">(node stopped reporting)</span>': "60 s",
        'latency <span class="muted">(SLA breach, pool chat-s)</span>': sla_unused,
    }


@override_settings(FLEET_BILLING_CURRENCY="EUR")
def test_an_idle_threshold_is_rounded_to_cents_as_money_is_shown(admin_client: Client) -> None:
    """2.345 EUR/h, stored as 2.3450, shows as 2.35 EUR/h: money to the cent, half up."""
    fired(AlertRule.objects.create(name="idle spend", kind="idle_waste", threshold=Decimal("2.345")))
    assert rule_and_threshold_cells(admin_client.get(reverse("dashboard:alerts")).content.decode()) == {
        'idle spend <span class="muted">(idle waste)</span>': "2.35 EUR/h"
    }


def test_a_notice_names_the_rule_once_too(mailoutbox: list[Any]) -> None:
    """The e-mail's "Rule:" line reads as the page does: no "(SLA breach)" after "demo: SLA breach"."""
    rule = AlertRule.objects.create(name="demo: SLA breach", kind="sla_breach", email_to="ops@example.com")
    delivery = AlertDelivery.objects.create(
        alert=fired(rule), event="firing", channel=AlertDelivery.Channel.EMAIL, target="ops@example.com"
    )
    alert_delivery_send(delivery=delivery)
    (message,) = mailoutbox
    assert "\n\nRule: demo: SLA breach\n" in message.body
