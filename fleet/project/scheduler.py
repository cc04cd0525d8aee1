"""The embedded default's stand-in for Celery beat: a daemon thread in the server process.

In the embedded default Celery runs tasks eagerly and there is no beat, so nothing would
roll up or prune telemetry. ``scheduler_start`` (called by the ASGI app when a server
starts serving it, see ``fleet.project.asgi.scheduler_started``) runs the same periodic tasks as
``fleet.schedules`` lists, at the same intervals, in one thread. It is off wherever
``REDIS_URL`` is set (beat and workers run them there) and can be forced either way with
``FLEET_INPROCESS_SCHEDULER``.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import current_app
from django.conf import settings
from django.db import close_old_connections

from fleet.schedules import PERIODIC_TASKS

log = logging.getLogger(__name__)
_started = threading.Event()


def _loop() -> None:
    due = {task: 0.0 for task, _every, _desc in PERIODIC_TASKS}
    while True:
        now = time.monotonic()
        for task, every, _desc in PERIODIC_TASKS:
            if now < due[task]:
                continue
            due[task] = now + every
            try:
                current_app.tasks[task].apply()
            except Exception:
                log.exception("in-process scheduler: %s failed", task)
            finally:
                close_old_connections()
        time.sleep(max(0.5, min(due.values()) - time.monotonic()))


def scheduler_start() -> bool:
    """Start the thread once per process if the settings ask for it; True if started now."""
    if not settings.FLEET_INPROCESS_SCHEDULER or _started.is_set():
        return False
    _started.set()
    import fleet.tasks  # registers the tasks with the Celery app

    threading.Thread(target=_loop, name="fleet-scheduler", daemon=True).start()
    if current_app.conf.task_always_eager:  # no worker: run the tuning runs an earlier server left queued
        fleet.tasks.tuning_runs_embedded()
    log.info("in-process scheduler started (embedded default: no Celery beat)")
    return True
