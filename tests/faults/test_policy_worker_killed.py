"""A policy worker killed in the middle of an evaluation: nothing applied twice, nothing lost.

A real worker process evaluates the policies on the shared test database (PostgreSQL).
The test holds a row lock on one of the instances idle reclaim will stop, so the worker
applies what comes before it and then waits on that row; the worker is SIGKILLed there.
The action it was applying never commits (its client is gone), those it committed stay,
and the next evaluation, level-triggered, applies exactly what is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from fleet.decide.evaluate import policies_evaluate
from fleet.models import Decision, Instance
from tests.support.celery_workers import shared_database_url
from tests.test_policies_live import idle_fleet

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = (
    "import django; django.setup(); "
    "from fleet.decide.evaluate import policies_evaluate; policies_evaluate(kinds=['idle_reclaim'])"
)


def backends_waiting_on_a_lock(conn: psycopg.Connection, database: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (database,)
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_worker_killed_mid_evaluation_leaves_no_action_twice_and_none_lost(tmp_path: Path) -> None:
    url = shared_database_url()
    instances = sorted(idle_fleet(), key=lambda instance: instance.pk)
    held = instances[len(instances) // 2]
    database = connection.settings_dict["NAME"]

    with psycopg.connect(url) as locker, psycopg.connect(url, autocommit=True) as watcher:
        locker.execute("SELECT id FROM fleet_instance WHERE id = %s FOR UPDATE", (held.pk,))
        env = dict(
            os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="fleet.project.settings", FLEET_VAR_DIR=str(tmp_path)
        )
        worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + 60
            while backends_waiting_on_a_lock(watcher, database) == 0:
                assert worker.poll() is None, "the worker ended before reaching the locked instance"
                assert time.monotonic() < deadline, "the worker never reached the locked instance"
                time.sleep(0.05)
            worker.kill()
            worker.wait(timeout=10)
        finally:
            if worker.poll() is None:
                worker.kill()
        stopped_before_kill = set(
            Decision.objects.filter(policy_kind="idle_reclaim").values_list("instance_id", flat=True)
        )
        locker.rollback()

    # The action on the locked row died with the worker; the ones it committed stayed.
    assert stopped_before_kill and held.pk not in stopped_before_kill
    assert Instance.objects.get(pk=held.pk).desired_state == "running"
    again = policies_evaluate(kinds=["idle_reclaim"])
    assert {decision.instance_id for decision in again.applied} == {i.pk for i in instances} - stopped_before_kill
    for instance in instances:
        instance.refresh_from_db()
        assert (instance.desired_state, instance.generation) == ("stopped", 2)
        assert Decision.objects.filter(instance=instance).count() == 1
