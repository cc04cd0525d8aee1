"""The costs page says what sleeping cards cost and what batch work used of their time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet.models import BatchJob, Decision, InstanceEvent
from tests.costs.history import states
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


def test_the_costs_page_splits_sleep_into_used_and_idle(admin_client: Client) -> None:
    now = timezone.now()
    gpu = make_gpu(make_node())
    instance = make_instance(make_pool(isolation="exclusive"), gpu, desired_state="sleeping", actual_state="sleeping")
    states(instance, (now - timedelta(hours=2), "sleeping"))  # asleep for the last 2 h
    job = BatchJob.objects.create(name="embed", image="j:1", memory_bytes=GIB, state="running", gpu=gpu)
    Decision.objects.create(
        policy_kind="colocate", batch_job=job, action="colocate", reason="r", inputs={"gpu": gpu.pk},
        applied_at=now - timedelta(hours=1),
    )  # fmt: skip

    page = admin_client.get(reverse("dashboard:costs") + "?range=24h").content.decode()

    assert 'id="sleep-use"' in page
    assert "Sleeping instances held 2.00 GPU-h" in page
    assert f"1.00 GPU-h used by batch jobs (job {job.pk} 1.00), 1.00 GPU-h idle while asleep" in page


def test_without_sleep_the_line_is_left_out(admin_client: Client) -> None:
    assert 'id="sleep-use"' not in admin_client.get(reverse("dashboard:costs")).content.decode()


def test_the_sleep_line_reads_the_range_state_events_the_spend_already_read(admin_client: Client) -> None:
    now = timezone.now()
    gpu = make_gpu(make_node())
    instance = make_instance(make_pool(isolation="exclusive"), gpu, desired_state="sleeping", actual_state="sleeping")
    states(instance, (now - timedelta(hours=2), "sleeping"))
    table = InstanceEvent._meta.db_table

    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(reverse("dashboard:costs") + "?range=24h").content.decode()

    assert "Sleeping instances held 2.00 GPU-h" in page
    # One read of the range: each instance's last event before it, and the events in it.
    assert sum(1 for query in queries.captured_queries if f'FROM "{table}"' in query["sql"]) == 2
