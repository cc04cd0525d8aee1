"""Admin forms and lists label their fields as people write them, not as the code names them."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from fleet.models import Policy
from tests.factories import make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db

# A label that reads like code: an acronym in title case ("Gpu", "Mig"), an underscore, or a unit
# left as the bare suffix of a field name ("Sla latency ms", "Memory total bytes").
CODE_LIKE = re.compile(r"\b(Gpus?|Mig|Sla|Kv|Nvml|Uuid|Vllm|Ttft|Rcf|Id|Seqs|Len|Pct)\b|_|\s(ms|s|pct|bytes|gib|mb)$")
LABEL = re.compile(r"<(label|th)\b[^>]*>(.*?)</\1>", re.S)


def labels(html: str) -> set[str]:
    texts = (re.sub(r"<[^>]+>", "", text).strip().rstrip(":").strip() for _, text in LABEL.findall(html))
    return {text for text in texts if text}


def pool_url() -> str:
    return reverse("admin:fleet_pool_add")


def profile_url() -> str:
    return reverse("admin:fleet_modelprofile_add")


def node_url() -> str:
    node = make_node()
    make_gpu(node)
    return reverse("admin:fleet_node_change", args=[node.pk])


def gpu_url() -> str:
    return reverse("admin:fleet_gpu_change", args=[make_gpu(make_node(), model_name="NVIDIA H100 80GB HBM3").pk])


def price_url() -> str:
    return reverse("admin:fleet_pricerate_add")


def policy_url() -> str:
    return reverse("admin:fleet_policy_change", args=[Policy.objects.get(kind="routing", pool=None).pk])


PAGES: list[tuple[Callable[[], str], set[str]]] = [
    (pool_url, {"GPU model", "MIG profile", "SLA metric", "SLA percentile", "SLA latency (ms)"}),
    (profile_url, {"KV-cache dtype", "GPU memory utilization", "Max model length (tokens)"}),
    (node_url, {"GPU model", "MIG mode", "UUID", "NVML available"}),
    (gpu_url, {"GPU model", "MIG capable", "Memory (bytes)"}),
    (price_url, {"GPU model", "Price per GPU-hour"}),
    (policy_url, {"RCF cap", "S tier from RCF", "M tier from RCF"}),
]


@pytest.mark.parametrize(("url", "expected"), PAGES, ids=lambda value: getattr(value, "__name__", ""))
def test_form_labels_read_as_people_write_them(
    admin_client: Client, url: Callable[[], str], expected: set[str]
) -> None:
    shown = labels(admin_client.get(url()).content.decode())
    assert expected <= shown
    assert not {label for label in shown if CODE_LIKE.search(label)}


@pytest.mark.parametrize("model", ["pool", "modelprofile", "node", "gpu", "pricerate", "policy"])
def test_list_columns_read_as_people_write_them(admin_client: Client, model: str) -> None:
    make_gpu(make_node())
    make_pool()
    shown = labels(admin_client.get(reverse(f"admin:fleet_{model}_changelist")).content.decode())
    assert shown
    assert not {label for label in shown if CODE_LIKE.search(label)}
