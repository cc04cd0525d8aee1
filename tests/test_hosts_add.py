"""Adding a host: a join token, the one-line command, shown once."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from fleet.models import JoinToken
from fleet.tokens import token_hash

pytestmark = pytest.mark.django_db


def test_only_staff_may_create_join_tokens(client: Client, django_user_model: type) -> None:
    assert client.get(reverse("dashboard:hosts-add")).status_code == 302
    user = django_user_model.objects.create_user("viewer", password="a-long-password-1")
    client.force_login(user)
    response = client.post(reverse("dashboard:hosts-add"), {"name": "x", "max_uses": 1, "valid_hours": 1})
    assert response.status_code == 302
    assert not JoinToken.objects.exists()


def test_creating_a_token_shows_the_install_line_once(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("dashboard:hosts-add"), {"name": "rack 4", "max_uses": 3, "valid_hours": 2}, HTTP_HOST="127.0.0.1:8000"
    )
    page = response.content.decode()
    match = re.search(
        r"curl -fsSL http://127\.0\.0\.1:8000/agent/install\.sh \| sudo sh -s -- --join-token (gfj_[\w-]+)", page
    )
    assert match, page
    token = JoinToken.objects.get()
    assert (token.name, token.max_uses, token.token_hash) == ("rack 4", 3, token_hash(match.group(1)))
    again = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    assert match.group(1) not in again
    assert token.token_prefix in again


def test_invalid_form_creates_nothing(admin_client: Client) -> None:
    response = admin_client.post(reverse("dashboard:hosts-add"), {"name": "x", "max_uses": 0, "valid_hours": 1})
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert not JoinToken.objects.exists()
