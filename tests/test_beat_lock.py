"""Celery beat sends from one process however many are started (fleet/project/beat.py), on Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from fleet.project.beat import BEAT_LOCK_KEY, beat_lock_holder
from fleet.schedules import schedules_install
from tests.support.celery_workers import ROOT, shared_database_url
from tests.support.private_redis import PrivateRedis, private_redis
from tests.support.processes import process_stop

__all__ = ["private_redis"]

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

LOCK_TTL_S = 4.0
LOCK_RETRY_S = 0.5
SENT = "Sending due task every-second"


def beat_start(env: dict[str, str], log: Path, schedule: Path) -> subprocess.Popen[bytes]:
    """``celery -A fleet.project beat`` as the deploy unit runs it, ticking at least every second."""
    args = ["beat", "-s", str(schedule), "--max-interval", "1", "-l", "INFO"]
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fleet.project", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def sends(log: Path) -> int:
    return log.read_text().count(SENT)


def wait_for(condition, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until true; the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def test_two_beats_one_sends_and_the_other_takes_over_within_the_lock_ttl_after_kill_9(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Two beats on one Redis: only the lock's holder sends; after ``kill -9`` the other sends within the TTL.

    A task due every second: the holder sends about one a second. The waiting beat tries the lock
    every 0.5 s; the dead holder's key expires at most 4 s (its TTL) after its last renewal, so the
    other sends its first task at most 4 + 0.5 s retry + 1 s (the task's interval) + 1 s (slack for
    a 2-core machine) = 6.5 s after the kill. During 5 s of both running, the waiting one sends 0.
    """
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.create(name="every-second", task="fleet.telemetry.prune", interval=interval)
    env = dict(
        os.environ,
        REDIS_URL=private_redis.url,
        DATABASE_URL=shared_database_url(),
        FLEET_VAR_DIR=str(tmp_path),
        BEAT_LOCK_TTL_S=str(LOCK_TTL_S),
        BEAT_LOCK_RETRY_S=str(LOCK_RETRY_S),
    )
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    beats = [beat_start(env, logs[n], tmp_path / f"beat-{n}.db") for n in (0, 1)]
    client = redis.Redis.from_url(private_redis.url)
    try:
        wait_for(lambda: beat_lock_holder(client) is not None, 60, "a beat takes the lock")
        wait_for(lambda: sum(sends(log) for log in logs) >= 1, 30, "the holder sends")
        time.sleep(5)
        holder = beat_lock_holder(client)
        assert holder is not None
        pids = [beat.pid for beat in beats]
        holder_pid = int(holder[0].split(":")[1])
        assert holder_pid in pids, f"the lock names {holder[0]}, not one of the beats {pids}"
        held, waiting = (0, 1) if holder_pid == pids[0] else (1, 0)
        assert sends(logs[held]) >= 4, logs[held].read_text()[-2000:]
        assert sends(logs[waiting]) == 0, logs[waiting].read_text()[-2000:]

        os.kill(beats[held].pid, signal.SIGKILL)
        beats[held].wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: sends(logs[waiting]) >= 1, 30, "the waiting beat sends after the holder's death")
        took_over_s = time.monotonic() - killed_at
        assert took_over_s <= LOCK_TTL_S + LOCK_RETRY_S + 1 + 1, f"took over after {took_over_s:.1f} s"
        new_holder = beat_lock_holder(client)
        assert new_holder is not None and int(new_holder[0].split(":")[1]) == pids[waiting]
        assert 0 < new_holder[1] <= LOCK_TTL_S * 1000
        print(f"took over {took_over_s:.1f} s after kill -9 (lock TTL {LOCK_TTL_S} s)")
        # The operator's check names the beat that now schedules, and passes.
        schedules_install(PeriodicTask=PeriodicTask, IntervalSchedule=IntervalSchedule)
        check = subprocess.run(
            [sys.executable, "manage.py", "deploycheck"],
            cwd=ROOT,
            env=dict(env, SECRET_KEY="k" * 40),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert f":{pids[waiting]}:" in check.stdout and "ok   beat: one beat schedules" in check.stdout
    finally:
        for beat in beats:
            if beat.poll() is None:
                process_stop(beat, grace_s=20)
    # A beat stopped cleanly gives the lock back.
    assert client.get(BEAT_LOCK_KEY) is None
