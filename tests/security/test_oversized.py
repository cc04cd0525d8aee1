"""Oversized bodies are refused early: the panel answers 413 long before the client has sent them.

A raw socket declares (or streams) far more than any endpoint takes and sends only a
part; the answer must arrive while most of the body is still unsent.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from agents.protocol import MAX_BODY_BYTES
from fleet.decide.services import api_key_create
from fleet.models import Team
from tests.security.conftest import PanelServer

pytestmark = pytest.mark.django_db(transaction=True)

GIB = 1024**3


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path", ["/api/agent/v1/report", "/api/agent/v1/register", "/admin/login/", "/v1/chat/completions"]
)
def test_a_declared_gigabyte_is_refused_before_it_is_sent(live_panel: str, path: str) -> None:
    _key, secret = api_key_create(team=Team.objects.create(name="Research", slug="research"), name="app")
    deadline = time.monotonic() + 10
    while httpx.get(f"{live_panel}/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code != 200:
        assert time.monotonic() < deadline, "the gateway never loaded the key"
        time.sleep(0.05)
    with _connect(live_panel) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {secret}\r\nContent-Length: {GIB}\r\n\r\n".encode()
        )
        sock.sendall(b"{" * 65536)
        started = time.monotonic()
        assert _status(sock) == 413
        assert time.monotonic() - started < 5


def test_a_streamed_body_is_cut_off_once_past_the_limit(serve_panel: PanelServer) -> None:
    """Chunked, with no length declared: refused once the bytes received pass the limit."""
    sent = 0
    answered = threading.Event()

    def stream(sock: socket.socket) -> None:
        nonlocal sent
        chunk = b"%x\r\n%s\r\n" % (16384, b"[" * 16384)
        try:
            while not answered.is_set() and sent < 64 * MAX_BODY_BYTES:
                sock.sendall(chunk)
                sent += 16384
        except OSError:
            return

    with serve_panel(body_limit=256 * 1024) as url, _connect(url) as sock:
        sock.sendall(
            b"POST /api/agent/v1/report HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        writer = threading.Thread(target=stream, args=(sock,), daemon=True)
        writer.start()
        status = _status(sock)
        answered.set()
        writer.join(10)

    assert status == 413
    assert sent < 4 * MAX_BODY_BYTES, f"sent {sent} bytes before the answer"
