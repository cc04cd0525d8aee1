"""The admin is usable from the first run: every page renders, presets are there, secrets are shown once."""

from __future__ import annotations

import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from fleet.models import ApiKey, ModelProfile, Node, Policy, PriceRate, Team
from fleet.tokens import token_hash
from tests.factories import make_gpu, make_instance, make_node, make_pool, node_form

pytestmark = pytest.mark.django_db

FLEET_MODELS = [model for model in apps.get_app_config("fleet").get_models() if model in admin.site._registry]


@pytest.mark.parametrize("model", FLEET_MODELS, ids=lambda model: model.__name__)
def test_every_fleet_admin_page_renders(admin_client: Client, model: type) -> None:
    node = make_node()
    pool = make_pool()
    make_instance(pool, make_gpu(node))
    opts = model._meta
    changelist = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert changelist.status_code == 200
    first = model.objects.first()
    if first is not None:
        change = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk]))
        assert change.status_code == 200


def test_every_fleet_model_but_telemetry_is_in_the_admin() -> None:
    """Samples and rollups are too many to page through; the dashboard charts them instead."""
    telemetry = {
        "GpuSample",
        "InstanceSample",
        "GpuMinute",
        "GpuHour",
        "GpuDay",
        "PoolMinute",
        "PoolHour",
        "UsageHour",
        "RollupWatermark",
    }
    assert {model.__name__ for model in FLEET_MODELS} == {
        model.__name__ for model in apps.get_app_config("fleet").get_models()
    } - telemetry


def test_use_case_presets_are_there_from_the_first_run(admin_client: Client) -> None:
    presets = {profile.name: profile for profile in ModelProfile.objects.all()}
    for use_case, max_len in (("chat", 8_192), ("summary", 65_536), ("code", 32_768)):
        bf16, awq = presets[f"qwen3-4b-{use_case}-bf16"], presets[f"qwen3-4b-{use_case}-awq"]
        assert bf16.max_model_len == awq.max_model_len == max_len
        assert (bf16.quantization, bf16.dtype) == ("", "bfloat16")
        assert awq.quantization == "awq"
    assert presets["qwen3-4b-summary-bf16"].enable_prefix_caching
    assert not presets["qwen3-4b-chat-bf16"].enable_prefix_caching
    page = admin_client.get(reverse("admin:fleet_modelprofile_changelist")).content.decode()
    assert "qwen3-4b-code-awq" in page


def test_price_presets_state_their_source_and_date() -> None:
    rates = PriceRate.objects.filter(node=None)
    assert {rate.gpu_model for rate in rates} >= {"NVIDIA A10G", "NVIDIA L4", "NVIDIA H100 80GB HBM3"}
    for rate in rates:
        assert rate.source.startswith("AWS EC2 On-Demand")
        assert rate.source_date is not None
        assert rate.price_per_gpu_hour > 0


def test_fleet_policies_exist_with_method_defaults() -> None:
    routing = Policy.objects.get(kind="routing", pool=None)
    assert (routing.settings["tier_s_min"], routing.settings["tier_m_min"], routing.settings["cap"]) == (3.0, 1.2, 5.0)


def test_new_node_token_is_shown_once_and_stored_hashed(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:fleet_node_add"),
        node_form("gpu-host-9"),
        follow=True,
    )
    match = re.search(r"\(shown once, store it now\): (gfn_[\w-]+)", response.content.decode())
    assert match, "the token is shown after creating a node"
    token = match.group(1)
    node = Node.objects.get(name="gpu-host-9")
    assert node.token_hash == token_hash(token)
    assert token not in str(Node.objects.filter(pk=node.pk).values().get())
    page = admin_client.get(reverse("admin:fleet_node_change", args=[node.pk])).content.decode()
    assert token not in page


def test_api_key_is_shown_once_and_revocable(admin_client: Client) -> None:
    team = Team.objects.create(name="Search", slug="search")
    response = admin_client.post(reverse("admin:fleet_apikey_add"), {"team": team.pk, "name": "prod"}, follow=True)
    match = re.search(r"(gfk_[\w-]+)", response.content.decode())
    assert match
    key = ApiKey.objects.get(team=team)
    assert key.key_hash == token_hash(match.group(1))
    admin_client.post(
        reverse("admin:fleet_apikey_changelist"),
        {"action": "revoke", "_selected_action": [key.pk]},
    )
    key.refresh_from_db()
    assert key.revoked_at is not None
