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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.require import require


@dataclass
class AsgiServer:
    """uvicorn serving the app on one port; ``restart`` stops it and serves again on the same port."""

    port: int
    app: Any
    lifespan: str = "off"
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=self.lifespan)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=10)
        # A served process has one loop for its life; here each server has its own. A channels-redis
        # layer receives on one loop at a time, and a receive this server's loop left pending (an
        # agent's long poll, a socket still open as it stopped) would make every later server's
        # receive fail ("Two event loops are trying to receive() on one channel layer at once!").
        # The next server gets a layer of its own.
        from channels.layers import channel_layers

        channel_layers.backends.clear()


@pytest.fixture
def asgi_live_server(transactional_db: None, settings: object) -> Iterator[AsgiServer]:
    require(bool(os.environ.get("REDIS_URL")), "live pages need the Redis channel layer: set REDIS_URL")
    from fleet.project.asgi import application
    from tests.support.vllm_server import free_port

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]  # type: ignore[attr-defined]
    server = AsgiServer(port=free_port(), app=application)
    server.start()
    yield server
    server.stop()


@contextmanager
def asgi_serve(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port for the block; yields its base URL."""
    from tests.support.vllm_server import free_port

    server = AsgiServer(port=free_port(), app=app, lifespan=lifespan)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
