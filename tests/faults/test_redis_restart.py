"""Redis restarted under report load: ingest carries on, and the live feed resumes by itself.

The panel process runs on a private PostgreSQL cluster and a private Redis (the channel
layer), never the shared ones. While Redis is down agents keep reporting and every report
is acknowledged (the live events are best effort; the database is the record). After it
is back, a browser's reconnect receives live fleet events again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.faults.test_database_faults import Fleet, RecordingAgent, join_token_issue
from tests.support.panel_process import panel_manage, panel_process
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = pytest.mark.services

__all__ = ["private_postgres", "private_redis"]

VIEWER_SESSION = """
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
user = User.objects.create_user("viewer")
session = SessionStore()
session.update({"_auth_user_id": str(user.pk), "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
                "_auth_user_hash": user.get_session_auth_hash()})
session.create()
print(session.session_key)
"""


def _fleet_event(url: str, session: str, within_s: float) -> dict[str, object]:
    """Open the live feed as a signed-in browser would and wait for a fleet summary."""
    socket: ClientConnection
    with connect(
        url.replace("http://", "ws://") + "/ws/fleet/",
        origin=url,
        additional_headers={"cookie": f"sessionid={session}"},
        open_timeout=10,
    ) as socket:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            event = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if event.get("kind") == "fleet":
                return event
    raise AssertionError("no fleet event on the live feed")


def _fleet_event_reconnecting(url: str, session: str, within_s: float) -> dict[str, object]:
    """As the page does: reconnect after a refused or dropped socket until an event arrives."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return _fleet_event(url, session, within_s=2)
        except (AssertionError, OSError, InvalidStatus, ConnectionClosed, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def panel(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[tuple[Fleet, PrivateRedis, str]]:
    panel_manage(private_postgres.url, "migrate", "--noinput")
    join = join_token_issue(private_postgres.url)
    session = panel_manage(private_postgres.url, "shell", "--no-imports", "-c", VIEWER_SESSION).strip()
    with panel_process(
        private_postgres.url, tmp_path / "panel.log", REDIS_URL=private_redis.url, FLEET_SUMMARY_INTERVAL_S="0.2"
    ) as url:
        agents = [RecordingAgent.started(url, tmp_path, f"h100-{n}", join) for n in range(2)]
        fleet = Fleet(url=url, cluster=private_postgres, agents=agents)
        try:
            yield fleet, private_redis, session
        finally:
            fleet.halt()


def test_redis_restarted_under_load_ingest_continues_and_the_live_feed_resumes(
    panel: tuple[Fleet, PrivateRedis, str],
) -> None:
    fleet, redis_server, session = panel
    fleet.run()
    assert _fleet_event(fleet.url, session, within_s=10)["reports"]
    redis_server.stop()
    acked_before = sum(len(agent.acked) for agent in fleet.agents)
    time.sleep(3)
    acked_during = sum(len(agent.acked) for agent in fleet.agents) - acked_before
    with pytest.raises(Exception):  # noqa: B017 - the feed is down with its channel layer
        _fleet_event(fleet.url, session, within_s=1)
    redis_server.start()

    assert _fleet_event_reconnecting(fleet.url, session, within_s=20)["reports"]
    assert httpx.get(f"{fleet.url}/agent/install.sh").status_code == 200
    assert fleet.drained(within_s=20)
    fleet.halt()
    assert acked_during >= 10, "reports were not acknowledged while Redis was down"
    assert max(agent.failures for agent in fleet.agents) == 0
    fleet.assert_nothing_lost()
