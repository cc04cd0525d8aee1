"""The real services production mode uses: Redis as channel layer and Celery broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer

from tests.support.celery_workers import WORKER_ARGS, celery_processes

ROOT = Path(__file__).resolve().parent.parent


def test_redis_channel_layer_delivers_group_messages(redis_url: str) -> None:
    layer = RedisChannelLayer(hosts=[redis_url], prefix=f"test-{uuid.uuid4().hex[:8]}")

    async def roundtrip() -> dict[str, object]:
        channel = await layer.new_channel()
        await layer.group_add("fleet", channel)
        await layer.group_send("fleet", {"type": "fleet.event", "event": {"kind": "ping"}})
        message = await layer.receive(channel)
        await layer.group_discard("fleet", channel)
        await layer.flush()
        return message

    assert async_to_sync(roundtrip)() == {"type": "fleet.event", "event": {"kind": "ping"}}


@pytest.fixture
def celery_worker(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, REDIS_URL=redis_url, FLEET_VAR_DIR=str(tmp_path))
    with celery_processes([WORKER_ARGS], env=env, log_dir=tmp_path):
        yield env


def test_celery_task_runs_on_a_real_worker_through_redis(celery_worker: dict[str, str]) -> None:
    """A separate worker process picks the task from Redis and returns the result through it."""
    client = """
import json, django
django.setup()
from fleet.tasks import ping
print(json.dumps(ping.delay().get(timeout=60)))
"""
    result = subprocess.run(
        [sys.executable, "-c", client],
        cwd=ROOT,
        env=dict(celery_worker, DJANGO_SETTINGS_MODULE="fleet.project.settings"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"pong": "ok"' in result.stdout
