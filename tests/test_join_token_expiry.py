"""One default lifetime for join tokens, whichever way a token is made: JOIN_TOKEN_DEFAULT_TTL_HOURS."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fleet.decide.services import join_token_create
from fleet.demo.runner import DemoOptions, demo_prepare
from fleet.models import JoinToken

pytestmark = pytest.mark.django_db

# Not the old defaults (24 hours on the page, a day in the demo, none in the admin), so
# a path that ignores the setting shows.
TTL = timedelta(hours=5)


@pytest.fixture(autouse=True)
def five_hour_tokens(settings: Any) -> None:
    settings.JOIN_TOKEN_DEFAULT_TTL_HOURS = 5


def lifetime(token: JoinToken) -> timedelta:
    assert token.expires_at is not None, "the token never expires"
    return token.expires_at - token.created_at


def assert_default_lifetime(token: JoinToken) -> None:
    # The admin's time field drops fractions of a second; nothing else may differ.
    assert abs(lifetime(token) - TTL) < timedelta(seconds=5), lifetime(token)


def test_the_service_gives_the_default_lifetime_unless_told_otherwise() -> None:
    token, _secret = join_token_create(name="script", max_uses=1)
    assert_default_lifetime(token)
    forever, _secret = join_token_create(name="lab", max_uses=None, expires_at=None)
    assert forever.expires_at is None


def test_the_add_a_host_page_offers_and_shows_the_default_lifetime(admin_client: Client) -> None:
    page = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    offered = re.search(r'name="valid_hours" value="(\d+)"', page)
    assert offered, page
    assert "5 hours" in page
    response = admin_client.post(
        reverse("dashboard:hosts-add"), {"name": "rack 4", "max_uses": 1, "valid_hours": offered.group(1)}
    )
    token = JoinToken.objects.get()
    assert_default_lifetime(token)
    assert token.expires_at is not None
    assert f"until {token.expires_at:%Y-%m-%d %H:%M} UTC" in response.content.decode()


def test_the_admin_add_form_starts_from_the_default_lifetime(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:fleet_jointoken_add")).content.decode()
    day = re.search(r'name="expires_at_0" value="([^"]+)"', page)
    time = re.search(r'name="expires_at_1" value="([^"]+)"', page)
    assert day and time, page
    response = admin_client.post(
        reverse("admin:fleet_jointoken_add"),
        {"name": "rack 5", "max_uses": 1, "expires_at_0": day.group(1), "expires_at_1": time.group(1)},
    )
    assert response.status_code == 200, response.content.decode()  # the token is shown once, on this page
    token = JoinToken.objects.get()
    assert token.token_prefix in response.content.decode()
    assert_default_lifetime(token)


def test_the_demo_token_has_the_default_lifetime() -> None:
    demo_prepare(options=DemoOptions(speedup=10, hosts=1, gpus_per_host=1))
    assert_default_lifetime(JoinToken.objects.get(revoked_at__isnull=True))
