"""Celery beat that schedules from one process however many are started.

``celery -A fleet.project beat`` uses ``SingleBeatScheduler`` (``CELERY_BEAT_SCHEDULER``): the
django-celery-beat database scheduler behind a Redis lock. Before a beat sends anything it takes
the lock (``SET key token NX PX ttl``, redis-py's ``Lock``); while it holds it, it renews the
lock's time to live on every tick, at least every third of ``BEAT_LOCK_TTL_S``. Any other beat
started against the same Redis sends nothing: it tries the lock every ``BEAT_LOCK_RETRY_S`` and
takes over at most ``BEAT_LOCK_TTL_S`` (plus one retry) after the holder died, even by
``kill -9``, when the key expires. A holder that finds its lock gone (Redis lost it, or the
holder stalled longer than the time to live and another took over) stops sending at once and
goes back to waiting.

The new holder reads the whole schedule from the database before its first send, with the
last run times the old holder wrote (it writes them back at least every renewal interval), so a
task is sent again at most once, for the run the old holder sent but had not yet recorded.

The lock's value names its holder (``host:pid:random``); ``manage.py deploycheck`` reads it to
tell whether a beat is scheduling and which one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import redis
from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler
from redis.exceptions import LockError

logger = logging.getLogger(__name__)

BEAT_LOCK_KEY = "gpufleet:beat:lock"


def beat_lock_holder(client: redis.Redis) -> tuple[str, int] | None:
    """The beat that holds the lock (``host:pid:random``) and its time to live in ms; None when no beat does."""
    pipe = client.pipeline()
    pipe.get(BEAT_LOCK_KEY)
    pipe.pttl(BEAT_LOCK_KEY)
    value, ttl_ms = pipe.execute()
    if value is None:
        return None
    return (value.decode() if isinstance(value, bytes) else str(value)), int(ttl_ms)


class SingleBeatScheduler(DatabaseScheduler):
    """The database scheduler, sending only while this process holds the beat lock in Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ttl_s = float(settings.BEAT_LOCK_TTL_S)
        self.lock_ttl_s = ttl_s
        self.lock_renew_s = ttl_s / 3
        self.lock_retry_s = float(settings.BEAT_LOCK_RETRY_S)
        self.lock_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=ttl_s / 3)
        # thread_local off: beat ticks on its main thread, but the token must not hide from any other.
        self.lock = self.lock_client.lock(BEAT_LOCK_KEY, timeout=ttl_s, blocking=False, thread_local=False)
        self.lock_held = False
        super().__init__(*args, **kwargs)
        # Last run times reach the database at least as often as the lock is renewed, so a beat
        # taking over knows what was sent (beat's default writes them every 3 minutes).
        self.sync_every = min(float(getattr(self, "sync_every", 180)), self.lock_renew_s)

    def lock_keep(self) -> bool:
        """Take the lock if free, or renew it if held; whether this process holds it now."""
        try:
            if self.lock_held:
                self.lock.reacquire()
                return True
            if self.lock.acquire(blocking=False, token=self.lock_token):
                self.lock_held = True
                logger.info("beat: took the beat lock as %s; scheduling", self.lock_token)
                # Read the whole schedule afresh: the previous holder moved last run times on.
                self._initial_read = True
                self._heap = None
                return True
            return False
        except LockError:
            logger.error("beat: lost the beat lock (%s); sending nothing until it is taken again", self.lock_token)
            self.lock_held = False
            return False
        except redis.RedisError as exc:
            # Without Redis this beat cannot know no other is sending: it sends nothing.
            logger.error("beat: Redis unreachable (%s); sending nothing", exc)
            self.lock_held = False
            return False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lock_keep():
            return self.lock_retry_s
        return float(min(super().tick(*args, **kwargs), self.lock_renew_s))

    def close(self) -> None:
        super().close()
        if self.lock_held:
            with contextlib.suppress(LockError, redis.RedisError):
                self.lock.release()
            self.lock_held = False
