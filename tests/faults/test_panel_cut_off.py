"""The agent cut off from the panel: containers untouched, buffered reports delivered in order, drops counted.

The panel is a real process on a private PostgreSQL cluster and is stopped outright (as
in a panel outage) for a compressed few seconds while the agent goes on sampling every
0.2 s with a buffer of only eight reports, so the outage overflows it: the oldest reports
are dropped and counted, the rest arrive in order once the panel is back on the same
address, and the container the panel had asked for keeps running throughout.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.faults.test_database_faults import Fleet, RecordingAgent, join_token_issue
from tests.support.panel_process import panel_manage, panel_process
from tests.support.private_postgres import PrivatePostgres, private_postgres

pytestmark = pytest.mark.services

__all__ = ["private_postgres"]
BUFFER = 8

PLACE_INSTANCE = """
from fleet.models import Gpu
from tests.factories import make_instance, make_pool
gpu = Gpu.objects.filter(node__name="h100-0").order_by("index").first()
print(make_instance(make_pool(), gpu, desired_state="running").pk)
"""


def test_panel_outage_leaves_containers_alone_and_delivers_the_buffer_in_order(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    panel_manage(private_postgres.url, "migrate", "--noinput")
    join = join_token_issue(private_postgres.url)
    log = tmp_path / "panel.log"
    with panel_process(private_postgres.url, log) as url:
        agent = RecordingAgent.started(url, tmp_path, "h100-0", join)
        object.__setattr__(agent.config, "buffer_size", BUFFER)
        agent.buffer.size = BUFFER
        assert agent.tick() is not None
        instance = int(panel_manage(private_postgres.url, "shell", "--no-imports", "-c", PLACE_INSTANCE))
        agent.tick()
        assert [call[:2] for call in agent.runtime.calls] == [("start", str(instance))]
        fleet = Fleet(url=url, cluster=private_postgres, agents=[agent])
        fleet.run()
        time.sleep(1)
    containers = dict(agent.runtime.containers)
    calls = len(agent.runtime.calls)
    time.sleep(4)  # the outage, compressed: twenty intervals, more than the buffer holds

    cut_off = (len(agent.buffer), agent.buffer.dropped, agent.failures)
    assert agent.runtime.calls[calls:] == [] and agent.runtime.containers == containers
    with panel_process(private_postgres.url, log, port=urlsplit(url).port):
        assert fleet.drained(within_s=40)
        fleet.halt()

    buffered, dropped, failures = cut_off
    assert buffered == BUFFER and dropped >= 5 and failures >= 1, cut_off
    assert agent.runtime.calls[calls:] == [] and agent.runtime.containers == containers
    fleet.assert_nothing_lost()
    in_order = private_postgres.psql(
        "SELECT bool_and(at >= previous) FROM "
        "(SELECT at, lag(at) OVER (ORDER BY id) AS previous FROM fleet_gpusample) AS samples"
    )
    assert in_order == "t"
    node = private_postgres.psql("SELECT reports_dropped FROM fleet_node WHERE name = 'h100-0'")
    assert int(node) == agent.buffer.dropped >= dropped
