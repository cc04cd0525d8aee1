"""Tuning runs as the admin queues them: the requests they tune on, the action, and the runs' threads.

The ``eager_tasks`` fixture (``tests/admin/conftest.py``) runs a queued run in the test's process, as the
embedded mode does; ``finish_runs`` waits for the threads it started.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from django.test import Client
from django.urls import reverse

from fleet.models import Pool, RequestLog
from fleet.sim.headroom import DEFAULT_HEADROOM
from fleet.tasks import TUNING_THREAD_NAME


def finish_runs(timeout_s: float = 120.0) -> None:
    """Wait for this process's tuning thread to run every queued run and end."""
    for thread in threading.enumerate():
        if thread.name == TUNING_THREAD_NAME:
            thread.join(timeout_s)
            assert not thread.is_alive(), f"{thread.name} still running after {timeout_s:g} s"


def log_requests(pool: Pool | None, count: int, *, start: Any, **changes: Any) -> None:
    """``count`` requests one second apart from ``start``: 200-token prompts, 8 tokens out, answered."""
    values: dict[str, Any] = dict(
        endpoint="chat", model="m", rcf=1.0, tier="L", status=200, prompt_tokens=200, output_tokens=8, latency_ms=90.0
    )
    values.update(changes)
    RequestLog.objects.bulk_create(
        RequestLog(pool=pool, at=start + timedelta(seconds=i), **values) for i in range(count)
    )


def tune_action(client: Client, pool: Pool, **form: Any) -> Any:
    """The action's form posted as the browser posts it: the fields left alone keep their initial values."""
    data = {"action": "tune_settings", "_selected_action": [pool.pk], "headroom": DEFAULT_HEADROOM, **form}
    return client.post(reverse("admin:fleet_pool_changelist"), data, follow=True)
