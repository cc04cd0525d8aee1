"""One ``make run`` for every test that looks at the demo: starting it takes minutes, so they share it.

The tests that use it run in this order whatever their modules' names: the first look
(``test_make_run``: every page drawn, nothing broken), then the others, then the one
marked ``demo_stops``, which sends Ctrl-C and checks that nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.demo_run import Demo, Output, clean_copy, make_run
from tests.support.require import require
from tests.support.vllm_server import free_port

FIRST_LOOK = "test_make_run.py"
HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "demo_stops: stops the shared demo, so it runs after every other test of it")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The demo's tests in their order (first look, the rest, the one that stops it); others stay put."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("demo_stops"):
            return 2
        return 0 if item.path.name == FIRST_LOOK else 1

    users = [item for item in items if item.path.parent == HERE and "demo" in getattr(item, "fixturenames", ())]
    if not users:
        return
    first = items.index(users[0])
    others = [item for item in items if item not in users]
    # Together, where the first of them was: nothing else runs while the demo runs.
    items[:] = others[:first] + sorted(users, key=rank) + others[first:]  # stable: each module's order kept


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One ``make run`` for the session: the tests look at it and act on it, the last one stops it."""
    require(shutil.which("make") is not None, "make is not installed")
    repo = clean_copy(tmp_path_factory.mktemp("first-run") / "repo")
    port = free_port()
    # Started as a shell starts a script's background job (SIGINT ignored): the stop test's Ctrl-C must
    # stop it all the same. A terminal's job, whose SIGINT is not ignored, goes through the same handler.
    process = make_run(repo, port, sigint_ignored=True)
    running = Demo(process, Output(process), repo, port)
    try:
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
