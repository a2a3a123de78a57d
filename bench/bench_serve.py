"""The search service: warm query latency over HTTP on loopback, beside the CLI's cold query, at FER size.

    .venv/bin/python bench/bench_serve.py [--size 35887] [--queries 300] [--cli-runs 3]

On synthetic 512-d unit vectors shaped like embeddings (``bench_search.synthetic``), written as the
product's index (``search.build.build_index``: HNSW at this size) into a temporary lake and as rows of
``imagenes_fer`` (with its HNSW index) in a temporary embedded PostgreSQL:
  * in-process, a query by id three ways: unfiltered k nearest (the floor), the product's way (ask k+1,
    drop the query itself) and the way it was done before (a FAISS filter over every other id)
  * ``fer-platform serve`` started as a process; one client on one kept-alive connection asks
    ``GET /images/{id}/similar?k=10`` for stored ids, one at a time: p50/p95 per backend, with and without
    an emotion filter, and ``POST /search`` with an uploaded face (embedded by the model, then searched)
  * ``fer-platform search --id ... --json`` as a subprocess (a cold process: imports, index read and
    verified, the query), per backend
"""

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
from bench_search import percentiles, synthetic
from common import Timer, filter_every_other, row, workspace
from pgvector.psycopg import register_vector

from fer_platform.core.embedding import EmbedderSpec, model_id
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import PLATFORM_WRITER, VECTOR_INDEX, VECTOR_INDEX_DDL, VECTORS_TABLE
from fer_platform.core.sample_data import render_face
from fer_platform.core.search.build import build_index
from fer_platform.core.search.index import index_dir
from fer_platform.core.storage import Storage
from fer_platform.core.vectors import vectors_to_arrow

MODEL = model_id(EmbedderSpec(weights="random"))  # what the service serves with FER_EMBED_WEIGHTS=random


def silver_like(vectors: np.ndarray, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(vectors)
    emotions = np.asarray(EMOTIONS)[rng.integers(0, len(EMOTIONS), n)]
    ids = [hashlib.sha256(f"image {i}".encode()).hexdigest() for i in range(n)]
    return pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "image_id": ids,
            "filepath": [f"raw/images/fer2013/train/{e}/{i}.png" for i, e in enumerate(emotions)],
            "emotion": emotions.tolist(),
            "split": ["train"] * n,
            "load_date": pa.array([None] * n, pa.date32()),
            "vector": vectors_to_arrow(vectors),
        }
    )


def load_postgres(dsn: str, silver: pa.Table, vectors: np.ndarray) -> None:
    with connect(dsn) as conn:
        register_vector(conn)
        conn.execute(f"DROP INDEX IF EXISTS {VECTOR_INDEX}")  # built once after the COPY: much faster
        with conn.cursor().copy(
            f"COPY {VECTORS_TABLE} (filepath, emotion, vector, image_id, split, load_date, model, "
            "written_by) "
            "FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "text", "vector", "text", "text", "date", "text", "text"])
            for path, emotion, image_id, v in zip(
                silver["filepath"].to_pylist(),
                silver["emotion"].to_pylist(),
                silver["image_id"].to_pylist(),
                vectors,
                strict=True,
            ):
                cp.write_row(
                    (path, emotion, v, image_id, "train", dt.date(2025, 1, 1), MODEL, PLATFORM_WRITER)
                )
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(VECTOR_INDEX_DDL)
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM ANALYZE {VECTORS_TABLE}")


def in_process(index, vectors: np.ndarray, picks: np.ndarray) -> None:
    """A query by id: unfiltered, the product's (k+1, drop itself), and the old filter over every other id."""

    def timed(fn) -> tuple[float, float]:
        for p in picks[:5]:
            fn(p)
        lat = []
        for p in picks:
            t0 = time.perf_counter()
            fn(p)
            lat.append(time.perf_counter() - t0)
        return percentiles(lat)

    def old_way(p):
        filter_every_other(index, vectors[p], int(p), 10, max(int(index.meta.get("ef_search") or 0), 44))

    floor = timed(lambda p: index.search(vectors[p], 10))
    new = timed(lambda p: index.search(vectors[p], 10, exclude=index.ids[p]))
    old = timed(old_way)
    row("in process: unfiltered k=10 (SearchIndex.search) p50", floor[0], "ms", f"p95 {floor[1]:.3f} ms")
    row("in process: by id, k+1 and drop itself (now) p50", new[0], "ms", f"p95 {new[1]:.3f} ms")
    row(
        "in process: by id, filter over every other id (before) p50",
        old[0],
        "ms",
        f"p95 {old[1]:.3f} ms; now {old[0] / new[0]:.1f}x faster",
    )


def start_service(env: dict, home: Path) -> tuple[subprocess.Popen, str, Path]:
    log = home / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "serve", "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if found:
            port = found.group(1)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
                conn.request("GET", "/health")
                health = json.loads(conn.getresponse().read())
                conn.close()
                if health["index"]["loaded"] and health["embedder"] != "loading":  # torch loaded: quiet
                    return proc, port, log
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"the service did not start: {log.read_text(errors='replace')[-2000:]}")


def over_http(port: str, ids: list[str], emotions: list[str], upload: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)

    def ask(method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> float:
        t0 = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        took = time.perf_counter() - t0
        assert response.status == 200, data[:300]
        return took

    for backend in ("index", "pgvector"):
        for filtered in (False, True):
            for image_id in ids[:10]:  # warm-up: the connection pool, caches
                ask("GET", f"/images/{image_id}/similar?k=10&backend={backend}")
            lat = []
            for image_id, emotion in zip(ids, emotions, strict=True):
                params = {"k": 10, "backend": backend, **({"emotion": emotion} if filtered else {})}
                lat.append(ask("GET", f"/images/{image_id}/similar?{urllib.parse.urlencode(params)}"))
            p50, p95 = percentiles(lat)
            label = f"{backend}, emotion filter" if filtered else backend
            row(f"HTTP GET /images/{{id}}/similar k=10, {label} p50", p50, "ms", f"p95 {p95:.2f} ms")
    boundary = "bench"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="face.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + upload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    for _ in range(5):
        ask("POST", "/search?k=10", body, headers)
    lat = [ask("POST", "/search?k=10", body, headers) for _ in range(50)]
    p50, p95 = percentiles(lat)
    row("HTTP POST /search (upload, embedded on CPU) k=10, index p50", p50, "ms", f"p95 {p95:.2f} ms")
    conn.close()


def cli_cold(env: dict, home: Path, ids: list[str], runs: int) -> None:
    for backend in ("index", "pgvector"):
        walls = []
        for image_id in ids[:runs]:
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fer_platform.cli",
                    "--home",
                    str(home),
                    "search",
                    "--id",
                    image_id,
                    "--backend",
                    backend,
                    "--json",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - t0)
        row(
            f"CLI fer-platform search --id (cold process), {backend} median",
            float(np.median(walls)),
            "s",
            f"min {min(walls):.2f} s, max {max(walls):.2f} s, {runs} runs",
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=35_887)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--cli-runs", type=int, default=3)
    args = ap.parse_args()

    vectors, _ = synthetic(args.size, 0)
    silver = silver_like(vectors)
    rng = np.random.default_rng(1)
    with workspace("ferbench-serve-") as (root, _admin, dsn):
        with Timer() as t:
            index = build_index(silver, MODEL)
            lake = Storage(str(root / "lake"))
            for name, data in index.to_files().items():
                lake.write_bytes(f"{index_dir(MODEL)}/{name}", data)
        print(
            f"\n{args.size} vectors x 512, index {index.kind} (ef_search {index.meta.get('ef_search')}) "
            f"built and written in {t.seconds:.1f} s",
            flush=True,
        )
        with Timer() as t:
            load_postgres(dsn, silver, vectors)
        print(f"PostgreSQL loaded and indexed in {t.seconds:.1f} s", flush=True)

        positions = rng.choice(index.size, size=args.queries, replace=False)
        in_process(index, index.vectors_at(np.arange(index.size)), positions)

        ids = [index.ids[p] for p in positions]
        emotions = [EMOTIONS[i % len(EMOTIONS)] for i in range(len(ids))]
        env = {
            **os.environ,
            "FER_PG_DSN": dsn,
            "FER_LAKE_URL": str(root / "lake"),
            "FER_LANDING": str(root / "landing"),
            "FER_EMBED_WEIGHTS": "random",
        }
        proc, port, _log = start_service(env, root / "home")
        try:
            over_http(port, ids, emotions, render_face("happy", np.random.default_rng(7)))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        cli_cold(env, root / "home", ids, args.cli_runs)


if __name__ == "__main__":
    main()
