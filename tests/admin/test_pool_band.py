"""A pool's utilization band is typed in per cent and stored as the fractions the policies read."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from fleet.models import Pool
from tests.admin.test_validation import pool_form
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def add(client: Client, low: str, high: str) -> Any:
    return client.post(reverse("admin:fleet_pool_add"), pool_form(util_band_low=low, util_band_high=high))


def field_errors(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def test_percents_typed_in_are_stored_as_fractions(admin_client: Client) -> None:
    assert add(admin_client, "50", "65").status_code == 302
    pool = Pool.objects.get(name="chat-m")
    assert (pool.util_band_low, pool.util_band_high) == (0.5, 0.65)


def test_stored_fractions_are_shown_as_percents(admin_client: Client) -> None:
    pool = make_pool(util_band_low=0.5, util_band_high=0.575)
    html = admin_client.get(reverse("admin:fleet_pool_change", args=[pool.pk])).content.decode()
    assert 'name="util_band_low" value="50"' in html
    assert 'name="util_band_high" value="57.5"' in html
    assert "Utilization band low (%)" in html and "Utilization band high (%)" in html


def test_a_band_round_trips_through_the_form_unchanged(admin_client: Client) -> None:
    pool = make_pool(name="chat-m", tier="M", util_band_low=0.57, util_band_high=0.65)
    form = admin_client.get(reverse("admin:fleet_pool_change", args=[pool.pk])).context["adminform"].form
    shown = {name: form[name].value() for name in ("util_band_low", "util_band_high")}
    assert shown == {"util_band_low": "57", "util_band_high": "65"}
    response = admin_client.post(reverse("admin:fleet_pool_change", args=[pool.pk]), pool_form(**shown))
    assert response.status_code == 302
    pool.refresh_from_db()
    assert (pool.util_band_low, pool.util_band_high) == (0.57, 0.65)
    assert LogEntry.objects.get(object_id=str(pool.pk)).get_change_message() == "No fields changed."


def test_a_band_whose_low_is_not_below_its_high_is_refused_in_percents(admin_client: Client) -> None:
    response = add(admin_client, "70", "65")
    assert field_errors(response) == {
        "util_band_low": ["The utilization band's low (70%) must be below its high (65%)."]
    }
    assert not Pool.objects.exists()


@pytest.mark.parametrize(
    ("low", "high", "field", "message"),
    [
        ("50", "150", "util_band_high", "Ensure this value is less than or equal to 100."),
        ("-5", "65", "util_band_low", "Ensure this value is greater than or equal to 0."),
        ("half", "65", "util_band_low", "Enter a number."),
    ],
)
def test_a_band_outside_0_to_100_percent_is_refused(
    admin_client: Client, low: str, high: str, field: str, message: str
) -> None:
    response = add(admin_client, low, high)
    assert field_errors(response) == {field: [message]}
    assert not Pool.objects.exists()
