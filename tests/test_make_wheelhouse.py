"""`make run` and `make serve` fill the agent wheelhouse, and start the panel even when that fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.require import require

ROOT = Path(__file__).resolve().parent.parent

OFFLINE_PIP = '#!/bin/sh\necho "ERROR: No matching distribution found for docker==7.2.0" >&2\nexit 1\n'
# Writes one wheel where `pip download -d DIR` was told to.
ONLINE_PIP = '#!/bin/sh\nfor last; do :; done\nmkdir -p "$last" && touch "$last/docker-7.2.0-py3-none-any.whl"\n'


def make(target: str, tmp_path: Path, pip: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("make") is not None, "no make")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("pip", "python"):
        (bin_dir / name).write_text(pip)
        (bin_dir / name).chmod(0o755)
    argv = ["make", "--no-print-directory", target, f"BIN={bin_dir}", f"WHEELHOUSE={tmp_path / 'wheelhouse'}"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_failed_download_is_reported_and_does_not_stop_the_panel(tmp_path: Path) -> None:
    stamp = f"{tmp_path / 'wheelhouse'}/.complete"
    offline = make(stamp, tmp_path, OFFLINE_PIP)
    assert offline.returncode == 0, offline.stderr
    assert "agent wheels not downloaded" in offline.stderr and "Add-a-host page" in offline.stderr
    assert not Path(stamp).exists(), "tried again next time"

    online = make(stamp, tmp_path, ONLINE_PIP)
    assert online.returncode == 0, online.stderr
    assert Path(stamp).exists() and (tmp_path / "wheelhouse" / "docker-7.2.0-py3-none-any.whl").exists()


@pytest.mark.parametrize("target", ["run", "serve"])
def test_the_commands_that_serve_the_panel_fill_the_wheelhouse_first(target: str, tmp_path: Path) -> None:
    require(shutil.which("make") is not None, "no make")
    wheelhouse = tmp_path / "wheelhouse"
    dry = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", target, f"WHEELHOUSE={wheelhouse}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    download = next(i for i, line in enumerate(lines) if "pip download" in line and str(wheelhouse) in line)
    serving = next(
        i for i, line in enumerate(lines) if "manage.py demo" in line or "uvicorn fleet.project.asgi" in line
    )
    assert download < serving
