"""A Docker image that runs the real CPU build of vLLM, built locally for the tests.

No registry is reachable, so the image is imported from a tiny root filesystem (empty
folders and the merged-/usr links) whose entry point is the vLLM OpenAI server of the
test virtualenv. The host's /usr, /etc, the Python installation, the virtualenv and the
model are bind-mounted read-only through the model profile's ``volumes``, exactly as an
operator mounts a model cache: what runs in the container is the real server.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.require import require
from tests.support.vllm_server import SERVER_ENV, ensure_tiny_model, vllm_python

IMAGE = "gpufleet-test/vllm-cpu:1"
SERVED_NAME = "tiny-qwen3"
MAX_MODEL_LEN = 2048


def _rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # /sbin stays a real folder: Docker mounts its init process at /sbin/docker-init.
        directories = (
            ("tmp", 0o1777),
            ("usr", 0o755),
            ("etc", 0o755),
            ("sbin", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
        )
        for directory, mode in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for link in ("bin", "lib", "lib64"):
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{link}"
            tar.addfile(info)
    return buffer.getvalue()


def _python_paths(python: Path) -> tuple[str, str]:
    """The virtualenv's prefix and the Python installation it was made from."""
    out = subprocess.run(
        [str(python), "-c", "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix]))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    prefix, base = json.loads(out)
    return prefix, base


def build_image(client: docker.DockerClient, python: Path) -> str:
    entrypoint = json.dumps([str(python), "-m", "vllm.entrypoints.openai.api_server"])
    client.images.client.api.import_image_from_data(
        _rootfs(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1], changes=[f"ENTRYPOINT {entrypoint}"]
    )
    return IMAGE


def profile_fields(python: Path, model_dir: Path) -> dict[str, Any]:
    """ModelProfile fields that serve the tiny model from the test image."""
    prefix, base = _python_paths(python)
    mounts = {path: path for path in ("/usr", "/etc", base, prefix, str(model_dir))}
    return dict(
        image=IMAGE,
        model=str(model_dir),
        served_name=SERVED_NAME,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=4,
        dtype="float32",
        quantization="",
        kv_cache_dtype="auto",
        enable_prefix_caching=False,
        gpu_memory_utilization=0.9,
        extra_args=["--enforce-eager", "--max-num-batched-tokens", str(MAX_MODEL_LEN), "--seed", "0"],
        env={**SERVER_ENV, "HOME": "/tmp"},
        volumes=mounts,
    )


def host_allows(profile: dict[str, Any]) -> list[str]:
    """The agent options a test host needs to run this profile: its own configuration, not the panel's.

    The test image runs the host's vLLM virtualenv, so it bind-mounts the host's Python
    (read-only) and sets variables beyond those vLLM reads; a real host allows neither.
    """
    volumes = [arg for path in profile["volumes"] for arg in ("--allow-volume", path)]
    return [*volumes, *(arg for name in profile["env"] for arg in ("--allow-env", name))]


@pytest.fixture(scope="session")
def vllm_container_profile(docker_client: docker.DockerClient) -> dict[str, Any]:
    """Build the image once per session; return the profile fields that run it."""
    python = vllm_python()
    require(python.exists(), f"no vLLM virtualenv at {python}; run: bash .ci/install-vllm.sh")
    model_dir = ensure_tiny_model(python)
    build_image(docker_client, python)
    return profile_fields(python, model_dir)


def remove_node_containers(client: docker.DockerClient, node_name: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"gpufleet.node={node_name}"}):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue
