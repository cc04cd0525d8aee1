"""Admin forms refuse invalid fleets with a message that says what is wrong, and save nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from fleet.models import Instance, ModelProfile, Pool
from tests.factories import chat_profile, inline_management, make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db


def pool_form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "chat-m",
        "tier": "M",
        "isolation": "shared",
        "model_profile": chat_profile().pk,
        "gpu_model": "",
        "mig_profile": "",
        "enabled": "on",
        "sla_metric": "ttft",
        "sla_percentile": 95,
        "sla_latency_ms": 500,
        "sla_ms_per_1k_prompt_tokens": 0,
        "util_band_low": "50",
        "util_band_high": "65",
        "min_instances": 0,
        "max_instances": 4,
        "idle_minimize_after_s": 300,
        "idle_stop_after_s": 600,
        "prewarm_margin_s": 30,
        **inline_management("instances"),
    }
    data.update(overrides)
    return data


def post_pool(client: Client, **overrides: Any) -> str:
    response = client.post(reverse("admin:fleet_pool_add"), pool_form(**overrides))
    return response.content.decode()


def test_valid_pool_is_saved(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:fleet_pool_add"), pool_form())
    assert response.status_code == 302
    assert Pool.objects.filter(name="chat-m").exists()


def test_mig_pool_on_a_gpu_model_without_mig_is_refused(admin_client: Client) -> None:
    page = post_pool(admin_client, isolation="mig", gpu_model="NVIDIA A10G", mig_profile="1g.5gb")
    assert "NVIDIA A10G has no MIG, so a MIG-slice pool cannot run on it" in page
    assert not Pool.objects.exists()


def test_mig_pool_with_a_profile_the_gpu_does_not_offer_is_refused(admin_client: Client) -> None:
    page = post_pool(admin_client, isolation="mig", gpu_model="NVIDIA H100 80GB HBM3", mig_profile="1g.5gb")
    assert "offers 1g.10gb" in page
    assert not Pool.objects.exists()


def test_mig_pool_on_h100_is_accepted(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:fleet_pool_add"),
        pool_form(isolation="mig", gpu_model="NVIDIA H100 80GB HBM3", mig_profile="1g.10gb"),
    )
    assert response.status_code == 302


def test_min_instances_above_max_is_refused(admin_client: Client) -> None:
    page = post_pool(admin_client, min_instances=5, max_instances=2)
    assert "Minimum instances (5) is above maximum (2)." in page
    assert not Pool.objects.exists()


def profile_form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "qwen-custom",
        "use_case": "custom",
        "image": "vllm/vllm-openai:v0.11.0",
        "model": "Qwen/Qwen3-4B-Instruct-2507",
        "served_name": "qwen-custom",
        "tokenizer": "",
        "notes": "",
        "context_limit": "",
        "max_model_len": 8192,
        "max_num_seqs": 64,
        "dtype": "bfloat16",
        "quantization": "",
        "kv_cache_dtype": "auto",
        "gpu_memory_utilization": 0.9,
        "extra_args": "[]",
        "env": "{}",
        "volumes": "{}",
    }
    data.update(overrides)
    return data


def test_max_model_len_above_what_the_model_supports_is_refused(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:fleet_modelprofile_add"), profile_form(max_model_len=300_000))
    assert (
        "Qwen/Qwen3-4B-Instruct-2507 supports at most 262,144 tokens; 300,000 requested." in response.content.decode()
    )
    assert not ModelProfile.objects.filter(name="qwen-custom").exists()


def test_context_limit_given_by_the_user_applies_to_unknown_models(admin_client: Client) -> None:
    page = admin_client.post(
        reverse("admin:fleet_modelprofile_add"),
        profile_form(model="acme/tiny", context_limit=4096, max_model_len=8192),
    ).content.decode()
    assert "acme/tiny supports at most 4,096 tokens; 8,192 requested." in page


def test_unknown_quantization_is_refused(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:fleet_modelprofile_add"), profile_form(quantization="int3"))
    assert "Select a valid choice. int3 is not one of the available choices." in response.content.decode()
    assert not ModelProfile.objects.filter(name="qwen-custom").exists()


def test_unknown_quantization_is_refused_outside_the_admin_too() -> None:
    profile = ModelProfile(
        **{**profile_form(quantization="int3"), "context_limit": None, "extra_args": [], "env": {}, "volumes": {}}
    )
    with pytest.raises(ValidationError, match="Unknown quantization 'int3'"):
        profile.full_clean()


def test_extra_args_must_be_a_list_of_strings(admin_client: Client) -> None:
    page = admin_client.post(
        reverse("admin:fleet_modelprofile_add"), profile_form(extra_args='{"not": "a list"}')
    ).content.decode()
    assert "Enter a JSON list of strings" in page


def test_valid_profile_is_saved_and_shows_its_memory_arithmetic(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:fleet_modelprofile_add"), profile_form(max_model_len=32_768))
    assert response.status_code == 302
    profile = ModelProfile.objects.get(name="qwen-custom")
    page = admin_client.get(reverse("admin:fleet_modelprofile_change", args=[profile.pk])).content.decode()
    assert "2 × 36 layers × 8 KV heads × 128 head dim × 2 B = 144 KiB" in page
    assert "32,768-token sequence: 4.50 GiB of KV cache" in page


def test_instance_of_a_mig_pool_on_a_gpu_without_mig_is_refused(admin_client: Client) -> None:
    pool = make_pool(name="chat-mig", tier="M", isolation="mig", mig_profile="1g.10gb")
    gpu = make_gpu(make_node(), model_name="NVIDIA L4")
    response = admin_client.post(
        reverse("admin:fleet_instance_add"),
        {"pool": pool.pk, "gpu": gpu.pk, "mig_device": "", "desired_state": "running"},
    )
    assert "has MIG not supported; pool chat-mig needs a MIG slice." in response.content.decode()
    assert not Instance.objects.exists()


def test_json_boxes_left_empty_mean_none(admin_client: Client) -> None:
    """Found by the form fuzzer: an emptied box was a server error on PostgreSQL."""
    response = admin_client.post(
        reverse("admin:fleet_modelprofile_add"), profile_form(extra_args="", env="", volumes="")
    )
    assert response.status_code == 302
    profile = ModelProfile.objects.get(name="qwen-custom")
    assert (profile.extra_args, profile.env, profile.volumes) == ([], {}, {})
