"""/metrics behind a reverse proxy: the client's address comes from X-Forwarded-For only through a trusted proxy."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PROXY = "10.0.0.5"
SCRAPER = "192.0.2.7"


@pytest.fixture
def behind_proxy(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["192.0.2.0/28"]
    settings.TRUSTED_PROXIES = [PROXY]


def scrape(peer: str, forwarded: str | None = None) -> int:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return Client().get("/metrics", REMOTE_ADDR=peer, **headers).status_code


def test_an_allowed_scraper_behind_the_trusted_proxy_gets_in(behind_proxy: None) -> None:
    assert scrape(PROXY, SCRAPER) == 200


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_refused(behind_proxy: None) -> None:
    assert scrape("198.51.100.9", SCRAPER) == 403


def test_a_forged_entry_ahead_of_the_proxys_own_is_ignored(behind_proxy: None) -> None:
    """The proxy appends the address it saw; whatever the client put before it is the client's word."""
    assert scrape(PROXY, f"{SCRAPER}, 198.51.100.9") == 403


def test_the_proxy_itself_does_not_pass_for_a_scraper(behind_proxy: Any, settings: Any) -> None:
    settings.METRICS_ALLOWED_IPS = [PROXY]
    assert scrape(PROXY, "198.51.100.9") == 403
