"""A slow client cannot hold a connection: every uvicorn the README starts bounds how long a
request may take to arrive (headers, then body), and closes the connection with a 408.

The panel is started as the README's production section starts it (``uvicorn
fleet.project.asgi:application --http fleet.project.http:ReadDeadlineProtocol``), with the
deadlines set to 1 s so the test is quick; the dedicated gateway's protocol is served as
``python -m fleet.gateway`` serves it (``server_config``). The attacker is a raw socket that
sends a byte at a time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from fleet.gateway.server import server_config
from tests.support.processes import process_stop
from tests.support.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 1.0
STATIC = "/static/dashboard/favicon.svg"


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The panel under uvicorn with the README's protocol, on the embedded default."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        FLEET_VAR_DIR=str(tmp_path_factory.mktemp("var")),
        FLEET_INPROCESS_SCHEDULER="0",
        HTTP_HEADER_TIMEOUT_S=str(DEADLINE_S),
        HTTP_BODY_TIMEOUT_S=str(DEADLINE_S),
    )
    log = tmp_path_factory.mktemp("log") / "panel.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fleet.project.asgi:application", "--host", "127.0.0.1",
             "--port", str(port), "--http", "fleet.project.http:ReadDeadlineProtocol", "--lifespan", "off"],
            cwd=ROOT, env=env, stdout=output, stderr=output,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                httpx.get(f"http://127.0.0.1:{port}{STATIC}", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the panel did not start"
                time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        process_stop(process, grace_s=5)


def answer_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``seconds`` pass)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {seconds} s; got {received[:200]!r}")
    return received


def trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time, until the server closes the connection."""
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def slow_headers(address: tuple[str, int]) -> tuple[bytes, float, float]:
    """A request whose headers arrive a byte every 0.2 s (about 12 s for all of them)."""
    request = f"GET {STATIC} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n".encode()
    stop = threading.Event()
    with socket.create_connection(address) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=trickle, args=(sock, request, 0.2, stop), daemon=True)
        sender.start()
        received = answer_within(sock, 10 * DEADLINE_S)
        elapsed = time.monotonic() - started
        stop.set()
    return received, elapsed, len(request) * 0.2


def test_headers_that_trickle_in_are_cut_off_with_a_408(panel: tuple[str, int]) -> None:
    received, elapsed, whole = slow_headers(panel)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 2, elapsed
    assert elapsed < whole / 4, "the connection lasted about as long as the client liked"


def test_a_body_that_stalls_is_cut_off_and_the_view_never_runs(panel: tuple[str, int]) -> None:
    """Headers at once, 10 of the 1,000 bytes the body promises, then nothing."""
    head = (
        b"POST /api/agent/v1/report HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer gfn_x\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(panel) as sock:
        started = time.monotonic()
        sock.sendall(head + b'{"version"')
        received = answer_within(sock, 10 * DEADLINE_S)
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 2, elapsed


def test_clients_within_the_deadline_are_served_and_keep_their_connection(panel: tuple[str, int]) -> None:
    """Headers in three pieces 0.2 s apart (0.4 s in all), then a second request on the same
    connection after more than the deadline idle: both answered (idle time between requests
    is uvicorn's keep-alive, 5 s by default, not the read deadline)."""
    request = f"GET {STATIC} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with socket.create_connection(panel) as sock:
        sock.settimeout(5)
        for piece in (request[:10], request[10:30], request[30:]):
            sock.sendall(piece)
            time.sleep(0.2)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        time.sleep(DEADLINE_S * 1.5)
        sock.sendall(request)
        second = sock.recv(65536)
        assert second.startswith(b"HTTP/1.1 200 "), second[:200]


def test_the_dedicated_gateway_cuts_off_a_slow_client_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m fleet.gateway``'s server config, on an app that answers 200 to anything."""

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    from fleet.gateway import server

    monkeypatch.setattr(server.GatewayHttpProtocol, "header_timeout_s", DEADLINE_S)
    port = free_port()
    gateway = uvicorn.Server(server_config(app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=gateway.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not gateway.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200
        received, elapsed, _ = slow_headers(("127.0.0.1", port))
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert elapsed < DEADLINE_S + 2, elapsed
    finally:
        gateway.should_exit = True
        thread.join(timeout=10)
