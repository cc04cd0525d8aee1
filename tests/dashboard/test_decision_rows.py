"""A decisions table's row as the reader sees it: its time, how long ago, and what the Effect column says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard.views import effect_text
from fleet.costs.effects import COSTS, NONE, SAVES, DecisionEffect
from fleet.costs.spend import CostLine
from fleet.models import Decision
from tests.factories import make_pool


def line(hours: str) -> CostLine:
    """``hours`` of a whole card at 2.00/GPU-hour."""
    start = datetime(2024, 3, 1, 10, tzinfo=UTC)
    return CostLine(
        kind="effect",
        gpu_id=1,
        node_id=1,
        gpu_model="Acme X1",
        start=start,
        end=start + timedelta(hours=float(hours)),
        share=Fraction(1),
        gpu_hours=Decimal(hours),
        price_per_gpu_hour=Decimal("2.0000"),
        rate_id=1,
        spend=Decimal(hours) * 2,
        busy=Decimal(0),
        idle=Decimal(hours),
    )


@pytest.mark.parametrize(
    ("effect", "said"),
    [
        # 2.00/h saved, 3 h of it priced: 6.00.
        (DecisionEffect(1, SAVES, per_hour=Decimal("2.00"), lines=[line("3")]), "saves 2.00/h, 6.00 so far"),
        # Capacity taken at 1.255/h (rounded half up to 2 places), no time priced in the range yet.
        (DecisionEffect(2, COSTS, per_hour=Decimal("-1.255")), "costs 1.26/h"),
        # Taken, 0.5 h priced: the amount shown without its sign.
        (DecisionEffect(3, COSTS, per_hour=Decimal("-2"), lines=[line("0.5")]), "costs 2.00/h, 1.00 so far"),
        # No price in effect at the decision: no rate to show.
        (DecisionEffect(4, SAVES), "saves /h"),
        (DecisionEffect(5, NONE, note="changes no instance's hold on a GPU"), "–"),
        (None, "–"),
    ],
)
def test_the_effect_column_says_saves_costs_or_nothing(effect: DecisionEffect | None, said: str) -> None:
    assert effect_text(effect) == said


@pytest.mark.django_db
def test_a_row_shows_its_time_to_the_second_in_the_current_time_zone_and_how_long_ago(
    admin_client: Client, settings
) -> None:
    """Decided 5 min 10 s ago: the title says "5 minutes ago"; the time shown is in the panel's time
    zone (Asia/Kolkata, UTC+05:30 here), as the page's other times are."""
    settings.TIME_ZONE = "Asia/Kolkata"
    decided = (timezone.now() - timedelta(minutes=5, seconds=10)).replace(microsecond=0)
    decision = Decision.objects.create(policy_kind="manual", pool=make_pool(), action="settings_applied", reason="r")
    Decision.objects.filter(pk=decision.pk).update(created_at=decided)
    page = admin_client.get(reverse("dashboard:decisions")).content.decode()
    local = decided.astimezone(timezone.get_fixed_timezone(330))
    cell = re.search(rf'<tr data-decision="{decision.pk}"><td title="([^"]*)"><a href="([^"]*)">([^<]*)</a>', page)
    assert cell is not None
    assert cell.groups() == (
        "5\xa0minutes ago",
        f"/decisions/{decision.pk}/",
        f"{local:%Y-%m-%d %H:%M:%S}",
    )
    assert local.utcoffset() == timedelta(hours=5, minutes=30)
