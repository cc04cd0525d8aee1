"""A person creates a join token in the browser and watches the new host appear, live."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from agents.agent import Agent, AgentConfig
from tests.agents.test_reconcile import FakeRuntime
from tests.support.agent_process import RecordedGpus
from tests.support.browser import screenshot

pytestmark = pytest.mark.services


def test_new_host_appears_without_a_reload(asgi_live_server: Any, page: Any, tmp_path: Path) -> None:
    User.objects.create_superuser("ops", "", "a-long-password-1")
    page.goto(f"{asgi_live_server.url}/admin/login/?next=/hosts/add/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a-long-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{asgi_live_server.url}/hosts/add/")
    page.fill("#id_name", "rack 7")
    page.click("#join-token-form button")
    command = page.locator("#install-command").inner_text()
    token = re.search(r"--join-token (\S+)", command).group(1)  # type: ignore[union-attr]
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")

    config = AgentConfig(panel_url=asgi_live_server.url, state_dir=tmp_path, node_name="rack7-h100")
    agent = Agent(config, gpus=RecordedGpus(), runtime=FakeRuntime(), http=httpx.Client())
    agent.register(token)

    page.wait_for_selector("#joined tbody tr td:text('rack7-h100')", timeout=10_000)
    assert page.locator("#joined .waiting").count() == 0
    screenshot(page, "add-a-host")
