"""The fleet as policies see it: plain frozen values, built from the database by a selector.

Policies take a ``FleetSnapshot`` and nothing else from the outside world, so the same
functions run in the Celery task, in the gateway's wake path and in a trace simulator
that builds snapshots from a recorded trace instead of the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from fleet.policies.vram import VramEstimate
from fleet.states import JOB_RUNNING, RUNNING, instance_occupies_device


@dataclass(frozen=True)
class PoolWindow:
    """The pool over one evaluation window: what autoscaling compares with the SLA and band.

    ``utilization`` is the GPUs' duty cycle (NVML: the share of time any kernel runs, near
    100% whenever one sequence decodes); it is reported, not a measure of load. The load
    figures are vLLM's, each the mean per serving instance: ``running`` sequences,
    ``kv_cache`` usage (0..1) and ``prompt_tokens_rate`` (prompt tokens prefilled a second).
    ``latency_ms`` is the pool's SLA metric; ``e2e_latency_ms`` the end-to-end latency at the same
    percentile, read where the pool has an end-to-end bound beside it.
    """

    start: datetime
    end: datetime
    utilization: float | None = None
    queue: float | None = None
    latency_ms: float | None = None
    running: float | None = None
    kv_cache: float | None = None
    prompt_tokens_rate: float | None = None
    # The SLA percentile of the end-to-end latency of the requests that finished in the window.
    e2e_latency_ms: float | None = None
    # The share (0-1) of the requests whose first token came in the window that were over their own
    # time-to-first-token bound (``agents.histograms.ttft_bound_ms``), read where the pool's bound grows
    # with the prompt (``PoolView.sla_ms_per_1k_prompt_tokens``) and requests were judged; else None.
    over_bound_share: float | None = None


@dataclass(frozen=True)
class PoolView:
    id: int
    name: str
    isolation: str
    min_instances: int = 0
    max_instances: int = 4
    gpu_model: str = ""
    mig_profile: str = ""
    sla_metric: str = "ttft"
    sla_percentile: int = 95
    sla_latency_ms: int = 500
    # An end-to-end bound beside ``sla_latency_ms`` (same percentile): None leaves it out.
    sla_e2e_latency_ms: int | None = None
    # Lets the TTFT bound grow with the prompt: ``sla_latency_ms`` + this per 1,000 prompt tokens; 0: flat.
    sla_ms_per_1k_prompt_tokens: float = 0.0
    util_band_low: float = 0.50
    util_band_high: float = 0.65
    idle_minimize_after_s: int = 300
    idle_stop_after_s: int = 600
    prewarm_margin_s: int = 30
    enable_sleep_mode: bool = False
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    # The longest context (prompt + output tokens) the pool's model serves; the gateway refuses
    # longer requests (``routing.pool_groups_for``). None: not known, no limit applied.
    max_model_len: int | None = None
    estimate: VramEstimate | None = None
    cold_start_s: float | None = None
    last_scale_out_at: datetime | None = None
    last_scale_in_at: datetime | None = None
    # The pool's newest scale-outs and scale-ins (autoscale's and the gateway's), oldest first, at most
    # ``autoscale.SCALE_MOVES_KEPT``: what ``autoscale.scale_in_reversals`` reads.
    scale_moves: tuple[tuple[datetime, str], ...] = ()
    windows: tuple[PoolWindow, ...] = ()
    # The static-spend guard (``fleet.policies.static_hold``), filled where the pool's ``static_hold``
    # policy states a static size: the billed instance-hours (``held_hours``) since the start of its
    # trailing window, that start, since when it holds its static size (None: not held), and when its
    # last hold ended and its last refusal was logged.
    static_paid_hours: float | None = None
    static_window_start: datetime | None = None
    static_held_since: datetime | None = None
    static_released_at: datetime | None = None
    static_refused_at: datetime | None = None

    def reservation_bytes(self, device_bytes: int) -> int:
        """What vLLM takes on a device of this size: its memory budget, not what the model needs."""
        return int(device_bytes * self.gpu_memory_utilization)


@dataclass(frozen=True)
class InstanceView:
    id: int
    pool_id: int
    desired_state: str
    actual_state: str
    generation: int
    created_at: datetime
    gpu_id: int | None = None
    mig_device_id: int | None = None
    ready_at: datetime | None = None
    last_request_at: datetime | None = None
    expires_at: datetime | None = None
    desired_changed_at: datetime | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None

    @property
    def in_flight(self) -> float:
        """Requests running or waiting in the latest sample: an instance with any is busy."""
        return (self.requests_running or 0) + (self.requests_waiting or 0)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    @property
    def occupies_device(self) -> bool:
        """Whether it holds its device's memory now or will (see ``states.instance_occupies_device``)."""
        return instance_occupies_device(desired_state=self.desired_state, actual_state=self.actual_state)

    @property
    def idle_since(self) -> datetime:
        """The newest of its last request, when it last became ready and, while it should serve,
        when it was told to (a launch or a wake must not be undone before it could serve)."""
        moments = [self.last_request_at, self.ready_at]
        if self.desired_state == RUNNING:
            moments.append(self.desired_changed_at)
        return max((moment for moment in moments if moment is not None), default=self.created_at)


@dataclass(frozen=True)
class GpuView:
    id: int
    node_id: int
    uuid: str
    model_name: str
    memory_total_bytes: int
    node_name: str = ""
    node_online: bool = True
    mig_enabled: bool = False
    memory_used_bytes: int | None = None
    utilization_pct: float | None = None
    sm_activity_pct: float | None = None
    foreign_memory_bytes: int = 0
    foreign_containers: int = 0


@dataclass(frozen=True)
class MigView:
    id: int
    gpu_id: int
    uuid: str
    profile: str
    memory_total_bytes: int


@dataclass(frozen=True)
class BatchJobView:
    id: int
    state: str
    generation: int
    memory_bytes: int
    created_at: datetime
    priority: int = 0
    gpu_id: int | None = None


@dataclass(frozen=True)
class OrphanView:
    id: int
    node_id: int
    container_id: str
    first_seen_at: datetime
    name: str = ""
    instance_id: int | None = None
    stop_requested_at: datetime | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    at: datetime
    pools: tuple[PoolView, ...] = ()
    instances: tuple[InstanceView, ...] = ()
    gpus: tuple[GpuView, ...] = ()
    mig_devices: tuple[MigView, ...] = ()
    batch_jobs: tuple[BatchJobView, ...] = ()
    orphans: tuple[OrphanView, ...] = ()

    @cached_property
    def _pools(self) -> dict[int, PoolView]:
        return {pool.id: pool for pool in self.pools}

    @cached_property
    def _gpus(self) -> dict[int, GpuView]:
        return {gpu.id: gpu for gpu in self.gpus}

    @cached_property
    def _migs(self) -> dict[int, MigView]:
        return {device.id: device for device in self.mig_devices}

    def pool(self, pool_id: int) -> PoolView:
        return self._pools[pool_id]

    def gpu(self, gpu_id: int) -> GpuView | None:
        return self._gpus.get(gpu_id)

    def mig_device(self, mig_id: int) -> MigView | None:
        return self._migs.get(mig_id)

    def instances_of(self, pool_id: int) -> list[InstanceView]:
        return [instance for instance in self.instances if instance.pool_id == pool_id]

    def device_bytes(self, instance: InstanceView) -> int:
        """Memory of the device an instance is placed on (its MIG slice, else its GPU); 0 if unplaced."""
        if instance.mig_device_id is not None and (device := self.mig_device(instance.mig_device_id)):
            return device.memory_total_bytes
        if instance.gpu_id is not None and (gpu := self.gpu(instance.gpu_id)):
            return gpu.memory_total_bytes
        return 0

    def reservation_bytes(self, instance: InstanceView) -> int:
        return self.pool(instance.pool_id).reservation_bytes(self.device_bytes(instance))

    def gpu_instances(self, gpu_id: int) -> list[InstanceView]:
        """Instances on the GPU as a whole (not on one of its MIG slices) that hold or will hold memory."""
        return [
            instance
            for instance in self.instances
            if instance.gpu_id == gpu_id and instance.mig_device_id is None and instance.occupies_device
        ]

    def gpu_budgets_bytes(self, gpu_id: int) -> int:
        """The budgets of the instances that hold (or will hold) memory on the GPU as a whole."""
        return sum(self.reservation_bytes(instance) for instance in self.gpu_instances(gpu_id))

    def gpu_batch_jobs(self, gpu_id: int) -> list[BatchJobView]:
        """The batch jobs running on the GPU."""
        return [job for job in self.batch_jobs if job.gpu_id == gpu_id and job.state == JOB_RUNNING]

    def gpu_batch_bytes(self, gpu_id: int) -> int:
        """The memory of the batch jobs running on the GPU: borrowed, taken back when inference wants it."""
        return sum(job.memory_bytes for job in self.gpu_batch_jobs(gpu_id))

    def gpu_reserved_bytes(self, gpu_id: int) -> int:
        """Memory the panel has promised on a GPU: its instances' budgets and its running batch jobs."""
        return self.gpu_budgets_bytes(gpu_id) + self.gpu_batch_bytes(gpu_id)

    def mig_device_taken(self, mig_id: int) -> bool:
        return any(instance.mig_device_id == mig_id and instance.occupies_device for instance in self.instances)


@dataclass(frozen=True)
class PolicyConfig:
    """One policy kind's settings: fleet-wide, overridden per pool; None where it is disabled."""

    kind: str
    fleet: Mapping[str, Any] | None = None
    pools: Mapping[int, Mapping[str, Any] | None] = field(default_factory=dict)
    policy_ids: Mapping[int | None, int] = field(default_factory=dict)

    def for_pool(self, pool_id: int | None) -> Mapping[str, Any] | None:
        if pool_id is not None and pool_id in self.pools:
            return self.pools[pool_id]
        return self.fleet

    def policy_id(self, pool_id: int | None) -> int | None:
        if pool_id is not None and pool_id in self.pools:
            return self.policy_ids.get(pool_id)
        return self.policy_ids.get(None)


def per_instance_total(values: Mapping[Any, list[float]]) -> float | None:
    """The sum over instances of each one's mean sample (a pool's queue); None without samples."""
    return sum(sum(v) / len(v) for v in values.values()) if values else None


def per_instance_mean(values: Mapping[Any, list[float]]) -> float | None:
    """The mean over instances of each one's mean sample (the load of an average instance)."""
    total = per_instance_total(values)
    return None if total is None else total / len(values)
