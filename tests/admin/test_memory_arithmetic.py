"""The admin shows a profile's memory needs with the figure placement uses, worked out by hand."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from fleet import selectors
from fleet.models import ModelProfile
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def test_a_float32_profile_shows_4_byte_weights_the_overhead_and_the_figure_placement_uses(
    admin_client: Client,
) -> None:
    profile = ModelProfile.objects.create(
        name="qwen-fp32",
        model="Qwen/Qwen3-4B-Instruct-2507",
        served_name="qwen-fp32",
        dtype="float32",
        max_model_len=8_192,
    )
    pool = make_pool("chat-fp32", model_profile=profile)
    # By hand: weights 4,022,468,096 parameters x 32 bit / 8 = 16,089,872,384 B (14.98 GiB);
    # KV cache 2 x 36 layers x 8 KV heads x 128 head dim x 4 B = 294,912 B = 288 KiB a token,
    # x 8,192 tokens = 2,415,919,104 B (2.25 GiB); overhead 1.5 GiB = 1,610,612,736 B.
    # Needed: 16,089,872,384 + 2,415,919,104 + 1,610,612,736 = 20,116,404,224 B = 18.73 GiB.
    estimate = selectors.fleet_snapshot().pool(pool.pk).estimate
    assert estimate is not None and estimate.required_bytes == 20_116_404_224

    page = admin_client.get(reverse("admin:fleet_modelprofile_change", args=[profile.pk])).content.decode()

    assert "2 × 36 layers × 8 KV heads × 128 head dim × 4 B = 288 KiB" in page
    assert "One 8,192-token sequence: 2.25 GiB of KV cache" in page
    assert "4,022,468,096 parameters × 32 bits ≈ 14.98 GiB" in page
    assert "overhead 1.50 GiB" in page
    assert "Needs 18.73 GiB" in page
