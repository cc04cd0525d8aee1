"""Shared fixtures. Under CI=true a skipped test is turned into a failure: nothing may be skipped there."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

from tests.support.asgi_server import asgi_live_server
from tests.support.browser import browser, page
from tests.support.require import in_ci, require
from tests.support.vllm_container import vllm_container_profile
from tests.support.vllm_server import vllm_server

pytest_plugins = ["tests.support.docker_engine"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {report.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def static_files_collected() -> None:
    """``collectstatic`` once, as a deployment runs it, before any test builds the app.

    DEBUG is off in tests, so the app's WhiteNoise serves STATIC_ROOT only, as in production.
    """
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis to test against: REDIS_URL if set, else the loopback default, database 15."""
    url = os.environ.get("REDIS_URL") or os.environ.get("FLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    require(reachable(url, 6379), f"no Redis at {url}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL to test against: DATABASE_URL if it is one, else the loopback default."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = os.environ.get("FLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    require(reachable(url, 5432), f"no PostgreSQL at {url}")
    return url


@pytest.fixture
def in_memory_channel_layer(settings):  # type: ignore[no-untyped-def]
    """The in-memory layer, so a test's group traffic stays in its own process."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


__all__ = ["asgi_live_server", "browser", "in_ci", "page", "vllm_container_profile", "vllm_server"]
