"""The panel's ASGI application (HTTP and WebSockets) served by uvicorn in a thread.

Django's own live server speaks WSGI only; pages with live updates need the ASGI app.
It runs in the test process, so it sees the test database, and on the Redis channel
layer so events sent from any thread reach the sockets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.require import require


@dataclass(frozen=True)
class AsgiServer:
    url: str


@pytest.fixture
def asgi_live_server(transactional_db: None, settings: object) -> Iterator[AsgiServer]:
    require(bool(os.environ.get("REDIS_URL")), "live pages need the Redis channel layer: set REDIS_URL")
    from fleet.asgi import application

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]  # type: ignore[attr-defined]
    with asgi_serve(application, lifespan="off") as url:
        yield AsgiServer(url=url)


@contextmanager
def asgi_serve(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port for the block; yields its base URL."""
    import uvicorn

    from tests.support.vllm_server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True, name="asgi")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
