"""A secret shown once is in that response's page only: never in a cookie, a stored message or the session."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse

from fleet.models import Team
from tests.factories import node_form

pytestmark = pytest.mark.django_db

SECRET = r"[A-Za-z0-9_\-]{43}"


def readable(value: str) -> str:
    """A cookie's value, and what the messages framework would read out of it."""
    decoded = CookieStorage(HttpRequest())._decode(value)
    return f"{value}\n{decoded!r}"


def created(admin_client: Client, url: str, data: dict[str, str], kind: str) -> None:
    response = admin_client.post(url, data)
    cookies = [(name, readable(cookie.value)) for name, cookie in response.cookies.items()]
    page = response.content.decode() if response.status_code == 200 else admin_client.get(response["Location"])
    found = re.findall(rf"{kind}_{SECRET}", page if isinstance(page, str) else page.content.decode())
    assert found, "the secret is shown after the form"
    secret = found[0]
    assert [name for name, value in cookies if secret in value] == []
    assert [s for s in Session.objects.all() if secret in repr(s.get_decoded())] == []
    later = admin_client.get(reverse("admin:index")).content.decode()
    assert secret not in later, "a message carried it to the next page"


def test_a_new_api_key_travels_in_no_cookie(admin_client: Client) -> None:
    team = Team.objects.create(name="Research", slug="research")
    created(admin_client, reverse("admin:fleet_apikey_add"), {"team": str(team.pk), "name": "app"}, "gfk")


def test_a_new_join_token_travels_in_no_cookie(admin_client: Client) -> None:
    created(admin_client, reverse("admin:fleet_jointoken_add"), {"name": "rollout", "max_uses": "2"}, "gfj")


def test_a_new_node_token_travels_in_no_cookie(admin_client: Client) -> None:
    data = node_form("gpu-host-9")
    created(admin_client, reverse("admin:fleet_node_add"), data, "gfn")
