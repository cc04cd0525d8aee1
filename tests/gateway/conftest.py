"""A live gateway on loopback (uvicorn on a thread), a stub upstream, and fleet rows to route to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fleet.decide.services import api_key_create
from fleet.gateway.app import Gateway, GatewayConfig
from fleet.gateway.server import server_config
from fleet.models import Instance, ModelProfile, Pool, RequestLog, Team
from tests.support.openai_stub import OpenAIStub
from tests.support.vllm_server import free_port

STUB_MODEL = "stub-model"
FAST = GatewayConfig(refresh_s=0.1, held_refresh_s=0.05, log_flush_s=0.1, hold_timeout_s=5.0, connect_timeout_s=1.0)


class LiveGateway:
    """A gateway served on 127.0.0.1 with the dedicated gateway's protocol, as clients reach it in production.

    Its database worker is a thread, so it sees the test's database; ``test_db_process``
    runs ``python -m fleet.gateway`` with its worker process.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.port = free_port()
        self.server = uvicorn.Server(server_config(gateway, host="127.0.0.1", port=self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="gateway")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def settle(self) -> None:
        """Wait until the gateway has re-read the table and written its queued log records."""
        gateway = self.gateway
        loaded = gateway.table.loaded_at
        deadline = time.monotonic() + 5
        while (gateway.table.loaded_at == loaded or len(gateway.recorder)) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(gateway.config.log_flush_s * 2)

    def logs(self) -> list[RequestLog]:
        self.settle()
        return list(RequestLog.objects.order_by("id"))


@pytest.fixture
def live_gateway() -> Iterator[Callable[..., LiveGateway]]:
    """Start gateways with ``FAST`` config and any overrides; all are stopped after the test."""
    started: list[LiveGateway] = []

    def start(**overrides: Any) -> LiveGateway:
        config = GatewayConfig(**{**FAST.__dict__, **overrides})
        live = LiveGateway(Gateway(config=config)).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    server = OpenAIStub().start()
    yield server
    server.stop()


@pytest.fixture
def api_key() -> str:
    team = Team.objects.create(name="Research", slug="research")
    _key, secret = api_key_create(team=team, name="ci")
    return secret


def make_profile(served_name: str = STUB_MODEL, max_model_len: int = 4096, tokenizer: str = "") -> ModelProfile:
    profile, _created = ModelProfile.objects.get_or_create(
        name=f"{served_name}-{max_model_len}",
        defaults=dict(
            model=f"test/{served_name}",
            served_name=served_name,
            max_model_len=max_model_len,
            tokenizer=tokenizer,
        ),
    )
    return profile


def make_routed_pool(name: str, tier: str = "L", profile: ModelProfile | None = None) -> Pool:
    return Pool.objects.create(name=name, tier=tier, isolation="shared", model_profile=profile or make_profile())


def make_ready(pool: Pool, endpoint: str) -> Instance:
    return Instance.objects.create(pool=pool, actual_state=Instance.Actual.READY, endpoint=endpoint)


def client(live: LiveGateway, key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=live.base_url, headers=headers, timeout=30)


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": STUB_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}
