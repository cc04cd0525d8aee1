"""The project's ASGI application hands /v1/ to the gateway and everything else to Django."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fleet.gateway.accounting import RequestRecorder
from tests.factories import make_request_record

pytestmark = pytest.mark.django_db(transaction=True)


def test_v1_paths_reach_the_gateway_and_others_reach_django(settings: Any) -> None:
    settings.FLEET_INPROCESS_SCHEDULER = False  # the first request would start it, against the test database
    from fleet.project.asgi import application, gateway

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                return await http.get("/v1/models"), await http.get("/admin/login/")
        finally:
            await gateway.stop()

    routed, django = asyncio.run(fetch())

    assert routed.status_code == 401
    assert routed.json()["error"]["code"] == "invalid_api_key"
    assert django.status_code == 200
    assert b"<form" in django.content


def test_the_log_queue_is_bounded_and_counts_what_it_drops() -> None:
    recorder = RequestRecorder(max_pending=3)
    for at in range(5):
        recorder.record(make_request_record(at=float(at)))

    assert (len(recorder), recorder.dropped) == (3, 2)
    assert [item.at for item in recorder.take(2)] == [0.0, 1.0]
    assert len(recorder) == 1
