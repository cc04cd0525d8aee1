"""A pool's time-to-first-token bound may grow with the prompt: typed in the admin, refused when negative
or on an end-to-end SLA, and shown in the pool's SLA label."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fleet.models import Pool
from tests.admin.test_pool_band import field_errors
from tests.admin.test_validation import pool_form

pytestmark = pytest.mark.django_db


def add(client: Client, **overrides: Any) -> Any:
    return client.post(reverse("admin:fleet_pool_add"), pool_form(**overrides))


def test_a_per_token_term_is_saved_and_labelled(admin_client: Client) -> None:
    assert add(admin_client, sla_ms_per_1k_prompt_tokens="20").status_code == 302
    pool = Pool.objects.get(name="chat-m")
    assert pool.sla_ms_per_1k_prompt_tokens == 20.0
    assert pool.ttft_bound_grows
    assert pool.sla_label == "P95 time to first token <= 500 ms + 20 ms per 1k prompt tokens"
    listing = admin_client.get(reverse("admin:fleet_pool_changelist")).content.decode()
    assert "500 ms + 20 ms per 1k prompt tokens" in listing


def test_zero_keeps_the_flat_bound_and_its_label(admin_client: Client) -> None:
    assert add(admin_client, sla_ms_per_1k_prompt_tokens="0").status_code == 302
    pool = Pool.objects.get(name="chat-m")
    assert not pool.ttft_bound_grows
    assert pool.sla_label == "P95 time to first token <= 500 ms"


def test_the_form_offers_the_field_with_its_help(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:fleet_pool_add")).content.decode()
    assert 'name="sla_ms_per_1k_prompt_tokens"' in html and 'value="0.0"' in html
    assert "each request is judged against the SLA latency plus this many ms per 1,000 prompt tokens" in html


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sla_ms_per_1k_prompt_tokens": "-5"}, "Ensure this value is greater than or equal to 0.0."),
        ({"sla_ms_per_1k_prompt_tokens": "a lot"}, "Enter a number."),
        (
            {"sla_ms_per_1k_prompt_tokens": "20", "sla_metric": "e2e"},
            "The per-prompt-token term lengthens the time-to-first-token bound; this pool's SLA metric is "
            "end-to-end latency. Set it to 0 or choose time to first token.",
        ),
    ],
)
def test_a_bad_per_token_term_is_refused_and_nothing_is_saved(
    admin_client: Client, overrides: dict[str, str], message: str
) -> None:
    response = add(admin_client, **overrides)
    assert field_errors(response) == {"sla_ms_per_1k_prompt_tokens": [message]}
    assert not Pool.objects.exists()
