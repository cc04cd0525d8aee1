"""Snapshots built by hand: policies are pure, so their tests need no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.policies.settings import policy_defaults
from fleet.policies.snapshot import FleetSnapshot, GpuView, InstanceView, PolicyConfig, PoolView, PoolWindow
from fleet.policies.vram import ProfileFacts, vram_estimate_for

GIB = 1024**3
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
QWEN = "Qwen/Qwen3-4B-Instruct-2507"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def qwen_estimate(max_model_len: int = 8192, **kwargs: Any):  # type: ignore[no-untyped-def]
    values = dict(model=QWEN, dtype="bfloat16", quantization="", kv_cache_dtype="auto", max_model_len=max_model_len)
    values.update(kwargs)
    return vram_estimate_for(ProfileFacts(**values))


def pool(pool_id: int = 1, **kwargs: Any) -> PoolView:
    values: dict[str, Any] = dict(id=pool_id, name=f"pool-{pool_id}", isolation="shared", estimate=qwen_estimate())
    values.update(kwargs)
    return PoolView(**values)


def instance(instance_id: int, pool_id: int = 1, **kwargs: Any) -> InstanceView:
    values: dict[str, Any] = dict(
        id=instance_id,
        pool_id=pool_id,
        desired_state="running",
        actual_state="ready",
        generation=3,
        created_at=ago(7200),
        ready_at=ago(7000),
        gpu_id=instance_id,
        requests_running=0,
        requests_waiting=0,
    )
    values.update(kwargs)
    return InstanceView(**values)


def gpu(gpu_id: int, **kwargs: Any) -> GpuView:
    values: dict[str, Any] = dict(
        id=gpu_id,
        node_id=1,
        node_name="host-1",
        uuid=f"GPU-{gpu_id}",
        model_name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 * GIB,
        memory_used_bytes=0,
        utilization_pct=5.0,
    )
    values.update(kwargs)
    return GpuView(**values)


def window(
    kv_cache: float | None = None,
    queue: float | None = 0,
    latency_ms: float | None = None,
    **figures: float | None,
) -> PoolWindow:
    """A one-minute window whose load is its KV-cache usage unless other figures say more."""
    return PoolWindow(start=ago(60), end=NOW, kv_cache=kv_cache, queue=queue, latency_ms=latency_ms, **figures)


def snapshot(**kwargs: Any) -> FleetSnapshot:
    values: dict[str, Any] = dict(at=NOW)
    for key, items in kwargs.items():
        values[key] = tuple(items)
    return FleetSnapshot(**values)


def config(kind: str, **settings: Any) -> PolicyConfig:
    return PolicyConfig(kind=kind, fleet={**policy_defaults(kind), **settings}, policy_ids={None: 99})
