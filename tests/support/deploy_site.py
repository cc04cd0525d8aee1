"""The shipped deploy/ files, rendered to run on one machine without systemd (and TLS where asked).

Used by the deploy layout test (tests/test_deploy_layout.py) and by the replica benchmark
(``bench/ingest.py --nginx``): each process is started from its systemd unit's ``ExecStart``
with the environment file's values, and nginx from ``deploy/nginx/gpufleet.conf`` with its
upstream ports mapped to free local ones, on one loopback port: plain HTTP, or HTTPS with a
certificate of the caller's.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
# The ports deploy/nginx/gpufleet.conf and deploy/README.md use, by unit.
PANEL_PORTS = (8010, 8011)
REPORT_PORTS = (8020, 8021)
GATEWAY_PORTS = (8030, 8031)
SHIPPED_PORTS = (*PANEL_PORTS, *REPORT_PORTS, *GATEWAY_PORTS)


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a systemd environment file, comments and blank lines left out."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {name.strip(): value.strip() for name, value in pairs}


def unit_command(unit: str, port: int, env: Mapping[str, str], var: Path) -> tuple[list[str], dict[str, str]]:
    """A unit's ``ExecStart`` and environment (its ``Environment=`` lines under the file's), for instance ``port``."""
    lines = (DEPLOY / "systemd" / unit).read_text().splitlines()
    defaults = dict(
        line.removeprefix("Environment=").split("=", 1) for line in lines if line.startswith("Environment=")
    )
    environment = {**defaults, **env}
    line = next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    line = line.replace("%i", str(port)).replace("/opt/gpufleet/.venv/bin/", f"{VENV_BIN}/")
    line = line.replace("/var/lib/gpufleet", str(var))
    line = re.sub(r"\$\{(\w+)\}", lambda match: environment[match[1]], line)
    return shlex.split(line), environment


def report_pool(text: str, ports: Sequence[int]) -> str:
    """The site with the ``gpufleet_reports`` upstream holding one ``server`` line per port, as the shipped ones."""
    if not ports:
        raise ValueError("the report pool needs at least one server")
    block = re.search(r"upstream gpufleet_reports \{\n(?P<servers>(?:    server [^\n]*\n)+)", text)
    if block is None:
        raise ValueError("the site has no gpufleet_reports upstream with server lines")
    # The first shipped line, with its options (max_fails, fail_timeout), for every port.
    shipped = block["servers"].splitlines()[0]
    address = shipped.split()[1]
    servers = "".join(shipped.replace(address, f"127.0.0.1:{port}") + "\n" for port in ports)
    return text[: block.start("servers")] + servers + text[block.end("servers") :]


def site_render(
    ports: Mapping[int, int],
    listen: int,
    reports: Sequence[int] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> str:
    """deploy/nginx/gpufleet.conf with upstream ports mapped (shipped -> used), served on plain HTTP at ``listen``.

    With ``reports``, the report pool's servers are those ports instead of the shipped two
    (``ports`` then maps the panel's and the gateway's). With ``tls`` (certificate, key), the
    site keeps its TLS settings and serves HTTPS at ``listen`` with that certificate.
    """
    text = (DEPLOY / "nginx" / "gpufleet.conf").read_text()
    text, redirects = re.subn(r"server \{\n    listen 80;.*?\n\}\n", "", text, flags=re.S)
    if redirects != 1:
        raise ValueError("the site's HTTP-to-HTTPS server is not where the renderer expects it")
    text = re.sub(r"\n\s*listen \[::\]:443 ssl;", "", text)
    if tls is None:
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen};")
        text = re.sub(r"\n\s*ssl_\w+ [^;]*;", "", text)
    else:
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
        text, certificates = re.subn(r"ssl_certificate +[^;]*;", f"ssl_certificate {tls[0]};", text)
        text, keys = re.subn(r"ssl_certificate_key +[^;]*;", f"ssl_certificate_key {tls[1]};", text)
        if (certificates, keys) != (1, 1):
            raise ValueError("the site's ssl_certificate and ssl_certificate_key are not where the renderer expects")
    if reports is not None:
        text = report_pool(text, reports)
    for shipped, used in ports.items():
        text = text.replace(f"server 127.0.0.1:{shipped} ", f"server 127.0.0.1:{used} ")
    if re.search(r"127\.0\.0\.1:80[123]\d ", text):
        raise ValueError("an upstream port of the shipped site was not mapped")
    return text


def nginx_conf(root: Path, site: Path, connections: int = 512) -> str:
    """A main nginx.conf of our own around the site, as Debian's includes sites-enabled in ``http``.

    The access log gives each request's method, path, status and the replica(s) nginx sent it to.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        f"events {{ worker_connections {connections}; }}\n"
        "http {\n"
        "  log_format upstream '$request_method $uri $status $upstream_addr';\n"
        f"  access_log {root}/access.log upstream;\n{temp}\n  include {site};\n}}\n"
    )


def nginx_binary() -> str | None:
    """Debian's nginx, where installed."""
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
