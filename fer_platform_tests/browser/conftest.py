"""The page in a real headless browser: Debian's chromium driven by Playwright, against `fer-platform serve`.

- ``chromium``: one browser per session, launched from ``/usr/bin/chromium`` (installed by `make chromium`,
  never downloaded by Playwright) with flags that work offline;
- ``served``: a small loaded lake (generated faces, random weights: raw -> ... -> gold and the search index
  in a real PostgreSQL + pgvector) and `fer-platform serve` on a free 127.0.0.1 port, started as a process
  in its own session and stopped by its process group;
- ``page``: a fresh page that records what went wrong in it (console errors, uncaught exceptions, failed
  requests, HTTP errors) in ``page.problems``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import sync_playwright

from fer_platform.automation.jobs import INGEST_ASSETS, PUBLISH_ASSETS, RUN_CHECKS
from fer_platform.core.images import sha256
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import face, folder_resources, put
from fer_platform_tests.servers import Process, ServerError, free_port

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


def _load_small_lake(dsn: str, root: Path) -> tuple[object, dict[str, dict]]:
    """Four generated faces of each lake emotion through every asset (ingest per partition, then gold, the
    index)."""
    landing, lake = root / "landing", root / "lake"
    images = {}
    for e_i, emotion in enumerate(LAKE_EMOTIONS):
        for j, split in enumerate(SPLITS):
            data = face(emotion, 100 + 10 * e_i + j)
            key = f"{split}/{emotion}/{emotion}{j}.png"
            put(landing, key, data)
            images[sha256(data)] = {"emotion": emotion, "split": split, "filepath": key}
    res = folder_resources(dsn, lake, landing, weights="random", batch_size=16)
    everything = [*INGEST_ASSETS, *PUBLISH_ASSETS, *RUN_CHECKS]
    for emotion in LAKE_EMOTIONS:
        assert dg.materialize(
            everything,
            partition_key=partition_key(emotion, utc_today()),
            resources=res,
            selection=dg.AssetSelection.assets(*INGEST_ASSETS),
        ).success
    assert dg.materialize(
        everything, resources=res, selection=dg.AssetSelection.assets(*PUBLISH_ASSETS)
    ).success
    return res["embedder"].spec(), images


def _wait_for_health(url: str, process: Process, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            log = process.log.read_text(errors="replace")[-3000:]
            process.stop()
            raise ServerError(f"fer-platform serve exited with {process.proc.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if json.loads(response.read())["status"] == "ok":  # the search index is loaded
                    return
        except (OSError, ValueError, KeyError):  # not listening yet, or not the answer yet
            pass
        time.sleep(0.2)
    log = process.log.read_text(errors="replace")[-3000:]
    process.stop()
    raise ServerError(f"fer-platform serve did not serve an index (/health) within {timeout:.0f} s: {log}")


@pytest.fixture(scope="module")
def served(pg_server, tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("browser")
    dsn = ensure_database(pg_server, DATABASE)
    ensure_schema(dsn)
    try:
        spec, images = _load_small_lake(dsn, root)
        port = free_port()
        env = {
            **os.environ,
            "FER_PG_DSN": dsn,
            "FER_LAKE_URL": str(root / "lake"),
            "FER_LANDING": str(root / "landing"),
            "FER_EMBED_WEIGHTS": "random",
            "FER_EMBED_THREADS": "1",  # on a shared 2-core machine, one torch thread embeds faster
        }
        workdir = Path(tempfile.mkdtemp(prefix="fer-serve-"))
        log = workdir / "serve.log"
        cmd = [sys.executable, "-m", "fer_platform.cli", "--home", str(root / "home")]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=workdir,
                env=env,
            )
        process = Process("serve", proc, log, workdir)
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(url, process)
        try:
            yield Served(url, root / "lake", spec, images)
        finally:
            process.stop()
    finally:
        with connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
