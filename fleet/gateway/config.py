"""The gateway's bounds, apart from the application so the trace simulator can read them without Django."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayConfig:
    """Bounds of the gateway; ``from_settings`` reads the ``GATEWAY_*`` environment settings."""

    hold_timeout_s: float = 60.0
    max_held: int = 256
    retry_after_s: int = 10
    cooldown_s: float = 15.0
    refresh_s: float = 1.0
    held_refresh_s: float = 0.25
    wake_retry_s: float = 30.0
    connect_timeout_s: float = 3.0
    upstream_timeout_s: float = 600.0
    upstream_response_timeout_s: float = 1800.0
    upstream_max_body_bytes: int = 64 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    log_flush_s: float = 0.25
    switch_interval_s: float = 0.0005
    log_max_pending: int = 50_000
    log_batch: int = 2_000
    db_process: bool = False
    # Where gateway processes count key rate limits together (the panel's Redis); empty: each alone.
    redis_url: str = ""

    @classmethod
    def from_settings(cls) -> GatewayConfig:
        from django.conf import settings

        return cls(
            hold_timeout_s=settings.GATEWAY_HOLD_TIMEOUT_S,
            max_held=settings.GATEWAY_MAX_HELD,
            retry_after_s=max(1, math.ceil(min(settings.GATEWAY_HOLD_TIMEOUT_S, 30.0))),
            cooldown_s=settings.GATEWAY_COOLDOWN_S,
            refresh_s=settings.GATEWAY_REFRESH_S,
            wake_retry_s=settings.GATEWAY_WAKE_RETRY_S,
            connect_timeout_s=settings.GATEWAY_CONNECT_TIMEOUT_S,
            upstream_timeout_s=settings.GATEWAY_UPSTREAM_TIMEOUT_S,
            upstream_response_timeout_s=settings.GATEWAY_UPSTREAM_RESPONSE_TIMEOUT_S,
            upstream_max_body_bytes=settings.GATEWAY_UPSTREAM_MAX_BODY_BYTES,
            max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES,
            log_flush_s=settings.GATEWAY_LOG_FLUSH_S,
            log_max_pending=settings.GATEWAY_LOG_MAX_PENDING,
            switch_interval_s=settings.GATEWAY_SWITCH_INTERVAL_S,
            redis_url=settings.REDIS_URL,
        )
