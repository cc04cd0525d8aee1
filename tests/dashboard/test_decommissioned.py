"""A decommissioned host is shown as such with its history, and left out of what is live."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.decide.services import node_decommission
from tests.dashboard.history import gpu_rollups
from tests.dashboard.test_pages import figures_in
from tests.factories import make_gpu, make_node

pytestmark = pytest.mark.django_db

BADGE = '<span class="badge decommissioned">decommissioned</span>'


def test_pages_mark_a_decommissioned_host_keep_its_history_and_leave_it_out_of_the_live_chart(
    admin_client: Client,
) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    kept, gone = make_node("rack1-kept"), make_node("rack1-gone")
    for node in (kept, gone):
        gpu_rollups(make_gpu(node, 0), now - timedelta(minutes=30), 30)

    node_decommission(node=gone)

    overview = admin_client.get(reverse("dashboard:index") + "?range=1h").content.decode()
    rows = overview.split('<table id="nodes">', 1)[1].split("</table>", 1)[0].split("<tr>")
    assert [BADGE in row for row in rows if "rack1-" in row] == [False, True]  # live hosts first, then the others
    charts = figures_in(overview)
    assert [trace["name"] for trace in charts["live"]["data"]] == ["rack1-kept/0"]
    assert charts["heatmap"]["data"][0]["y"] == ["rack1-gone/0", "rack1-kept/0"], "its last half hour is history"

    page = admin_client.get(reverse("dashboard:node", args=[gone.pk]) + "?range=1h").content.decode()
    assert BADGE in page
    assert set(figures_in(page)) == {"utilization", "memory", "power", "temperature"}
