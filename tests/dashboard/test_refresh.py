"""The refresh period a page takes from its URL, and the picker that shows it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.views import refresh_parse


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("", 0), ("off", 0), ("30s", 30), ("1m", 60), ("5m", 300), ("5s", 5), ("2h", 7200)],
)
def test_a_period_is_read_in_seconds(value: str, seconds: int) -> None:
    assert refresh_parse(value) == {"key": "" if seconds == 0 else value, "seconds": seconds, "error": ""}


@pytest.mark.parametrize("value", ["4s", "0m", "-5s", "1d", "25h", "soon", "m", "1.5m"])
def test_a_period_too_short_or_unreadable_leaves_refresh_off_and_says_why(value: str) -> None:
    parsed = refresh_parse(value)
    assert parsed["seconds"] == 0 and parsed["key"] == ""
    assert repr(value) in str(parsed["error"]) and "30s" in str(parsed["error"])


@pytest.mark.django_db
def test_the_picker_marks_the_period_in_the_url_and_keeps_the_range_in_its_links(admin_client: Client) -> None:
    page = admin_client.get(reverse("dashboard:costs"), {"range": "7d", "refresh": "1m"}).content.decode()
    assert 'id="refresh" data-seconds="60"' in page
    assert 'href="?range=7d&amp;refresh=1m" class="on">1m</a>' in page
    assert 'href="?range=7d&amp;refresh=5m" class="">5m</a>' in page
    assert 'href="?range=7d" class="">off</a>' in page
    refused = admin_client.get(reverse("dashboard:costs"), {"refresh": "1s"}).content.decode()
    assert 'data-seconds="0"' in refused and "refresh=&#x27;1s&#x27; ignored" in refused


@pytest.mark.django_db
def test_the_requests_page_offers_the_same_picker_keeping_its_filters(admin_client: Client) -> None:
    page = admin_client.get(reverse("dashboard:requests"), {"status": "error", "refresh": "30s"}).content.decode()
    assert 'id="refresh" data-seconds="30"' in page
    assert 'href="?refresh=5m&amp;status=error" class="">5m</a>' in page
