"""The instances page in a browser, with a real agent carrying out what the operator asks.

The agent is the product's own (``python -m agents``) in the demo's mode: simulated GPUs and
engines started as local processes (``--runtime process``), reporting to the panel over
HTTP. The operator scales the pool +1 on the page, the agent starts the engine and reports
it ready; the operator stops it, the agent stops it and reports it stopped; both decisions
are on the decisions page.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.decide.services import join_token_create
from fleet.demo.runner import SIMULATED_IMAGE, SIMULATED_LAUNCHER
from fleet.models import Decision, Gpu, Instance, ModelProfile, Pool
from fleet.presets import profile_presets
from tests.browser.test_dashboard import sign_in
from tests.support.browser import screenshot
from tests.support.processes import process_stop
from tests.support.vllm_server import free_port

pytestmark = pytest.mark.services
NODE = "rack9-sim"


@pytest.fixture
def agent(asgi_live_server: Any, tmp_path: Path) -> Iterator[Path]:
    """The agent, registered with a join token, on one simulated H100; its state directory."""
    _token, secret = join_token_create(name="instances page test", max_uses=1)
    low = free_port()
    state = tmp_path / "agent"
    argv = [
        sys.executable, "-m", "agents",
        "--panel", asgi_live_server.url, "--join-token", secret, "--name", NODE, "--state-dir", str(state),
        "--interval", "1", "--port-range", f"{low}-{low + 20}", "--simulated-gpus", "H100x1",
        "--runtime", "process", "--launcher", f"{SIMULATED_LAUNCHER} --cold-start-s 0",
        "--allow-image", SIMULATED_IMAGE,
    ]  # fmt: skip
    log = (tmp_path / "agent.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield state
    finally:
        process_stop(process, grace_s=10)
        log.close()
        # Engines run in sessions of their own: stop any a failed test left, by the agent's records.
        for record in (state / "processes").glob("*.json"):
            entry = json.loads(record.read_text())
            if entry.get("status") == "running":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry["pid"], signal.SIGTERM)


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def row_cell(page: Any, instance_id: int, cell: str) -> str:
    return str(page.locator(f"#instances tr[data-instance='{instance_id}'] td.{cell}").inner_text()).strip()


def test_an_operator_scales_out_and_stops_an_instance_and_the_agent_carries_it_out(
    asgi_live_server: Any, page: Any, agent: Path
) -> None:
    wait_for("the agent's first report", lambda: Gpu.objects.filter(node__name=NODE).exists())
    preset = next(p for p in profile_presets() if p["use_case"] == "chat" and p["quantization"] == "")
    profile = ModelProfile.objects.create(
        **{**preset, "name": "sim-chat", "image": SIMULATED_IMAGE, "served_name": "sim-qwen3-4b"}
    )
    pool = Pool.objects.create(name="chat-s", tier="S", isolation="exclusive", model_profile=profile, max_instances=1)

    sign_in(page, asgi_live_server.url, "/instances/")
    page.click(f"#pool-scale tr[data-pool='{pool.pk}'] button[value='1']")
    message = page.locator("#messages li.success").inner_text()
    scale_out = Decision.objects.get(action="scale_out")
    assert message.startswith(f"Decision {scale_out.pk}: scale_out"), message
    instance = Instance.objects.get(pool=pool)
    assert row_cell(page, instance.pk, "desired") == "running"

    def actual_is(state: str) -> Callable[[], bool]:
        def check() -> bool:
            page.reload()
            return row_cell(page, instance.pk, "actual") == state

        return check

    wait_for("the agent to start the engine", actual_is("ready"))
    screenshot(page, "instances")

    page.click(f"#instances tr[data-instance='{instance.pk}'] button[value='stop']")
    message = page.locator("#messages li.success").inner_text()
    stop = Decision.objects.get(action="stop")
    assert message.startswith(f"Decision {stop.pk}: stop"), message
    assert (stop.policy_kind, stop.inputs["user"], stop.instance_id) == ("manual", "ops", instance.pk)
    assert row_cell(page, instance.pk, "desired") == "stopped"
    wait_for("the agent to stop the engine", actual_is("stopped"))

    page.goto(f"{asgi_live_server.url}/decisions/")
    for decision in (scale_out, stop):
        row = page.locator(f"#decisions tr[data-decision='{decision.pk}']").inner_text()
        assert "manual" in row and decision.action in row, row
