"""The page in a real headless browser: Debian's chromium driven by Playwright, against `fer-platform serve`.

- ``chromium``: one browser per session, launched from ``/usr/bin/chromium`` (installed by `make chromium`,
  never downloaded by Playwright) with flags that work offline;
- ``served``: the session's `fer-platform serve` (a real process on a free 127.0.0.1 port) on its small
  loaded lake in a real PostgreSQL + pgvector (fer_platform_tests/served.py, shared with the service tests);
- ``page``: a fresh page that records what went wrong in it (console errors, uncaught exceptions, failed
  requests, HTTP errors) in ``page.problems``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from fer_platform_tests.servers import ServerError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Three emotions (each partition is a Dagster run: seconds), four faces each: three train, one test.
LAKE_EMOTIONS = ("angry", "happy", "sad")
SPLITS = ("train", "train", "train", "test")
DATABASE = "browserpage"


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        raise ServerError(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    """A fresh page; ``page.problems`` lists console errors, page errors, failed requests and HTTP errors."""
    context = chromium.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.method} {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.problems = problems
    page.set_default_timeout(90_000)  # the first upload loads the model in the service
    try:
        yield page
    finally:
        context.close()


@dataclass
class Served:
    url: str
    lake: Path
    spec: object  # the embedder's settings, which the service's model matches
    images: dict[str, dict]  # image_id -> {"emotion", "split", "filepath"}


@pytest.fixture(scope="module")
def served(service, service_lake, one_torch_thread):
    """The session's `fer-platform serve` on its small loaded lake (fer_platform_tests/served.py: three
    generated faces per emotion, two train and one test, through every asset into a real PostgreSQL)."""
    spec = service_lake["resources"]["embedder"].spec()
    return Served(service.url, service_lake["lake"], spec, service_lake["images"])
