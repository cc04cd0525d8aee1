"""The whole panel (pages, admin, agent API, gateway, WebSocket) served on loopback, with a stub upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fleet.asgi import application_build
from fleet.gateway.app import Gateway
from tests.gateway.conftest import FAST, make_ready, make_routed_pool
from tests.support.asgi_server import asgi_serve
from tests.support.openai_stub import OpenAIStub


@pytest.fixture
def live_panel(transactional_db: None, settings: Any, in_memory_channel_layer: None) -> Iterator[str]:
    """The panel's ASGI app with a fresh gateway whose one ready L pool is a stub; yields its URL."""
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    stub = OpenAIStub().start()
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    try:
        with asgi_serve(application_build(gateway=Gateway(config=FAST)), lifespan="off") as url:
            yield url
    finally:
        stub.stop()
