"""Who may do what: every endpoint against every principal, through the real ASGI app on loopback.

One table says the expected answer for each (endpoint, principal); each principal is one
test that probes every endpoint over HTTP (and the WebSocket) and compares the whole row,
so a hole shows up as a cell that differs. Session principals carry only their session
cookie and a CSRF token; token principals carry only ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from fleet.decide.services import api_key_create, join_token_create, node_create
from fleet.models import ApiKey, JoinToken, Node, Team
from tests.gateway.conftest import chat

pytestmark = pytest.mark.django_db(transaction=True)

METRICS_SECRET = "metrics-secret-0123456789abcdef"
WHEEL = "tiny_pkg-1.0-py3-none-any.whl"

PRINCIPALS = [
    "anonymous",
    "user",
    "staff",
    "operator",
    "superuser",
    "node_a",
    "node_b",
    "team_key",
    "revoked_key",
    "join_token",
    "used_join_token",
    "expired_join_token",
    "metrics_token",
]
SESSION = {"user", "staff", "operator", "superuser"}

# Expected answer per endpoint; ``default`` covers every principal not named.
# ``staff`` has no permissions, ``operator`` is staff allowed to add join tokens only.
# 302 = sent to a login page, 101 = WebSocket accepted, 403 on the WebSocket = handshake refused.
MATRIX: dict[str, dict[str, int]] = {
    "GET /": {"default": 302, "user": 200, "staff": 200, "operator": 200, "superuser": 200},
    "GET /requests/export.csv": {"default": 302, "user": 200, "staff": 200, "operator": 200, "superuser": 200},
    "GET /costs/spend.csv": {"default": 302, "user": 200, "staff": 200, "operator": 200, "superuser": 200},
    "GET /hosts/add/": {"default": 302, "staff": 403, "operator": 200, "superuser": 200},
    "POST /hosts/add/": {"default": 302, "staff": 403, "operator": 200, "superuser": 200},
    "WS /ws/fleet/": {"default": 403, "user": 101, "staff": 101, "operator": 101, "superuser": 101},
    "GET /admin/": {"default": 302, "staff": 200, "operator": 200, "superuser": 200},
    "GET /admin/fleet/apikey/add/": {"default": 302, "staff": 403, "operator": 403, "superuser": 200},
    "GET /admin/fleet/node/": {"default": 302, "staff": 403, "operator": 403, "superuser": 200},
    "POST /api/agent/v1/register": {"default": 401, "join_token": 201},
    "POST /api/agent/v1/report": {"default": 401, "node_a": 200, "node_b": 403},
    # A node waits on its own desired state only: no node is named, the token is the node.
    "GET /api/agent/v1/wait?generation=0": {"default": 401, "node_a": 200, "node_b": 200},
    "GET /v1/models": {"default": 401, "team_key": 200},
    "POST /v1/chat/completions": {"default": 401, "team_key": 200},
    "GET /metrics": {"default": 403, "metrics_token": 200},
    "GET /agent/install.sh": {"default": 200},
    "GET /agent/gpufleet-agent.tar.gz": {"default": 200},
    "GET /agent/wheels/": {"default": 200},
    f"GET /agent/wheels/{WHEEL}": {"default": 200},
}


def expected(principal: str) -> dict[str, int]:
    return {endpoint: row.get(principal, row["default"]) for endpoint, row in MATRIX.items()}


@dataclass
class Principal:
    name: str
    cookies: dict[str, str] = field(default_factory=dict)
    bearer: str = ""

    def headers(self) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        if "csrftoken" in self.cookies:
            headers["x-csrftoken"] = self.cookies["csrftoken"]
        return headers


@dataclass
class Fleet:
    """The credentials of every principal, made the way the product makes them."""

    secrets: dict[str, str]
    users: dict[str, User]


def _fleet() -> Fleet:
    users = {
        "user": User.objects.create_user("user"),
        "staff": User.objects.create_user("staff", is_staff=True),
        "operator": User.objects.create_user("operator", is_staff=True),
        "superuser": User.objects.create_superuser("root", "root@example.com", None),
    }
    users["operator"].user_permissions.add(Permission.objects.get(codename="add_jointoken"))
    _node_a, node_a = node_create(name="node-a")
    _node_b, node_b = node_create(name="node-b")
    team = Team.objects.create(name="Research", slug="research")
    _key, team_key = api_key_create(team=team, name="app")
    revoked, revoked_key = api_key_create(team=team, name="old")
    revoked.revoke()
    revoked.save()
    later = timezone.now() + timedelta(hours=1)
    _join, join = join_token_create(name="rollout", max_uses=5, expires_at=later)
    used, used_join = join_token_create(name="spent", max_uses=1, expires_at=later)
    JoinToken.objects.filter(pk=used.pk).update(uses=1)
    _expired, expired_join = join_token_create(
        name="stale", max_uses=5, expires_at=timezone.now() - timedelta(minutes=1)
    )
    secrets = {
        "node_a": node_a,
        "node_b": node_b,
        "team_key": team_key,
        "revoked_key": revoked_key,
        "join_token": join,
        "used_join_token": used_join,
        "expired_join_token": expired_join,
        "metrics_token": METRICS_SECRET,
    }
    return Fleet(secrets=secrets, users=users)


def _principal(name: str, fleet: Fleet, base_url: str) -> Principal:
    principal = Principal(name=name, bearer=fleet.secrets.get(name, ""))
    if name in SESSION:
        client = Client()
        client.force_login(fleet.users[name])
        principal.cookies["sessionid"] = client.cookies["sessionid"].value
    # Every browser principal holds a CSRF token, so a refusal below is about who, not CSRF.
    with httpx.Client(base_url=base_url) as http:
        http.get("/admin/login/")
        principal.cookies["csrftoken"] = http.cookies["csrftoken"]
    return principal


def _registration(principal: Principal) -> dict[str, Any]:
    return {
        "join_token": principal.bearer or "gfj_none-given",
        "name": f"new-{principal.name.replace('_', '-')}",
        "hostname": "new.local",
        "agent_version": "0.1.0",
    }


def _report() -> dict[str, Any]:
    host = {"hostname": "node-a.local", "agent_version": "0.1.0", "nvml_available": False}
    report = {"seq": 1, "sampled_at": time.time(), "host": host, "gpus": [], "instances": []}
    return {"version": 1, "node": "node-a", "reports": [report], "dropped": 0}


def _websocket_status(base_url: str, principal: Principal, origin: str | None = None) -> int:
    async def connect() -> int:
        url = base_url.replace("http://", "ws://") + "/ws/fleet/"
        headers = dict(principal.headers())
        if principal.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in principal.cookies.items())
        try:
            async with websockets.connect(url, origin=origin or base_url, additional_headers=headers, open_timeout=10):
                return 101
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    return asyncio.run(connect())


def _probe(http: httpx.Client, endpoint: str, principal: Principal, base_url: str) -> int:
    method, path = endpoint.split(" ", 1)
    if method == "WS":
        return _websocket_status(base_url, principal)
    bodies: dict[str, Callable[[], Any]] = {
        "/hosts/add/": lambda: {"data": {"name": "rack", "max_uses": 1, "valid_hours": 1}},
        "/api/agent/v1/register": lambda: {"json": _registration(principal)},
        "/api/agent/v1/report": lambda: {"json": _report()},
        "/v1/chat/completions": lambda: {"json": chat()},
    }
    kwargs = bodies[path]() if method == "POST" else {}
    return http.request(method, path, headers=principal.headers(), **kwargs).status_code


@pytest.fixture
def panel(live_panel: str, settings: Any, tmp_path: Path) -> tuple[str, Fleet]:
    """The live panel, scraped only with the metrics token, serving one wheel, with every principal made."""
    settings.METRICS_TOKEN = METRICS_SECRET
    settings.METRICS_ALLOWED_IPS = []
    settings.AGENT_WHEELHOUSE = tmp_path
    (tmp_path / WHEEL).write_bytes(b"PK\x05\x06" + bytes(18))
    return live_panel, _fleet()


@pytest.mark.parametrize("name", PRINCIPALS)
def test_each_principal_gets_exactly_the_expected_answer_from_every_endpoint(
    panel: tuple[str, Fleet], name: str
) -> None:
    base_url, fleet = panel
    principal = _principal(name, fleet, base_url)
    with httpx.Client(base_url=base_url, cookies=principal.cookies, timeout=30) as http:
        answers = {endpoint: _probe(http, endpoint, principal, base_url) for endpoint in MATRIX}

    assert answers == expected(name)


def test_what_the_matrix_lets_through_really_happened(panel: tuple[str, Fleet]) -> None:
    """The allowed cells did their work: a node registered, node A's report stored, a join token made."""
    base_url, fleet = panel
    for name in ("join_token", "node_a", "superuser"):
        principal = _principal(name, fleet, base_url)
        with httpx.Client(base_url=base_url, cookies=principal.cookies, timeout=30) as http:
            for endpoint in ("POST /api/agent/v1/register", "POST /api/agent/v1/report", "POST /hosts/add/"):
                _probe(http, endpoint, principal, base_url)

    assert Node.objects.filter(name="new-join-token").exists()
    assert Node.objects.get(name="node-a").last_seq == 1
    assert Node.objects.get(name="node-b").last_seq == 0
    assert JoinToken.objects.filter(name="rack").count() == 1
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1


def test_the_live_feed_refuses_a_signed_in_browser_on_a_foreign_page(panel: tuple[str, Fleet]) -> None:
    """Cross-site WebSocket hijacking: another site's script rides the session cookie; its Origin gives it away."""
    base_url, fleet = panel
    principal = _principal("superuser", fleet, base_url)

    assert _websocket_status(base_url, principal) == 101
    assert _websocket_status(base_url, principal, origin="http://evil.example") == 403
