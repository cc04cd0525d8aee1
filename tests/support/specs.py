"""A desired instance's spec as the panel sends it, for tests of what agents do with one."""

from __future__ import annotations

from typing import Any

from agents import protocol


def instance_spec(**changes: Any) -> protocol.InstanceSpec:
    """A plain spec: no extra flags, environment, volumes or devices, so a host with no
    configuration allows it; ``changes`` replace any field."""
    values: dict[str, Any] = dict(
        image="vllm/vllm-openai:v0.10.1",
        model="Qwen/Qwen3-4B",
        served_name="chat",
        max_model_len=8192,
        max_num_seqs=64,
        dtype="bfloat16",
        quantization="",
        kv_cache_dtype="auto",
        enable_prefix_caching=True,
        enable_sleep_mode=True,
        gpu_memory_utilization=0.9,
        extra_args=[],
        env={},
        volumes={},
        gpu_uuids=[],
        mig_uuids=[],
    )
    return protocol.InstanceSpec(**{**values, **changes})
