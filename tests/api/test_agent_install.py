"""The panel hands out the agent: a one-line install that needs nothing but the panel."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client

from fleet.models import JoinToken, Node

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent.parent


def test_install_script_is_valid_shell_naming_the_panel(client: Client, settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["panel.internal"]
    response = client.get("/agent/install.sh", HTTP_HOST="panel.internal:8000")
    assert response.status_code == 200
    script = response.content.decode()
    assert script.startswith("#!/bin/sh\n")
    assert 'PANEL="http://panel.internal:8000"' in script
    assert "ExecStart=$PREFIX/venv/bin/python -m agents" in script
    assert "&quot;" not in script and "&#x27;" not in script
    check = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


def test_tarball_carries_the_agent_and_nothing_of_the_panel(client: Client) -> None:
    response = client.get("/agent/gpufleet-agent.tar.gz")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        names = set(tar.getnames())
    expected = {f"agents/{path.name}" for path in (ROOT / "agents").glob("*.py")} | {"agents/requirements.txt"}
    assert names == expected
    assert "agents/__main__.py" in names and "agents/protocol.py" in names


def test_wheel_paths_cannot_escape_the_wheelhouse(client: Client) -> None:
    assert client.get("/agent/wheels/..%2Fsettings.py").status_code == 404
    assert client.get("/agent/wheels/not-there-1.0-py3-none-any.whl").status_code == 404


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_one_line_install_registers_the_host(live_server: Any, tmp_path: Path, settings: Any) -> None:
    """Runs the served script for real (no systemd): venv, wheels from the panel, first report."""
    from tests.support.require import require

    wheels = Path(os.environ.get("AGENT_WHEELHOUSE", ROOT / "var" / "wheelhouse"))
    require(any(wheels.glob("pydantic-*.whl")), f"no agent wheels in {wheels}; run: make agent-wheels")
    settings.AGENT_WHEELHOUSE = wheels
    token = JoinToken(name="install test", max_uses=1)
    secret = token.issue_token()
    token.save()
    script = httpx.get(f"{live_server.url}/agent/install.sh").text
    prefix, state = tmp_path / "agent", tmp_path / "state"
    install = subprocess.run(
        [
            "sh",
            "-s",
            "--",
            "--join-token",
            secret,
            "--name",
            "installed-host",
            "--prefix",
            str(prefix),
            "--state-dir",
            str(state),
            "--no-systemd",
            "--python",
            sys.executable,
        ],
        input=script,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env_file = prefix / "agent.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    run = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-m", "agents", "--once"],
        cwd=prefix,
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    node = Node.objects.get(name="installed-host")
    assert node.last_seq > 0 and node.nvml_available is not None
    assert (state / "state.json").exists()


def fake_wheelhouse(path: Path) -> Path:
    """A wheel file, empty, for every requirement: enough for the panel's check, not for pip."""
    path.mkdir()
    for line in (ROOT / "agents" / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            name, version = requirement.split("==")
            (path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    return path


def test_an_incomplete_wheelhouse_stops_the_script_before_it_changes_anything(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.AGENT_WHEELHOUSE = tmp_path / "wheelhouse"
    script = client.get("/agent/install.sh").content.decode()
    prefix, state = tmp_path / "agent", tmp_path / "state"
    argv = ["--join-token", "gfj_x", "--prefix", str(prefix), "--state-dir", str(state), "--no-systemd"]
    run = subprocess.run(["sh", "-s", "--", *argv], input=script, text=True, capture_output=True, timeout=60)
    assert run.returncode == 1
    assert "has no wheels for docker==7.2.0, httpx==0.28.1" in run.stderr and "make agent-wheels" in run.stderr
    assert not prefix.exists() and not state.exists()

    settings.AGENT_WHEELHOUSE = fake_wheelhouse(tmp_path / "wheelhouse")
    assert "has no wheels" not in client.get("/agent/install.sh").content.decode()


STUB_PYTHON = """#!/bin/sh
# Stands in for python: '-m venv ... DIR' makes DIR/bin/python, which accepts anything (pip install).
for last; do :; done
mkdir -p "$last/bin" && printf '#!/bin/sh\\nexit 0\\n' > "$last/bin/python" && chmod +x "$last/bin/python"
"""


@pytest.mark.django_db(transaction=True)
def test_the_install_passes_an_advertised_address_to_the_agent(live_server: Any, tmp_path: Path, settings: Any) -> None:
    settings.AGENT_WHEELHOUSE = fake_wheelhouse(tmp_path / "wheelhouse")
    python = tmp_path / "python"
    python.write_text(STUB_PYTHON)
    python.chmod(0o755)
    script = httpx.get(f"{live_server.url}/agent/install.sh").text
    prefix = tmp_path / "agent"
    argv = ["--join-token", "gfj_x", "--advertise-address", "10.0.0.5", "--prefix", str(prefix)]
    argv += ["--state-dir", str(tmp_path / "state"), "--no-systemd", "--python", str(python)]
    install = subprocess.run(["sh", "-s", "--", *argv], input=script, text=True, capture_output=True, timeout=60)
    assert install.returncode == 0, install.stdout + install.stderr
    env = dict(line.split("=", 1) for line in (prefix / "agent.env").read_text().splitlines())
    assert env["GPUFLEET_ADVERTISE_ADDRESS"] == "10.0.0.5"
    assert (prefix / "agents" / "__main__.py").exists()


def stub_python(tmp_path: Path) -> Path:
    python = tmp_path / "python"
    python.write_text(STUB_PYTHON)
    python.chmod(0o755)
    return python


def evil_tarball() -> bytes:
    """A well-formed agent tarball whose agent is someone else's: what a tampering proxy would serve."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        body = b"import os; os.system('id > /tmp/owned')\n"
        info = tarfile.TarInfo("agents/__main__.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


@pytest.mark.parametrize("tampered", ["tarball", "wheel"])
@pytest.mark.django_db(transaction=True)
def test_a_tampered_download_is_refused_before_anything_is_installed(
    live_server: Any, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, tampered: str
) -> None:
    """The script carries the checksums of what it fetches; a download changed after that is refused."""
    settings.AGENT_WHEELHOUSE = fake_wheelhouse(tmp_path / "wheelhouse")
    python = stub_python(tmp_path)
    script = httpx.get(f"{live_server.url}/agent/install.sh").text
    if tampered == "tarball":
        monkeypatch.setattr("fleet.telemetry.agent_dist._tarball", lambda fingerprint: evil_tarball())
    else:
        wheel = sorted(settings.AGENT_WHEELHOUSE.glob("*.whl"))[0]
        wheel.write_bytes(b"PK not the wheel the script was given")
    prefix, state = tmp_path / "agent", tmp_path / "state"
    argv = ["--join-token", "gfj_x", "--prefix", str(prefix), "--state-dir", str(state)]
    argv += ["--no-systemd", "--python", str(python)]
    install = subprocess.run(["sh", "-s", "--", *argv], input=script, text=True, capture_output=True, timeout=60)
    assert install.returncode != 0, install.stdout + install.stderr
    assert "does not match the checksum" in install.stderr and "nothing was installed" in install.stderr
    assert not prefix.exists() and not state.exists()


@pytest.mark.django_db(transaction=True)
def test_no_join_token_is_left_on_the_host_after_registration(live_server: Any, tmp_path: Path, settings: Any) -> None:
    """A join token may admit more hosts; once this host has its node token, nothing on it holds the join token."""
    settings.AGENT_WHEELHOUSE = fake_wheelhouse(tmp_path / "wheelhouse")
    token = JoinToken(name="install test", max_uses=5)
    secret = token.issue_token()
    token.save()
    script = httpx.get(f"{live_server.url}/agent/install.sh").text
    prefix, state = tmp_path / "agent", tmp_path / "state"
    argv = ["--join-token", secret, "--name", "token-host", "--prefix", str(prefix), "--state-dir", str(state)]
    argv += ["--no-systemd", "--python", str(stub_python(tmp_path))]
    install = subprocess.run(["sh", "-s", "--", *argv], input=script, text=True, capture_output=True, timeout=60)
    assert install.returncode == 0, install.stdout + install.stderr
    env = dict(line.split("=", 1) for line in (prefix / "agent.env").read_text().splitlines())
    run = subprocess.run(
        [sys.executable, "-m", "agents", "--once", "--simulated-gpus", "L4"],
        cwd=prefix,
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert Node.objects.filter(name="token-host").exists()
    holding = [str(path) for path in [*prefix.rglob("*"), *state.rglob("*")] if path.is_file()]
    holding = [path for path in holding if secret.encode() in Path(path).read_bytes()]
    assert holding == []
