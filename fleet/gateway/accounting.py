"""Request records, queued on the hot path and written to the database in batches.

Appending to a bounded deque is all a request pays; a background task hands batches to
``fleet.decide.services.request_logs_write`` (one insert). When the database falls
behind and the queue is full, new records are dropped and counted rather than letting
memory grow or slowing requests down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class RequestRecord:
    at: float
    key_id: int
    team_id: int
    pool_id: int | None
    instance_id: int | None
    endpoint: str
    model: str
    rcf: float
    tier: str
    stream: bool
    prompt_tokens: int | None
    output_tokens: int | None
    tokens_from_usage: bool
    # From where latency starts to the first event carrying a generated token (``SseRelay.generated``);
    # None for an answer that is not streamed or a stream that generated nothing.
    ttft_ms: float | None
    latency_ms: float
    status: int
    cold_start: bool
    retried: bool
    error: str


class RequestRecorder:
    """The bounded queue between requests and the batch writer."""

    def __init__(self, *, max_pending: int = 50_000) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: deque[RequestRecord] = deque()

    def record(self, record: RequestRecord) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(record)

    def take(self, limit: int) -> list[RequestRecord]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(limit, len(pending)))]

    def __len__(self) -> int:
        return len(self._pending)
