"""The links of the decisions and instances tables, whose URLs the views reverse once per pool,
node and policy rather than once per row: every row still links where it did."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.models import Decision, Policy
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


def hrefs(html: str, row: str) -> list[str]:
    """The links of the table row whose opening tag holds ``row`` (``data-decision="7"``)."""
    found = re.search(rf"<tr {re.escape(row)}.*?</tr>", html, re.S)
    assert found is not None, f"no row {row}"
    return re.findall(r'(?:href|action)="([^"]+)"', found.group(0))


@pytest.fixture
def fleet():
    """Two pools, a node each, an instance each; a decision per instance, one by a pool's policy."""
    chat, code = make_pool("chat-l"), make_pool("code-m")
    one = make_instance(chat, make_gpu(make_node("rack1")), actual_state="ready")
    two = make_instance(code, make_gpu(make_node("rack2")), actual_state="ready")
    policy = Policy.objects.create(kind="autoscale", pool=code)
    at = timezone.now() - timedelta(minutes=5)
    by_hand = Decision.objects.create(policy_kind="manual", pool=chat, instance=one, action="stop", reason="r")
    by_policy = Decision.objects.create(
        policy_kind="autoscale", policy=policy, pool=code, instance=two, action="start", reason="r"
    )
    Decision.objects.filter(pk__in=[by_hand.pk, by_policy.pk]).update(created_at=at)
    return {"one": one, "two": two, "policy": policy, "by_hand": by_hand, "by_policy": by_policy}


def test_each_decision_row_links_its_own_pool_and_policy(admin_client: Client, fleet) -> None:
    """On the decisions page and on each pool's page: the decision, its pool and (if a policy
    decided it) the policy's admin page; a person's decision links no policy."""
    by_hand, by_policy, policy = fleet["by_hand"], fleet["by_policy"], fleet["policy"]
    chat, code = fleet["one"].pool, fleet["two"].pool
    expected = {
        by_hand.pk: [reverse("dashboard:decision", args=[by_hand.pk]), reverse("dashboard:pool", args=[chat.pk])],
        by_policy.pk: [
            reverse("dashboard:decision", args=[by_policy.pk]),
            reverse("admin:fleet_policy_change", args=[policy.pk]),
            reverse("dashboard:pool", args=[code.pk]),
        ],
    }
    page = admin_client.get(reverse("dashboard:decisions")).content.decode()
    for pk, links in expected.items():
        assert hrefs(page, f'data-decision="{pk}"') == links
    for pool, decision in ((chat, by_hand), (code, by_policy)):
        page = admin_client.get(reverse("dashboard:pool", args=[pool.pk])).content.decode()
        assert hrefs(page, f'data-decision="{decision.pk}"') == expected[decision.pk]


def test_each_instance_row_links_its_own_pool_node_and_actions(admin_client: Client, fleet) -> None:
    """A running instance offers stop and sleep, both posted to its own action URL."""
    page = admin_client.get(reverse("dashboard:instances")).content.decode()
    for instance in (fleet["one"], fleet["two"]):
        action = reverse("dashboard:instance-action", args=[instance.pk])
        assert hrefs(page, f'data-instance="{instance.pk}"') == [
            reverse("dashboard:pool", args=[instance.pool_id]),
            reverse("dashboard:node", args=[instance.gpu.node_id]),
            action,
            action,
        ]
