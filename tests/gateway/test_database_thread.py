"""The gateway's database thread keeps one connection, and starts a fresh one after a connection error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connection

from fleet.gateway.app import Gateway, GatewayConfig
from fleet.gateway.table import EMPTY_TABLE
from fleet.models import Team
from tests.support.require import require

pytestmark = pytest.mark.django_db(transaction=True)


def on_database_thread(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call on a started gateway's database thread; an exception is returned, not raised."""

    async def scenario() -> list[Any]:
        gateway = Gateway(config=GatewayConfig(refresh_s=60, log_flush_s=60), table_loader=lambda: EMPTY_TABLE)
        await gateway.start()
        results: list[Any] = []
        try:
            for call in calls:
                try:
                    results.append(await gateway._db(call))
                except Exception as exc:
                    results.append(exc)
        finally:
            await gateway.stop()
        return results

    return asyncio.run(scenario())


def link() -> tuple[int, int]:
    teams = Team.objects.count()  # connects, where this thread had no connection yet
    return id(connection.connection), teams


def test_one_connection_serves_every_call() -> None:
    first, second, third = on_database_thread(link, link, link)
    # Reconnecting per call cost more than the calls (on SQLite, a WAL checkpoint at each close).
    assert first == second == third


@pytest.mark.services
def test_a_connection_error_leaves_the_next_call_a_fresh_connection() -> None:
    require(connection.vendor == "postgresql", "a connection to drop needs PostgreSQL: set DATABASE_URL")

    def server_went_away() -> None:
        raise OperationalError("server closed the connection unexpectedly")

    before, failed, after = on_database_thread(link, server_went_away, link)
    assert isinstance(failed, OperationalError)
    assert after[0] != before[0] and after[1] == 0
