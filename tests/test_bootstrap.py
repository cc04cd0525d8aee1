"""The first admin user is created with a printed password, once."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory

# Sign-ins are throttled per request (django-axes), so a sign-in is checked as the login page makes it.
SIGN_IN = RequestFactory().post("/admin/login/")


@pytest.mark.django_db
def test_first_admin_gets_a_printed_password_that_works() -> None:
    out = StringIO()
    call_command("fleet_admin", stdout=out)
    match = re.search(r"Created admin user: (\S+)\s+password: (\S+)", out.getvalue())
    assert match
    user = authenticate(SIGN_IN, username=match.group(1), password=match.group(2))
    assert user is not None and user.is_superuser and user.is_staff

    again = StringIO()
    call_command("fleet_admin", stdout=again)
    assert "Admin user exists: admin (password unchanged)." in again.getvalue()
    assert authenticate(SIGN_IN, username="admin", password=match.group(2)) is not None
