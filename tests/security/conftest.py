"""The whole panel (pages, admin, agent API, gateway, WebSocket) served on loopback, with a stub upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from fleet.gateway.app import Gateway
from tests.gateway.conftest import FAST, make_ready, make_routed_pool
from tests.support.asgi_server import asgi_serve
from tests.support.openai_stub import OpenAIStub

PanelServer = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def serve_panel(transactional_db: None, settings: Any, in_memory_channel_layer: None) -> PanelServer:
    """Serve the panel's ASGI app, with a fresh fast gateway, for a ``with`` block; yields its URL.

    The embedded scheduler stays off: it would run policies against the test database.
    """
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.FLEET_INPROCESS_SCHEDULER = False
    from fleet.project.asgi import application_build

    def serve(**options: Any) -> AbstractContextManager[str]:
        return asgi_serve(application_build(gateway=Gateway(config=FAST), **options), lifespan="off")

    return serve


@pytest.fixture
def live_panel(serve_panel: PanelServer) -> Iterator[str]:
    """The panel with one ready L pool whose instance is a stub upstream; yields its URL."""
    stub = OpenAIStub().start()
    make_ready(make_routed_pool("chat-l"), stub.base_url)
    try:
        with serve_panel() as url:
            yield url
    finally:
        stub.stop()
