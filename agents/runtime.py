"""Container runtime for the agent: the ``Runtime`` interface and its Docker implementation.

The agent never keeps container bookkeeping of its own. Every container it creates
carries ``gpufleet.*`` labels and a name derived from (instance, generation), so the
engine itself is the record: a restarted agent rediscovers what runs by label, and a
repeated ``start`` of the same spec adopts the existing container instead of creating a
duplicate. ``agents.reconcile`` decides what to do; this module only does it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import docker
import docker.errors
import docker.types
import requests

from agents.host_policy import vllm_flag_name

MANAGED_LABEL = "gpufleet.managed"
INSTANCE_LABEL = "gpufleet.instance"
GENERATION_LABEL = "gpufleet.generation"
NODE_LABEL = "gpufleet.node"
# Set on batch job containers instead of the instance label: they are managed (the agent
# starts, stops and adopts them) but never an instance, and never an orphan.
JOB_LABEL = "gpufleet.batch-job"
RESERVED_LABELS = frozenset({MANAGED_LABEL, INSTANCE_LABEL, GENERATION_LABEL, NODE_LABEL, JOB_LABEL})
# What the server runs, apart from its generation (``spec_digest``): the panel bumps an instance's
# generation on every change of desired state, and a server put to sleep or woken keeps running
# under its older generation where the digest matches (``reconcile``), rather than start again.
# Not reserved: containers that predate it are still adopted, and simply never kept across generations.
SPEC_LABEL = "gpufleet.spec"
# A batch job is told its GPU memory budget here: Docker cannot cap GPU memory, so a
# well-behaved job caps itself (e.g. torch.cuda.set_per_process_memory_fraction).
GPU_MEMORY_ENV = "GPUFLEET_GPU_MEMORY_BYTES"

# Docker's own rule for container names; instance ids become part of one.
_NAME_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Docker reports nanoseconds; datetime.fromisoformat takes at most microseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")
# How long a lost create race waits for the winner's container to become visible.
_NAME_RACE_WAIT_S = 5.0
# Docker's zero time, reported as StartedAt for a container never started.
_ZERO_TIME_PREFIX = "0001-01-01"

# Flags vllm_container_spec owns: a profile's extra_args must not override them,
# or the agent would health-check and scrape a port the server does not listen on.
_OWNED_VLLM_FLAGS = frozenset({"--model", "--served-model-name", "--host", "--port"})
# Empties /metrics, which the scraper and the cost accounting depend on.
_FORBIDDEN_VLLM_FLAGS = frozenset({"--disable-log-stats"})


class RuntimeFailure(Exception):
    """Any failure of the container runtime, with a message an operator can act on.

    The Docker SDK raises a zoo of exception types (APIError, NotFound, requests
    connection errors, ...); callers of the agent only need to know which operation
    failed on which node and why.
    """


class ImageMissing(RuntimeFailure):
    """The image is not present on the node; the agent never pulls from a registry."""


class ContainerGone(RuntimeFailure):
    """No managed container of this node has the given id (any more)."""


@dataclass(frozen=True)
class Volume:
    """A bind mount target; read-only by default because model weights must not change."""

    container_path: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to run one generation of one instance on one node.

    ``generation`` increments whenever the desired configuration changes, so a
    container's name and labels tell which configuration it runs without comparing
    specs field by field.

    GPUs are chosen either by whole-GPU UUIDs (``GPU-...``) or by MIG device UUIDs
    (``MIG-...``), never both; with neither the container gets no GPU at all, which
    is what CPU-only hosts and the test suite need.
    """

    instance_id: str
    generation: int
    image: str
    node_name: str
    port: int
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: Mapping[str, Volume] = field(default_factory=dict)
    gpu_uuids: Sequence[str] = ()
    mig_uuids: Sequence[str] = ()
    host_network: bool = True
    mem_limit: str | None = None
    shm_size: str | None = None
    init: bool = True
    ipc_host: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    # The host address the server is reached at: loopback, one of the host's, or 0.0.0.0 for all.
    listen_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Tuples, so two specs built from equal lists compare equal and cannot be
        # mutated after validation.
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "gpu_uuids", tuple(self.gpu_uuids))
        object.__setattr__(self, "mig_uuids", tuple(self.mig_uuids))
        if not _NAME_SAFE.match(self.instance_id):
            raise ValueError(
                f"instance_id {self.instance_id!r} must match {_NAME_SAFE.pattern}:"
                " it becomes part of the container name"
            )
        if self.generation < 0:
            raise ValueError(f"generation must be >= 0, got {self.generation}")
        if not self.image:
            raise ValueError("image must not be empty")
        if not self.node_name:
            raise ValueError("node_name must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.gpu_uuids and self.mig_uuids:
            raise ValueError("give gpu_uuids or mig_uuids, not both")
        for uuid in self.gpu_uuids:
            if not uuid.startswith("GPU-"):
                raise ValueError(f"gpu_uuids entry {uuid!r} is not a GPU UUID (GPU-...)")
        for uuid in self.mig_uuids:
            if not uuid.startswith("MIG-"):
                raise ValueError(f"mig_uuids entry {uuid!r} is not a MIG device UUID (MIG-...)")
        reserved = RESERVED_LABELS.intersection(self.labels)
        if reserved:
            raise ValueError(f"labels {sorted(reserved)} are set by the runtime, not the spec")

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The UUIDs handed to the container runtime, whichever kind was given."""
        return tuple(self.gpu_uuids) or tuple(self.mig_uuids)

    @property
    def container_name(self) -> str:
        """Deterministic name: a second create of the same generation conflicts, never duplicates."""
        return container_name(self.instance_id, self.generation)


@dataclass(frozen=True)
class ContainerState:
    """What the engine says about one managed container, as read from it."""

    instance_id: str
    generation: int
    container_id: str
    status: str
    exit_code: int | None
    started_at: datetime | None
    labels: Mapping[str, str]
    name: str = ""
    node_name: str = ""
    oom_killed: bool = False
    error: str = ""

    @property
    def running(self) -> bool:
        """True while the process is up; "restarting" counts, it is on its way back."""
        return self.status in {"running", "restarting"}

    @property
    def job_id(self) -> int | None:
        """The batch job this container runs; None for an instance's container."""
        value = self.labels.get(JOB_LABEL, "")
        return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class BatchSpec:
    """One generation of one co-located batch job on one node.

    The name carries the node, so agents (or test runs) sharing an engine never contend
    for a name. ``host_memory_bytes`` caps host memory; GPU memory cannot be capped by
    the engine, so the job is told its budget in ``GPUFLEET_GPU_MEMORY_BYTES`` and the
    panel preempts it when the memory is wanted.
    """

    job_id: int
    generation: int
    image: str
    node_name: str
    command: Sequence[str] = ()
    gpu_uuids: Sequence[str] = ()
    gpu_memory_bytes: int | None = None
    host_memory_bytes: int | None = None
    host_network: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "gpu_uuids", tuple(self.gpu_uuids))
        if self.job_id < 1 or self.generation < 1:
            raise ValueError(f"batch job {self.job_id} generation {self.generation}: both must be >= 1")
        if not self.image:
            raise ValueError("image must not be empty")
        if not _NAME_SAFE.match(self.node_name):
            raise ValueError(f"node_name {self.node_name!r} must match {_NAME_SAFE.pattern}")

    @property
    def container_name(self) -> str:
        return f"gpufleet-{self.node_name}-batch-{self.job_id}-g{self.generation}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            MANAGED_LABEL: "true",
            NODE_LABEL: self.node_name,
            JOB_LABEL: str(self.job_id),
            GENERATION_LABEL: str(self.generation),
        }


@dataclass(frozen=True)
class ForeignGpuUser:
    """A container this agent does not manage that holds GPUs."""

    container_id: str
    name: str
    image: str
    gpus: tuple[str, ...]


def gpu_devices_of(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """GPUs a container was given: Docker device requests, or NVIDIA's runtime variable.

    ``("all",)`` where it asked for every GPU; empty where it has none.
    """
    devices: list[str] = []
    for request in (attrs.get("HostConfig") or {}).get("DeviceRequests") or []:
        capabilities = [cap for group in request.get("Capabilities") or [] for cap in group]
        if "gpu" in capabilities or request.get("Driver") == "nvidia":
            devices.extend(request.get("DeviceIDs") or (["all"] if request.get("Count") else []))
    for variable in (attrs.get("Config") or {}).get("Env") or []:
        key, _, value = variable.partition("=")
        if key == "NVIDIA_VISIBLE_DEVICES" and value not in {"", "void", "none"}:
            devices.extend(value.split(","))
    return tuple(dict.fromkeys(devices))


class Runtime(Protocol):
    """What reconcile's ``apply`` needs from a container runtime."""

    def list_managed(self) -> list[ContainerState]:
        """Every container this node's agent manages, in any state."""
        ...

    def start(self, spec: ContainerSpec) -> ContainerState:
        """Run ``spec``, adopting its container if it already exists."""
        ...

    def stop(self, instance_id: str, timeout_s: int, generation: int | None = None) -> None:
        """Stop gracefully; a container already gone is not an error."""
        ...

    def remove(self, instance_id: str, generation: int | None = None) -> None:
        """Remove stopped containers; a container already gone is not an error."""
        ...

    def logs_tail(self, instance_id: str, lines: int = 100, generation: int | None = None) -> str:
        """The last ``lines`` lines of output, for crash reports."""
        ...


@runtime_checkable
class BatchRuntime(Protocol):
    """What batch jobs and reaping need beyond ``Runtime``; ``DockerRuntime`` has both."""

    def batch_list(self) -> list[ContainerState]:
        """Every batch job container of this node, in any state."""
        ...

    def batch_start(self, spec: BatchSpec) -> ContainerState:
        """Run ``spec``, adopting its container if it already exists."""
        ...

    def image_size(self, image: str) -> int:
        """Bytes of a local image; ``ImageMissing`` where it is not on the node."""
        ...

    def stop_managed(self, container_id: str, timeout_s: int) -> int | None:
        """Stop and remove one managed container of this node by exact id; its exit code."""
        ...


def container_name(instance_id: str, generation: int) -> str:
    """The one name a given generation of an instance may have on a Docker engine."""
    return f"gpufleet-{instance_id}-g{generation}"


def _profile_volumes(raw: Mapping[str, Any]) -> dict[str, Volume]:
    """Accept ``{host: container_path}`` (read-only) or Docker's ``{host: {bind, mode}}``."""
    volumes: dict[str, Volume] = {}
    for host_path, target in raw.items():
        if isinstance(target, Volume):
            volumes[host_path] = target
        elif isinstance(target, str):
            volumes[host_path] = Volume(target)
        elif isinstance(target, Mapping) and "bind" in target:
            mode = target.get("mode", "ro")
            if mode not in {"ro", "rw"}:
                raise ValueError(f"volume {host_path!r}: mode must be 'ro' or 'rw', got {mode!r}")
            volumes[host_path] = Volume(target["bind"], read_only=mode == "ro")
        else:
            raise ValueError(f"volume {host_path!r}: expected a container path or {{'bind': ..., 'mode': ...}}")
    return volumes


def _check_extra_args(extra_args: Sequence[str]) -> None:
    for arg in extra_args:
        if not arg.startswith("--"):
            continue
        flag = vllm_flag_name(arg)
        if flag in _FORBIDDEN_VLLM_FLAGS:
            raise ValueError(f"extra_args may not contain {flag}: it empties /metrics")
        if flag in _OWNED_VLLM_FLAGS:
            raise ValueError(f"extra_args may not contain {flag}: the agent sets it")


def vllm_container_spec(
    *,
    instance_id: str,
    generation: int,
    profile: Mapping[str, Any],
    port: int,
    node_name: str,
    gpu_uuids: Sequence[str] = (),
    mig_uuids: Sequence[str] = (),
    host_network: bool = True,
    mem_limit: str | None = None,
    shm_size: str | None = None,
    labels: Mapping[str, str] | None = None,
    listen_host: str = "127.0.0.1",
    ipc_host: bool = True,
) -> ContainerSpec:
    """Build the container spec for a vLLM OpenAI-compatible server from a model profile.

    The command holds only server flags: the vllm/vllm-openai images' entrypoint is the
    server itself. With host networking the server binds ``listen_host``: loopback where
    the gateway runs on this host, else where the gateway reaches it (see the agent's
    ``listen_host_for``); without it, it binds 0.0.0.0 inside its own network namespace
    and the port is published on the host's ``listen_host``.

    Optional profile keys left out (None or empty) leave the flag out, so vLLM's own
    default applies. ``--disable-log-stats`` is refused: it empties /metrics.
    """
    if not profile.get("image") or not profile.get("model"):
        raise ValueError("profile needs at least 'image' and 'model'")
    model = str(profile["model"])
    args: list[str] = [
        "--model",
        model,
        "--served-model-name",
        str(profile.get("served_name") or model),
        "--host",
        listen_host if host_network else "0.0.0.0",
        "--port",
        str(port),
    ]
    for key, flag in (
        ("max_model_len", "--max-model-len"),
        ("max_num_seqs", "--max-num-seqs"),
        ("quantization", "--quantization"),
        ("kv_cache_dtype", "--kv-cache-dtype"),
    ):
        value = profile.get(key)
        if value not in (None, ""):
            args += [flag, str(value)]
    prefix_caching = profile.get("enable_prefix_caching")
    if prefix_caching is not None:
        args.append("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching")
    utilization = profile.get("gpu_memory_utilization")
    if utilization is not None:
        if not 0 < float(utilization) <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
        args += ["--gpu-memory-utilization", str(float(utilization))]
    if profile.get("dtype") not in (None, ""):
        args += ["--dtype", str(profile["dtype"])]

    env = {str(k): str(v) for k, v in (profile.get("env") or {}).items()}
    if profile.get("enable_sleep_mode"):
        args.append("--enable-sleep-mode")
        # /sleep and /wake_up are only served in vLLM's dev mode.
        env["VLLM_SERVER_DEV_MODE"] = "1"
    extra_args = [str(a) for a in profile.get("extra_args") or ()]
    _check_extra_args(extra_args)
    args += extra_args

    return ContainerSpec(
        instance_id=instance_id,
        generation=generation,
        image=str(profile["image"]),
        node_name=node_name,
        port=port,
        command=args,
        env=env,
        volumes=_profile_volumes(profile.get("volumes") or {}),
        gpu_uuids=gpu_uuids,
        mig_uuids=mig_uuids,
        host_network=host_network,
        mem_limit=mem_limit,
        shm_size=shm_size,
        labels=dict(labels or {}),
        listen_host=listen_host,
        ipc_host=ipc_host,
    )


def managed_labels(spec: ContainerSpec) -> dict[str, str]:
    """The labels that make a container findable and attributable after an agent restart."""
    return {
        **spec.labels,
        MANAGED_LABEL: "true",
        INSTANCE_LABEL: spec.instance_id,
        GENERATION_LABEL: str(spec.generation),
        NODE_LABEL: spec.node_name,
        SPEC_LABEL: spec_digest(spec),
    }


def spec_digest(spec: ContainerSpec) -> str:
    """A digest of everything the server runs with (image, command, environment, devices, port...),
    leaving out the generation and the labels: equal for two generations of an unchanged server."""
    fields = {name: value for name, value in dataclasses.asdict(spec).items() if name not in {"generation", "labels"}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def docker_create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create``; pure, so it is testable without GPUs."""
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) or None,
        "name": spec.container_name,
        "labels": managed_labels(spec),
        "environment": dict(spec.env),
        "volumes": {
            host: {"bind": v.container_path, "mode": "ro" if v.read_only else "rw"} for host, v in spec.volumes.items()
        },
        "init": spec.init,
        "detach": True,
    }
    if spec.ipc_host:
        # PyTorch workers share tensors through /dev/shm; Docker's default 64 MB is too small.
        kwargs["ipc_mode"] = "host"
    if spec.host_network:
        kwargs["network_mode"] = "host"
    else:
        kwargs["ports"] = {f"{spec.port}/tcp": (spec.listen_host, spec.port)}
    if spec.device_ids:
        kwargs["device_requests"] = _gpu_request(spec.device_ids)
    if spec.mem_limit is not None:
        kwargs["mem_limit"] = spec.mem_limit
    if spec.shm_size is not None:
        kwargs["shm_size"] = spec.shm_size
    return kwargs


def _gpu_request(device_ids: Sequence[str]) -> list[docker.types.DeviceRequest]:
    return [docker.types.DeviceRequest(device_ids=list(device_ids), capabilities=[["gpu"]])]


def batch_create_kwargs(spec: BatchSpec) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` of a batch job; pure, like ``docker_create_kwargs``.

    No restart policy: a job that exits stays down and is reported finished or failed.
    """
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) or None,
        "name": spec.container_name,
        "labels": spec.labels,
        "environment": {GPU_MEMORY_ENV: str(spec.gpu_memory_bytes)} if spec.gpu_memory_bytes else {},
        "init": True,
        "detach": True,
    }
    if spec.host_network:
        kwargs["network_mode"] = "host"
    if spec.gpu_uuids:
        kwargs["device_requests"] = _gpu_request(spec.gpu_uuids)
    if spec.host_memory_bytes is not None:
        # The same bound for memory and memory+swap: no swap, so a runaway job is killed, not thrashing.
        kwargs["mem_limit"] = spec.host_memory_bytes
        kwargs["memswap_limit"] = spec.host_memory_bytes
    return kwargs


def _parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 timestamp; None when never started or unreadable (it is informative only)."""
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", value))
    except ValueError:
        return None


def _generation_of(labels: Mapping[str, str]) -> int:
    """The generation label as an int; -1 when missing or malformed.

    Reconcile then reports such a container as an orphan rather than guessing.
    """
    try:
        return int(labels.get(GENERATION_LABEL, ""))
    except ValueError:
        return -1


def _explain(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


def _status_code(exc: Exception) -> int | None:
    return exc.status_code if isinstance(exc, docker.errors.APIError) else None


class DockerRuntime:
    """``Runtime`` on a local Docker engine; one per node, sharing nothing but the engine.

    Only containers labelled with this node's name are seen, so several agents (or test
    runs) can share one engine without touching each other's containers.
    """

    def __init__(self, client: docker.DockerClient, node_name: str) -> None:
        if not node_name:
            raise ValueError("node_name must not be empty")
        self.client = client
        self.node_name = node_name

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn every Docker SDK or transport error into one RuntimeFailure."""
        try:
            yield
        except RuntimeFailure:
            raise
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise RuntimeFailure(f"{what} on node {self.node_name}: {_explain(exc)}") from exc

    def _state(self, container: Any) -> ContainerState:
        attrs = container.attrs
        state = attrs.get("State") or {}
        labels = dict((attrs.get("Config") or {}).get("Labels") or {})
        status = state.get("Status") or container.status
        return ContainerState(
            instance_id=labels.get(INSTANCE_LABEL, ""),
            generation=_generation_of(labels),
            container_id=container.id,
            status=status,
            exit_code=None if status in {"running", "created"} else state.get("ExitCode"),
            started_at=_parse_docker_time(state.get("StartedAt")),
            labels=labels,
            name=(attrs.get("Name") or "").lstrip("/"),
            node_name=labels.get(NODE_LABEL, ""),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or "",
        )

    def _find(
        self,
        instance_id: str | None = None,
        generation: int | None = None,
        *,
        labels: Sequence[str] = (),
        container_id: str | None = None,
    ) -> list[Any]:
        label_filters = [f"{MANAGED_LABEL}=true", f"{NODE_LABEL}={self.node_name}", *labels]
        if instance_id is not None:
            label_filters.append(f"{INSTANCE_LABEL}={instance_id}")
        if generation is not None:
            label_filters.append(f"{GENERATION_LABEL}={generation}")
        filters: dict[str, Any] = {"label": label_filters}
        if container_id is not None:
            filters["id"] = container_id
        # ignore_removed: a container removed between listing and inspecting is just gone.
        found: list[Any] = self.client.containers.list(all=True, filters=filters, ignore_removed=True)
        return found

    def list_managed(self) -> list[ContainerState]:
        """Managed instance containers of this node, in any state, sorted by instance and generation.

        Batch job containers are left out: they are listed by ``batch_list``.
        """
        with self._errors("listing managed containers"):
            states = [self._state(c) for c in self._find() if JOB_LABEL not in (c.labels or {})]
        return sorted(states, key=lambda s: (s.instance_id, s.generation, s.container_id))

    def batch_list(self) -> list[ContainerState]:
        """Batch job containers of this node, in any state, sorted by job and generation."""
        with self._errors("listing batch job containers"):
            states = [self._state(c) for c in self._find(labels=[JOB_LABEL])]
        return sorted(states, key=lambda s: (s.job_id or 0, s.generation, s.container_id))

    def image_size(self, image: str) -> int:
        """Bytes the image takes on the node; ``ImageMissing`` where it is not there (never pulled)."""
        with self._errors(f"inspecting image {image}"):
            try:
                return int(self.client.images.get(image).attrs.get("Size") or 0)
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(
                    f"image {image!r} is not present on node {self.node_name}; the agent never pulls"
                ) from exc

    def stop_managed(self, container_id: str, timeout_s: int) -> int | None:
        """Stop (SIGTERM, up to ``timeout_s``, then SIGKILL) and remove one managed container of this node by id.

        Only an exact id of a container labelled for this node qualifies: anything else
        raises ``ContainerGone`` and is left alone. Returns the exit code it stopped with.
        """
        with self._errors(f"stopping container {container_id[:12]}"):
            found = [c for c in self._find(container_id=container_id) if c.id == container_id]
            if not found:
                raise ContainerGone(f"no managed container {container_id[:12]} on node {self.node_name}")
            container = found[0]
            try:
                container.stop(timeout=timeout_s)
                container.reload()
                exit_code = (container.attrs.get("State") or {}).get("ExitCode")
                container.remove(v=True)
            except docker.errors.NotFound as exc:
                raise ContainerGone(f"container {container_id[:12]} vanished while stopping") from exc
        return exit_code

    def list_foreign_gpu_users(self) -> list[ForeignGpuUser]:
        """Running containers this agent does not manage that were given GPUs.

        They are reported so the panel does not place work on those GPUs, and never
        touched: they may be somebody's experiment or another scheduler's job.
        """
        with self._errors("listing foreign containers"):
            found = []
            for container in self.client.containers.list(ignore_removed=True):
                labels = (container.attrs.get("Config") or {}).get("Labels") or {}
                if labels.get(MANAGED_LABEL) == "true" and labels.get(NODE_LABEL) == self.node_name:
                    continue
                gpus = gpu_devices_of(container.attrs)
                if gpus:
                    image = (container.attrs.get("Config") or {}).get("Image") or ""
                    found.append(
                        ForeignGpuUser(container.id, (container.attrs.get("Name") or "").lstrip("/"), image, gpus)
                    )
        return found

    def _get_by_name(self, name: str) -> Any | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _await_by_name(self, name: str) -> Any | None:
        """Find a container whose name a concurrent create has reserved.

        Docker reserves the name before the container can be inspected, so right after
        a 409 conflict the winner may still answer 404 for a moment.
        """
        deadline = time.monotonic() + _NAME_RACE_WAIT_S
        while True:
            container = self._get_by_name(name)
            if container is not None or time.monotonic() >= deadline:
                return container
            time.sleep(0.05)

    def _adopt(self, spec: ContainerSpec | BatchSpec, container: Any) -> ContainerState:
        """Take over an existing container of this spec, starting it if it is not running."""
        labels = (container.attrs.get("Config") or {}).get("Labels") or {}
        expected = managed_labels(spec) if isinstance(spec, ContainerSpec) else spec.labels
        mismatched = {k for k in RESERVED_LABELS if labels.get(k) != expected.get(k)}
        if mismatched:
            raise RuntimeFailure(
                f"container name {spec.container_name} on node {self.node_name} is taken by a"
                f" container with different labels {sorted(mismatched)}; remove it by hand"
            )
        if container.status not in {"running", "restarting"}:
            container.start()
            container.reload()
        return self._state(container)

    def start(self, spec: ContainerSpec) -> ContainerState:
        """Create and start ``spec``'s container, or adopt it if it already exists.

        Idempotent: the name encodes (instance, generation), so a second call, or a
        concurrent one from another process, finds the same container. Never pulls: a
        missing image raises ``ImageMissing``.
        """
        if spec.node_name != self.node_name:
            raise RuntimeFailure(
                f"spec for {spec.instance_id} targets node {spec.node_name!r}, this runtime manages {self.node_name!r}"
            )
        return self._create_or_adopt(spec, docker_create_kwargs(spec))

    def batch_start(self, spec: BatchSpec) -> ContainerState:
        """Create and start a batch job's container, or adopt it; idempotent and never pulls, like ``start``."""
        if spec.node_name != self.node_name:
            raise RuntimeFailure(
                f"batch job {spec.job_id} targets node {spec.node_name!r}, this runtime manages {self.node_name!r}"
            )
        return self._create_or_adopt(spec, batch_create_kwargs(spec))

    def _create_or_adopt(self, spec: ContainerSpec | BatchSpec, create_kwargs: dict[str, Any]) -> ContainerState:
        what = f"starting {spec.container_name}"
        with self._errors(what):
            existing = self._get_by_name(spec.container_name)
            if existing is not None:
                return self._adopt(spec, existing)
            try:
                self.client.images.get(spec.image)
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(
                    f"{what} on node {self.node_name}: image {spec.image!r} is not present"
                    " locally and the agent never pulls; load it onto the node first"
                ) from exc
            try:
                container = self.client.containers.create(**create_kwargs)
            except docker.errors.APIError as exc:
                if _status_code(exc) != 409:
                    raise
                # Lost a race with another start of the same spec: adopt the winner.
                winner = self._await_by_name(spec.container_name)
                if winner is None:
                    raise
                return self._adopt(spec, winner)
            container.start()
            container.reload()
            return self._state(container)

    def stop(self, instance_id: str, timeout_s: int, generation: int | None = None) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL (Docker's stop semantics).

        ``generation=None`` stops every generation of the instance. Containers already
        stopped or removed are fine: stop is called again on every reconcile pass.
        """
        target = instance_id if generation is None else container_name(instance_id, generation)
        with self._errors(f"stopping {target}"):
            for container in self._find(instance_id, generation):
                try:
                    container.stop(timeout=timeout_s)
                except docker.errors.NotFound:
                    continue

    def remove(self, instance_id: str, generation: int | None = None) -> None:
        """Remove stopped containers of the instance; refuses a running one (stop it first).

        Refusing instead of forcing keeps the only way to end a server the graceful one.
        """
        target = instance_id if generation is None else container_name(instance_id, generation)
        with self._errors(f"removing {target}"):
            for container in self._find(instance_id, generation):
                try:
                    container.remove(v=True)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    if _status_code(exc) == 409 and "already in progress" in _explain(exc):
                        continue
                    raise

    def logs_tail(self, instance_id: str, lines: int = 100, generation: int | None = None) -> str:
        """Last ``lines`` of stdout+stderr of the newest (or the given) generation."""
        with self._errors(f"reading logs of {instance_id}"):
            containers = self._find(instance_id, generation)
            if not containers:
                raise RuntimeFailure(f"reading logs of {instance_id} on node {self.node_name}: no such container")
            newest = max(containers, key=lambda c: _generation_of(c.labels))
            raw: bytes = newest.logs(stdout=True, stderr=True, tail=lines)
        return raw.decode("utf-8", errors="replace")
