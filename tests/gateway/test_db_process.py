"""A dedicated gateway does its database work in a worker process, and outlives that worker.

``python -m fleet.gateway`` is run for real, on a database of its own (the worker is a
separate process, so it cannot see the test's), in front of the stub upstream.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from fleet.gateway.counting import ESTIMATE, TokenizerCounter, counter_for
from fleet.gateway.table import PoolRoute, RoutingTable
from fleet.gateway.upstream import Target
from fleet.policies.routing import RoutingSettings
from tests.gateway.conftest import STUB_MODEL
from tests.support.openai_stub import OpenAIStub
from tests.support.processes import process_stop
from tests.support.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SETUP = """
from fleet.models import Instance, ModelProfile, Pool, Team
from fleet.decide.services import api_key_create
profile = ModelProfile.objects.create(name="stub", model="test/stub", served_name="{model}", max_model_len=4096)
pool = Pool.objects.create(name="stub-l", tier="L", isolation="shared", model_profile=profile)
Instance.objects.create(pool=pool, actual_state="ready", endpoint="{endpoint}")
print(api_key_create(team=Team.objects.create(name="{team}", slug="{team}"), name="ci")[1])
"""
NEW_KEY = """
from fleet.models import Team
from fleet.decide.services import api_key_create
print(api_key_create(team=Team.objects.create(name="late", slug="late"), name="late")[1])
"""


def test_a_routing_table_pickles_with_its_tokenizer_as_a_path(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "gpu": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counter = counter_for(str(tmp_path / "tokenizer.json"))
    assert isinstance(counter, TokenizerCounter)
    routes = {
        tier: PoolRoute(index, f"p{index}", tier, "m", 4096, used, ())
        for index, (tier, used) in enumerate((("S", counter), ("L", ESTIMATE)))
    }
    table = RoutingTable(keys={}, pools={route.pool_id: route for route in routes.values()})

    data = pickle.dumps(table)
    copy = pickle.loads(data)

    assert len(data) < 2_000  # the path, not the vocabulary
    assert copy.pools[0].counter is counter  # the receiving process's cached counter
    assert copy.pools[1].counter is ESTIMATE
    assert copy.settings == RoutingSettings.defaults()
    assert pickle.loads(pickle.dumps(Target.parse("http://127.0.0.1:9/x"))).base_path == "/x"


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def workers(pid: int) -> list[int]:
    """The processes ``pid`` started through multiprocessing's spawn (not its resource tracker)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


ScratchDatabase = tuple[dict[str, str], Callable[[], int]]


@dataclass
class Dedicated:
    process: subprocess.Popen[bytes]
    url: str
    key: str
    env: dict[str, str]
    logged: Callable[[], int]


@pytest.fixture
def gateway_database(tmp_path: Path) -> Iterator[ScratchDatabase]:
    """A database of the gateway's own, and a count of its request-log rows.

    A scratch database on the suite's PostgreSQL where ``DATABASE_URL`` names one, else a
    SQLite file: the worker is a process of its own and cannot see the test's database.
    """
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        path = tmp_path / "fleet.sqlite3"

        def sqlite_rows() -> int:
            with sqlite3.connect(path, timeout=10) as db:
                return int(db.execute("SELECT count(*) FROM fleet_requestlog").fetchone()[0])

        yield {"FLEET_VAR_DIR": str(tmp_path)}, sqlite_rows
        return
    import psycopg

    name = f"gateway_worker_{secrets.token_hex(4)}"
    server = urlsplit(url)
    scratch = urlunsplit(server._replace(path=f"/{name}"))
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def postgres_rows() -> int:
        with psycopg.connect(scratch) as db:
            row = db.execute("SELECT count(*) FROM fleet_requestlog").fetchone()
            return int(row[0]) if row else 0

    try:
        yield {"DATABASE_URL": scratch}, postgres_rows
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dedicated_gateway(
    tmp_path: Path, gateway_database: tuple[dict[str, str], Callable[[], int]]
) -> Iterator[Dedicated]:
    """``python -m fleet.gateway`` on a migrated database with one ready stub instance and a key."""
    database, logged = gateway_database
    stub = OpenAIStub().start()
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="fleet.project.settings",
        GATEWAY_REFRESH_S="0.2",
        GATEWAY_LOG_FLUSH_S="0.1",
        PYTHONPATH=str(ROOT),
        **database,
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    key = manage(env, "shell", "-c", SETUP.format(model=STUB_MODEL, endpoint=stub.base_url, team="research"))
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet.gateway", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, "the gateway did not start")
        yield Dedicated(process, url, key, env, logged)
    finally:
        process_stop(process, grace_s=15)
        log.close()
        stub.stop()


def chat(url: str, key: str) -> int:
    body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}).status_code


@pytest.mark.services
def test_the_database_work_runs_in_a_worker_process_that_is_replaced_when_it_dies(dedicated_gateway: Dedicated) -> None:
    gateway = dedicated_gateway
    url, key = gateway.url, gateway.key
    [worker] = workers(gateway.process.pid)

    assert [chat(url, key) for _ in range(20)] == [200] * 20
    wait_for(lambda: gateway.logged() == 20, "the worker did not write the request log")

    # A key made after the start works from a refresh, which the worker reads.
    late = manage(gateway.env, "shell", "-c", NEW_KEY)
    wait_for(lambda: chat(url, late) == 200, "the worker's refresh did not bring the new key")
    wait_for(lambda: gateway.logged() == 21, "the worker did not write the new key's request")

    os.kill(worker, signal.SIGKILL)
    # Requests never wait for the worker: they are served while it is gone.
    assert [chat(url, key) for _ in range(10)] == [200] * 10
    wait_for(lambda: workers(gateway.process.pid) not in ([], [worker]), "no new worker was started")
    wait_for(lambda: gateway.logged() == 31, "records queued while the worker was away were not written")
    assert gateway.process.poll() is None
