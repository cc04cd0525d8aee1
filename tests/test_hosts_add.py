"""Adding a host: a join token, the one-line command, shown once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (Path(__file__).resolve().parent.parent / "agents" / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]


def wheel_for(requirement: str) -> str:
    name, version = requirement.split("==")
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def test_the_page_says_which_wheels_the_wheelhouse_lacks_and_how_to_fill_it(
    admin_client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.AGENT_WHEELHOUSE = tmp_path / "wheelhouse"
    page = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    assert REQUIREMENTS and all(requirement in page for requirement in REQUIREMENTS), page
    assert str(tmp_path / "wheelhouse") in page and "make agent-wheels" in page

    settings.AGENT_WHEELHOUSE.mkdir()
    (settings.AGENT_WHEELHOUSE / wheel_for(REQUIREMENTS[0])).write_bytes(b"")
    page = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    assert REQUIREMENTS[0] not in page and all(requirement in page for requirement in REQUIREMENTS[1:]), page

    for requirement in REQUIREMENTS[1:]:
        (settings.AGENT_WHEELHOUSE / wheel_for(requirement)).write_bytes(b"")
    page = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    assert "make agent-wheels" not in page and not any(requirement in page for requirement in REQUIREMENTS)


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "0.0.0.0:8000"])
def test_a_loopback_install_line_carries_a_warning(admin_client: Client, settings: Any, host: str) -> None:
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"]
    response = admin_client.post(
        reverse("dashboard:hosts-add"), {"name": "rack 4", "max_uses": 1, "valid_hours": 1}, HTTP_HOST=host
    )
    page = response.content.decode()
    assert f"curl -fsSL http://{host}/agent/install.sh" in page
    assert "loopback address" in page and "hosts elsewhere cannot reach it" in page and "PANEL_URL" in page


def test_the_install_line_uses_panel_url_and_says_so(admin_client: Client, settings: Any) -> None:
    settings.PANEL_URL = "http://panel.example:8000"
    response = admin_client.post(
        reverse("dashboard:hosts-add"), {"name": "rack 4", "max_uses": 1, "valid_hours": 1}, HTTP_HOST="127.0.0.1:8000"
    )
    page = response.content.decode()
    assert "curl -fsSL http://panel.example:8000/agent/install.sh | sudo sh -s -- --join-token gfj_" in page
    assert "127.0.0.1" not in page and "loopback address" not in page
    assert "from PANEL_URL" in page

    settings.PANEL_URL = "http://localhost:8000"
    page = admin_client.get(reverse("dashboard:hosts-add")).content.decode()
    assert "http://localhost:8000, a loopback address" in page
