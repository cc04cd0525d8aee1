"""Secrets: stored as digests, shown once, revocable, and never written to a log or the database.

The full-run test drives the panel the way people and agents do (an admin signs in with a
password and issues a join token and an API key in the admin, an agent registers and
reports, a client calls the gateway, the admin rotates the node's token), with every
logger at DEBUG and SQL logging on, then looks for each secret in every log record and
every row of every table, sessions decoded.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session

from agents.agent import Agent, AgentConfig
from fleet.models import ApiKey, JoinToken, Node, Team
from fleet.tokens import token_hash
from tests.agents.test_reconcile import FakeRuntime
from tests.gateway.conftest import chat
from tests.support.agent_process import RecordedGpus

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = r"[A-Za-z0-9_\-]{43}"


class Everything(logging.Handler):
    """Keeps every record, formatted as a log file would hold it (message, arguments, traceback)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture
def debug_logs(settings: Any) -> Iterator[Everything]:
    """Every logger at DEBUG, SQL statements and their parameters included (those need DEBUG on)."""
    settings.DEBUG = True
    handler = Everything()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ["", *logging.root.manager.loggerDict]}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def admin_session(base_url: str, password: str) -> httpx.Client:
    """A browser signed in through the admin's login form."""
    http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)
    http.get("/admin/login/")
    form = {"username": "root", "password": password, "csrfmiddlewaretoken": http.cookies["csrftoken"]}
    page = http.post("/admin/login/?next=/admin/", data=form)
    assert page.status_code == 200 and "Log out" in page.text
    return http


def admin_post(http: httpx.Client, path: str, data: dict[str, str]) -> str:
    response = http.post(path, data={**data, "csrfmiddlewaretoken": http.cookies["csrftoken"]})
    assert response.status_code == 200, response.text[:500]
    return response.text


def shown(page: str, kind: str) -> str:
    """The one secret of ``kind`` (gfj, gfk, gfn) the page shows."""
    found = set(re.findall(rf"{kind}_{SECRET}", page))
    assert len(found) == 1, f"expected one {kind} secret on the page, found {len(found)}"
    return found.pop()


def time_after(seconds: float) -> float:
    return time.monotonic() + seconds


def time_before(deadline: float) -> bool:
    time.sleep(0.05)
    return time.monotonic() < deadline


def database_text() -> str:
    """Every row of every table as text, with session data decoded."""
    parts = [repr(list(model.objects.values())) for model in apps.get_models()]
    parts += [repr(session.get_decoded()) for session in Session.objects.all()]
    return "\n".join(parts)


def test_a_full_run_leaves_no_secret_in_logs_or_database(
    live_panel: str, debug_logs: Everything, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(16)
    User.objects.create_superuser("root", "root@example.com", password)
    team = Team.objects.create(name="Research", slug="research")
    http = admin_session(live_panel, password)

    join = shown(admin_post(http, "/admin/fleet/jointoken/add/", {"name": "rollout", "max_uses": "2"}), "gfj")
    page_join = shown(admin_post(http, "/hosts/add/", {"name": "rack 4", "max_uses": "1", "valid_hours": "1"}), "gfj")
    key = shown(admin_post(http, "/admin/fleet/apikey/add/", {"team": str(team.pk), "name": "app"}), "gfk")
    assert join not in http.get("/admin/fleet/jointoken/").text
    assert key not in http.get(f"/admin/fleet/apikey/{ApiKey.objects.get().pk}/change/").text

    config = AgentConfig(panel_url=live_panel, state_dir=tmp_path, node_name="h100-a")
    with httpx.Client() as agent_http:
        agent = Agent(config, gpus=RecordedGpus(), runtime=FakeRuntime(), http=agent_http)
        agent.register(join)
        first_token = agent.state.node_token
        assert agent.tick() is not None and agent.tick() is not None

    with httpx.Client(base_url=live_panel, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(50):  # the key works from the gateway's next table refresh
            answer = client.post("/v1/chat/completions", json=chat())
            if answer.status_code == 200:
                break
        assert answer.status_code == 200, answer.text

    node = Node.objects.get(name="h100-a")
    rotated = shown(
        admin_post(http, "/admin/fleet/node/", {"action": "rotate_token", "_selected_action": str(node.pk)}), "gfn"
    )
    http.close()

    assert Node.objects.get(pk=node.pk).token_hash == token_hash(rotated)
    assert JoinToken.objects.get(name="rollout").token_hash == token_hash(join)
    assert ApiKey.objects.get().key_hash == token_hash(key)
    named = {
        "admin password": password,
        "join token": join,
        "join token from the hosts page": page_join,
        "API key": key,
        "node token": first_token,
        "rotated node token": rotated,
        "SECRET_KEY": django_settings.SECRET_KEY,
    }
    logs = "\n".join(debug_logs.lines)
    stored = database_text()
    assert len(debug_logs.lines) > 100 and "INSERT" in logs, "the run was not logged at DEBUG"
    assert [name for name, secret in named.items() if secret in logs] == []
    assert [name for name, secret in named.items() if secret in stored] == []


def test_rotating_many_node_tokens_at_once_shows_each_and_stores_none(live_panel: str) -> None:
    """More new tokens than a cookie holds: each is shown on the page, none parked in the session table."""
    password = secrets.token_urlsafe(16)
    User.objects.create_superuser("root", "root@example.com", password)
    nodes = [Node(name=f"gpu-{n:02d}") for n in range(40)]
    for node in nodes:
        node.issue_token()
    Node.objects.bulk_create(nodes)
    http = admin_session(live_panel, password)
    selected = [str(pk) for pk in Node.objects.values_list("pk", flat=True)]
    form = {"action": "rotate_token", "_selected_action": selected, "csrfmiddlewaretoken": http.cookies["csrftoken"]}
    answer = http.post("/admin/fleet/node/", data=form, follow_redirects=False)
    stored_between = database_text()
    page = http.get(answer.headers["location"]).text if answer.is_redirect else answer.text
    tokens = set(re.findall(rf"gfn_{SECRET}", page))
    http.close()

    assert {token_hash(token) for token in tokens} == set(Node.objects.values_list("token_hash", flat=True))
    stored = stored_between + database_text()
    assert [token for token in tokens if token in stored] == []


def test_every_kind_of_secret_can_be_revoked_from_the_admin(live_panel: str) -> None:
    """A rotated node token, a revoked API key and a revoked join token stop working; the rest keep working."""
    password = secrets.token_urlsafe(16)
    User.objects.create_superuser("root", "root@example.com", password)
    team = Team.objects.create(name="Research", slug="research")
    http = admin_session(live_panel, password)
    join = shown(admin_post(http, "/admin/fleet/jointoken/add/", {"name": "rollout", "max_uses": "5"}), "gfj")
    key = shown(admin_post(http, "/admin/fleet/apikey/add/", {"team": str(team.pk), "name": "app"}), "gfk")
    api = httpx.Client(base_url=live_panel, timeout=30)
    registration = {"join_token": join, "name": "gpu-a", "hostname": "gpu-a.local", "agent_version": "0.1.0"}
    old = api.post("/api/agent/v1/register", json=registration).json()["node_token"]
    node = Node.objects.get(name="gpu-a")

    def report(token: str) -> int:
        host = {"hostname": "gpu-a.local", "agent_version": "0.1.0", "nvml_available": False}
        sample = {"seq": 1, "sampled_at": time.time(), "host": host, "gpus": [], "instances": []}
        batch = {"version": 1, "node": "gpu-a", "reports": [sample], "dropped": 0}
        return api.post("/api/agent/v1/report", json=batch, headers={"authorization": f"Bearer {token}"}).status_code

    def models(token: str) -> int:
        return api.get("/v1/models", headers={"authorization": f"Bearer {token}"}).status_code

    wait_until = time_after(10)
    while models(key) != 200:
        assert time_before(wait_until), "the new key never started working"
    assert report(old) == 200

    new = shown(
        admin_post(http, "/admin/fleet/node/", {"action": "rotate_token", "_selected_action": str(node.pk)}), "gfn"
    )
    admin_post(http, "/admin/fleet/apikey/", {"action": "revoke", "_selected_action": str(ApiKey.objects.get().pk)})
    token = JoinToken.objects.get()
    admin_post(
        http,
        f"/admin/fleet/jointoken/{token.pk}/change/",
        {"name": "rollout", "max_uses": "5", "revoked_at_0": "2020-01-01", "revoked_at_1": "00:00:00"},
    )

    assert (report(old), report(new)) == (401, 200)
    registration["name"] = "gpu-b"
    assert api.post("/api/agent/v1/register", json=registration).status_code == 401
    wait_until = time_after(10)
    while models(key) != 401:
        assert time_before(wait_until), "the revoked key kept working"
    http.close()
    api.close()
