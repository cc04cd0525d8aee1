"""The panel's ASGI application (HTTP and WebSockets) served by uvicorn in a thread.

Django's own live server speaks WSGI only; pages with live updates need the ASGI app.
It runs in the test process, so it sees the test database, and on the Redis channel
layer so events sent from any thread reach the sockets. Static files (the admin's, the
dashboard's script) are served as ``runserver`` serves them in development.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.require import require


@dataclass(frozen=True)
class AsgiServer:
    url: str


@pytest.fixture
def asgi_live_server(transactional_db: None, settings: object) -> Iterator[AsgiServer]:
    require(bool(os.environ.get("REDIS_URL")), "live pages need the Redis channel layer: set REDIS_URL")
    import uvicorn
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    from fleet.asgi import application
    from tests.support.vllm_server import free_port

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]  # type: ignore[attr-defined]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            ASGIStaticFilesHandler(application), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield AsgiServer(url=f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=10)
