"""Debian's Chromium driven by Playwright, for tests that look at pages as a person does.

Playwright's own browser download cannot run here (no network), so the browser is the
distribution's, named by its executable path, started headless with background
networking off: it talks to the panel on loopback and to nothing else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.require import require

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent.parent
SCREENSHOTS = ROOT / "test-results" / "screenshots"
# With FLEET_SCREENSHOTS=1 the first-run test's screenshots (the README's command, not a
# constructed history) land here instead, for the README.
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """One Chromium per test: Playwright's sync API holds an event loop in this thread while it
    runs, which must be gone before the next test uses ``async_to_sync``."""
    path = chromium_path()
    require(path is not None, "no Chromium; install Debian's chromium package")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed; pip install -r requirements-dev.txt")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests
    # make between page actions are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    page = context.new_page()
    yield page
    context.close()


def screenshot(page: object, name: str, *, docs: bool = False) -> Path:
    folder = DOCS_SCREENSHOTS if docs and os.environ.get("FLEET_SCREENSHOTS") == "1" else SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
