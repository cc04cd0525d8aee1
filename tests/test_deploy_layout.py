"""The control plane as deploy/ runs it, one process of each kind killed in turn: nothing acknowledged is lost.

Everything is started once for the module from the shipped files (``tests.support.deploy_layout``):
each process from its systemd unit's ``ExecStart`` with the environment of
``deploy/gpufleet.env.example`` (test database, Redis and ports filled in), nginx from
``deploy/nginx/gpufleet.conf`` with its upstream ports mapped to this test's, serving HTTPS
with a self-signed certificate the test makes and every client verifies.
Behind nginx: two panel replicas (ASGI), two report replicas (WSGI), two gateways, two Celery
workers and two beats, a private PostgreSQL and Redis. Three agent loops report through nginx
every 0.2 s; a real agent (``python -m agents``, simulated A100s, the demo's engines) reports
every second and runs the instances the gateways route to; two clients of the official
``openai`` package ask for completions through nginx without a pause, with the client's own
retries. A task is due every second on beat's schedule.

The tests run in order on the one layout: each kills one process of one kind with SIGKILL
(panel, report replica, gateway holding requests, worker, beat holding the lock, Redis),
measures how long until the system served again, and starts it again; the last checks what
the whole run must show: every acknowledged report stored once, every completion answered,
no decision applied twice, beat's task sent once per period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from fleet.project.beat import beat_lock_holder
from tests.faults.test_database_faults import Fleet
from tests.support.deploy_layout import (
    BEAT_LOCK_RETRY_S,
    BEAT_LOCK_TTL_S,
    KEYS_SETUP,
    POOLS_SETUP,
    Call,
    CountingTransport,
    GatewayLoad,
    Layout,
    SimulatedHost,
    TimedAgent,
    completion,
    deploy_layout,
    openai_client,
    wait_for,
)
from tests.support.deploy_site import GATEWAY_PORTS, PANEL_PORTS, REPORT_PORTS
from tests.support.private_postgres import PrivatePostgres
from tests.support.private_redis import PrivateRedis

pytestmark = pytest.mark.services

# Slack on a loaded 2-core machine for anything that should take a second or two.
SLOW_S = 60.0
# The simulated engine's load time: the window in which a cold pool's requests are held.
COLD_START_S = 4.0


@dataclass
class Site:
    layout: Layout
    cluster: PrivatePostgres
    redis_server: PrivateRedis
    fleet: Fleet
    load: GatewayLoad
    host: SimulatedHost
    pools: dict[str, int]
    key: str
    started: float
    # What each kill showed, printed by the last test.
    figures: list[dict[str, Any]] = field(default_factory=list)
    takeovers: int = 0

    @property
    def url(self) -> str:
        return self.layout.url

    def sql(self, query: str) -> str:
        return self.cluster.psql(query)

    def acked_since(self, since: float) -> float | None:
        """When every agent had a report acknowledged after ``since`` (the last of them), if all had."""
        firsts = [next((at for at in list(agent.acked_at) if at > since), None) for agent in self.agents]
        return None if None in firsts else max(at for at in firsts if at is not None)

    @property
    def agents(self) -> list[TimedAgent]:
        return [agent for agent in self.fleet.agents if isinstance(agent, TimedAgent)]

    def acked(self) -> int:
        return sum(len(agent.acked) for agent in self.fleet.agents)

    def note(self, kind: str, killed: float, served: float, **more: Any) -> None:
        self.figures.append({"killed": kind, "served_again_s": round(served - killed, 2), **more})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("layout")
    with deploy_layout(root) as (layout, cluster, redis_server):
        secrets = layout.shell(KEYS_SETUP)
        host = SimulatedHost(layout.url, root, gpus=4, cold_start_s=COLD_START_S, ca=layout.ca)
        agents = [
            TimedAgent.started(layout.url, root, f"h100-{n}", secrets["join"], verify=layout.verify) for n in range(3)
        ]
        fleet = Fleet(url=layout.url, cluster=cluster, agents=list(agents))
        load = GatewayLoad(layout.url, secrets["key"], "chat-sim", verify=layout.verify)
        try:
            host.start(secrets["join"])
            gpus = (
                f"SELECT count(*) FROM fleet_gpu g JOIN fleet_node n ON n.id = g.node_id WHERE n.name = '{host.name}'"
            )
            wait_for("the simulated host's GPUs", lambda: cluster.psql(gpus) == "4", SLOW_S, every_s=0.5)
            pools = layout.shell(POOLS_SETUP % host.name)
            ready = f"SELECT actual_state FROM fleet_instance WHERE id = {pools['instance']}"
            wait_for("the chat instance ready", lambda: cluster.psql(ready) == "ready", SLOW_S, every_s=0.5)
            transport = CountingTransport(layout.verify)
            client = openai_client(layout.url, secrets["key"], transport)
            wait_for("a completion through nginx", lambda: completion(client, transport, "chat-sim").ok, SLOW_S)
            fleet.run()
            load.run()
            yield Site(layout, cluster, redis_server, fleet, load, host, pools, secrets["key"], time.monotonic())
        finally:
            load.halt()
            fleet.halt()
            host.stop()


def upstreams(lines: list[str], prefix: str, status: str = "200") -> list[str]:
    """The replica that gave ``status`` to each request nginx logged whose path starts with ``prefix``.

    A request nginx first sent to a dead replica logs both, ``A, B``: B answered.
    """
    answered = []
    for line in lines:
        _method, path, logged, tried = line.split(" ", 3)
        if path.startswith(prefix) and logged == status:
            answered.append(tried.split(", ")[-1])
    return answered


def address(unit_port: int | None) -> str:
    return f"127.0.0.1:{unit_port}"


def test_every_replica_serves_through_nginx(site: Site) -> None:
    """Pages, a static file, the socket path (403 from the socket consumer: not signed in, where a
    404 would mean nginx did not pass the upgrade on), and both replicas of each pool answering."""
    url, layout = site.url, site.layout
    page = layout.get("/admin/login/", timeout=10)
    assert page.status_code == 200 and "csrfmiddlewaretoken" in page.text
    assert layout.get("/static/admin/css/base.css", timeout=10).status_code == 200
    socket = layout.get(
        "/ws/fleet/",
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "origin": url,
        },
        timeout=10,
    )
    assert socket.status_code == 403, (socket.status_code, socket.text[:200])
    models = layout.get("/v1/models", headers={"authorization": f"Bearer {site.key}"}, timeout=10)
    assert {"chat-sim", "cold-sim"} <= {model["id"] for model in models.json()["data"]}, models.text[:300]

    def both(prefix: str, kind: str, ports: tuple[int, ...]) -> bool:
        wanted = {address(layout.units[f"{kind}-{port}"].port) for port in ports}
        return set(upstreams(layout.access_log(), prefix)) >= wanted

    wait_for("reports on both report replicas", lambda: both("/api/agent/v1/report", "reports", REPORT_PORTS), SLOW_S)
    wait_for("completions on both gateways", lambda: both("/v1/chat/completions", "gateway", GATEWAY_PORTS), SLOW_S)

    def pages_on_both() -> bool:
        # The agents' long polls share the panel's upstream, so two pages in a row may meet the
        # same replica: ask again until each replica has answered one (or SLOW_S passes).
        layout.get("/admin/login/", timeout=10)
        return both("/admin/login/", "panel", PANEL_PORTS)

    wait_for("pages on both panel replicas", pages_on_both, SLOW_S)


def beat_holder(site: Site) -> str:
    """The beat (``beat-1`` or ``beat-2``) that holds the beat lock."""
    client = redis.Redis.from_url(site.redis_server.url, socket_timeout=2)
    holder = wait_for("a beat holding the lock", lambda: beat_lock_holder(client), SLOW_S)
    pid = int(holder[0].split(":")[1])
    names = [name for name, unit in site.layout.units.items() if unit.kind == "beat" and unit.process.pid == pid]
    assert names, f"the lock names {holder[0]}, not a running beat"
    return names[0]


def one_beat_sends_once_a_second(site: Site, window_s: float = 5.0) -> str:
    """Over ``window_s`` with both beats up, only the holder sends, about once a second, never more."""
    holder = beat_holder(site)
    wait_for("the holder sending", lambda: site.layout.sends()[holder] > 0, SLOW_S)
    before, started = site.layout.sends(), time.monotonic()
    time.sleep(window_s)
    after, elapsed = site.layout.sends(), time.monotonic() - started
    sent = {name: after[name] - before[name] for name in after}
    standby = next(name for name in sent if name != holder)
    assert sent[standby] == 0, f"the standby beat sent: {sent}"
    # One send a period (1 s): at most one more than the whole seconds elapsed, one at the edge.
    assert 0.5 * elapsed <= sent[holder] <= elapsed + 1, (sent, elapsed)
    return holder


def test_two_beats_send_each_task_once_a_period_and_two_workers_run_each_once(site: Site) -> None:
    one_beat_sends_once_a_second(site)
    runs = site.layout.runs()
    ids = [task for tasks in runs.values() for task in tasks]
    assert ids and len(ids) == len(set(ids)), "a task run twice"
    wait_for("both workers running the task", lambda: all(site.layout.runs().values()), SLOW_S)


def test_killing_a_panel_replica_pages_still_served(site: Site) -> None:
    """nginx skips the dead replica: every page asked for after the kill is served."""
    layout = site.layout
    killed = layout.kill("panel-8010")
    answered: list[float] = []
    failed = 0
    while time.monotonic() - killed < 2 or not answered:
        try:
            page = layout.get("/admin/login/", timeout=10)
            if page.status_code == 200:
                answered.append(time.monotonic())
            else:
                failed += 1
        except httpx.HTTPError:
            failed += 1
        assert time.monotonic() - killed < SLOW_S, "no page served after the panel replica's kill"
    assert failed == 0, f"{failed} pages not served after the kill"
    site.note("panel", killed, answered[0], pages=len(answered), pages_failed=failed)
    layout.restart("panel-8010")


def test_killing_a_report_replica_reports_still_acknowledged(site: Site) -> None:
    layout = site.layout
    killed = layout.kill("reports-8020")
    acked_before = site.acked()
    served = wait_for("every agent acknowledged after the kill", lambda: site.acked_since(killed), SLOW_S)
    time.sleep(1)
    failures = sum(1 for agent in site.agents for at in list(agent.failed_at) if at > killed)
    # Past the requests in flight at the kill, only the surviving replica answers reports.
    survivor = address(layout.units["reports-8021"].port)
    lines = layout.access_log()[-30:]
    assert set(upstreams(lines, "/api/agent/v1/report")) == {survivor}, lines
    site.note("report replica", killed, served, agent_retries=failures, acked=site.acked() - acked_before)
    layout.restart("reports-8020")


def held_completion(site: Site, calls: list[Call]) -> None:
    transport = CountingTransport(site.layout.verify)
    calls.append(completion(openai_client(site.url, site.key, transport), transport, "cold-sim"))


def test_a_gateway_killed_while_holding_requests_for_a_cold_pool(site: Site) -> None:
    """Six clients ask for the cold pool's model at once: nginx spreads them over both gateways,
    which hold them and both want the pool woken. One instance is started, by one decision.
    The gateway 8030 is killed while it holds requests: nginx answers them 502 (a POST it had
    sent is not sent again), the client retries, nginx sends the retry to the other gateway,
    and every request is answered once the instance is ready."""
    layout, pools = site.layout, site.pools
    calls: list[Call] = []
    threads = [threading.Thread(target=held_completion, args=(site, calls), daemon=True) for _ in range(6)]
    decisions = f"SELECT count(*) FROM fleet_decision WHERE pool_id = {pools['cold']} AND policy_kind = 'gateway'"
    asked = time.monotonic()
    for thread in threads:
        thread.start()
    wait_for("the gateways' wake-up decision", lambda: int(site.sql(decisions)) > 0, SLOW_S)
    time.sleep(0.5)
    ready = f"SELECT count(*) FROM fleet_instance WHERE pool_id = {pools['cold']} AND actual_state = 'ready'"
    assert site.sql(ready) == "0", "the cold pool's instance was ready before the gateway's kill: nothing held"
    lines_before = len(layout.access_log())
    killed = layout.kill("gateway-8030")
    deadline = time.monotonic() + 2 * SLOW_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "held requests not answered"
    served = wait_for("a completion of the load after the kill", lambda: site.load.served_since(killed), SLOW_S)
    assert len(calls) == 6 and all(call.ok for call in calls), [call.error for call in calls if not call.ok]
    dead = address(layout.units["gateway-8030"].port)
    cut = [line for line in layout.access_log()[lines_before:] if " 502 " in line and dead in line]
    held_retries = sum(call.retries for call in calls)
    assert held_retries >= 1 and cut, "no held request of the killed gateway was retried"
    # Two gateways saw the pool empty: one instance, started by one applied decision.
    instances = site.sql(f"SELECT count(*) FROM fleet_instance WHERE pool_id = {pools['cold']}")
    assert instances == "1", f"{instances} instances started for one wake-up"
    applied = site.sql(
        f"SELECT policy_kind || ':' || action FROM fleet_decision WHERE pool_id = {pools['cold']} "
        "AND applied_at IS NOT NULL"
    )
    assert applied.split() == ["gateway:launch"], applied
    # The gateway that lost the claim found the instance on its way: no "wake failed" either.
    refused = site.sql(f"SELECT reason FROM fleet_decision WHERE pool_id = {pools['cold']} AND action = 'wake_failed'")
    assert refused == "", f"a wake-up logged as failed while another gateway's was on its way: {refused}"
    site.note(
        "gateway",
        killed,
        served.finished,
        held_served_s=round(max(call.finished for call in calls) - asked, 2),
        held_retries=held_retries,
        cut_502=len(cut),
        load_retries=site.load.retries_between(killed, time.monotonic()),
    )
    layout.restart("gateway-8030")


def test_killing_a_worker_the_other_runs_the_tasks(site: Site) -> None:
    layout = site.layout
    before = len(layout.runs()["worker-2"])
    killed = layout.kill("worker-1")
    wait_for("the other worker running a task", lambda: len(layout.runs()["worker-2"]) > before, SLOW_S)
    site.note("worker", killed, time.monotonic())
    layout.restart("worker-1")


def test_killing_the_beat_holding_the_lock_the_other_takes_over(site: Site) -> None:
    """The standby sends within the lock's TTL, one retry and the task's period (plus slack) of the kill;
    the killed beat, started again, waits as the standby."""
    layout = site.layout
    holder = beat_holder(site)
    standby = "beat-2" if holder == "beat-1" else "beat-1"
    before = layout.sends()[standby]
    killed = layout.kill(holder)
    wait_for("the standby sending", lambda: layout.sends()[standby] > before, SLOW_S)
    took_over_s = time.monotonic() - killed
    site.takeovers += 1
    assert took_over_s <= BEAT_LOCK_TTL_S + BEAT_LOCK_RETRY_S + 1 + 10, took_over_s
    site.note("beat", killed, time.monotonic())
    layout.restart(holder)
    assert one_beat_sends_once_a_second(site) == standby


def test_redis_killed_and_restarted_everything_comes_back(site: Site) -> None:
    """Redis (broker, beat lock, channels, shared counters) killed for 3 s and started on its port:
    beat, workers, reports and completions all go on once it is back."""
    layout = site.layout
    sends, runs = sum(layout.sends().values()), sum(len(ids) for ids in layout.runs().values())
    site.redis_server.stop()  # SIGKILL
    killed = time.monotonic()
    time.sleep(3)
    site.redis_server.start()
    back = time.monotonic()
    site.takeovers += 1
    wait_for("beat sending again", lambda: sum(layout.sends().values()) > sends + 1, SLOW_S)
    beat_s = time.monotonic() - back
    wait_for("a worker running again", lambda: sum(len(ids) for ids in layout.runs().values()) > runs + 1, SLOW_S)
    worker_s = time.monotonic() - back
    reports = wait_for("every agent acknowledged", lambda: site.acked_since(back), SLOW_S)
    served = wait_for("a completion", lambda: site.load.served_since(back), SLOW_S)
    site.note(
        "redis (3 s down)",
        killed,
        max(reports, served.finished),
        beat_after_restart_s=round(beat_s, 2),
        worker_after_restart_s=round(worker_s, 2),
        load_retries=site.load.retries_between(killed, time.monotonic()),
    )
    one_beat_sends_once_a_second(site)


def test_the_whole_run_lost_nothing_and_did_nothing_twice(site: Site) -> None:
    layout, fleet, load = site.layout, site.fleet, site.load
    load.halt()
    assert load.calls and all(call.ok for call in load.calls), [call.error for call in load.calls if not call.ok]
    assert fleet.drained(within_s=SLOW_S), [len(agent.buffer) for agent in fleet.agents]
    fleet.halt()
    elapsed = time.monotonic() - site.started
    stored = fleet.assert_nothing_lost()
    # No decision applied twice: one applied decision per instance and action (a pool's decisions that
    # move no instance, a refused wake or a guard's refusal, may rightly repeat).
    twice = site.sql(
        "SELECT instance_id, action, count(*) FROM fleet_decision WHERE applied_at IS NOT NULL "
        "AND instance_id IS NOT NULL GROUP BY instance_id, action HAVING count(*) > 1"
    )
    assert twice == "", twice
    # Beat's task once a period: at most one send a second, plus one per takeover (the send the
    # old holder made but had not recorded), since the first beat started.
    sends = sum(layout.sends().values())
    beating_s = time.monotonic() - min(layout.began[name] for name in layout.sends())
    assert sends <= beating_s + 1 + site.takeovers, (sends, beating_s)
    ids = [task for tasks in layout.runs().values() for task in tasks]
    assert len(ids) == len(set(ids)), "a task run twice"
    retries = sum(call.retries for call in load.calls)
    print(f"\nrun of {elapsed:.0f} s after the start:")
    print(f"  {stored} reports acknowledged, each stored once; {len(load.calls)} completions, all answered;")
    print(f"  {retries} client retries in all; beat sent the every-second task {sends} times, run {len(ids)} times")
    for figure in site.figures:
        print("  kill:", ", ".join(f"{name}={value}" for name, value in figure.items()))
