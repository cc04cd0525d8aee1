"""The sleep report read from the database: the decisions the services log say where batch work ran."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.test import override_settings

from fleet.costs.selectors import sleep_report
from fleet.decide.services import batch_job_start, instance_desire
from fleet.models import BatchJob, Decision
from tests.costs.history import price, states, utc
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


def test_sleep_split_into_what_each_job_used_and_what_stood_idle() -> None:
    gpu = make_gpu(make_node())
    price("NVIDIA L4", "1.00", date(2026, 1, 1))
    instance = make_instance(make_pool(isolation="exclusive"), gpu, desired_state="sleeping", actual_state="sleeping")
    # The instance slept 10:00-14:00 (4 GPU-h at 1.00).
    states(instance, (utc(2026, 3, 2, 10), "sleeping"), (utc(2026, 3, 2, 14), "ready"))
    # Job 1 started at 09:00 and finished at 10:30: 0.5 h of the sleep.
    early = BatchJob.objects.create(name="early", image="j:1", memory_bytes=GIB)
    batch_job_start(job=early, gpu=gpu, reason="room", kind="colocate", inputs={"gpu": gpu.pk})
    Decision.objects.filter(batch_job=early).update(applied_at=utc(2026, 3, 2, 9))
    BatchJob.objects.filter(pk=early.pk).update(state="done", finished_at=utc(2026, 3, 2, 10, 30))
    # Job 2 ran 11:00-13:00, preempted by the wake (logged by instance_desire): 2 h of the sleep.
    late = BatchJob.objects.create(name="late", image="j:1", memory_bytes=GIB)
    batch_job_start(job=late, gpu=gpu, reason="room", kind="colocate", inputs={"gpu": gpu.pk})
    Decision.objects.filter(batch_job=late, action="colocate").update(applied_at=utc(2026, 3, 2, 11))
    instance_desire(instance=instance, state="running", reason="held request", action="wake", kind="gateway")
    Decision.objects.filter(batch_job=late, action="preempt").update(applied_at=utc(2026, 3, 2, 13))

    with override_settings(FLEET_COST_SLEEPING_HOLDS_GPU=False):
        report = sleep_report(start=utc(2026, 3, 2, 10), end=utc(2026, 3, 2, 15))

    # Idle: 4 - 0.5 - 2 = 1.5 GPU-h.
    assert {job: totals.gpu_hours for job, totals in report.by_job.items()} == {
        early.pk: Decimal("0.5"),
        late.pk: Decimal(2),
    }
    assert (report.idle.gpu_hours, report.idle.spend) == (Decimal("1.5"), Decimal("1.5"))
    assert (report.slept.gpu_hours, report.slept.spend) == (Decimal(4), Decimal(4))
    assert report.summary() == (
        "Sleeping instances held 4.00 GPU-h (4.00 USD, in the unallocated line): 2.50 GPU-h used by batch jobs "
        f"(job {early.pk} 0.50, job {late.pk} 2.00), 1.50 GPU-h idle while asleep (1.50 USD)"
    )
