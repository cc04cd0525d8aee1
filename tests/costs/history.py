"""Builders for constructed histories: prices, state changes and samples at chosen instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from fleet.models import Gpu, GpuSample, Instance, InstanceEvent, InstanceSample, MigDevice, Node, PriceRate

GIB = 1024**3


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def price(gpu_model: str, amount: str, effective_from: date, node: Node | None = None, currency: str = "USD") -> None:
    PriceRate.objects.create(
        gpu_model=gpu_model,
        node=node,
        price_per_gpu_hour=Decimal(amount),
        currency=currency,
        effective_from=effective_from,
    )


def states(instance: Instance, *changes: tuple[datetime, str]) -> None:
    """Record the instance's actual state changes on the device it holds."""
    for at, state in changes:
        InstanceEvent.objects.create(
            instance=instance, at=at, state=state, gpu=instance.gpu, mig_device=instance.mig_device
        )


def gpu_samples(gpu: Gpu, start: datetime, end: datetime, *, every_s: int = 60, utilization: float = 0.0) -> None:
    """Samples at ``start``, ``start + every_s``, ... up to and including ``end``."""
    rows, at = [], start
    while at <= end:
        rows.append(GpuSample(gpu=gpu, at=at, utilization_gpu_pct=utilization))
        at += timedelta(seconds=every_s)
    GpuSample.objects.bulk_create(rows)


def instance_samples(
    instance: Instance, start: datetime, end: datetime, *, every_s: int = 60, prompt_rate: float, output_rate: float
) -> None:
    """Samples at ``start``, ``start + every_s``, ... up to and including ``end``.

    Each sample's rates cover the interval since the previous one, as the agent measures them,
    so these samples say the instance served at those rates for all of [start, end).
    """
    rows, at = [], start
    while at <= end:
        rows.append(
            InstanceSample(
                instance=instance,
                at=at,
                state="ready",
                prompt_tokens_rate=prompt_rate,
                generation_tokens_rate=output_rate,
            )
        )
        at += timedelta(seconds=every_s)
    InstanceSample.objects.bulk_create(rows)


def mig_device(gpu: Gpu, profile: str, gpu_instance_id: int = 1) -> MigDevice:
    return MigDevice.objects.create(
        gpu=gpu,
        uuid=f"MIG-{gpu.uuid}-{gpu_instance_id}",
        profile=profile,
        gpu_instance_id=gpu_instance_id,
        memory_total_bytes=40 * GIB,
    )
