"""What runs on the gateway's database worker: a thread of the gateway, or a process of its own.

This module imports no Django at import time: a worker process is started fresh (spawned,
not forked from a process with an event loop and threads) and unpickles ``start`` before
Django is set up.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def start() -> None:
    """Set Django up in a worker process.

    Ctrl-C reaches the whole process group; the gateway stops its worker itself, after
    its last request-log batch, so the worker leaves the interrupt to it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")
    import django

    django.setup()


def call(function: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """Run ``function`` with the worker's database connection.

    The connection is kept for the life of the worker: it serves the gateway's background
    work alone, and reconnecting every call (what the connection age does under
    CONN_MAX_AGE=0) cost more than the work itself (on SQLite, a WAL checkpoint each
    close). A call that failed on the connection (not on the data) closes it, so the next
    one starts on a fresh one.
    """
    from django.db import DatabaseError, DataError, IntegrityError, connection

    connection.close_if_unusable_or_obsolete()
    try:
        return function(**kwargs)
    except DatabaseError as exc:
        if not isinstance(exc, DataError | IntegrityError):
            with contextlib.suppress(DatabaseError):
                connection.close()
        raise
    finally:
        connection.close_at = None


def pool_wake(**kwargs: Any) -> None:
    """``fleet.decide.evaluate.pool_wake_request``; the gateway needs only whether it failed, not the decisions."""
    from fleet.decide.evaluate import pool_wake_request as wake

    wake(**kwargs)


def pool_scale_out(**kwargs: Any) -> int:
    """``fleet.decide.evaluate.pool_scale_out_request``: how many instances it asked for (0 or 1)."""
    from fleet.decide.evaluate import pool_scale_out_request as scale_out

    return len(scale_out(**kwargs))
