"""NVML backend: conversion of raw readings (synthetic and recorded), and the backend
against a faked NVML library and against whatever this machine really has."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from agents.nvml import (
    GpuReading,
    HostReading,
    NvmlBackend,
    ProcessReading,
    collect_raw,
    convert,
    decode_clock_event_reasons,
)
from tests.agents.fake_nvml import (
    H100_FREE,
    H100_RAW,
    H100_RESERVED,
    H100_TOTAL,
    H100_USED,
    H100_UUID,
    FakeNvml,
    raises,
)
from tests.agents.recordings import check_document, check_gpu

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"

SYNTHETIC_DOCUMENT: dict[str, Any] = {
    "label": "load",
    "load": {"gpu": 0, "tflops": 650.0},
    "raw": H100_RAW,
    "samples": [{"raw": H100_RAW}],
    "read5_ms": 0.05,
}


def only_gpu(reading: HostReading) -> GpuReading:
    assert len(reading.gpus) == 1
    return reading.gpus[0]


def test_convert_h100_synthetic() -> None:
    reading = convert(H100_RAW)
    assert reading.available is True
    assert reading.unavailable_reason is None
    assert (reading.driver_version, reading.nvml_version, reading.cuda_driver_version) == (
        "550.90.07",
        "12.550.90.07",
        "12.4",
    )
    gpu = only_gpu(reading)
    assert gpu == GpuReading(
        index=0,
        uuid=H100_UUID,
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id="00000000:18:00.0",
        utilization_gpu_pct=100,
        utilization_memory_pct=61,
        sm_activity_pct=87.5,
        memory_total_bytes=H100_TOTAL,
        memory_used_bytes=H100_USED,
        memory_reserved_bytes=H100_RESERVED,
        memory_free_bytes=H100_FREE,
        power_watts=612.345,
        power_limit_watts=700.0,
        energy_joules=9_876_543.21,
        temperature_c=64,
        sm_clock_mhz=1980,
        mem_clock_mhz=2619,
        pstate=0,
        throttle_reasons=["sw_power_cap", "sw_thermal_slowdown"],
        ecc_uncorrected_volatile=0,
        mig_mode_current=False,
        mig_mode_pending=False,
        mig_devices=[],
        processes=[ProcessReading(pid=4242, used_memory_bytes=74 * 2**30)],
        field_errors={},
    )


def test_duty_cycle_and_sm_activity_stay_separate() -> None:
    """A GPU can be 100 % 'utilised' by duty cycle while few SMs are busy."""
    raw = copy.deepcopy(H100_RAW)
    raw["devices"][0]["gpm_sm_util_pct"] = 12.5
    gpu = only_gpu(convert(raw))
    assert gpu.utilization_gpu_pct == 100
    assert gpu.sm_activity_pct == 12.5


def test_unit_conversions() -> None:
    raw = copy.deepcopy(H100_RAW)
    raw["cuda_driver_version"] = 11080
    raw["devices"][0].update(power_usage_mw=69_999, power_limit_mw=350_000, total_energy_mj=1_500)
    reading = convert(raw)
    gpu = only_gpu(reading)
    assert gpu.power_watts == pytest.approx(69.999)
    assert gpu.power_limit_watts == 350.0
    assert gpu.energy_joules == 1.5
    assert reading.cuda_driver_version == "11.8"


@pytest.mark.parametrize(
    ("mask", "names"),
    [
        (0, []),
        (0x1, ["gpu_idle"]),
        (0x4, ["sw_power_cap"]),
        (0x8 | 0x40 | 0x80, ["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"]),
        (0x2 | 0x10 | 0x100, ["applications_clocks_setting", "sync_boost", "display_clock_setting"]),
        (0x4 | 0x10000, ["sw_power_cap", "unknown_0x10000"]),
    ],
)
def test_decode_clock_event_reasons(mask: int, names: list[str]) -> None:
    assert decode_clock_event_reasons(mask) == names


def test_unsupported_fields_convert_to_none() -> None:
    raw = copy.deepcopy(H100_RAW)
    device = raw["devices"][0]
    device.update(
        utilization=None,
        gpm_sm_util_pct=None,
        ecc_uncorrected_volatile=None,
        mig_mode=None,
        processes=None,
        clock_event_reasons=None,
        total_energy_mj=None,
        pstate=pynvml.NVML_PSTATE_UNKNOWN,
        memory={"version": 1, "total": H100_TOTAL, "free": H100_FREE, "used": H100_USED + H100_RESERVED},
        errors={"ecc_uncorrected_volatile": "NVMLError_NotSupported: Not Supported"},
    )
    gpu = only_gpu(convert(raw))
    assert gpu.utilization_gpu_pct is None and gpu.utilization_memory_pct is None
    assert gpu.sm_activity_pct is None
    assert gpu.ecc_uncorrected_volatile is None
    assert gpu.mig_mode_current is None and gpu.mig_mode_pending is None
    assert gpu.processes is None
    assert gpu.throttle_reasons is None
    assert gpu.energy_joules is None
    assert gpu.pstate is None
    assert gpu.memory_reserved_bytes is None
    assert gpu.memory_used_bytes == H100_USED + H100_RESERVED
    assert gpu.field_errors == {"ecc_uncorrected_volatile": "NVMLError_NotSupported: Not Supported"}
    assert gpu.power_watts == 612.345


def test_convert_mig_devices() -> None:
    raw = copy.deepcopy(H100_RAW)
    raw["devices"][0].update(
        mig_mode=[1, 1],
        mig_devices=[
            {"index": 0, "uuid": "MIG-a", "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb", "slice_count": 3,
             "memory": {"version": 2, "total": 40 * 2**30, "reserved": 0, "free": 30 * 2**30, "used": 10 * 2**30},
             "gpu_instance_id": 1},
            {"index": 1, "uuid": "MIG-b", "name": "NVIDIA H100 80GB HBM3 MIG 2g.20gb", "slice_count": None,
             "memory": None, "gpu_instance_id": None},
        ],
    )  # fmt: skip
    gpu = only_gpu(convert(raw))
    assert gpu.mig_mode_current is True and gpu.mig_mode_pending is True
    first, second = gpu.mig_devices
    assert (first.uuid, first.memory_total_bytes, first.memory_used_bytes) == ("MIG-a", 40 * 2**30, 10 * 2**30)
    assert first.gpu_instance_slice_count == 3
    assert second.gpu_instance_slice_count == 2, "falls back to the slice count in the MIG name"
    assert second.memory_total_bytes is None


def recorded_documents() -> list[Any]:
    """The synthetic H100 case always, plus every real recording dropped into fixtures/nvml."""
    files = sorted(FIXTURES.glob("*.json"))
    return [pytest.param(SYNTHETIC_DOCUMENT, id="synthetic-h100")] + [
        pytest.param(json.loads(f.read_text()), id=f.name) for f in files
    ]


@pytest.mark.parametrize("doc", recorded_documents())
def test_recorded_readings_replay(doc: dict[str, Any]) -> None:
    check_document(doc)


def test_collect_raw_matches_the_synthetic_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written H100 raw is exactly what collect_raw produces from such a GPU."""
    fake = FakeNvml().install(monkeypatch)
    raw = collect_raw(gpm_interval_s=0)
    assert {**raw, "sampled_at": 0} == {**H100_RAW, "sampled_at": 0}
    assert fake.freed_gpm_samples == 2
    json.dumps(raw)


@pytest.mark.parametrize(
    ("function", "error_key", "attribute"),
    [
        ("nvmlDeviceGetPowerUsage", "power_usage_mw", "power_watts"),
        ("nvmlDeviceGetTotalEccErrors", "ecc_uncorrected_volatile", "ecc_uncorrected_volatile"),
        ("nvmlDeviceGetMigMode", "mig_mode", "mig_mode_current"),
        ("nvmlDeviceGetUtilizationRates", "utilization", "utilization_gpu_pct"),
        ("nvmlGpmQueryDeviceSupport", "gpm_sm_util_pct", "sm_activity_pct"),
        ("nvmlGpmMetricsGet", "gpm_sm_util_pct", "sm_activity_pct"),
        ("nvmlDeviceGetComputeRunningProcesses", "processes", "processes"),
        ("nvmlDeviceGetTotalEnergyConsumption", "total_energy_mj", "energy_joules"),
    ],
)
def test_one_unsupported_field_leaves_the_rest(
    monkeypatch: pytest.MonkeyPatch, function: str, error_key: str, attribute: str
) -> None:
    error = pynvml.NVMLError_NotSupported
    if function == "nvmlDeviceGetComputeRunningProcesses":
        monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v2", raises(error))
    FakeNvml().install(monkeypatch, **{function: raises(error)})
    reading = NvmlBackend(gpm_interval_s=0).read()
    gpu = only_gpu(reading)
    assert getattr(gpu, attribute) is None
    assert "NotSupported" in gpu.field_errors[error_key]
    expected = dataclasses.asdict(only_gpu(convert(H100_RAW)))
    actual = dataclasses.asdict(gpu)
    changed = {k for k in expected if expected[k] != actual[k]}
    related = {attribute, "field_errors", "utilization_memory_pct", "mig_mode_pending"}
    assert changed <= related


def test_memory_falls_back_to_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    def v1_only(handle: Any, version: int | None = None) -> SimpleNamespace:
        if version:
            raise pynvml.NVMLError_FunctionNotFound()
        return SimpleNamespace(total=H100_TOTAL, free=H100_FREE, used=H100_USED + H100_RESERVED)

    FakeNvml().install(monkeypatch, nvmlDeviceGetMemoryInfo=v1_only)
    gpu = only_gpu(NvmlBackend(gpm_interval_s=0).read())
    assert gpu.memory_reserved_bytes is None
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes) == (H100_TOTAL, H100_USED + H100_RESERVED)


def test_older_drivers_use_throttle_reasons_and_v2_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def mismatch(handle: Any) -> Any:
        raise pynvml.NVMLLibraryMismatchError("no _v3 in this driver")

    FakeNvml().install(
        monkeypatch,
        nvmlDeviceGetCurrentClocksEventReasons=raises(pynvml.NVMLError_FunctionNotFound),
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0x40,
        nvmlDeviceGetComputeRunningProcesses=mismatch,
        nvmlDeviceGetComputeRunningProcesses_v2=lambda h: [SimpleNamespace(pid=7, usedGpuMemory=None)],
    )
    gpu = only_gpu(NvmlBackend(gpm_interval_s=0).read())
    assert gpu.throttle_reasons == ["hw_thermal_slowdown"]
    assert gpu.processes == [ProcessReading(pid=7, used_memory_bytes=None)]


def test_gpm_unsupported_gpu_gives_no_sm_activity(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml().install(monkeypatch, nvmlGpmQueryDeviceSupport=lambda h: SimpleNamespace(isSupportedDevice=0))
    gpu = only_gpu(NvmlBackend().read())
    assert gpu.sm_activity_pct is None
    assert gpu.utilization_gpu_pct == 100
    assert "GPM" in gpu.field_errors["gpm_sm_util_pct"]
    assert fake.freed_gpm_samples == 0


def test_mig_devices_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An H100 in MIG mode with a 3g.40gb and a 1g.10gb instance, other slots empty."""
    profiles = {pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE: (19, 1), pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE: (9, 3)}
    instances = {0: ("3g.40gb", 1, 9, 40), 1: ("1g.10gb", 2, 19, 10)}

    def profile_info(handle: Any, profile: int) -> SimpleNamespace:
        if profile not in profiles:
            raise pynvml.NVMLError_NotSupported()
        profile_id, slices = profiles[profile]
        return SimpleNamespace(id=profile_id, sliceCount=slices)

    def mig_handle(handle: Any, index: int) -> SimpleNamespace:
        if index not in instances:
            raise pynvml.NVMLError_NotFound()
        return SimpleNamespace(mig=index)

    def memory(handle: Any, version: int | None = None) -> SimpleNamespace:
        total = instances[handle.mig][3] * 2**30 if hasattr(handle, "mig") else H100_TOTAL
        return SimpleNamespace(total=total, reserved=0, free=total // 2, used=total // 2)

    FakeNvml().install(
        monkeypatch,
        nvmlDeviceGetMigMode=lambda h: [1, 1],
        nvmlDeviceGetUtilizationRates=raises(pynvml.NVMLError_NotSupported),
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 7,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetGpuInstanceProfileInfo=profile_info,
        nvmlDeviceGetGpuInstanceId=lambda h: instances[h.mig][1],
        nvmlDeviceGetGpuInstanceById=lambda h, gi: SimpleNamespace(gi=gi),
        nvmlGpuInstanceGetInfo=lambda gi: SimpleNamespace(profileId={1: 9, 2: 19}[gi.gi]),
        nvmlDeviceGetUUID=lambda h: f"MIG-{h.mig}" if hasattr(h, "mig") else H100_UUID,
        nvmlDeviceGetName=lambda h: f"NVIDIA H100 80GB HBM3 MIG {instances[h.mig][0]}" if hasattr(h, "mig") else "H100",
        nvmlDeviceGetMemoryInfo=memory,
    )
    gpu = only_gpu(NvmlBackend(gpm_interval_s=0).read())
    assert gpu.mig_mode_current is True
    assert gpu.utilization_gpu_pct is None
    assert [(m.index, m.uuid, m.gpu_instance_id, m.gpu_instance_slice_count) for m in gpu.mig_devices] == [
        (0, "MIG-0", 1, 3),
        (1, "MIG-1", 2, 1),
    ]
    assert gpu.mig_devices[0].memory_total_bytes == 40 * 2**30


def test_unreadable_gpu_is_reported_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch, nvmlDeviceGetHandleByIndex=raises(pynvml.NVMLError_NoPermission))
    gpu = only_gpu(NvmlBackend().read())
    assert gpu.uuid is None and gpu.memory_total_bytes is None
    assert "NoPermission" in gpu.field_errors["handle"]


@pytest.mark.parametrize("error", [pynvml.NVMLError_DriverNotLoaded, pynvml.NVMLError_LibraryNotFound])
def test_no_driver_means_unavailable(monkeypatch: pytest.MonkeyPatch, error: type[pynvml.NVMLError]) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", raises(error))
    reading = NvmlBackend().read()
    assert reading.available is False
    assert reading.gpus == []
    assert error.__name__ in reading.unavailable_reason


def test_backend_recovers_once_the_driver_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = NvmlBackend(gpm_interval_s=0)
    monkeypatch.setattr(pynvml, "nvmlInit", raises(pynvml.NVMLError_DriverNotLoaded))
    assert backend.read().available is False
    fake = FakeNvml().install(monkeypatch)
    assert backend.read().available is True
    backend.close()
    assert fake.initialised is False
    backend.close()


def test_enumeration_failure_is_unavailable_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch, nvmlDeviceGetCount=raises(pynvml.NVMLError_GpuIsLost))
    with NvmlBackend() as backend:
        reading = backend.read()
    assert reading.available is False and reading.gpus == []
    assert "GpuIsLost" in reading.unavailable_reason


def nvml_loads() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_backend_on_this_machine() -> None:
    """Real NVML, no fakes: without a driver no GPU may be invented; with one, GPUs read."""
    with NvmlBackend() as backend:
        reading = backend.read()
    json.dumps(dataclasses.asdict(reading))
    if nvml_loads():
        assert reading.available is True, reading.unavailable_reason
        for gpu in reading.gpus:
            check_gpu(gpu)
    else:
        assert reading.available is False
        assert reading.gpus == []
        assert "NVMLError" in reading.unavailable_reason
