"""Policies on the production path: beat's schedule from the database, two Celery workers, Redis, PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from fleet.models import Decision, GpuSample, Instance, InstanceSample, Node
from fleet.schedules import EVALUATE_TASK, schedules_install
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool
from tests.support.celery_workers import WORKER_ARGS, shared_database_url
from tests.support.celery_workers import celery_processes as celery_processes_run

ROOT = Path(__file__).resolve().parent.parent
IDLE_INSTANCES = 12

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_processes(redis_url: str, tmp_path: Path) -> Iterator[None]:
    """Two workers and beat, all on the test database and Redis."""
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=shared_database_url(), FLEET_VAR_DIR=str(tmp_path))
    workers = [[*WORKER_ARGS, "-n", f"policy{n}@%h"] for n in (1, 2)]
    beat = ["beat", "-s", str(tmp_path / "beat-schedule"), "--max-interval", "1"]
    with celery_processes_run([*workers, beat], env=env, log_dir=tmp_path):
        yield


def idle_fleet() -> list[Instance]:
    """``IDLE_INSTANCES`` ready instances on one GPU, unasked for 11 minutes: idle reclaim stops each."""
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    gpu = make_gpu(node)
    pool = make_pool(max_instances=IDLE_INSTANCES)
    now = timezone.now()
    GpuSample.objects.create(gpu=gpu, at=now, utilization_gpu_pct=2, memory_used_bytes=GIB)
    instances = []
    for _ in range(IDLE_INSTANCES):
        instance = make_instance(pool, gpu, actual_state="ready")
        long_ago = now - timedelta(minutes=30)
        Instance.objects.filter(pk=instance.pk).update(
            ready_at=long_ago, desired_changed_at=long_ago, last_request_at=now - timedelta(minutes=11)
        )
        InstanceSample.objects.create(instance=instance, at=now, state="ready", requests_running=0, requests_waiting=0)
        instances.append(instance)
    return instances


def test_scheduled_evaluations_on_two_workers_stop_each_idle_instance_once(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    instances = idle_fleet()
    schedules_install(IntervalSchedule=IntervalSchedule, PeriodicTask=PeriodicTask)  # a transactional test flushed it
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.filter(name=EVALUATE_TASK).update(interval=every_second)
    request.getfixturevalue("celery_processes")
    probe = Celery("probe", broker=redis_url)
    for _ in range(2):  # and two evaluations sent at the same moment, besides beat's
        probe.send_task(EVALUATE_TASK)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not Instance.objects.filter(pk__in=[i.pk for i in instances]).exclude(desired_state="stopped").exists():
            break
        time.sleep(0.5)
    time.sleep(3)  # a few more scheduled evaluations, which must find nothing left to do

    for instance in instances:
        instance.refresh_from_db()
        assert (instance.desired_state, instance.generation) == ("stopped", 2)
        [decision] = Decision.objects.filter(instance=instance)
        assert (decision.policy_kind, decision.action) == ("idle_reclaim", "stop")
        assert decision.reason.startswith("pool chat-l idle for 11 min ")
        assert decision.reason.endswith(f"; stopping instance {instance.pk}")
    assert PeriodicTask.objects.get(name=EVALUATE_TASK).total_run_count >= 1
