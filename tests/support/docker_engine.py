"""Pytest fixtures for tests that drive a real local Docker engine.

No registry is reachable from the test machines, so the test image is built here by
``docker import`` of a one-binary rootfs: a statically linked busybox (Debian's
busybox-static, installed by .ci/start-docker.sh), whose ``httpd`` applet gives the
tests a server they can reach on 127.0.0.1 through host networking.

Load with ``pytest_plugins = ["tests.support.docker_engine"]`` in a test module. The
module is marked PYTEST_DONT_REWRITE: test modules also import its helpers, which would
otherwise make pytest warn that it cannot rewrite the asserts of a module already
imported (it has none that need rewriting).
"""

from __future__ import annotations

import io
import shutil
import socket
import struct
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from tests.support.require import require

TEST_IMAGE = "gpufleet-test/busybox:1"
TEST_LABEL = "gpufleet.test"
CASE_LABEL = "gpufleet.test.case"
# Cleanup keys on this, so concurrent test sessions on one engine leave each other alone.
SESSION_ID = uuid.uuid4().hex
INDEX_BODY = b"gpufleet-test-ok\n"
START_HINT = "start one with: bash .ci/start-docker.sh"

_PT_INTERP = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a program interpreter.

    A dynamically linked busybox would fail inside a rootfs that has no libc.
    """
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != _PT_INTERP for i in range(phnum))


def _find_static_busybox() -> Path | None:
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and Path(candidate).is_file() and is_static_elf(Path(candidate)):
            return Path(candidate)
    return None


def _rootfs_tar(busybox: Path) -> bytes:
    """A rootfs with /bin/busybox, /bin/sh and /www/index.html, as an uncompressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "www", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        binary = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(binary)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(binary))
        link = tarfile.TarInfo("bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "busybox"
        tar.addfile(link)
        index = tarfile.TarInfo("www/index.html")
        index.size = len(INDEX_BODY)
        index.mode = 0o644
        tar.addfile(index, io.BytesIO(INDEX_BODY))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the local engine; skips (fails under CI=true) when none answers."""
    client: docker.DockerClient | None = None
    reason = ""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = f"no Docker engine reachable ({exc}); {START_HINT}"
        client = None
    require(client is not None, reason)
    assert client is not None
    yield client
    _remove_containers(client, {TEST_LABEL: SESSION_ID})
    client.close()


@pytest.fixture(scope="session", name="test_image")
def _test_image(docker_client: docker.DockerClient) -> str:
    """Tag of the busybox test image, imported once per session if not present yet."""
    try:
        docker_client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = _find_static_busybox()
    require(busybox is not None, f"no statically linked busybox found; {START_HINT}")
    assert busybox is not None
    repository, tag = TEST_IMAGE.rsplit(":", 1)
    docker_client.api.import_image_from_data(_rootfs_tar(busybox), repository=repository, tag=tag)
    docker_client.images.get(TEST_IMAGE)
    return TEST_IMAGE


def _remove_containers(client: docker.DockerClient, labels: Mapping[str, str]) -> None:
    """Force-remove managed containers carrying ``labels``: test cleanup, not agent behaviour."""
    filters = [f"{key}={value}" for key, value in labels.items()]
    for container in client.containers.list(
        all=True, filters={"label": ["gpufleet.managed=true", *filters]}, ignore_removed=True
    ):
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            continue


@pytest.fixture
def docker_test_labels(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """Labels for the test's specs; every managed container carrying them is removed after."""
    labels = {TEST_LABEL: SESSION_ID, CASE_LABEL: uuid.uuid4().hex}
    yield labels
    _remove_containers(docker_client, labels)


@pytest.fixture
def node_name() -> str:
    """A node name of the test's own, so its DockerRuntime sees only its containers."""
    return f"test-node-{uuid.uuid4().hex[:10]}"
