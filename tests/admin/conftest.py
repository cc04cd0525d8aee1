"""Fixtures of the admin's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet.project.celery import app as celery_app
from tests.support.tuning import finish_runs


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """The queued run is tuned in the test's process, as in the embedded mode (a daemon thread the action
    starts), even where REDIS_URL is set (no worker runs here): what the action queues is what a worker
    would run. A test that lets a run start reads the database from another thread, so it is transactional."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    finish_runs()
    celery_app.conf.task_always_eager = previous
