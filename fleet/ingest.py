"""Registration and report ingest: where agents' words become rows.

A batch is stored whole, in one transaction, or not at all; the reply that
acknowledges it is built only after the commit, so an agent that sees the
acknowledgement can drop its buffer. Reports are numbered: one the panel has already
stored (the reply was lost and the agent sent it again) is acknowledged and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents import protocol
from fleet import catalog
from fleet.events import event_publish, fleet_summary_add
from fleet.models import (
    BatchJob,
    Gpu,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    JoinToken,
    MigDevice,
    Node,
    OrphanContainer,
)
from fleet.rollups import rollup_reopen
from fleet.tokens import token_hash

REPORT_INTERVAL_S = 5.0


class IngestError(Exception):
    """A request the panel refuses; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details)


def node_register(*, registration: protocol.Registration) -> tuple[Node, str]:
    """Spend one use of a join token on a new node; return the node and its token (shown once)."""
    now = timezone.now()
    usable = JoinToken.objects.filter(
        Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")),
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        token_hash=token_hash(registration.join_token),
        revoked_at__isnull=True,
    )
    with transaction.atomic():
        if usable.update(uses=F("uses") + 1) != 1:
            raise IngestError(401, "join token unknown, expired, revoked or used up")
        node = Node(
            join_token=JoinToken.objects.get(token_hash=token_hash(registration.join_token)),
            name=registration.name,
            address=registration.hostname,
            agent_version=registration.agent_version,
            labels=registration.labels,
        )
        token = node.issue_token()
        try:
            with transaction.atomic():
                node.save()
        except IntegrityError as exc:
            raise IngestError(409, f"a node named {registration.name!r} exists; rotate its token in the admin") from exc
    event_publish(kind="node", payload={"node": node.name, "status": node.status, "join_token": node.join_token_id})
    return node, token


def node_authenticate(*, token: str) -> Node:
    node = Node.objects.filter(token_hash=token_hash(token)).first()
    if node is None:
        raise IngestError(401, "unknown node token")
    return node


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _mig_mode(reading: protocol.GpuSample) -> str:
    if reading.mig_enabled is None:
        return Gpu.MigMode.UNSUPPORTED
    return Gpu.MigMode.ENABLED if reading.mig_enabled else Gpu.MigMode.DISABLED


def _sync_gpus(node: Node, gpus: list[protocol.GpuSample]) -> dict[str, Gpu]:
    """Create or update the node's GPU rows from the newest report; refuse GPUs of other nodes.

    One SELECT finds both this node's GPUs and any reported UUID held by another node; a
    row is written only when the report differs from it, so a steady host costs one query
    here, not one per GPU. MIG devices are read only where MIG is or was enabled.
    """
    uuids = [gpu.uuid for gpu in gpus]
    rows = list(Gpu.objects.filter(Q(node=node) | Q(uuid__in=uuids)))
    taken = [gpu.uuid for gpu in rows if gpu.node_id != node.pk][:5]
    if taken:
        raise IngestError(403, "GPUs already registered to another node", taken)
    existing = {gpu.uuid: gpu for gpu in rows}
    had_mig = {gpu.uuid for gpu in rows if gpu.mig_mode == Gpu.MigMode.ENABLED}
    for reading in gpus:
        values = dict(
            index=reading.index,
            model_name=reading.name,
            memory_total_bytes=reading.memory_total_bytes,
            mig_capable=reading.mig_enabled is not None or bool(catalog.gpu_supports_mig(reading.name)),
            mig_mode=_mig_mode(reading),
        )
        gpu = existing.get(reading.uuid)
        if gpu is None:
            Gpu.objects.filter(node=node, index=reading.index).exclude(uuid=reading.uuid).delete()
            try:
                with transaction.atomic():
                    existing[reading.uuid] = Gpu.objects.create(node=node, uuid=reading.uuid, **values)
            except IntegrityError as exc:  # another node's report created it since the SELECT above
                raise IngestError(403, "GPUs already registered to another node", [reading.uuid]) from exc
        elif any(getattr(gpu, key) != value for key, value in values.items()):
            Gpu.objects.filter(pk=gpu.pk).update(**values)
            for key, value in values.items():
                setattr(gpu, key, value)
    mig_gpus = [existing[r.uuid] for r in gpus if r.mig_devices or r.uuid in had_mig or r.mig_enabled]
    if mig_gpus:
        _sync_mig_devices(mig_gpus, {r.uuid: r.mig_devices for r in gpus})
    return existing


def _sync_mig_devices(gpus: list[Gpu], reported: dict[str, list[protocol.MigDevice]]) -> None:
    """Bring the MIG devices of ``gpus`` in line with the report, writing only what changed."""
    current = {device.uuid: device for device in MigDevice.objects.filter(gpu__in=gpus)}
    wanted: set[str] = set()
    for gpu in gpus:
        for device in reported.get(gpu.uuid, []):
            wanted.add(device.uuid)
            values = dict(
                gpu_id=gpu.pk,
                profile=device.profile or "1g.unknown",
                gpu_instance_id=device.gpu_instance_id,
                compute_instance_id=device.compute_instance_id,
                memory_total_bytes=device.memory_total_bytes,
            )
            row = current.get(device.uuid)
            if row is None or any(getattr(row, key) != value for key, value in values.items()):
                MigDevice.objects.update_or_create(uuid=device.uuid, defaults=values)
    gone = [row.pk for uuid, row in current.items() if uuid not in wanted]
    if gone:
        MigDevice.objects.filter(pk__in=gone).delete()


def _gpu_sample(gpu: Gpu, at: datetime, reading: protocol.GpuSample) -> GpuSample:
    return GpuSample(
        gpu=gpu,
        at=at,
        utilization_gpu_pct=reading.utilization_gpu_pct,
        sm_activity_pct=reading.sm_activity_pct,
        memory_used_bytes=reading.memory_used_bytes,
        memory_total_bytes=reading.memory_total_bytes,
        power_watts=reading.power_watts,
        power_limit_watts=reading.power_limit_watts,
        energy_joules=reading.energy_joules,
        temperature_c=reading.temperature_c,
        sm_clock_mhz=reading.sm_clock_mhz,
        mem_clock_mhz=reading.mem_clock_mhz,
        pstate=reading.pstate,
        throttle_reasons=list(reading.throttle_reasons),
        ecc_uncorrected=reading.ecc_uncorrected_volatile,
    )


def _instance_sample(instance_id: int, at: datetime, reading: protocol.InstanceSample) -> InstanceSample:
    return InstanceSample(
        instance_id=instance_id,
        at=at,
        state=reading.state,
        requests_waiting=reading.requests_waiting,
        requests_running=reading.requests_running,
        kv_cache_usage=reading.kv_cache_usage,
        request_rate=reading.request_rate,
        prompt_tokens_rate=reading.prompt_tokens_rate,
        generation_tokens_rate=reading.generation_tokens_rate,
        ttft_p50_s=reading.ttft_p50_s,
        ttft_p95_s=reading.ttft_p95_s,
        e2e_p50_s=reading.e2e_p50_s,
        e2e_p95_s=reading.e2e_p95_s,
        ttft_histogram=reading.ttft_histogram.model_dump() if reading.ttft_histogram else None,
        e2e_histogram=reading.e2e_histogram.model_dump() if reading.e2e_histogram else None,
    )


def node_instances(node: Node) -> Q:
    return Q(gpu__node=node) | Q(mig_device__gpu__node=node)


def _apply_instance_states(
    node: Node, latest: dict[int, tuple[datetime, protocol.InstanceSample]], requested: dict[int, datetime]
) -> list[int]:
    """Record each instance's newest actual state and last request; return the ids whose state changed.

    ``requested`` holds, per instance, the newest sample time with a request rate above
    zero: idle reclaim measures idleness from it.

    An instance whose reported fields all match its row is not written: a steady fleet
    costs one SELECT here per report.
    """
    changed = []
    instances = Instance.objects.filter(node_instances(node), pk__in=latest).select_related("gpu", "mig_device")
    for instance in instances:
        at, reading = latest[instance.pk]
        state_changed = reading.state != instance.actual_state or reading.generation != instance.actual_generation
        updates: dict[str, object] = dict(
            actual_state=reading.state,
            actual_generation=reading.generation,
            container_id=reading.container_id,
            endpoint=reading.endpoint,
            last_error=reading.error,
        )
        if instance.pk in requested and (
            instance.last_request_at is None or requested[instance.pk] > instance.last_request_at
        ):
            updates["last_request_at"] = requested[instance.pk]
        if state_changed:
            updates["actual_changed_at"] = at
            if reading.state == Instance.Actual.READY:
                updates["ready_at"] = at
            InstanceEvent.objects.create(
                instance=instance,
                at=at,
                state=reading.state,
                generation=reading.generation,
                gpu=instance.gpu,
                mig_device=instance.mig_device,
            )
            changed.append(instance.pk)
        if any(getattr(instance, key) != value for key, value in updates.items()):
            Instance.objects.filter(pk=instance.pk).update(**updates)
    return changed


def report_ingest(*, node: Node, batch: protocol.Batch) -> protocol.Reply:
    """Store a batch whole or refuse it whole; reply with the node's desired state."""
    if batch.node != node.name:
        raise IngestError(403, f"this token belongs to node {node.name!r}, not {batch.node!r}")
    seqs = [report.seq for report in batch.reports]
    if any(later <= earlier for earlier, later in pairwise(seqs)):
        raise IngestError(400, "reports must be in increasing seq order")

    reported_ids = {sample.instance_id for report in batch.reports for sample in report.instances}
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        fresh = [report for report in batch.reports if report.seq > locked.last_seq]
        foreign = (
            reported_ids - set(Instance.objects.filter(node_instances(node)).values_list("pk", flat=True))
            if reported_ids
            else set()
        )
        if foreign:
            raise IngestError(403, "instances not placed on this node", [str(pk) for pk in sorted(foreign)[:10]])
        changed: list[int] = []
        gpu_samples = 0
        if fresh:
            changed, gpu_samples = _store(locked, fresh, batch.dropped)
    if changed:
        event_publish(kind="instances", payload={"node": node.name, "instances_changed": changed})
    if fresh:
        fleet_summary_add(node=node.name, reports=len(fresh), gpu_samples=gpu_samples)
    return protocol.Reply(
        ack_seq=max(seqs[-1], locked.last_seq),
        desired=desired_for(node),
        report_interval_s=REPORT_INTERVAL_S,
        batch_jobs=batch_jobs_for(node),
        stop_containers=list(
            OrphanContainer.objects.filter(node=node, stop_requested_at__isnull=False)
            .order_by("first_seen_at")
            .values_list("container_id", flat=True)
        ),
    )


def _store(node: Node, reports: list[protocol.Report], dropped: int) -> tuple[list[int], int]:
    """Write the reports' samples (one INSERT per table) and the node's newest state.

    Returns the instances whose state changed and the number of GPU samples stored.
    """
    newest = reports[-1]
    gpus = _sync_gpus(node, newest.gpus)
    gpu_rows: list[GpuSample] = []
    instance_rows: list[InstanceSample] = []
    latest: dict[int, tuple[datetime, protocol.InstanceSample]] = {}
    requested: dict[int, datetime] = {}
    for report in reports:
        at = _when(report.sampled_at)
        for reading in report.gpus:
            gpu = gpus.get(reading.uuid)
            if gpu is not None:
                gpu_rows.append(_gpu_sample(gpu, at, reading))
        for sample in report.instances:
            instance_rows.append(_instance_sample(sample.instance_id, at, sample))
            latest[sample.instance_id] = (at, sample)
            if sample.request_rate:
                requested[sample.instance_id] = at
    GpuSample.objects.bulk_create(gpu_rows, batch_size=1000)
    if instance_rows:
        InstanceSample.objects.bulk_create(instance_rows, batch_size=1000)
    rollup_reopen(since=_when(reports[0].sampled_at))
    changed = _apply_instance_states(node, latest, requested) if latest else []
    _record_orphans(node, _when(newest.sampled_at), newest.containers)
    Node.objects.filter(pk=node.pk).update(
        last_seq=newest.seq,
        last_seen_at=timezone.now(),
        status=Node.Status.ONLINE,
        address=newest.host.hostname,
        agent_version=newest.host.agent_version,
        nvml_available=newest.host.nvml_available,
        nvml_reason=newest.host.nvml_reason,
        runtime_reason=newest.host.runtime_reason,
        containers=[container.model_dump() for container in newest.containers],
        reports_dropped=F("reports_dropped") + dropped,
    )
    return changed, len(gpu_rows)


def _record_orphans(node: Node, at: datetime, containers: list[protocol.ForeignContainer]) -> None:
    """Keep one row per managed container nobody wants, with when it was first seen, for the reaper.

    A container that is no longer reported is gone (or wanted again): its row goes too.
    """
    orphans = {c.container_id: c for c in containers if c.managed}
    OrphanContainer.objects.filter(node=node).exclude(container_id__in=list(orphans)).delete()
    known = set(OrphanContainer.objects.filter(node=node).values_list("container_id", flat=True))
    OrphanContainer.objects.filter(node=node, container_id__in=known).update(last_seen_at=at)
    OrphanContainer.objects.bulk_create(
        [
            OrphanContainer(
                node=node,
                container_id=container_id,
                name=c.name,
                instance_id=c.instance_id,
                first_seen_at=at,
                last_seen_at=at,
            )
            for container_id, c in orphans.items()
            if container_id not in known
        ]
    )


def _spec(instance: Instance) -> protocol.InstanceSpec:
    profile = instance.pool.model_profile
    return protocol.InstanceSpec(
        image=profile.image,
        model=profile.model,
        served_name=profile.served_name,
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.max_num_seqs,
        dtype=profile.dtype,
        quantization=profile.quantization,
        kv_cache_dtype=profile.kv_cache_dtype,
        enable_prefix_caching=profile.enable_prefix_caching,
        enable_sleep_mode=profile.enable_sleep_mode,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        extra_args=list(profile.extra_args),
        env=dict(profile.env),
        volumes=dict(profile.volumes),
        gpu_uuids=[instance.gpu.uuid] if instance.gpu and not instance.mig_device else [],
        mig_uuids=[instance.mig_device.uuid] if instance.mig_device else [],
    )


def desired_for(node: Node) -> list[protocol.DesiredInstance]:
    """Every instance placed on the node that is, or should be, holding something."""
    instances = (
        Instance.objects.filter(node_instances(node))
        .exclude(desired_state=Instance.Desired.STOPPED, actual_state=Instance.Actual.STOPPED)
        .select_related("pool__model_profile", "gpu", "mig_device")
        .order_by("pk")
    )
    return [
        protocol.DesiredInstance(
            instance_id=instance.pk, generation=instance.generation, state=instance.desired_state, spec=_spec(instance)
        )
        for instance in instances
    ]


def batch_jobs_for(node: Node) -> list[protocol.DesiredBatchJob]:
    """Batch jobs to run on the node's GPUs, and preempted ones whose container there must stop."""
    jobs = (
        BatchJob.objects.filter(gpu__node=node, state__in=[BatchJob.State.RUNNING, BatchJob.State.PREEMPTED])
        .select_related("gpu")
        .order_by("pk")
    )
    return [
        protocol.DesiredBatchJob(
            job_id=job.pk,
            generation=job.generation,
            state="running" if job.state == BatchJob.State.RUNNING else "stopped",
            image=job.image,
            command=list(job.command),
            memory_bytes=job.memory_bytes,
            gpu_uuids=[job.gpu.uuid],
        )
        for job in jobs
        if job.gpu is not None
    ]
