"""An upstream server killed under gateway load: at most 0.1% of requests fail, each with a clear error.

Two upstream processes (the OpenAI-compatible stub, each its own process) serve one pool;
eight clients send requests, some streamed, through the live gateway; a quarter of the
way in one upstream is killed with SIGKILL. Requests that hit it before the gateway's
cool-down takes it out are retried on the other.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import LiveGateway, api_key, chat, live_gateway, make_ready, make_routed_pool
from tests.support.vllm_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)

__all__ = ["api_key", "live_gateway"]
STUB = Path(__file__).resolve().parents[1] / "support" / "openai_stub.py"
REQUESTS = 2000
CLIENTS = 8


def _upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(STUB), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=2)
            return process, url
        except httpx.HTTPError:
            assert process.poll() is None and time.monotonic() < deadline, "the stub upstream did not start"
            time.sleep(0.1)


@pytest.fixture
def upstreams() -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started = [_upstream(), _upstream()]
    yield started
    for process, _url in started:
        process.kill()
        process.wait(10)


def test_killing_one_of_two_upstreams_fails_at_most_a_thousandth_of_requests(
    live_gateway: Callable[..., LiveGateway],
    api_key: str,
    upstreams: list[tuple[subprocess.Popen[bytes], str]],
) -> None:
    pool = make_routed_pool("chat-l")
    for _process, url in upstreams:
        make_ready(pool, url)
    live = live_gateway(cooldown_s=15.0)
    victim = upstreams[0][0]
    done = 0
    lock = threading.Lock()
    killed = threading.Event()
    failures: list[tuple[int, str]] = []

    def one(index: int, http: httpx.Client) -> None:
        nonlocal done
        stream = index % 4 == 0
        try:
            response = http.post("/v1/chat/completions", json=chat(f"request {index}", stream=stream))
            ok = response.status_code == 200 and (not stream or b"data: [DONE]" in response.content)
            if not ok:
                failures.append((response.status_code, response.text[:300]))
        except httpx.HTTPError as exc:
            failures.append((0, repr(exc)))
        with lock:
            done += 1
            if done == REQUESTS // 4 and not killed.is_set():
                victim.kill()
                killed.set()

    headers = {"authorization": f"Bearer {api_key}"}
    clients = [httpx.Client(base_url=live.base_url, headers=headers, timeout=30) for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as workers:
        list(workers.map(lambda i: one(i, clients[i % CLIENTS]), range(REQUESTS)))
    for http in clients:
        http.close()

    assert killed.is_set() and victim.wait(5) is not None
    assert len(failures) <= REQUESTS // 1000, failures
    for status, text in failures:
        assert status in {502, 503, 504} and '"message"' in text, (status, text)
    logs = live.logs()
    assert len(logs) == REQUESTS
    assert sum(log.retried for log in logs) >= 1
