"""The panel hands out the agent itself: install script, code and wheels.

GPU hosts may reach nothing but the panel, so a host installs with one line that talks
to the panel alone: ``curl -fsSL PANEL/agent/install.sh | sudo sh -s -- --join-token T``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from agents.protocol import address_is_loopback

AGENTS_DIR = Path(settings.BASE_DIR) / "agents"
WHEEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.(whl|tar\.gz)$")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([^\s;]+))?")
# What fills the wheelhouse, on the panel's machine with PyPI in reach.
WHEELHOUSE_FILL = "make agent-wheels"


def panel_url(request: HttpRequest) -> str:
    """The URL hosts reach the panel at: ``PANEL_URL`` if set, else the one this request used."""
    return (getattr(settings, "PANEL_URL", "") or request.build_absolute_uri("/")).rstrip("/")


def install_command(request: HttpRequest, join_token: str) -> str:
    return f"curl -fsSL {panel_url(request)}/agent/install.sh | sudo sh -s -- --join-token {join_token}"


def install_problems(request: HttpRequest) -> list[str]:
    """Why a host given the install line now would not end up in the fleet; empty when nothing stops it."""
    problems = []
    url = panel_url(request)
    if address_is_loopback(urlsplit(url).hostname or ""):
        problems.append(
            f"The install line points hosts at {url}, a loopback address: hosts elsewhere cannot reach it."
            " Set PANEL_URL to the URL they reach the panel at (e.g. PANEL_URL=http://panel.example:8000)"
            " and restart the panel."
        )
    missing = wheelhouse_missing()
    if missing:
        problems.append(
            f"The wheelhouse {wheelhouse()} has no wheels for {', '.join(missing)}, so hosts cannot install"
            f" the agent's dependencies. On the panel's machine run '{WHEELHOUSE_FILL}' (it needs PyPI), or"
            f" copy those wheels into {wheelhouse()}."
        )
    return problems


@require_GET
def install_script(request: HttpRequest) -> HttpResponse:
    """The script, which stops before it changes anything when the panel lacks wheels it would need."""
    unit = render_to_string("agent/gpufleet-agent.service", {"prefix": "$PREFIX"}).strip()
    context = {
        "panel": panel_url(request),
        "unit": unit,
        "missing": wheelhouse_missing(),
        "fill": WHEELHOUSE_FILL,
        "tarball_sha256": hashlib.sha256(_tarball(agent_fingerprint())).hexdigest(),
        "wheels": wheel_checksums(),
    }
    script = render_to_string("agent/install.sh", context)
    return HttpResponse(script, content_type="text/x-shellscript; charset=utf-8")


def _agent_files() -> list[Path]:
    return sorted([*AGENTS_DIR.glob("*.py"), AGENTS_DIR / "requirements.txt"])


@functools.lru_cache(maxsize=2)
def _tarball(fingerprint: str) -> bytes:
    """The agent package as a tar.gz; cached per content fingerprint.

    The same bytes from every panel process (no time in the gzip header), so the checksum
    one process writes into the install script holds for the tarball another one serves.
    """
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for path in _agent_files():
            info = tar.gettarinfo(str(path), arcname=f"agents/{path.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def agent_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in _agent_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@require_GET
def agent_tarball(request: HttpRequest) -> HttpResponse:
    fingerprint = agent_fingerprint()
    response = HttpResponse(_tarball(fingerprint), content_type="application/gzip")
    response["Content-Disposition"] = 'attachment; filename="gpufleet-agent.tar.gz"'
    response["ETag"] = f'"{fingerprint}"'
    return response


def wheelhouse() -> Path:
    return Path(getattr(settings, "AGENT_WHEELHOUSE", Path(settings.VAR_DIR) / "wheelhouse"))


def _dist_name(name: str) -> str:
    """A project name as wheel file names spell it: lower case, runs of ``-_.`` as one ``_``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _served_wheels() -> list[Path]:
    if not wheelhouse().is_dir():
        return []
    return sorted(path for path in wheelhouse().glob("*") if WHEEL_NAME.match(path.name) and path.is_file())


@functools.lru_cache(maxsize=256)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """A file's SHA-256; cached per size and modification time so a changed file is hashed again."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_checksums() -> list[dict[str, str]]:
    """Name and SHA-256 of each file the wheelhouse serves, for the install script to check its downloads."""
    checksums = []
    for path in _served_wheels():
        stat = path.stat()
        checksums.append({"name": path.name, "sha256": _file_sha256(path, stat.st_size, stat.st_mtime_ns)})
    return checksums


def wheelhouse_missing() -> list[str]:
    """The agent's requirements, as written, that no wheel in the wheelhouse provides.

    Only the direct requirements, which name the agent's needs; ``make agent-wheels``
    downloads their own dependencies along with them.
    """
    present = set()
    if wheelhouse().is_dir():
        for path in wheelhouse().glob("*.whl"):
            name, _, rest = path.name.partition("-")
            present.add((_dist_name(name), rest.partition("-")[0]))
    missing = []
    for line in (AGENTS_DIR / "requirements.txt").read_text().splitlines():
        match = REQUIREMENT.match(line.split("#")[0].strip())
        if match is None:
            continue
        name, version = _dist_name(match.group(1)), match.group(2)
        if not any(have == name and (version is None or have_version == version) for have, have_version in present):
            missing.append(match.group(0).strip())
    return missing


@require_GET
def wheel_index(request: HttpRequest) -> HttpResponse:
    """A flat HTML index that ``pip install --find-links`` reads."""
    files = [path.name for path in _served_wheels()]
    links = "\n".join(f'<a href="{name}">{name}</a><br>' for name in files)
    return HttpResponse(f"<!doctype html><html><body>\n{links}\n</body></html>\n")


@require_GET
def wheel_file(request: HttpRequest, name: str) -> FileResponse:
    if not WHEEL_NAME.match(name):
        raise Http404("no such file")
    path = wheelhouse() / name
    if not path.is_file():
        raise Http404("no such file")
    return FileResponse(path.open("rb"), as_attachment=True, filename=name)
