"""A stand-in for the NVML library: patches pynvml's functions with H100-like answers.

Only the Python functions are replaced; pynvml's own structs, constants and error
classes stay real, so the code under test builds the same ctypes requests it would
on a GPU host. Values model one busy H100 SXM 80GB (HBM3).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

GIB = 2**30
H100_TOTAL = 85_520_809_984  # 81559 MiB, what an H100 80GB HBM3 reports
H100_RESERVED = 566_231_040  # 540 MiB held by the driver (v2 memory struct only)
H100_USED = 75 * GIB
H100_FREE = H100_TOTAL - H100_RESERVED - H100_USED
H100_UUID = "GPU-3f1c7a9e-5d2b-4e8f-9a61-0c7b2d4e6f81"

H100_RAW_DEVICE: dict[str, Any] = {
    "index": 0,
    "uuid": H100_UUID,
    "name": "NVIDIA H100 80GB HBM3",
    "pci_bus_id": "00000000:18:00.0",
    "utilization": {"gpu": 100, "memory": 61},
    "memory": {"version": 2, "total": H100_TOTAL, "reserved": H100_RESERVED, "free": H100_FREE, "used": H100_USED},
    "power_usage_mw": 612_345,
    "power_limit_mw": 700_000,
    "total_energy_mj": 9_876_543_210,
    "temperature_c": 64,
    "sm_clock_mhz": 1980,
    "mem_clock_mhz": 2619,
    "pstate": 0,
    "clock_event_reasons": 0x4 | 0x20,
    "ecc_uncorrected_volatile": 0,
    "mig_mode": [0, 0],
    "processes": [{"pid": 4242, "used_gpu_memory": 74 * GIB}],
    "mig_devices": [],
    "gpm_sm_util_pct": 87.5,
    "errors": {},
}

H100_RAW: dict[str, Any] = {
    "schema": 1,
    "sampled_at": 1_795_000_000.0,
    "driver_version": "550.90.07",
    "nvml_version": "12.550.90.07",
    "cuda_driver_version": 12040,
    "errors": {},
    "devices": [H100_RAW_DEVICE],
}


class FakeNvml:
    """One H100 behind pynvml's API; ``install`` can override single functions."""

    def __init__(self) -> None:
        self.initialised = False
        self.freed_gpm_samples = 0

    def functions(self) -> dict[str, Callable[..., Any]]:
        d = H100_RAW_DEVICE
        return {
            "nvmlInit": self._init,
            "nvmlShutdown": self._shutdown,
            "nvmlSystemGetDriverVersion": lambda: H100_RAW["driver_version"],
            "nvmlSystemGetNVMLVersion": lambda: H100_RAW["nvml_version"],
            "nvmlSystemGetCudaDriverVersion": lambda: H100_RAW["cuda_driver_version"],
            "nvmlDeviceGetCount": lambda: 1,
            "nvmlDeviceGetHandleByIndex": lambda index: SimpleNamespace(gpu=index),
            "nvmlDeviceGetUUID": lambda h: d["uuid"],
            "nvmlDeviceGetName": lambda h: d["name"],
            "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=d["pci_bus_id"].encode()),
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(**d["utilization"]),
            "nvmlDeviceGetMemoryInfo": self._memory,
            "nvmlDeviceGetPowerUsage": lambda h: d["power_usage_mw"],
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: d["power_limit_mw"],
            "nvmlDeviceGetTotalEnergyConsumption": lambda h: d["total_energy_mj"],
            "nvmlDeviceGetTemperature": lambda h, sensor: d["temperature_c"],
            "nvmlDeviceGetClockInfo": self._clock,
            "nvmlDeviceGetPerformanceState": lambda h: d["pstate"],
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: d["clock_event_reasons"],
            "nvmlDeviceGetTotalEccErrors": lambda h, error_type, counter_type: d["ecc_uncorrected_volatile"],
            "nvmlDeviceGetMigMode": lambda h: list(d["mig_mode"]),
            "nvmlDeviceGetComputeRunningProcesses": self._processes,
            "nvmlGpmQueryDeviceSupport": lambda h: SimpleNamespace(isSupportedDevice=1),
            "nvmlGpmSampleAlloc": pynvml.c_nvmlGpmSample_t,
            "nvmlGpmSampleGet": lambda h, sample: sample,
            "nvmlGpmSampleFree": self._free,
            "nvmlGpmMetricsGet": self._metrics,
        }

    def install(self, monkeypatch: pytest.MonkeyPatch, **overrides: Callable[..., Any]) -> FakeNvml:
        """Patch pynvml for the test; ``overrides`` replace single functions."""
        for name, function in {**self.functions(), **overrides}.items():
            monkeypatch.setattr(pynvml, name, function)
        return self

    def _init(self) -> None:
        self.initialised = True

    def _shutdown(self) -> None:
        self.initialised = False

    @staticmethod
    def _memory(handle: Any, version: int | None = None) -> SimpleNamespace:
        if version:
            return SimpleNamespace(total=H100_TOTAL, reserved=H100_RESERVED, free=H100_FREE, used=H100_USED)
        return SimpleNamespace(total=H100_TOTAL, free=H100_FREE, used=H100_USED + H100_RESERVED)

    @staticmethod
    def _clock(handle: Any, clock_type: int) -> int:
        sm = clock_type == pynvml.NVML_CLOCK_SM
        return H100_RAW_DEVICE["sm_clock_mhz"] if sm else H100_RAW_DEVICE["mem_clock_mhz"]

    @staticmethod
    def _processes(handle: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_gpu_memory"]) for p in H100_RAW_DEVICE["processes"]]

    def _free(self, sample: Any) -> None:
        self.freed_gpm_samples += 1

    @staticmethod
    def _metrics(request: Any) -> Any:
        assert request.metrics[0].metricId == pynvml.NVML_GPM_METRIC_SM_UTIL
        request.metrics[0].nvmlReturn = pynvml.NVML_SUCCESS
        request.metrics[0].value = H100_RAW_DEVICE["gpm_sm_util_pct"]
        return request


def raises(error: type[pynvml.NVMLError]) -> Callable[..., Any]:
    """A replacement function that fails the way a real NVML call does."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error()

    return fail
