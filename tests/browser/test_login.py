"""A person signs in and sees the fleet; an anonymous visitor is sent to sign in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from tests.factories import make_gpu, make_node, make_pool
from tests.support.browser import screenshot

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_anonymous_visitor_is_sent_to_sign_in_and_then_sees_the_fleet(live_server: Any, page: Any) -> None:
    User.objects.create_superuser("ops", "", "a-long-password-1")
    node = make_node("rack1-h100")
    make_gpu(node, 0, "NVIDIA H100 80GB HBM3")
    make_node("demo-l4", simulated=True)
    make_pool("chat-l")

    page.goto(f"{live_server.url}/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a-long-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    assert page.locator("h1").inner_text() == "Fleet overview"
    rows = page.locator("#nodes tbody tr")
    assert rows.count() == 2
    assert page.locator("#nodes .badge.sim").inner_text() == "simulated"
    assert "chat-l" in page.locator("#pools").inner_text()
    screenshot(page, "overview-tables")
