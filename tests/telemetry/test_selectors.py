"""The read queries charts and /metrics use: resolution by range, gaps kept, latest, spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from fleet import selectors
from fleet.models import GpuHour, GpuMinute, GpuSample
from fleet.schedules import PERIODIC_TASKS
from fleet.tasks import rollup_minutes
from tests.factories import make_gpu, make_node

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 5, 1, 22, 0, tzinfo=UTC)


def test_series_resolution_follows_the_range() -> None:
    gpu = make_gpu(make_node())
    GpuSample.objects.create(gpu=gpu, at=T0, utilization_gpu_pct=40.0)
    GpuMinute.objects.create(gpu=gpu, bucket=T0, samples=12, utilization_mean=41.0, utilization_max=80.0)
    GpuHour.objects.create(gpu=gpu, bucket=T0, samples=720, utilization_mean=42.0, utilization_max=90.0)
    one_hour = selectors.gpu_series(gpu_id=gpu.pk, start=T0, end=T0 + timedelta(hours=1))
    day = selectors.gpu_series(gpu_id=gpu.pk, start=T0, end=T0 + timedelta(hours=24))
    week = selectors.gpu_series(gpu_id=gpu.pk, start=T0, end=T0 + timedelta(days=7))
    assert (one_hour["resolution"], one_hour["utilization"]) == ("raw", [40.0])
    assert (day["resolution"], day["utilization"], day["utilization_max"]) == ("minute", [41.0], [80.0])
    assert (week["resolution"], week["utilization"], week["at"]) == ("hour", [42.0], [T0])


def test_heatmap_leaves_hours_without_samples_empty() -> None:
    node = make_node()
    a, b = make_gpu(node, 0), make_gpu(node, 1)
    GpuHour.objects.create(gpu=a, bucket=T0, samples=1, utilization_mean=50.0)
    GpuHour.objects.create(gpu=b, bucket=T0 + timedelta(hours=1), samples=1, utilization_mean=0.0)
    heat = selectors.fleet_heatmap(start=T0, end=T0 + timedelta(hours=3))
    assert heat["hours"] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert heat["utilization"] == [[50.0, None, None], [None, 0.0, None]]


def test_latest_per_gpu_takes_each_gpus_newest_sample() -> None:
    node = make_node()
    a, b = make_gpu(node, 0), make_gpu(node, 1)
    make_gpu(node, 2)  # never reported
    for minutes, util in ((0, 10.0), (2, 20.0), (1, 15.0)):
        GpuSample.objects.create(gpu=a, at=T0 + timedelta(minutes=minutes), utilization_gpu_pct=util)
    GpuSample.objects.create(gpu=b, at=T0, utilization_gpu_pct=70.0)
    latest = {row["index"]: row["utilization_gpu_pct"] for row in selectors.gpus_latest(fresh_for=None)}
    assert latest == {0: 20.0, 1: 70.0}
    assert selectors.gpus_latest() == []  # all older than two minutes


def test_latest_per_gpu_is_not_hidden_by_a_reading_from_a_clock_ahead() -> None:
    """A host whose clock ran a minute ahead (ingest allows two) sent a reading dated after now; the
    card's fresh reading taken since is its present one, and the early one is not read before its time."""
    gpu = make_gpu(make_node(), 0)
    now = timezone.now()
    GpuSample.objects.create(gpu=gpu, at=now + timedelta(minutes=1), utilization_gpu_pct=90.0)
    GpuSample.objects.create(gpu=gpu, at=now - timedelta(seconds=10), utilization_gpu_pct=30.0)
    assert [row["utilization_gpu_pct"] for row in selectors.gpus_latest()] == [30.0]
    assert [row["utilization_gpu_pct"] for row in selectors.gpus_latest(fresh_for=None)] == [30.0]


def test_periodic_tasks_are_registered_once() -> None:
    names = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {task for task, _every, _desc in PERIODIC_TASKS} <= names
    out = StringIO()
    call_command("fleet_schedule", stdout=out)
    assert out.getvalue().startswith("0 periodic task(s) created")
    PeriodicTask.objects.filter(task="fleet.telemetry.prune").delete()
    call_command("fleet_schedule", stdout=out)
    assert PeriodicTask.objects.filter(task="fleet.telemetry.prune").count() == 1


def test_the_rollup_task_runs_through_celery() -> None:
    result = rollup_minutes.apply().get()
    assert set(result) == {"minutes", "rows"}
