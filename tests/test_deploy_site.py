"""The shipped nginx site, rendered for one machine (tests/support/deploy_site.py), is a config nginx accepts.

The deploy layout test and the replica benchmark (``bench/ingest.py --nginx``) both run nginx
from this rendering; here ``nginx -t`` checks it, with the report pool on two local ports.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy_site import (
    DEPLOY,
    GATEWAY_PORTS,
    PANEL_PORTS,
    nginx_binary,
    nginx_conf,
    site_render,
)
from tests.support.require import require

# Ports of this test's own: nginx -t only parses them, nothing needs to listen.
LISTEN = 18080
REPORTS = (18020, 18021)
OTHERS = {shipped: 18000 + shipped % 100 for shipped in (*PANEL_PORTS, *GATEWAY_PORTS)}


def upstream_servers(text: str, name: str) -> list[str]:
    """The ``server`` lines of upstream ``name``, stripped."""
    block = re.search(rf"upstream {name} \{{\n(.*?)\n\}}", text, flags=re.S)
    assert block is not None, f"no upstream {name}"
    return [line.strip() for line in block[1].splitlines() if line.strip().startswith("server ")]


def test_rendered_site_with_two_report_replicas_passes_nginx_t(tmp_path: Path) -> None:
    """The report pool gets exactly the two given ports, each with the shipped line's options
    (``max_fails=1 fail_timeout=5s``); the panel's two and the gateway's two shipped ports are
    mapped (8010 -> 18010, 8011 -> 18011, 8030 -> 18030, 8031 -> 18031); TLS and the port-80
    redirect are gone, the site listens on 127.0.0.1:18080; and ``nginx -t`` accepts the whole
    config (exit 0, "syntax is ok")."""
    nginx = nginx_binary()
    require(nginx is not None, "nginx is not installed (apt-get install nginx)")
    assert nginx is not None
    text = site_render(OTHERS, LISTEN, reports=REPORTS)

    assert upstream_servers(text, "gpufleet_reports") == [
        "server 127.0.0.1:18020 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:18021 max_fails=1 fail_timeout=5s;",
    ]
    assert upstream_servers(text, "gpufleet_panel") == [
        "server 127.0.0.1:18010 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:18011 max_fails=1 fail_timeout=5s;",
    ]
    assert upstream_servers(text, "gpufleet_gateway")[1] == "server 127.0.0.1:18031 max_fails=1 fail_timeout=5s;"
    assert "listen 127.0.0.1:18080;" in text
    assert "ssl" not in text and "listen 80;" not in text and "return 301" not in text

    site = tmp_path / "gpufleet.conf"
    site.write_text(text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, site))
    checked = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr


def test_one_report_replica_renders_one_server_line() -> None:
    """``reports=[18020]``: the report pool holds that one server and nothing else of the shipped two."""
    text = site_render(OTHERS, LISTEN, reports=[18020])
    assert upstream_servers(text, "gpufleet_reports") == ["server 127.0.0.1:18020 max_fails=1 fail_timeout=5s;"]
    assert "8021" not in text


def test_bad_input_is_refused() -> None:
    """An empty report pool and a shipped upstream port left unmapped are refused with a clear error;
    the shipped site is unchanged."""
    shipped = (DEPLOY / "nginx" / "gpufleet.conf").read_text()
    with pytest.raises(ValueError, match="at least one server"):
        site_render(OTHERS, LISTEN, reports=[])
    with pytest.raises(ValueError, match="was not mapped"):
        site_render({8010: 18010}, LISTEN, reports=REPORTS)
    assert (DEPLOY / "nginx" / "gpufleet.conf").read_text() == shipped
