"""Report ingest: where agents' words become rows.

A batch is stored whole, in one transaction, or not at all; the reply that
acknowledges it is built only after the commit, so an agent that sees the
acknowledgement can drop its buffer. Reports are numbered: one the panel has already
stored (the reply was lost and the agent sent it again) is acknowledged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, NamedTuple

from django.conf import settings as django_settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from agents import protocol
from fleet import catalog, states
from fleet.decide.services import gpus_retire
from fleet.events import event_publish, fleet_summary_add, node_desired_changed, node_group
from fleet.models import (
    BatchJob,
    Gpu,
    GpuSample,
    Instance,
    InstanceEvent,
    InstanceSample,
    MigDevice,
    Node,
    OrphanContainer,
    Policy,
)
from fleet.policies.settings import policy_defaults, policy_settings_stored
from fleet.policies.windows import REPORT_INTERVAL_S
from fleet.telemetry.bulk import rows_insert, rows_update
from fleet.telemetry.claims import (
    OLDEST_READING_S,
    IngestError,
    clock_check,
    endpoint_at,
    endpoint_problem,
    inventory_check,
    node_ports,
    report_address,
)
from fleet.telemetry.prepared import PreparedValues
from fleet.telemetry.registration import token_forget, token_remember
from fleet.telemetry.rollups import rollup_reopen

logger = logging.getLogger(__name__)

# Image sizes as Docker shows them, and as the co-location policy's max_image_mb counts.
MB = 1_000_000
# What an agent's report of a running job's current generation makes of it.
_JOB_ENDS = {"finished": BatchJob.State.DONE, "failed": BatchJob.State.FAILED, "refused": BatchJob.State.FAILED}


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _mig_mode(reading: protocol.GpuSample) -> str:
    if reading.mig_enabled is None:
        return Gpu.MigMode.UNSUPPORTED
    return Gpu.MigMode.ENABLED if reading.mig_enabled else Gpu.MigMode.DISABLED


_node_gpus_query = PreparedValues(
    lambda *, node, uuids: (
        Gpu.objects.filter(Q(node_id=node) | Q(uuid__in=uuids), decommissioned_at__isnull=True)
        .order_by()
        .values_list(*(field.attname for field in Gpu._meta.concrete_fields))
    ),
    dicts=False,
)


def _sync_gpus(node: Node, gpus: list[protocol.GpuSample]) -> tuple[dict[str, Gpu], bool]:
    """Create or update the node's GPU rows from the newest report; refuse GPUs of other nodes.

    Returns the node's GPUs by UUID and whether a GPU or MIG device went away (another
    UUID now sits at a GPU's index, a card swapped, or a MIG layout changed); instances
    placed on those lose their placement. A swapped-out card is retired, not deleted: its
    samples, rollups and spend stay. Cards that left the fleet are not this node's, nor
    another's: a host that joins again after its decommission reports its cards anew.

    One SELECT (compiled once, see ``PreparedValues``) finds both this node's GPUs and any
    reported UUID held by another node; a row is written only when the report differs
    from it, so a steady host costs one query here, not one per GPU. MIG devices are read
    only where MIG is or was enabled.
    """
    names = [field.attname for field in Gpu._meta.concrete_fields]
    rows = [
        Gpu.from_db(connection.alias, names, row)
        for row in _node_gpus_query.rows(node=node.pk, uuids=[gpu.uuid for gpu in gpus])
    ]
    taken = [gpu for gpu in rows if gpu.node_id != node.pk]
    if taken:
        _claim_refused(node, "GPUs", {gpu.uuid: gpu.node_id for gpu in taken})
    existing = {gpu.uuid: gpu for gpu in rows}
    gone = False
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
            swapped = [row.pk for row in rows if row.index == reading.index and row.uuid != reading.uuid]
            if swapped:
                gpus_retire(gpu_ids=swapped, at=timezone.now())
                existing = {uuid: row for uuid, row in existing.items() if row.pk not in swapped}
                gone = True
            try:
                with transaction.atomic():
                    existing[reading.uuid] = Gpu.objects.create(node=node, uuid=reading.uuid, **values)
            except IntegrityError as exc:  # another node's report created it since the SELECT above
                owner = Gpu.objects.filter(uuid=reading.uuid, decommissioned_at__isnull=True).values_list(
                    "node_id", flat=True
                )
                _claim_refused(node, "GPUs", {reading.uuid: owner.first()}, cause=exc)
        elif any(getattr(gpu, key) != value for key, value in values.items()):
            Gpu.objects.filter(pk=gpu.pk).update(**values)
            for key, value in values.items():
                setattr(gpu, key, value)
    mig_gpus = [existing[r.uuid] for r in gpus if r.mig_devices or r.uuid in had_mig or r.mig_enabled]
    if mig_gpus and _sync_mig_devices(node, mig_gpus, {r.uuid: r.mig_devices for r in gpus}):
        gone = True
    return existing, gone


def _claim_refused(node: Node, what: str, owners: dict[str, Any], cause: Exception | None = None) -> None:
    """Refuse a report that claims hardware another node holds, and tell the operator who claimed what.

    The node that holds it keeps it: a first claimant is never displaced by a later one.
    Where the claimant is the real host (a lying host squatted its UUIDs first), the
    warning names both, and decommissioning the squatter frees the hardware.
    """
    logger.warning(
        "node %s (id %s) claims %s held by other nodes, refused; the holders keep them: %s",
        node.name,
        node.pk,
        what,
        ", ".join(f"{uuid} (node id {owner})" for uuid, owner in list(owners.items())[:10]),
    )
    raise IngestError(403, f"{what} already registered to another node", list(owners)[:5]) from cause


def _forget_placements(rows: dict[int, dict[str, Any]]) -> None:
    """Drop placements on GPUs retired or MIG devices deleted since ``rows`` were read (a card swapped).

    The instances lost them in the database; the rows must say so too, or the instance
    events written next would name a device the instance no longer has.
    """
    gpus = {r["gpu_id"] for r in rows.values()} - {None}
    gpus = set(Gpu.objects.filter(pk__in=gpus, decommissioned_at__isnull=True).values_list("pk", flat=True))
    migs = {r["mig_device_id"] for r in rows.values()} - {None}
    migs = set(MigDevice.objects.filter(pk__in=migs, gpu__decommissioned_at__isnull=True).values_list("pk", flat=True))
    for row in rows.values():
        if row["gpu_id"] is not None and row["gpu_id"] not in gpus:
            row.update(gpu_id=None, gpu__uuid=None)
        if row["mig_device_id"] is not None and row["mig_device_id"] not in migs:
            row.update(mig_device_id=None, mig_device__uuid=None)


def _sync_mig_devices(node: Node, gpus: list[Gpu], reported: dict[str, list[protocol.MigDevice]]) -> bool:
    """Bring the MIG devices of ``gpus`` in line with the report, writing only what changed; True if any went.

    A MIG device new to these GPUs that sits on another node's GPU in the fleet is refused,
    as a GPU is; one seen on this node before costs no query.
    """
    current = {device.uuid: device for device in MigDevice.objects.filter(gpu__in=gpus)}
    new = {device.uuid for devices in reported.values() for device in devices} - current.keys()
    if new:
        held = MigDevice.objects.filter(uuid__in=new, gpu__decommissioned_at__isnull=True).exclude(gpu__node=node)
        owners = dict(held.values_list("uuid", "gpu__node_id"))
        if owners:
            _claim_refused(node, "MIG devices", owners)
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
    return bool(gone)


_GPU_SAMPLE_FIELDS = (
    "gpu",
    "at",
    "utilization_gpu_pct",
    "sm_activity_pct",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_watts",
    "power_limit_watts",
    "energy_joules",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "pstate",
    "throttle_reasons",
    "ecc_uncorrected",
)
_INSTANCE_SAMPLE_FIELDS = (
    "instance",
    "at",
    "state",
    "requests_waiting",
    "requests_running",
    "kv_cache_usage",
    "request_rate",
    "prompt_tokens_rate",
    "generation_tokens_rate",
    "ttft_p50_s",
    "ttft_p95_s",
    "e2e_p50_s",
    "e2e_p95_s",
    "ttft_histogram",
    "e2e_histogram",
)


def _gpu_sample(gpu_id: int, at: datetime, reading: protocol.GpuSample) -> tuple[object, ...]:
    """A GpuSample row, in ``_GPU_SAMPLE_FIELDS`` order."""
    return (
        gpu_id,
        at,
        reading.utilization_gpu_pct,
        reading.sm_activity_pct,
        reading.memory_used_bytes,
        reading.memory_total_bytes,
        reading.power_watts,
        reading.power_limit_watts,
        reading.energy_joules,
        reading.temperature_c,
        reading.sm_clock_mhz,
        reading.mem_clock_mhz,
        reading.pstate,
        list(reading.throttle_reasons),
        reading.ecc_uncorrected_volatile,
    )


def _instance_sample(instance_id: int, at: datetime, reading: protocol.InstanceSample) -> tuple[object, ...]:
    """An InstanceSample row, in ``_INSTANCE_SAMPLE_FIELDS`` order."""
    return (
        instance_id,
        at,
        reading.state,
        reading.requests_waiting,
        reading.requests_running,
        reading.kv_cache_usage,
        reading.request_rate,
        reading.prompt_tokens_rate,
        reading.generation_tokens_rate,
        reading.ttft_p50_s,
        reading.ttft_p95_s,
        reading.e2e_p50_s,
        reading.e2e_p95_s,
        reading.ttft_histogram.model_dump() if reading.ttft_histogram else None,
        reading.e2e_histogram.model_dump() if reading.e2e_histogram else None,
    )


# What one query reads of each instance on the node: enough to check the report's
# instances, record their actual state and build the desired state of the reply.
_INSTANCE_FIELDS = (
    "pk",
    "generation",
    "desired_state",
    "actual_state",
    "actual_generation",
    "container_id",
    "endpoint",
    "last_error",
    "last_request_at",
    "gpu_id",
    "mig_device_id",
    "gpu__uuid",
    "mig_device__uuid",
    "desired_changed_at",
)
# The spec's fields that come from the pool's model profile, under the same names.
PROFILE_SPEC_FIELDS = tuple(
    name for name in protocol.InstanceSpec.model_fields if name not in ("gpu_uuids", "mig_uuids")
)


# An instance the reply names: every one that is, or should be, holding something.
_IN_REPLY = ~Q(desired_state=Instance.Desired.STOPPED, actual_state=Instance.Actual.STOPPED)


def _instance_rows_query(*, node: int, reported: Iterable[int] = ()) -> QuerySet[Instance, dict[str, Any]]:
    wanted = _IN_REPLY
    if reported:
        wanted |= Q(pk__in=reported)
    return (
        Instance.objects.filter(Q(gpu__node_id=node) | Q(mig_device__gpu__node_id=node))
        .filter(wanted)
        .order_by("pk")
        .values(*_INSTANCE_FIELDS, *(f"pool__model_profile__{name}" for name in PROFILE_SPEC_FIELDS))
    )


_instance_rows = PreparedValues(_instance_rows_query, dicts=True)


def _node_instance_rows(node: Node, reported: set[int]) -> dict[int, dict[str, Any]]:
    """The node's instances the reply or the report concerns, as plain rows, in one SELECT.

    That is every instance that is, or should be, holding something, plus those the
    report names (a stopped one may report its last words). Plain rows rather than
    model instances: with the profile, GPU and MIG device joined in, building five model
    objects per instance cost more than the query; and compiled once (``PreparedValues``).
    """
    rows = (
        _instance_rows.rows(node=node.pk, reported=sorted(reported)) if reported else _instance_rows.rows(node=node.pk)
    )
    return {row["pk"]: row for row in rows}


def _apply_instance_states(
    rows: dict[int, dict[str, Any]],
    latest: dict[int, tuple[datetime, protocol.InstanceSample]],
    requested: dict[int, datetime],
    address: str,
    ports: range,
) -> list[int]:
    """Record each instance's newest actual state and last request; return the ids whose state changed.

    ``requested`` holds, per instance, the newest sample time with a request rate above
    zero: idle reclaim measures idleness from it. ``rows`` are updated in place, so the
    reply sees the states just stored. Endpoints are stored as the gateway reaches them,
    at the node's ``address`` (``endpoint_at``); one anywhere else, or on a port outside
    the node's ``ports``, refuses the report.

    Only what differs from the row is written, one UPDATE per distinct set of changes: in
    a steady fleet that is the last request time, the same for every instance that served
    traffic, so one statement per report rather than one per instance.
    """
    changed: list[int] = []
    events: list[InstanceEvent] = []
    writes: dict[tuple[tuple[str, object], ...], list[int]] = {}
    for pk, (at, reading) in latest.items():
        row = rows[pk]
        endpoint = endpoint_at(reading.endpoint, address)
        problem = endpoint_problem(endpoint, address, ports)
        if problem:
            raise IngestError(400, "instance endpoint not on this host, nothing stored", [f"{pk}: {problem}"])
        updates: dict[str, object] = dict(
            actual_state=reading.state,
            actual_generation=reading.generation,
            container_id=reading.container_id,
            endpoint=endpoint,
            last_error=reading.error,
        )
        if pk in requested and (row["last_request_at"] is None or requested[pk] > row["last_request_at"]):
            updates["last_request_at"] = requested[pk]
        if reading.state != row["actual_state"] or reading.generation != row["actual_generation"]:
            updates["actual_changed_at"] = at
            # The reading's state is the protocol's Literal; compare it with the shared string (the
            # TextChoices member is equal at run time, but the type checker sees no overlap).
            if reading.state == states.READY:
                updates["ready_at"] = at
            events.append(
                InstanceEvent(
                    instance_id=pk,
                    at=at,
                    state=reading.state,
                    generation=reading.generation,
                    gpu_id=row["gpu_id"],
                    mig_device_id=row["mig_device_id"],
                )
            )
            changed.append(pk)
        updates = {key: value for key, value in updates.items() if key not in row or row[key] != value}
        if updates:
            writes.setdefault(tuple(sorted(updates.items())), []).append(pk)
            row.update(updates)
    if events:
        InstanceEvent.objects.bulk_create(events)
    for changes, pks in writes.items():
        rows_update(model=Instance, pks=pks, values=dict(changes))
    return changed


_node_lock_query = PreparedValues(
    lambda *, node, token: (
        Node.objects.select_for_update()
        .filter(pk=node, token_hash=token)
        .annotate(
            has_orphans=Exists(OrphanContainer.objects.filter(node=OuterRef("pk"))),
            has_jobs=Exists(BatchJob.objects.filter(gpu__node=OuterRef("pk"), state__in=states.JOB_ON_NODE)),
        )
        .values_list("name", "simulated", "last_seq", "has_orphans", "has_jobs", "address", "port_low", "port_high")
    ),
    dicts=False,
)


def _node_lock(node: Node) -> tuple[str, bool, int, bool, bool, str, int, int]:
    """Lock the node's row for this report: its name, whether it is simulated, newest stored seq,
    whether it has orphans or batch jobs, its address and its registered port range (first, last).

    The row is found by id and token hash together, so a token rotated or a node deleted
    since ``node_authenticate`` is refused here. The two flags ride on the same SELECT,
    so a node with neither (the usual case) spends no statement on them.
    """
    found = _node_lock_query.rows(node=node.pk, token=node.token_hash)
    locked = found[0] if found else None
    if locked is None:
        token_forget(node.token_hash)
        raise IngestError(401, "unknown node token")
    token_remember(node.token_hash, node.pk, locked[0])
    return locked


Orphans = dict[str, tuple[datetime, datetime | None, datetime | None]]


def _node_orphans(node: Node) -> Orphans:
    """The node's orphan containers: when each was first seen, its stop requested, and it stopped."""
    rows = OrphanContainer.objects.filter(node=node).values_list(
        "container_id", "first_seen_at", "stop_requested_at", "stopped_at"
    )
    return {container_id: (first_seen, requested, stopped) for container_id, first_seen, requested, stopped in rows}


def report_ingest(*, node: Node, batch: protocol.Batch, peer: str = "") -> protocol.Reply:
    """Store a batch whole or refuse it whole; reply with the node's desired state.

    The reply is read in the same transaction as the writes (one SELECT serves the
    instance check, the state update and the desired state) and returned only after the
    commit, so an acknowledgement always stands for stored samples. ``peer``, the address
    the request came from, keeps the node's address current (``report_address``).

    The host is trusted with its own hardware only: GPUs, MIG devices and instances of
    other nodes are refused, memory beyond the catalogue is refused, readings from the
    future are refused, and readings older than the agent's buffer holds are acknowledged
    but not stored (they count as dropped), so they move no rollup, spend or newest value.
    """
    seqs = [report.seq for report in batch.reports]
    if any(later <= earlier for earlier, later in pairwise(seqs)):
        raise IngestError(400, "reports must be in increasing seq order")
    now = timezone.now().timestamp()
    clock_check(batch.reports, now=now)
    inventory_check(batch.reports)

    reported_ids = {sample.instance_id for report in batch.reports for sample in report.instances}
    with transaction.atomic():
        name, simulated, last_seq, has_orphans, has_jobs, address, port_low, port_high = _node_lock(node)
        if batch.node != name:
            raise IngestError(403, f"this token belongs to node {name!r}, not {batch.node!r}")
        fresh = [report for report in batch.reports if report.seq > last_seq]
        timely = [report for report in fresh if report.sampled_at >= now - OLDEST_READING_S]
        rows = _node_instance_rows(node, reported_ids)
        foreign = reported_ids - rows.keys()
        if foreign:
            raise IngestError(403, "instances not placed on this node", [str(pk) for pk in sorted(foreign)[:10]])
        orphans = _node_orphans(node) if has_orphans else {}
        stored = Stored()
        dropped = batch.dropped + len(fresh) - len(timely)
        if timely:
            where = report_address(stored=address, advertised=timely[-1].host.advertise_address, peer=peer)
            stored = _store(
                node,
                timely,
                dropped,
                rows,
                orphans,
                label=name,
                simulated=simulated,
                address=where,
                ports=node_ports(port_low, port_high),
                seq=fresh[-1].seq,
            )
        elif fresh:
            rows_update(
                model=Node, pks=[node.pk], values=dict(last_seq=fresh[-1].seq), add={"reports_dropped": dropped}
            )
        jobs = batch_jobs_for(node) if has_jobs else []
    if stored.changed:
        event_publish(kind="instances", payload={"node": name, "instances_changed": stored.changed})
    if stored.ended:
        event_publish(kind="batch_jobs", payload={"node": name, "batch_jobs_ended": stored.ended})
    if timely:
        readings = tuple(stored.readings.values())
        fleet_summary_add(node=name, reports=len(timely), gpu_samples=stored.gpu_samples, gpus=readings)
        event_publish(kind="gpus", payload={"node": name, "gpus": list(readings)}, groups=(node_group(node.pk),))
    return protocol.Reply(
        ack_seq=max(seqs[-1], last_seq),
        desired=_desired(rows.values()),
        report_interval_s=REPORT_INTERVAL_S,
        report_again_s=settling_report_s() if _settling(rows.values(), now=now) else None,
        batch_jobs=jobs,
        stop_containers=_stop_requests(orphans),
    )


def _stop_requests(orphans: Orphans) -> list[str]:
    """The orphan containers the node is asked to stop: requested and not yet stopped, oldest seen first."""
    return [
        container_id
        for container_id, (_, requested, stopped) in sorted(orphans.items(), key=lambda item: item[1][0])
        if requested is not None and stopped is None
    ]


class NodeDesired(NamedTuple):
    """The items of a node's reply that its agent acts on: ``protocol.desired_generation``'s arguments."""

    desired: list[protocol.DesiredInstance]
    batch_jobs: list[protocol.DesiredBatchJob]
    stop_containers: list[str]


def node_desired(node: Node) -> NodeDesired:
    """What a reply would tell the node now, read from the same rows as ``report_ingest``'s reply,
    so the long poll's generation and the agent's (computed from the reply it applied) agree."""
    rows = _node_instance_rows(node, set())
    return NodeDesired(_desired(rows.values()), batch_jobs_for(node), _stop_requests(_node_orphans(node)))


def spec_change_tell(*, instances: QuerySet[Instance], why: str) -> None:
    """Once committed, tell the nodes whose reply carries one of ``instances`` that their desired
    state changed (the long poll): for a change of what their spec is built from (a model
    profile's settings, a pool's profile), which moves no generation."""

    def tell() -> None:
        nodes = instances.filter(_IN_REPLY).values_list("gpu__node_id", "mig_device__gpu__node_id")
        node_desired_changed(node_ids={node_id for pair in nodes for node_id in pair}, why=why)

    transaction.on_commit(tell)


@dataclass
class Stored:
    """What storing a batch changed: for the events sent after the commit."""

    changed: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    gpu_samples: int = 0
    readings: dict[int, dict[str, Any]] = field(default_factory=dict)


def _reading_live(gpu: Gpu, label: str, at: datetime, reading: protocol.GpuSample) -> dict[str, Any]:
    """A GPU's newest numbers, as live charts extend their traces with them."""
    return {
        "gpu": gpu.pk,
        "label": label,
        "at": at.isoformat(),
        "utilization": reading.utilization_gpu_pct,
        "memory_used": reading.memory_used_bytes,
        "power": reading.power_watts,
        "temperature": reading.temperature_c,
    }


def _store(
    node: Node,
    reports: list[protocol.Report],
    dropped: int,
    rows: dict[int, dict[str, Any]],
    orphans: Orphans,
    *,
    label: str,
    simulated: bool,
    address: str,
    ports: range,
    seq: int,
) -> Stored:
    """Write the reports' samples (one INSERT per table) and the node's newest state.

    ``address`` is where the node is after this report (``report_address``); instance
    endpoints must be there, on one of ``ports`` (``node_ports``). ``seq`` is the newest
    report of the batch, stored or not.
    """
    newest = reports[-1]
    gpus, gone = _sync_gpus(node, newest.gpus)
    if gone:
        _forget_placements(rows)
    stored = Stored()
    # Live chart labels: node/index, and simulated hardware says so wherever it appears.
    suffix = " (simulated)" if simulated else ""
    gpu_rows: list[tuple[object, ...]] = []
    instance_rows: list[tuple[object, ...]] = []
    latest: dict[int, tuple[datetime, protocol.InstanceSample]] = {}
    requested: dict[int, datetime] = {}
    for report in reports:
        at = _when(report.sampled_at)
        for reading in report.gpus:
            gpu = gpus.get(reading.uuid)
            if gpu is not None:
                gpu_rows.append(_gpu_sample(gpu.pk, at, reading))
                stored.readings[gpu.pk] = _reading_live(gpu, f"{label}/{gpu.index}{suffix}", at, reading)
        for sample in report.instances:
            instance_rows.append(_instance_sample(sample.instance_id, at, sample))
            latest[sample.instance_id] = (at, sample)
            if sample.request_rate:
                requested[sample.instance_id] = at
    rows_insert(model=GpuSample, fields=_GPU_SAMPLE_FIELDS, rows=gpu_rows)
    rows_insert(model=InstanceSample, fields=_INSTANCE_SAMPLE_FIELDS, rows=instance_rows)
    rollup_reopen(since=_when(reports[0].sampled_at))
    stored.changed = _apply_instance_states(rows, latest, requested, address, ports) if latest else []
    jobs = {sample.job_id: (_when(report.sampled_at), sample) for report in reports for sample in report.batch_jobs}
    stored.ended = _apply_batch_job_states(node, jobs) if jobs else []
    _apply_reaped(node, [(_when(report.sampled_at), result) for report in reports for result in report.reaped], orphans)
    _record_orphans(node, _when(newest.sampled_at), newest.containers, orphans)
    rows_update(
        model=Node,
        pks=[node.pk],
        values=dict(
            last_seq=seq,
            last_seen_at=timezone.now(),
            status=Node.Status.ONLINE,
            address=address or newest.host.hostname,
            agent_version=newest.host.agent_version,
            nvml_available=newest.host.nvml_available,
            nvml_reason=newest.host.nvml_reason,
            runtime_reason=newest.host.runtime_reason,
            containers=[container.model_dump() for container in newest.containers],
        ),
        add={"reports_dropped": dropped},
    )
    stored.gpu_samples = len(gpu_rows)
    return stored


def _apply_batch_job_states(node: Node, latest: dict[int, tuple[datetime, protocol.BatchJobSample]]) -> list[int]:
    """Record what the agent saw of each job's current generation; end jobs whose container exited.

    A report of another generation is old news (the job was preempted, or started again
    elsewhere, since) and is ignored, as are jobs not placed on this node. Each write is
    conditional on the generation read, so a policy's concurrent preempt or start wins.
    Returns the jobs that ended.
    """
    ended = []
    for job in BatchJob.objects.filter(pk__in=latest, gpu__node=node):
        at, sample = latest[job.pk]
        if sample.generation != job.generation:
            continue
        updates: dict[str, object] = dict(
            actual_state=sample.state,
            container_id=sample.container_id,
            exit_code=sample.exit_code,
            last_error=sample.error,
        )
        end = _JOB_ENDS.get(sample.state) if job.state == BatchJob.State.RUNNING else None
        if end is not None:
            updates.update(state=end, finished_at=at, generation=F("generation") + 1)
        elif all(getattr(job, key) == value for key, value in updates.items()):
            continue
        if BatchJob.objects.filter(pk=job.pk, generation=job.generation).update(**updates) and end is not None:
            ended.append(job.pk)
    return ended


def _apply_reaped(node: Node, results: list[tuple[datetime, protocol.ReapResult]], known: Orphans) -> None:
    """Keep each answer to a stop request on its orphan's row; stopped or gone, the request is done."""
    for at, result in results:
        detail = f"{result.outcome}: {result.detail}"[:255]
        updates: dict[str, object] = {"stop_outcome": detail}
        if result.outcome in {"stopped", "gone"}:
            updates["stopped_at"] = at
            if result.container_id in known:
                first_seen, requested, _ = known[result.container_id]
                known[result.container_id] = (first_seen, requested, at)
        OrphanContainer.objects.filter(node=node, container_id=result.container_id).update(**updates)


def _record_orphans(node: Node, at: datetime, containers: list[protocol.ForeignContainer], known: Orphans) -> None:
    """Keep one row per managed container nobody wants, with when it was first seen, for the reaper.

    A container that is no longer reported is gone (or wanted again): its row goes too,
    unless its agent reported stopping it, which keeps the row as the record. ``known``
    holds the node's rows as read in this transaction and is brought in line with what
    was written. A host without orphans, the usual case, costs no statement here.
    """
    orphans = {c.container_id: c for c in containers if c.managed}
    gone = [container_id for container_id, row in known.items() if container_id not in orphans and row[2] is None]
    if gone:
        OrphanContainer.objects.filter(node=node, container_id__in=gone).delete()
        for container_id in gone:
            del known[container_id]
    if known:
        OrphanContainer.objects.filter(node=node, container_id__in=list(known)).update(last_seen_at=at)
    new = [
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
    if new:
        OrphanContainer.objects.bulk_create(new)
        known.update({orphan.container_id: (at, None, None) for orphan in new})


# While an instance on the node is on its way to serving, its agent reports this often (the
# reply's ``report_again_s``), for at most ``SETTLING_FOR_S`` after the panel decided it: the
# gateway routes to it from the report that says ready, not up to an interval later.
SETTLING_REPORT_S = 0.5
SETTLING_FOR_S = 180.0


def settling_report_s() -> float:
    """How often a settling node is asked to report: ``SETTLING_REPORT_S``, but never more than
    half the reports its token may make (``AGENT_REPORTS_PER_MINUTE``), so the panel never asks
    for what its own bound refuses, and the other half is left to the agent's interval and to
    the reports its long poll triggers."""
    return max(SETTLING_REPORT_S, 2 * 60 / django_settings.AGENT_REPORTS_PER_MINUTE)


def _settling(rows: Iterable[dict[str, Any]], *, now: float) -> bool:
    """Whether an instance was recently told to serve and is not serving yet (nor failed)."""
    return any(
        row["desired_state"] == states.RUNNING
        and row["actual_state"] in states.ON_ITS_WAY
        and row["desired_changed_at"] is not None
        and now - row["desired_changed_at"].timestamp() < SETTLING_FOR_S
        for row in rows
    )


def _desired(rows: Iterable[dict[str, Any]]) -> list[protocol.DesiredInstance]:
    """Every instance placed on the node that is, or should be, holding something."""
    return [
        protocol.DesiredInstance(
            instance_id=row["pk"],
            generation=row["generation"],
            state=row["desired_state"],
            spec=protocol.InstanceSpec(
                **{name: row[f"pool__model_profile__{name}"] for name in PROFILE_SPEC_FIELDS},
                gpu_uuids=[row["gpu__uuid"]] if row["gpu__uuid"] and not row["mig_device_id"] else [],
                mig_uuids=[row["mig_device__uuid"]] if row["mig_device_id"] else [],
            ),
        )
        for row in rows
        if not (row["desired_state"] == Instance.Desired.STOPPED and row["actual_state"] == Instance.Actual.STOPPED)
    ]


def _batch_jobs_in_reply() -> QuerySet[BatchJob]:
    """Batch jobs a node's reply carries: those to run on its GPUs, and preempted ones whose
    container there must stop. A preempted job drops out once its agent reported it stopped."""
    return BatchJob.objects.filter(state__in=states.JOB_ON_NODE).exclude(
        state=BatchJob.State.PREEMPTED, actual_state="stopped"
    )


def batch_image_max_bytes() -> int:
    """The largest image a batch job may run, by the fleet's co-location policy (its defaults
    where there is none): every batch job of a reply carries it, and the agent enforces it."""
    return _batch_image_bound(_fleet_colocate_policy())


def _fleet_colocate_policy() -> Policy | None:
    return Policy.objects.filter(kind=Policy.Kind.COLOCATE, pool__isnull=True).first()


def _batch_image_bound(policy: Policy | None) -> int:
    """``batch_image_max_bytes`` of ``policy`` as the fleet's co-location policy (None: there is none)."""
    settings = (
        policy_settings_stored(kind=Policy.Kind.COLOCATE, settings=policy.settings, row=str(policy))
        if policy
        else policy_defaults(Policy.Kind.COLOCATE)
    )
    return int(settings["max_image_mb"] * MB)


@contextmanager
def batch_image_bound_watch(*, saving: Iterable[Policy] = (), deleting: Iterable[Policy] = ()) -> Iterator[None]:
    """Around a write of policies, each named (``saving``, ``deleting``): if it changed
    ``batch_image_max_bytes``, which every batch job of a reply carries and which moves no job's
    generation, tell the nodes whose reply carries a batch job, once committed (the long poll).

    The fleet's co-location policy is read once, before the write; what it is after follows from the rows
    named: one saved as the fleet's co-location policy is it, the stored one saved as something else or
    deleted leaves the defaults, anything else leaves it as it was. A row written but not named is not seen.
    """
    saving = list(saving)
    stored = _fleet_colocate_policy()
    # Read before the write: a deleted row loses its primary key.
    gone = stored is not None and stored.pk in {policy.pk for policy in deleting}
    yield
    fleet = [policy for policy in saving if policy.kind == Policy.Kind.COLOCATE and policy.pool_id is None]
    if fleet:
        after = fleet[-1]
    elif stored is not None and (gone or stored.pk in {policy.pk for policy in saving}):
        after = None
    else:
        return
    if _batch_image_bound(after) == _batch_image_bound(stored):
        return

    def tell() -> None:
        nodes = _batch_jobs_in_reply().values_list("gpu__node_id", flat=True)
        node_desired_changed(node_ids=set(nodes), why="colocate policy")

    transaction.on_commit(tell)


def batch_jobs_for(node: Node) -> list[protocol.DesiredBatchJob]:
    """Batch jobs to run on the node's GPUs, and preempted ones whose container there must stop,
    each with the image size bound its agent enforces."""
    jobs = _batch_jobs_in_reply().filter(gpu__node=node).select_related("gpu").order_by("pk")
    if not jobs:
        return []
    max_image_bytes = batch_image_max_bytes()
    return [
        protocol.DesiredBatchJob(
            job_id=job.pk,
            generation=job.generation,
            state="running" if job.state == BatchJob.State.RUNNING else "stopped",
            image=job.image,
            command=list(job.command),
            memory_bytes=job.memory_bytes,
            gpu_uuids=[job.gpu.uuid],
            max_image_bytes=max_image_bytes,
        )
        for job in jobs
        if job.gpu is not None
    ]
