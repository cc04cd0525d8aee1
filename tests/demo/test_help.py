"""What ``--help`` tells a person: every option's default and the environment variables read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.__main__ import parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def option_help(text: str, option: str) -> str:
    """The help of one option, its lines joined (argparse wraps them)."""
    match = re.search(rf"^  {re.escape(option)}\b(.*?)(?=^  -)", text, flags=re.S | re.M)
    assert match, f"{option} not in:\n{text}"
    return " ".join(match.group(1).split())


def test_demo_help_shows_each_default_and_the_environment_it_reads() -> None:
    text = subprocess.run(
        [sys.executable, "manage.py", "demo", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    expected = {
        "--trace": "(default: conv)",
        "--speedup": "(default: 1)",
        "--hosts": "(default: 2)",
        "--gpus-per-host": "(default: 2)",
        "--gpu": "(default: H100)",
        "--host": "(default: 127.0.0.1; make run: HOST)",
        "--port": "(default: 8000; make run: PORT)",
        "--engine-cold-start": "(default: the engine model's, 30 s)",
    }
    for option, default in expected.items():
        assert default in option_help(text, option), option
    flat = " ".join(text.split())
    assert "FLEET_VAR_DIR" in flat and "FLEET_VLLM_PYTHON" in flat


def test_agent_help_shows_each_default_and_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    expected = {
        "--panel": "env GPUFLEET_PANEL",
        "--join-token": "env GPUFLEET_JOIN_TOKEN",
        "--name": "env GPUFLEET_NODE_NAME",
        "--state-dir": "env GPUFLEET_STATE_DIR",
        "--advertise-address": "env GPUFLEET_ADVERTISE_ADDRESS",
        "--interval": "(default: 5)",
        "--port-range": "(default: 8100-8199)",
        "--buffer-size": "(default: 720)",
        "--batch-max-image-mb": "(default: 200)",
    }
    for option, needle in expected.items():
        assert needle in option_help(text, option), option
    assert "default: /var/lib/gpufleet-agent" in option_help(text, "--state-dir").replace("- ", "-")
