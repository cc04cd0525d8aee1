"""Small builders for test data; each returns saved, valid objects."""

from __future__ import annotations

from typing import Any

from fleet.decide.services import node_create
from fleet.gateway.accounting import RequestRecord
from fleet.models import Gpu, Instance, ModelProfile, Node, Policy, Pool, PriceRate
from fleet.presets import presets_install

GIB = 1024**3


def make_node(name: str = "gpu-host-1", **kwargs: Any) -> Node:
    node, _token = node_create(name=name, **kwargs)
    return node


def make_gpu(node: Node, index: int = 0, model_name: str = "NVIDIA L4", mig_mode: str = "unsupported") -> Gpu:
    return Gpu.objects.create(
        node=node,
        index=index,
        uuid=f"GPU-{node.name}-{index}",
        model_name=model_name,
        memory_total_bytes=24 * GIB,
        mig_capable=mig_mode != "unsupported",
        mig_mode=mig_mode,
    )


def chat_profile() -> ModelProfile:
    """The chat preset; reinstalled where a transactional test flushed the migration's data."""
    presets_install(ModelProfile=ModelProfile, PriceRate=PriceRate, Policy=Policy)
    return ModelProfile.objects.get(name="qwen3-4b-chat-bf16")


def make_pool(name: str = "chat-l", **kwargs: Any) -> Pool:
    values: dict[str, Any] = dict(tier="L", isolation="shared", model_profile=chat_profile())
    values.update(kwargs)
    pool = Pool(name=name, **values)
    pool.full_clean()
    pool.save()
    return pool


def make_instance(pool: Pool, gpu: Gpu | None = None, **kwargs: Any) -> Instance:
    instance = Instance(pool=pool, gpu=gpu, **kwargs)
    instance.full_clean()
    instance.save()
    return instance


def inline_management(prefix: str) -> dict[str, str]:
    """The management form an admin page with an inline expects in every POST."""
    return {
        f"{prefix}-TOTAL_FORMS": "0",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def node_form(name: str = "gpu-host-9", **fields: str) -> dict[str, str]:
    """What the admin's node form posts when saved as shown: its defaults, with ``fields``."""
    return {
        "name": name,
        "labels": "{}",
        "address": "",
        "port_low": "8100",
        "port_high": "8199",
        **inline_management("gpus"),
        **fields,
    }


def make_request_record(**changes: Any) -> RequestRecord:
    """A gateway request record of a plain chat request answered 200, with ``changes``."""
    values: dict[str, Any] = dict(
        at=0.0,
        key_id=1,
        team_id=1,
        pool_id=None,
        instance_id=None,
        endpoint="chat",
        model="stub-model",
        rcf=1.0,
        tier="L",
        stream=False,
        prompt_tokens=12,
        output_tokens=3,
        tokens_from_usage=True,
        ttft_ms=None,
        latency_ms=1.0,
        status=200,
        cold_start=False,
        retried=False,
        error="",
    )
    values.update(changes)
    return RequestRecord(**values)
