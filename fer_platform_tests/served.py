"""A small loaded lake (the real assets on a real PostgreSQL) and `fer-platform serve` started on it as a real
process on 127.0.0.1, once per session; stopped by process group. A pytest plugin (the root conftest loads
it): the service tests and the browser tests share the lake and the server.

The set: three generated faces per emotion (two train, one test), loaded through the ingest assets, then
gold and the search index published.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from fer_platform.automation.jobs import INGEST_ASSETS, PUBLISH_ASSETS, RUN_CHECKS
from fer_platform.core.images import sha256
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import face, folder_resources, put

EVERYTHING = [*INGEST_ASSETS, *PUBLISH_ASSETS, *RUN_CHECKS]
MAX_UPLOAD = 8192  # bytes; a generated face is 1-3 KB
API_KEY = "test-key-0123456789abcdef"


def publish(resources, run_config: dict | None = None, assets=PUBLISH_ASSETS) -> None:
    assert dg.materialize(
        EVERYTHING, resources=resources, selection=dg.AssetSelection.assets(*assets), run_config=run_config
    ).success


@pytest.fixture(scope="session")
def service_lake(pg_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    landing, lake = root / "landing", root / "lake"
    images = {}  # image_id -> what the landing file was
    for e_i, e in enumerate(EMOTIONS):
        for j, split in enumerate(("train", "train", "test")):
            data = face(e, 10 * e_i + j)
            key = f"{split}/{e}/{e}{j}.png"
            put(landing, key, data)
            images[sha256(data)] = {"emotion": e, "split": split, "filepath": key}
    dsn = ensure_database(pg_server, "service")
    ensure_schema(dsn)
    res = folder_resources(dsn, lake, landing, weights="random", batch_size=16)
    for e in EMOTIONS:
        assert dg.materialize(
            EVERYTHING,
            partition_key=partition_key(e, utc_today()),
            resources=res,
            selection=dg.AssetSelection.assets(*INGEST_ASSETS),
        ).success
    publish(res)
    yield {"dsn": dsn, "lake": lake, "landing": landing, "root": root, "resources": res, "images": images}
    with connect(pg_server, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "service" WITH (FORCE)')


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: Path

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, _headers, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass


def start_service(lake_info: dict, **env) -> Served:
    """`fer-platform serve --port 0` on the lake, waited for until /health answers with the index loaded."""
    workdir = Path(tempfile.mkdtemp(prefix="fer-serve-"))
    log = workdir / "serve.log"
    environ = {
        **os.environ,
        "FER_PG_DSN": lake_info["dsn"],
        "FER_LAKE_URL": str(lake_info["lake"]),
        "FER_LANDING": str(lake_info["landing"]),
        "FER_EMBED_WEIGHTS": "random",
        "FER_EMBED_BATCH_SIZE": "16",
        "FER_EMBED_THREADS": "1",
        "FER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "FER_INDEX_CHECK_SECONDS": "0.5",
        **env,
    }
    for name, value in env.items():
        if value is None:
            environ.pop(name)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fer_platform.cli",
                "--home",
                str(workdir / "home"),
                "serve",
                "--port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=environ,
        )
    deadline = time.monotonic() + 120
    served = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if found and served is None:
            served = Served(f"http://127.0.0.1:{found.group(1)}", proc, log)
        if served is not None:
            try:
                status, health = served.json("GET", "/health")
                if status == 200 and health["index"]["loaded"]:
                    return served
            except OSError:
                pass
        time.sleep(0.1)
    text = log.read_text(errors="replace")[-3000:]
    Served("", proc, log).stop()
    raise AssertionError(f"fer-platform serve did not come up: {text}")


@pytest.fixture(scope="session")
def service(service_lake):
    served = start_service(service_lake)
    yield served
    served.stop()
    assert proc_returned(served), served.log.read_text(errors="replace")[-2000:]


def proc_returned(served: Served) -> bool:
    """The server stopped on SIGTERM by itself, cleanly (uvicorn's graceful shutdown)."""
    return served.proc.returncode == 0
