"""Celery worker and beat processes for tests on the production path (Redis broker)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

from tests.support.processes import process_stop
from tests.support.require import require

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER_ARGS = ("worker", "-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat")


def shared_database_url() -> str:
    """The test database this process uses, for worker processes to use too.

    Call it only once the test database exists (after a ``db``/``transactional_db`` fixture).
    """
    require(
        connection.vendor == "postgresql", "worker processes need a shared database: set DATABASE_URL to PostgreSQL"
    )
    conf = connection.settings_dict
    auth = conf["USER"] + (f":{conf['PASSWORD']}" if conf["PASSWORD"] else "")
    return f"postgresql://{auth}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


@contextmanager
def celery_processes(commands: Sequence[Sequence[str]], *, env: Mapping[str, str], log_dir: Path) -> Iterator[None]:
    """Run ``celery -A fleet.project <command>`` for each command, logging to ``log_dir``; stop them after."""
    processes = []
    for n, args in enumerate(commands):
        log = (log_dir / f"celery-{n}.log").open("w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "fleet.project", *args, "-l", "INFO"],
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            # Beat once sat on SIGTERM for good (its sync handler ran a query inside another
            # on the same connection); what the tests check is done by then.
            process_stop(process, grace_s=30)
