"""Per-key request and token rates: what a key was admitted in the last minute.

A key with ``requests_per_minute`` or ``tokens_per_minute`` set is admitted while what it
was admitted in the last 60 s stays within them; past that it gets a 429 with the seconds
until enough of the window has passed. Tokens are charged at admission (the prompt as the
gateway counts it plus ``max_tokens``, or one output token without it), as that is what
the request may use. Keys without limits leave no trace here.

Where the panel has Redis (``REDIS_URL``), every gateway process counts in it
(``SharedKeyLimiter``), so a key gets its rate once across all of them, not once per
process; the minute is six 10 s buckets, summed and charged in one atomic script. Without
Redis, or while it does not answer, each process counts alone (``KeyLimiter``, an exact
sliding window).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

from fleet.gateway.protocol import ApiError
from fleet.gateway.table import ApiKeyRoute

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
BUCKET_S = 10
BUCKETS = int(WINDOW_S) // BUCKET_S


class KeyLimiter:
    """Sliding one-minute windows, one per limited key; each holds at most its limit's entries,
    with a running total of the tokens they charged."""

    def __init__(self) -> None:
        self._windows: dict[int, deque[tuple[float, int]]] = {}
        self._tokens: dict[int, int] = {}

    def admit(self, key: ApiKeyRoute, *, tokens: int, now: float) -> None:
        """Count a request of ``tokens`` against ``key``, or raise a 429 saying when to retry."""
        rpm, tpm = key.requests_per_minute, key.tokens_per_minute
        if rpm is None and tpm is None:
            return
        window = self._windows.setdefault(key.key_id, deque())
        used = self._tokens.get(key.key_id, 0)
        while window and window[0][0] <= now - WINDOW_S:
            used -= window.popleft()[1]
        self._tokens[key.key_id] = used
        if rpm is not None and len(window) >= rpm:
            free_at = window[len(window) - rpm][0] + WINDOW_S
            raise refused(f"{rpm} requests per minute", "requests", free_at - now)
        if tpm is not None:
            tokens = min(tokens, tpm)  # a request larger than the whole budget waits for an empty window
            if used + tokens > tpm:
                free_at = now + WINDOW_S
                for started, charged in window:
                    used -= charged
                    if used + tokens <= tpm:
                        free_at = started + WINDOW_S
                        break
                raise refused(f"{tpm} tokens per minute", "tokens", free_at - now)
        window.append((now, tokens))
        self._tokens[key.key_id] += tokens

    def forget(self, key_ids: set[int]) -> None:
        """Drop the windows of keys no longer in the routing table."""
        for key_id in self._windows.keys() - key_ids:
            del self._windows[key_id]
            self._tokens.pop(key_id, None)


# KEYS[1..6]: the key's buckets, newest first. ARGV: rpm (0: none), tpm (0: none), tokens, the
# newest bucket's age in seconds. Returns {1} when admitted (and charged), else {0, kind, wait s}.
ADMIT_SCRIPT = """
local rpm, tpm, tokens, age = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local requests, used = 0, 0
local counts = {}
for i = 1, #KEYS do
  local r = tonumber(redis.call('HGET', KEYS[i], 'r') or '0')
  local t = tonumber(redis.call('HGET', KEYS[i], 't') or '0')
  counts[i] = {r, t}
  requests = requests + r
  used = used + t
end
local bucket = %(bucket)d
local function wait_for(index, need, total)
  -- the seconds until the oldest buckets, leaving the window one by one, free ``need``
  for i = #KEYS, 1, -1 do
    total = total - counts[i][index]
    if total <= need then return bucket * (#KEYS - i) + (bucket - age) end
  end
  return bucket * #KEYS
end
if rpm > 0 and requests >= rpm then return {0, 'requests', wait_for(1, rpm - 1, requests)} end
if tpm > 0 then
  if tokens > tpm then tokens = tpm end
  if used + tokens > tpm then return {0, 'tokens', wait_for(2, tpm - tokens, used)} end
end
redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('HINCRBY', KEYS[1], 't', tokens)
redis.call('EXPIRE', KEYS[1], bucket * (#KEYS + 1))
return {1}
""".replace("%(bucket)d", str(BUCKET_S))


class SharedKeyLimiter:
    """The minute of every limited key counted in Redis, by all gateway processes together.

    Six 10 s buckets per key: a request is admitted while the buckets of the last minute
    (the current one included) hold fewer than its limits, and charged to the current one,
    read and written in one script so two processes cannot both take the last place. The
    window is the last six buckets, so it is between 50 and 60 s long: a key may get its
    rate up to a sixth sooner than by the exact sliding window. While Redis does not answer,
    the process counts alone (``fallback``), logged once per outage.
    """

    def __init__(self, url: str, *, prefix: str = "gpufleet:key-rate", fallback: KeyLimiter | None = None) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.from_url(url)
        self._script: Any = self._redis.register_script(ADMIT_SCRIPT)
        self._prefix = prefix
        self.fallback = fallback or KeyLimiter()
        self._down = False

    async def admit(self, key: ApiKeyRoute, *, tokens: int, now: float, wall: float) -> None:
        """Count a request against ``key`` in Redis (``wall``: the Unix time, shared by all
        processes), or raise a 429; ``now`` is this process's clock, for the fallback."""
        rpm, tpm = key.requests_per_minute, key.tokens_per_minute
        if rpm is None and tpm is None:
            return
        from redis.exceptions import RedisError

        bucket = int(wall // BUCKET_S)
        keys = [f"{self._prefix}:{key.key_id}:{bucket - i}" for i in range(BUCKETS)]
        try:
            answer = await self._script(keys=keys, args=[rpm or 0, tpm or 0, tokens, int(wall - bucket * BUCKET_S)])
        except (RedisError, OSError) as exc:
            if not self._down:
                logger.warning("gateway: Redis unavailable, key rate limits counted per process: %s", exc)
                self._down = True
            self.fallback.admit(key, tokens=tokens, now=now)
            return
        self._down = False
        if int(answer[0]) == 1:
            return
        kind = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
        limit = f"{rpm} requests per minute" if kind == "requests" else f"{tpm} tokens per minute"
        raise refused(limit, kind, float(answer[2]))

    async def close(self) -> None:
        await self._redis.aclose()


def refused(limit: str, kind: str, wait_s: float) -> ApiError:
    """The 429 a key over its rate gets, with the seconds until it may try again."""
    retry = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        f"Rate limit reached for this API key: {limit}. Try again in {retry} s.",
        type=kind,
        code="rate_limit_exceeded",
        headers=[(b"retry-after", str(retry).encode())],
    )
