"""The wire protocol between agents and the panel, version 1.

Both sides validate with these models: the agent builds reports with them, the panel
parses every report with them before it stores anything, so a report is accepted whole
or refused whole. Every list and string is bounded: a misbehaving agent cannot make the
panel allocate without limit. No Django here; the agent imports this module.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 1
MAX_REPORTS_PER_BATCH = 720  # an hour of 5 s reports, buffered while the panel was away
MAX_BODY_BYTES = 16 * 1024 * 1024
# Far deeper than any registration or report nests (a histogram's bounds in a batch are 7 levels).
MAX_JSON_DEPTH = 32

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Text = Annotated[str, Field(max_length=255)]
Pct = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**62)]
Count32 = Annotated[int, Field(ge=0, le=2**31 - 1)]  # stored in a 32-bit column
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
# A GPU or MIG UUID, as its column holds it (NVML's are 40 characters).
Uuid = Annotated[str, Field(max_length=64)]
# Ids, generations and sequence numbers end up in 64-bit columns: bounded so none overflows one.
MAX_ID = 2**62
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Timestamp = Annotated[float, Field(gt=1_000_000_000, lt=10_000_000_000, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65535)]
# The agent's --port-range unless it is told otherwise: where instance endpoints of an agent
# that registered without saying its range (one older than the field) are taken.
DEFAULT_PORT_RANGE = (8100, 8199)

InstanceState = Literal["starting", "ready", "sleeping", "stopping", "stopped", "failed", "unknown"]
DesiredState = Literal["running", "sleeping", "stopped"]


_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def address_check(value: str) -> str:
    """An IP address (v4 or v6, no brackets, no port) or a DNS host name; ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) <= 253 and _HOST_NAME.match(value):
        return value
    raise ValueError(f"not an IP address or a host name: {value[:100]!r}")


def address_is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, IPv6 with or without brackets, or a name) means this machine only.

    0.0.0.0 and :: count: connecting to them reaches this machine, and no other host can.
    """
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


# Where other hosts reach the agent's servers, as the agent was told to advertise it; empty: not told.
AdvertisedAddress = Annotated[str, AfterValidator(lambda value: address_check(value) if value else value)]


def id_or_none(text: str) -> int | None:
    """A container label as an instance id, or None where it cannot be one (a foreign or forged label)."""
    return int(text) if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ID else None


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests lists and objects more than ``limit`` deep; a loop, not recursion."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MigDevice(Strict):
    uuid: Uuid
    profile: Annotated[str, Field(max_length=32)] = ""
    gpu_instance_id: Annotated[int, Field(ge=0, le=64)]
    compute_instance_id: Annotated[int, Field(ge=0, le=64)] = 0
    memory_total_bytes: Count
    memory_used_bytes: Count | None = None


class GpuProcess(Strict):
    pid: Count
    used_memory_bytes: Count | None = None


class GpuSample(Strict):
    """One GPU at one moment; None where NVML could not answer."""

    index: Annotated[int, Field(ge=0, le=63)]
    uuid: Uuid
    name: Annotated[str, Field(max_length=100)]
    memory_total_bytes: Count
    memory_used_bytes: Count | None = None
    memory_reserved_bytes: Count | None = None
    utilization_gpu_pct: Pct | None = None
    utilization_memory_pct: Pct | None = None
    sm_activity_pct: Pct | None = None
    power_watts: NonNegative | None = None
    power_limit_watts: NonNegative | None = None
    energy_joules: NonNegative | None = None
    temperature_c: Annotated[float, Field(ge=-50, le=200)] | None = None
    sm_clock_mhz: Count32 | None = None
    mem_clock_mhz: Count32 | None = None
    pstate: Annotated[int, Field(ge=0, le=32)] | None = None
    throttle_reasons: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = []
    ecc_uncorrected_volatile: Count | None = None
    mig_enabled: bool | None = None
    mig_devices: Annotated[list[MigDevice], Field(max_length=64)] = []
    processes: Annotated[list[GpuProcess], Field(max_length=256)] = []


class Histogram(Strict):
    """Observations in the window: cumulative counts at each finite bucket bound, and the total.

    The +Inf bucket is ``count``; leaving it out of ``bounds`` keeps the body plain JSON.
    """

    bounds: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=64)]
    counts: Annotated[list[NonNegative], Field(max_length=64)]
    count: NonNegative

    @model_validator(mode="after")
    def _consistent(self) -> Histogram:
        if len(self.bounds) != len(self.counts):
            raise ValueError("bounds and counts differ in length")
        if any(b <= a for a, b in pairwise(self.bounds)):
            raise ValueError("bounds must increase")
        if any(b < a for a, b in pairwise([*self.counts, self.count])):
            raise ValueError("cumulative counts must not decrease")
        return self


class InstanceSample(Strict):
    """What the agent saw of one managed vLLM server over the last window."""

    instance_id: Id
    generation: Id
    state: InstanceState
    container_id: Annotated[str, Field(max_length=80)] = ""
    endpoint: Annotated[str, Field(max_length=200)] = ""
    error: Annotated[str, Field(max_length=2000)] = ""
    requests_waiting: NonNegative | None = None
    requests_running: NonNegative | None = None
    kv_cache_usage: Ratio | None = None
    request_rate: NonNegative | None = None
    prompt_tokens_rate: NonNegative | None = None
    generation_tokens_rate: NonNegative | None = None
    ttft_p50_s: NonNegative | None = None
    ttft_p95_s: NonNegative | None = None
    e2e_p50_s: NonNegative | None = None
    e2e_p95_s: NonNegative | None = None
    ttft_histogram: Histogram | None = None
    e2e_histogram: Histogram | None = None


class ForeignContainer(Strict):
    """A container the agent does not manage (or no longer should), reported, never touched."""

    container_id: Annotated[str, Field(max_length=80)]
    name: Text = ""
    image: Text = ""
    managed: bool = False
    instance_id: Id | None = None
    gpu_uuids: Annotated[list[Text], Field(max_length=64)] = []


class ActionResult(Strict):
    instance_id: Id
    generation: Id
    action: Annotated[str, Field(max_length=32)]
    ok: bool
    error: Annotated[str, Field(max_length=2000)] = ""


BatchJobState = Literal["starting", "running", "finished", "failed", "stopped", "refused"]


class BatchJobSample(Strict):
    """What the agent saw of one batch job it was asked to run or stop.

    ``finished`` and ``failed`` are a container that exited (code 0 or not) and stays down:
    the agent never restarts a batch job by itself. ``refused`` is a job the agent will not
    run (image not allowlisted, too large or not on the node), with the reason in ``error``.
    ``stopped`` is a job asked to stop that has no container left; ``exit_code`` then holds
    the code its container stopped with, where this agent stopped it.
    """

    job_id: Id
    generation: Id
    state: BatchJobState
    container_id: Annotated[str, Field(max_length=80)] = ""
    exit_code: ExitCode | None = None
    error: Annotated[str, Field(max_length=2000)] = ""


class ReapResult(Strict):
    """The outcome of a request to stop an orphan container, sent once.

    ``stopped``: stopped and removed. ``gone``: no container of this node has that id any
    more. ``skipped``: the container is wanted again (a desired instance or batch job owns
    it), so it was left alone. ``failed``: the engine refused; the request stands.
    """

    container_id: Annotated[str, Field(max_length=80)]
    outcome: Literal["stopped", "gone", "skipped", "failed"]
    exit_code: ExitCode | None = None
    detail: Annotated[str, Field(max_length=2000)] = ""


class HostInfo(Strict):
    hostname: Text
    agent_version: Annotated[str, Field(max_length=50)]
    advertise_address: AdvertisedAddress = ""
    nvml_available: bool
    nvml_reason: Annotated[str, Field(max_length=1000)] = ""
    runtime_reason: Annotated[str, Field(max_length=1000)] = ""
    driver_version: Annotated[str, Field(max_length=50)] = ""


class Report(Strict):
    """One sampling interval of one host."""

    seq: Id
    sampled_at: Timestamp
    host: HostInfo
    gpus: Annotated[list[GpuSample], Field(max_length=64)] = []
    instances: Annotated[list[InstanceSample], Field(max_length=256)] = []
    containers: Annotated[list[ForeignContainer], Field(max_length=256)] = []
    action_results: Annotated[list[ActionResult], Field(max_length=256)] = []
    batch_jobs: Annotated[list[BatchJobSample], Field(max_length=256)] = []
    reaped: Annotated[list[ReapResult], Field(max_length=256)] = []

    @model_validator(mode="after")
    def _one_reading_per_gpu(self) -> Report:
        """A host has one GPU per index and per UUID (and one MIG device per UUID): a report
        that says otherwise would replace GPUs it still names, so it is refused whole."""
        for what, values in (
            ("GPU index", [gpu.index for gpu in self.gpus]),
            ("GPU uuid", [gpu.uuid for gpu in self.gpus]),
            ("MIG device uuid", [device.uuid for gpu in self.gpus for device in gpu.mig_devices]),
            ("instance_id", [sample.instance_id for sample in self.instances]),
        ):
            repeated = sorted(str(value) for value, times in Counter(values).items() if times > 1)
            if repeated:
                raise ValueError(f"{what} reported more than once: {', '.join(repeated[:5])}")
        return self


class Batch(Strict):
    """Reports in the order they were sampled; ``dropped`` counts those the buffer lost."""

    version: Literal[1]
    node: Name
    reports: Annotated[list[Report], Field(min_length=1, max_length=MAX_REPORTS_PER_BATCH)]
    dropped: Count = 0


class InstanceSpec(Strict):
    """What to run for one instance: the profile's vLLM settings and where."""

    image: Text
    model: Text
    served_name: Text
    max_model_len: int
    max_num_seqs: int
    dtype: str
    quantization: str
    kv_cache_dtype: str
    enable_prefix_caching: bool
    enable_sleep_mode: bool
    gpu_memory_utilization: float
    extra_args: list[str]
    env: dict[str, str]
    volumes: dict[str, str]
    gpu_uuids: list[str]
    mig_uuids: list[str]


class DesiredInstance(Strict):
    instance_id: int
    generation: int
    state: DesiredState
    spec: InstanceSpec


class DesiredBatchJob(Strict):
    """A co-located batch job: run it on these GPUs (``running``) or stop its container (``stopped``).

    ``max_image_bytes`` is the co-location policy's image size bound ("light batch images
    only"); the agent also applies its own, and refuses an image above either.
    """

    job_id: int
    generation: int
    state: Literal["running", "stopped"]
    image: str
    command: list[str]
    memory_bytes: int
    gpu_uuids: list[str]
    max_image_bytes: int | None = None


class Reply(Strict):
    """The node's desired state.

    ``batch_jobs`` and ``stop_containers`` (orphans the reaper wants stopped) were added
    after version 1 shipped: they default to empty and the panel leaves them out of the
    body while empty, so agents that predate them keep parsing every reply.
    """

    ack_seq: int
    desired: list[DesiredInstance]
    report_interval_s: float
    batch_jobs: list[DesiredBatchJob] = []
    stop_containers: list[str] = []
    # Report again this soon instead of after the agent's interval: the panel asks while an
    # instance on the node is on its way to serving (a start or a wake it just decided), so
    # the agent says "ready" within a fraction of a second of it. Left out when None.
    report_again_s: Annotated[float, Field(gt=0)] | None = None


# The long poll: the agent asks ``GET WAIT_PATH?generation=<n>``, ``n`` being the
# ``desired_generation`` of the reply it last applied; the panel answers as soon as the node's
# desired state differs from it (or is said to have changed), else after ``WAIT_S`` with
# ``changed`` false. The report stays the only way desired state travels: a ``changed``
# answer only makes the agent report at once instead of at its next interval.
WAIT_PATH = "/api/agent/v1/wait"
WAIT_S = 25.0
# Generations are 63-bit digests: they fit a signed 64-bit integer wherever they are kept.
MAX_GENERATION = 2**63 - 1


class WaitReply(Strict):
    changed: bool


def desired_generation(
    desired: Sequence[DesiredInstance], batch_jobs: Sequence[DesiredBatchJob], stop_containers: Sequence[str] = ()
) -> int:
    """The node's desired-state generation: one number for every item of the reply the agent acts on.

    The panel keeps no per-node counter: a digest over the reply's items changes whenever
    any of them changes, appears or goes. That is each instance whole (its generation and
    state, and its spec, which a change of the pool's model profile alters without a new
    generation), each batch job whole, and each orphan container the panel asks the agent to
    stop. Both sides compute it with this function (the agent from the reply it applied, the
    panel from the rows that make the reply), so they agree exactly when the agent is up to date.
    The leading tag keeps it from ever equalling ``desired_generation_v1`` of the same items.
    """
    items = sorted(
        [("i", item.instance_id, _canonical(item)) for item in desired]
        + [("j", job.job_id, _canonical(job)) for job in batch_jobs]
        + [("s", 0, container_id) for container_id in stop_containers]
    )
    return _generation(("v2", items))


def desired_generation_v1(desired: Sequence[DesiredInstance], batch_jobs: Sequence[DesiredBatchJob]) -> int:
    """The generation agents of the previous version compute: (kind, id, generation, state) only.

    The panel accepts it as up to date as well, so such an agent waits as it always did
    (it is not woken by an orphan stop or a profile change, which it learns at its next
    report) instead of being told "changed" at every wait while its digest never matches.
    """
    items = sorted(
        [("i", item.instance_id, item.generation, item.state) for item in desired]
        + [("j", job.job_id, job.generation, job.state) for job in batch_jobs]
    )
    return _generation(items)


def _canonical(item: BaseModel) -> str:
    """An item as JSON with sorted keys: the same text whichever order a JSON column gave its maps in."""
    return json.dumps(item.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _generation(items: Any) -> int:
    digest = hashlib.blake2b(repr(items).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_GENERATION


class Registration(Strict):
    join_token: Annotated[str, Field(min_length=8, max_length=200)]
    name: Name
    hostname: Text
    agent_version: Annotated[str, Field(max_length=50)]
    labels: Annotated[
        dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=255)]], Field(max_length=32)
    ] = {}
    simulated: bool = False  # the demo's hosts: their GPUs and engines are simulated, never billed as real
    advertise_address: AdvertisedAddress = ""  # empty: the panel takes the address it sees the agent at
    # The ports the agent runs its servers on (its --port-range), first and last; the panel takes
    # instance endpoints on these ports only. Agents that predate it run on the default range.
    port_range: tuple[Port, Port] = DEFAULT_PORT_RANGE

    @model_validator(mode="after")
    def _port_range_ordered(self) -> Registration:
        low, high = self.port_range
        if low > high:
            raise ValueError(f"port_range starts at {low}, after its end {high}")
        return self


class Registered(Strict):
    node: str
    node_token: str
    report_interval_s: float


def error_summary(errors: Sequence[Mapping[str, Any]], limit: int = 10) -> list[str]:
    """pydantic's errors as short lines: ``reports.0.gpus.1.utilization_gpu_pct: ...``."""
    lines = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return lines
