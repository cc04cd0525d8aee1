"""GPU readings through NVML (the nvidia-ml-py package, imported as ``pynvml``).

Collection and conversion are split on purpose: ``collect_raw`` returns exactly what
NVML said, in NVML's own units, as plain JSON-able data; ``convert`` turns that into
typed readings. Raw readings recorded on a real GPU host can then be replayed through
``convert`` in CI, where there is no GPU.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import pynvml

T = TypeVar("T")

RAW_SCHEMA_VERSION = 1
DEFAULT_GPM_INTERVAL_S = 0.2

# Both are failures of one NVML call: the field gets None, the reading goes on.
# NVMLLibraryMismatchError is what pynvml raises when an unversioned entry point
# is missing from an older driver.
_CALL_ERRORS = (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError)

# Bits of nvmlClocksEventReasons (formerly "throttle reasons"), as named in nvml.h.
# Written out rather than read from pynvml so decoding recorded raw data does not
# depend on which deprecated aliases an installed pynvml still carries.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

_MIG_SLICES_IN_NAME = re.compile(r"MIG (\d+)g\.")


@dataclass(frozen=True)
class ProcessReading:
    """One compute process holding GPU memory."""

    pid: int
    used_memory_bytes: int | None


@dataclass(frozen=True)
class MigReading:
    """One MIG device (a slice of a physical GPU) as NVML reports it."""

    index: int
    uuid: str | None
    name: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    gpu_instance_id: int | None
    gpu_instance_slice_count: int | None


@dataclass(frozen=True)
class GpuReading:
    """One physical GPU at one moment; any field NVML could not give is None.

    ``utilization_gpu_pct`` is NVML's duty cycle (share of time any kernel ran), which
    reads 100 for a single tiny kernel looping; ``sm_activity_pct`` is the share of SMs
    busy (GPM), the better measure of how much of the GPU is really used. They are kept
    apart so nobody mistakes one for the other. ``field_errors`` says why a field is None.
    """

    index: int
    uuid: str | None
    name: str | None
    pci_bus_id: str | None
    utilization_gpu_pct: int | None
    utilization_memory_pct: int | None
    sm_activity_pct: float | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_reserved_bytes: int | None
    memory_free_bytes: int | None
    power_watts: float | None
    power_limit_watts: float | None
    energy_joules: float | None
    temperature_c: int | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    pstate: int | None
    throttle_reasons: list[str] | None
    ecc_uncorrected_volatile: int | None
    mig_mode_current: bool | None
    mig_mode_pending: bool | None
    mig_devices: list[MigReading]
    processes: list[ProcessReading] | None
    field_errors: dict[str, str]


@dataclass(frozen=True)
class HostReading:
    """All GPUs of one host; ``available`` is False (and ``gpus`` empty) without NVML."""

    available: bool
    unavailable_reason: str | None
    sampled_at: float
    driver_version: str | None
    nvml_version: str | None
    cuda_driver_version: str | None
    gpus: list[GpuReading]


def error_text(exc: BaseException) -> str:
    """Name and message of an NVML error, e.g. ``NVMLError_NotSupported: Not Supported``."""
    return f"{type(exc).__name__}: {exc}"


def _attempt(errors: dict[str, str], field: str, call: Callable[[], T]) -> T | None:
    """Run one NVML call; on failure note why in ``errors`` and give None.

    One unsupported query (ECC on a card without it, MIG on a pre-Ampere GPU) must
    cost only that field, never the whole reading.
    """
    try:
        return call()
    except _CALL_ERRORS as exc:
        errors[field] = error_text(exc)
        return None


def _first_of(*calls: Callable[[], T]) -> T:
    """Return the first call that succeeds; only the last one's failure propagates.

    Lets a newer NVML entry point fall back to its older name on older drivers.
    """
    *earlier, last = calls
    for call in earlier:
        try:
            return call()
        except _CALL_ERRORS:
            continue
    return last()


def _text(value: str | bytes) -> str:
    """NVML struct char arrays come back as bytes; JSON wants str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _memory(handle: Any) -> dict[str, int]:
    """Memory in bytes: v2 splits out driver-reserved memory, v1 (older drivers) does not."""
    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return {
            "version": 2,
            "total": mem.total,
            "reserved": mem.reserved,
            "free": mem.free,
            "used": mem.used,
        }
    except _CALL_ERRORS:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"version": 1, "total": mem.total, "free": mem.free, "used": mem.used}


def _utilization(handle: Any) -> dict[str, int]:
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return {"gpu": rates.gpu, "memory": rates.memory}


def _clock_event_reasons(handle: Any) -> int:
    reasons: int = _first_of(
        lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle),
        lambda: pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle),
    )
    return reasons


def _processes(handle: Any) -> list[dict[str, int | None]]:
    procs = _first_of(
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle),
    )
    return [{"pid": p.pid, "used_gpu_memory": p.usedGpuMemory} for p in procs]


def _gpm_start(handle: Any, errors: dict[str, str]) -> tuple[Any, Any] | None:
    """Take the first of two GPM samples, or None where GPM is unsupported (pre-Hopper)."""
    support = _attempt(errors, "gpm_sm_util_pct", lambda: pynvml.nvmlGpmQueryDeviceSupport(handle))
    if support is None:
        return None
    if not support.isSupportedDevice:
        errors["gpm_sm_util_pct"] = "GPM not supported on this GPU"
        return None
    samples = []
    try:
        for _ in range(2):
            samples.append(pynvml.nvmlGpmSampleAlloc())
        pynvml.nvmlGpmSampleGet(handle, samples[0])
    except _CALL_ERRORS as exc:
        errors["gpm_sm_util_pct"] = error_text(exc)
        _gpm_free(samples)
        return None
    return samples[0], samples[1]


def _gpm_free(samples: list[Any]) -> None:
    for sample in samples:
        try:
            pynvml.nvmlGpmSampleFree(sample)
        except _CALL_ERRORS:
            continue


def _gpm_sm_util(handle: Any, samples: tuple[Any, Any]) -> float:
    """Second GPM sample, then the share of SMs busy between the two samples."""
    first, second = samples
    pynvml.nvmlGpmSampleGet(handle, second)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 1
    request.sample1 = first
    request.sample2 = second
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    pynvml.nvmlGpmMetricsGet(request)
    metric = request.metrics[0]
    if metric.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(metric.nvmlReturn)
    return float(metric.value)


def _gpm_finish(handle: Any, samples: tuple[Any, Any], errors: dict[str, str]) -> float | None:
    try:
        return _attempt(errors, "gpm_sm_util_pct", lambda: _gpm_sm_util(handle, samples))
    finally:
        _gpm_free(list(samples))


def _gpu_instance_slices(handle: Any) -> dict[int, int]:
    """Map GPU-instance profile id → slice count, for the profiles this GPU knows."""
    slices: dict[int, int] = {}
    for profile in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile)
        except _CALL_ERRORS:
            continue
        slices[info.id] = info.sliceCount
    return slices


def _mig_device(parent: Any, index: int, mig: Any, slices: dict[int, int]) -> dict[str, Any]:
    errors: dict[str, str] = {}
    gi_id = _attempt(errors, "gpu_instance_id", lambda: pynvml.nvmlDeviceGetGpuInstanceId(mig))
    profile_id = None
    if gi_id is not None:
        profile_id = _attempt(
            errors,
            "gpu_instance_profile_id",
            lambda: pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(parent, gi_id)).profileId,
        )
    return {
        "index": index,
        "uuid": _attempt(errors, "uuid", lambda: pynvml.nvmlDeviceGetUUID(mig)),
        "name": _attempt(errors, "name", lambda: pynvml.nvmlDeviceGetName(mig)),
        "memory": _attempt(errors, "memory", lambda: _memory(mig)),
        "gpu_instance_id": gi_id,
        "gpu_instance_profile_id": profile_id,
        "slice_count": slices.get(profile_id) if profile_id is not None else None,
        "errors": errors,
    }


def _mig_devices(handle: Any) -> list[dict[str, Any]]:
    """Every populated MIG slot of a GPU in MIG mode; empty slots raise NotFound."""
    slices = _gpu_instance_slices(handle)
    devices = []
    for index in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except _CALL_ERRORS:
            continue
        devices.append(_mig_device(handle, index, mig, slices))
    return devices


def _device_fields(handle: Any, errors: dict[str, str]) -> dict[str, Any]:
    """Every per-GPU NVML query except GPM, each failing alone."""

    def get(field: str, call: Callable[[], Any]) -> Any:
        return _attempt(errors, field, call)

    raw: dict[str, Any] = {
        "uuid": get("uuid", lambda: pynvml.nvmlDeviceGetUUID(handle)),
        "name": get("name", lambda: pynvml.nvmlDeviceGetName(handle)),
        "pci_bus_id": get("pci_bus_id", lambda: _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)),
        "utilization": get("utilization", lambda: _utilization(handle)),
        "memory": get("memory", lambda: _memory(handle)),
        "power_usage_mw": get("power_usage_mw", lambda: pynvml.nvmlDeviceGetPowerUsage(handle)),
        "power_limit_mw": get("power_limit_mw", lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)),
        "total_energy_mj": get(
            "total_energy_mj",
            lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        ),
        "temperature_c": get(
            "temperature_c",
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        ),
        "sm_clock_mhz": get(
            "sm_clock_mhz",
            lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        ),
        "mem_clock_mhz": get(
            "mem_clock_mhz",
            lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        ),
        "pstate": get("pstate", lambda: pynvml.nvmlDeviceGetPerformanceState(handle)),
        "clock_event_reasons": get("clock_event_reasons", lambda: _clock_event_reasons(handle)),
        "ecc_uncorrected_volatile": get(
            "ecc_uncorrected_volatile",
            lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                handle,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            ),
        ),
        "mig_mode": get("mig_mode", lambda: list(pynvml.nvmlDeviceGetMigMode(handle))),
        "processes": get("processes", lambda: _processes(handle)),
    }
    mig_on = bool(raw["mig_mode"]) and raw["mig_mode"][0] == pynvml.NVML_DEVICE_MIG_ENABLE
    raw["mig_devices"] = (get("mig_devices", lambda: _mig_devices(handle)) or []) if mig_on else []
    return raw


def collect_raw(gpm_interval_s: float = DEFAULT_GPM_INTERVAL_S) -> dict[str, Any]:
    """Query every GPU once and return what NVML said, in NVML's units, as plain data.

    NVML must already be initialised (``NvmlBackend`` does that). Units are kept raw
    (mW, mJ, bytes, bitmasks) so a recording stays replayable if ``convert`` changes.
    The GPM SM-activity figure needs two samples; both are spread across the other
    queries so the whole host costs one ``gpm_interval_s``, not one per GPU. An error
    in ``nvmlDeviceGetCount`` propagates: without it there is no reading at all.
    """
    started = time.monotonic()
    host_errors: dict[str, str] = {}
    raw: dict[str, Any] = {
        "schema": RAW_SCHEMA_VERSION,
        "sampled_at": time.time(),
        "driver_version": _attempt(host_errors, "driver_version", pynvml.nvmlSystemGetDriverVersion),
        "nvml_version": _attempt(host_errors, "nvml_version", pynvml.nvmlSystemGetNVMLVersion),
        "cuda_driver_version": _attempt(host_errors, "cuda_driver_version", pynvml.nvmlSystemGetCudaDriverVersion),
        "errors": host_errors,
    }
    devices: list[dict[str, Any]] = []
    gpm_pending: list[tuple[dict[str, Any], Any, tuple[Any, Any]]] = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        errors: dict[str, str] = {}
        device: dict[str, Any] = {
            "index": index,
            "errors": errors,
            "gpm_sm_util_pct": None,
        }
        devices.append(device)
        handle = _attempt(errors, "handle", functools.partial(pynvml.nvmlDeviceGetHandleByIndex, index))
        if handle is None:
            continue
        samples = _gpm_start(handle, errors)
        if samples is not None:
            gpm_pending.append((device, handle, samples))
        device.update(_device_fields(handle, errors))
    if gpm_pending:
        time.sleep(max(0.0, gpm_interval_s - (time.monotonic() - started)))
    for device, handle, samples in gpm_pending:
        device["gpm_sm_util_pct"] = _gpm_finish(handle, samples, device["errors"])
    raw["devices"] = devices
    return raw


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Readable names of the set bits; unknown bits stay visible as ``unknown_0x...``."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"unknown_{unknown:#x}")
    return names


def _per_thousand(value: int | None) -> float | None:
    """mW → W and mJ → J."""
    return None if value is None else value / 1000


def _cuda_version(value: int | None) -> str | None:
    """NVML gives e.g. 12040 for CUDA 12.4."""
    return None if value is None else f"{value // 1000}.{value % 1000 // 10}"


def _mig_slices(raw: dict[str, Any]) -> int | None:
    """Slice count from the profile, else from the name (``... MIG 3g.40gb``)."""
    if (count := raw.get("slice_count")) is not None:
        return int(count)
    match = _MIG_SLICES_IN_NAME.search(raw.get("name") or "")
    return int(match.group(1)) if match else None


def _convert_mig(raw: dict[str, Any]) -> MigReading:
    memory = raw.get("memory") or {}
    return MigReading(
        index=raw["index"],
        uuid=raw.get("uuid"),
        name=raw.get("name"),
        memory_total_bytes=memory.get("total"),
        memory_used_bytes=memory.get("used"),
        gpu_instance_id=raw.get("gpu_instance_id"),
        gpu_instance_slice_count=_mig_slices(raw),
    )


def _mig_flag(mode: list[int] | None, position: int) -> bool | None:
    return None if mode is None else mode[position] == pynvml.NVML_DEVICE_MIG_ENABLE


def _convert_processes(raw: list[dict[str, Any]] | None) -> list[ProcessReading] | None:
    if raw is None:
        return None
    return [ProcessReading(pid=p["pid"], used_memory_bytes=p.get("used_gpu_memory")) for p in raw]


def _convert_gpu(raw: dict[str, Any]) -> GpuReading:
    utilization = raw.get("utilization") or {}
    memory = raw.get("memory") or {}
    pstate = raw.get("pstate")
    reasons = raw.get("clock_event_reasons")
    return GpuReading(
        index=raw["index"],
        uuid=raw.get("uuid"),
        name=raw.get("name"),
        pci_bus_id=raw.get("pci_bus_id"),
        utilization_gpu_pct=utilization.get("gpu"),
        utilization_memory_pct=utilization.get("memory"),
        sm_activity_pct=raw.get("gpm_sm_util_pct"),
        memory_total_bytes=memory.get("total"),
        memory_used_bytes=memory.get("used"),
        memory_reserved_bytes=memory.get("reserved"),
        memory_free_bytes=memory.get("free"),
        power_watts=_per_thousand(raw.get("power_usage_mw")),
        power_limit_watts=_per_thousand(raw.get("power_limit_mw")),
        energy_joules=_per_thousand(raw.get("total_energy_mj")),
        temperature_c=raw.get("temperature_c"),
        sm_clock_mhz=raw.get("sm_clock_mhz"),
        mem_clock_mhz=raw.get("mem_clock_mhz"),
        pstate=None if pstate in (None, pynvml.NVML_PSTATE_UNKNOWN) else pstate,
        throttle_reasons=None if reasons is None else decode_clock_event_reasons(reasons),
        ecc_uncorrected_volatile=raw.get("ecc_uncorrected_volatile"),
        mig_mode_current=_mig_flag(raw.get("mig_mode"), 0),
        mig_mode_pending=_mig_flag(raw.get("mig_mode"), 1),
        mig_devices=[_convert_mig(m) for m in raw.get("mig_devices") or []],
        processes=_convert_processes(raw.get("processes")),
        field_errors=dict(raw.get("errors") or {}),
    )


def convert(raw: dict[str, Any]) -> HostReading:
    """Turn a ``collect_raw`` result (live or recorded) into a typed reading. Pure."""
    return HostReading(
        available=True,
        unavailable_reason=None,
        sampled_at=raw["sampled_at"],
        driver_version=raw.get("driver_version"),
        nvml_version=raw.get("nvml_version"),
        cuda_driver_version=_cuda_version(raw.get("cuda_driver_version")),
        gpus=[_convert_gpu(d) for d in raw.get("devices", [])],
    )


def unavailable(reason: str) -> HostReading:
    """The reading of a host where NVML cannot be used: no GPUs, and why."""
    return HostReading(
        available=False,
        unavailable_reason=reason,
        sampled_at=time.time(),
        driver_version=None,
        nvml_version=None,
        cuda_driver_version=None,
        gpus=[],
    )


class NvmlBackend:
    """Reads this host's GPUs; never raises, reporting a missing driver as unavailable.

    NVML is initialised lazily and retried on each read while it fails, so an agent
    started before the driver loads recovers without a restart.
    """

    def __init__(self, gpm_interval_s: float = DEFAULT_GPM_INTERVAL_S) -> None:
        self._gpm_interval_s = gpm_interval_s
        self._initialised = False

    def _init_failure(self) -> str | None:
        """Initialise NVML if needed; the reason it is unusable, or None when ready."""
        if self._initialised:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return f"NVML could not be initialised ({error_text(exc)}); is an NVIDIA driver loaded?"
        self._initialised = True
        return None

    def read(self) -> HostReading:
        """One reading of every GPU, or an unavailable reading saying why not."""
        failure = self._init_failure()
        if failure is not None:
            return unavailable(failure)
        try:
            return convert(collect_raw(self._gpm_interval_s))
        except _CALL_ERRORS as exc:
            return unavailable(f"NVML failed while enumerating GPUs ({error_text(exc)})")

    def close(self) -> None:
        """Release NVML; a later ``read`` initialises it again."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            return

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
