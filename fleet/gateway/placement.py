"""Where a pool woken from zero gets its first instance: the first free GPU that fits.

Interim placement, deliberately simple, until the placement policy (with its VRAM
estimator) replaces it: a GPU is free when no instance that is not desired stopped
holds it or one of its MIG slices. It honours the pool's GPU model, puts MIG pools on
a free slice of the pool's MIG profile and other pools only on GPUs without MIG, and
prefers online nodes in name order. It does not check memory fit.
"""

from __future__ import annotations

from django.db.models import Q

from fleet.models import Gpu, Instance, MigDevice, Node, Pool

ACTIVE = ~Q(desired_state=Instance.Desired.STOPPED)


def placement_free_slot(*, pool: Pool) -> tuple[Gpu, MigDevice | None] | None:
    """A free (GPU, MIG slice or None) for one instance of ``pool``, or None if there is none."""
    busy_gpus = Instance.objects.filter(ACTIVE, gpu__isnull=False).values("gpu_id")
    busy_slices = Instance.objects.filter(ACTIVE, mig_device__isnull=False).values("mig_device_id")
    gpus = Gpu.objects.filter(node__status=Node.Status.ONLINE).select_related("node").order_by("node__name", "index")
    if pool.gpu_model:
        gpus = gpus.filter(model_name=pool.gpu_model)
    if pool.isolation == Pool.Isolation.MIG:
        device = (
            MigDevice.objects.filter(gpu__in=gpus.filter(mig_mode=Gpu.MigMode.ENABLED), profile=pool.mig_profile)
            .exclude(pk__in=busy_slices)
            .select_related("gpu")
            .order_by("gpu__node__name", "gpu__index", "gpu_instance_id")
            .first()
        )
        return (device.gpu, device) if device else None
    gpu = gpus.exclude(mig_mode=Gpu.MigMode.ENABLED).exclude(pk__in=busy_gpus).first()
    return (gpu, None) if gpu else None
