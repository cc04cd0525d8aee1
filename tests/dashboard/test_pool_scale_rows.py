"""The instances page's pool rows: the count each +1/-1 button claims on, per pool, in one query."""

from __future__ import annotations

import pytest

from dashboard.selectors import instances_page
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db


def test_each_pool_counts_its_instances_not_desired_stopped() -> None:
    """chat-l: running, sleeping and stopped -> 2; code-l: one stopped -> 0; summary-l: none -> 0."""
    chat, code, summary = make_pool("chat-l"), make_pool("code-l"), make_pool("summary-l")
    for state in ("running", "sleeping", "stopped"):
        make_instance(chat, desired_state=state)
    make_instance(code, desired_state="stopped")

    rows = {row.pool.name: row.active for row in instances_page().pools}

    assert rows == {chat.name: 2, code.name: 0, summary.name: 0}
