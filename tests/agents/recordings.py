"""Plausibility checks for NVML readings, shared by the replay and recorder tests."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agents.nvml import GpuReading, convert


def check_gpu(gpu: GpuReading) -> None:
    """Physical plausibility of one converted reading, real or synthetic."""
    assert gpu.uuid and gpu.uuid.startswith("GPU-")
    assert gpu.memory_total_bytes and 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
    assert 0 <= gpu.memory_free_bytes <= gpu.memory_total_bytes
    if gpu.utilization_gpu_pct is not None:
        assert 0 <= gpu.utilization_gpu_pct <= 100
    if gpu.sm_activity_pct is not None:
        assert 0 <= gpu.sm_activity_pct <= 100
    if gpu.power_watts is not None and gpu.power_limit_watts:
        assert 0 < gpu.power_watts < 2 * gpu.power_limit_watts
    if gpu.temperature_c is not None:
        assert 0 < gpu.temperature_c < 120
    if gpu.pstate is not None:
        assert 0 <= gpu.pstate <= 15


def check_document(doc: dict[str, Any]) -> None:
    """Replay every raw reading of a recording through ``convert`` and check it."""
    raws = [doc["raw"]] + [sample["raw"] for sample in doc.get("samples", [])]
    readings = [convert(raw) for raw in raws]
    for reading in readings:
        json.dumps(dataclasses.asdict(reading))
        assert reading.available and reading.gpus
        for gpu in reading.gpus:
            check_gpu(gpu)
    if doc.get("read5_ms") is not None:
        assert 0 < doc["read5_ms"] < 100
    if doc["label"] == "load":
        loaded = [r.gpus[doc["load"]["gpu"]] for r in readings[1:]]
        assert max(g.utilization_gpu_pct or 0 for g in loaded) >= 90
        activity = [g.sm_activity_pct for g in loaded if g.sm_activity_pct is not None]
        assert not activity or max(activity) > 50
