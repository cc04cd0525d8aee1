"""A client guessing passwords at the admin's login (which the dashboard signs in through) is locked out."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def guess(client: Client, password: str) -> tuple[int, str]:
    response = client.post(
        reverse("admin:login"), {"username": "root", "password": password}, REMOTE_ADDR="203.0.113.7"
    )
    return response.status_code, response.content.decode()


def test_brute_force_is_locked_out_even_with_the_right_password_after_the_limit() -> None:
    User.objects.create_superuser("root", "root@example.com", "the-real-password-1")
    attacker = Client()
    limit = getattr(settings, "AXES_FAILURE_LIMIT", 5)
    answers = [guess(attacker, f"guess-{n}") for n in range(limit + 5)]
    assert [status for status, _ in answers[: limit - 1]] == [200] * (limit - 1)  # the form again, with an error
    status, page = answers[-1]
    assert status == 429
    assert "Too many failed sign-ins" in page and "minutes" in page
    status, _ = guess(attacker, "the-real-password-1")
    assert status == 429, "the right password gets nowhere during the cool-off"
    assert "_auth_user_id" not in attacker.session


def test_another_client_is_not_locked_out_by_the_attacker() -> None:
    User.objects.create_superuser("root", "root@example.com", "the-real-password-1")
    attacker = Client()
    for n in range(getattr(settings, "AXES_FAILURE_LIMIT", 5) + 1):
        guess(attacker, f"guess-{n}")
    operator = Client()
    response = operator.post(
        reverse("admin:login"), {"username": "root", "password": "the-real-password-1"}, REMOTE_ADDR="198.51.100.2"
    )
    assert response.status_code == 302
