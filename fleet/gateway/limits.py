"""Per-key request and token rates: what a key was admitted in the last minute, in this process.

A key with ``requests_per_minute`` or ``tokens_per_minute`` set is admitted while what it
was admitted in the last 60 s stays within them; past that it gets a 429 with the seconds
until enough of the window has passed. Tokens are charged at admission (the prompt as the
gateway counts it plus ``max_tokens``, or one output token without it), as that is what
the request may use. Keys without limits leave no trace here.
"""

from __future__ import annotations

import math
from collections import deque

from fleet.gateway.protocol import ApiError
from fleet.gateway.table import ApiKeyRoute

WINDOW_S = 60.0


class KeyLimiter:
    """Sliding one-minute windows, one per limited key; each holds at most its limit's entries."""

    def __init__(self) -> None:
        self._windows: dict[int, deque[tuple[float, int]]] = {}

    def admit(self, key: ApiKeyRoute, *, tokens: int, now: float) -> None:
        """Count a request of ``tokens`` against ``key``, or raise a 429 saying when to retry."""
        rpm, tpm = key.requests_per_minute, key.tokens_per_minute
        if rpm is None and tpm is None:
            return
        window = self._windows.setdefault(key.key_id, deque())
        while window and window[0][0] <= now - WINDOW_S:
            window.popleft()
        if rpm is not None and len(window) >= rpm:
            free_at = window[len(window) - rpm][0] + WINDOW_S
            raise self._refused(f"{rpm} requests per minute", "requests", free_at - now)
        if tpm is not None:
            tokens = min(tokens, tpm)  # a request larger than the whole budget waits for an empty window
            used = sum(charged for _, charged in window)
            if used + tokens > tpm:
                free_at = now + WINDOW_S
                for started, charged in window:
                    used -= charged
                    if used + tokens <= tpm:
                        free_at = started + WINDOW_S
                        break
                raise self._refused(f"{tpm} tokens per minute", "tokens", free_at - now)
        window.append((now, tokens))

    def forget(self, key_ids: set[int]) -> None:
        """Drop the windows of keys no longer in the routing table."""
        for key_id in self._windows.keys() - key_ids:
            del self._windows[key_id]

    @staticmethod
    def _refused(limit: str, kind: str, wait_s: float) -> ApiError:
        retry = max(1, math.ceil(wait_s))
        return ApiError(
            429,
            f"Rate limit reached for this API key: {limit}. Try again in {retry} s.",
            type=kind,
            code="rate_limit_exceeded",
            headers=[(b"retry-after", str(retry).encode())],
        )
