"""Where the vectors table keeps its vectors (issue 15): inline in their rows (the schema's storage) against
out of line in the TOAST table (pgvector's default, the table as it was made before).

    .venv/bin/python bench/bench_vector_storage.py [--rows 35887] [--rounds 2] [--vectors clustered|uniform]

On the tuned embedded server (``embedded_start``), for each storage in turn (``--rounds`` times, the two
alternating, so the machine's drift falls on both), a fresh database with the platform's schema (the old
storage: its vector column set back to EXTERNAL and its toast_tuple_target reset), then:
  * write: ``--rows`` precomputed 512-d vectors through image_embeddings' write path (``write_partition``,
    one partition per emotion in FER2013's proportions, one after another, declared as one load as the
    demo declares them: ``DeclaredLoad``, the HNSW index dropped once), rows/s;
  * index build: the load's end building the index (``build_vector_index``: maintenance_work_mem and
    parallel workers), seconds;
  * exact search: 20 queries (stored vectors) answered without the index (a search while a bulk load defers
    it), ms each;
  * read back: every partition read as silver reads it (``read_partition``), rows/s;
  * the table's heap, TOAST and total size.
Then the ratios old / inline (the median of the rounds). The vectors are clustered like silver's (emotions,
sub-clusters, noise), or with ``--vectors uniform`` spread evenly on the sphere, where HNSW's build compares
many more pairs. A vector of 512 dimensions is 2,052 bytes, which
takes its row past PostgreSQL's TOAST threshold (2,032 bytes).
"""

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from bench_bulk_load import DAY, partitions
from bench_index_build import silver
from common import Timer, row

from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.embedded import embedded_start, embedded_stop
from fer_platform.core.pg.schema import DeclaredLoad, ensure_schema
from fer_platform.core.search.pgvector import pgvector_search
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import EmbeddingPlan, arrow_to_vectors, read_partition, write_partition

MODEL = "m-storage"
QUERIES = 20
OLD = "out of line (EXTERNAL)"
NEW = "inline (PLAIN)"


def plans(vectors: np.ndarray) -> list[EmbeddingPlan]:
    out = []
    for emotion, (start, stop) in partitions(len(vectors)).items():

        def embed(_pngs, start=start, stop=stop):
            for i in range(start, stop, 1000):
                yield vectors[i : min(i + 1000, stop)]

        ids = [f"{i:064x}" for i in range(start, stop)]
        out.append(
            EmbeddingPlan(
                emotion=emotion,
                load_date=DAY,
                model=MODEL,
                image_ids=ids,
                filepaths=[
                    f"raw/images/fer2013/train/{emotion}/Training_{i}.png" for i in range(start, stop)
                ],
                splits=["train"] * len(ids),
                pngs=[b""] * len(ids),
                embed=embed,
            )
        )
    return out


def database(admin: str, storage: str) -> str:
    with connect(admin, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "bench_storage" WITH (FORCE)')
    dsn = ensure_database(admin, "bench_storage")
    ensure_schema(dsn)
    if storage == OLD:
        with connect(dsn) as conn:
            conn.execute("ALTER TABLE imagenes_fer ALTER COLUMN vector SET STORAGE EXTERNAL")
            conn.execute("ALTER TABLE imagenes_fer RESET (toast_tuple_target)")
            conn.commit()
    return dsn


def measure(admin: str, storage: str, vectors: np.ndarray, queries: np.ndarray) -> dict:
    dsn = database(admin, storage)
    load = DeclaredLoad(dsn)  # as the demo and bulk-load declare their runs: the index dropped once
    assert load.begin(len(vectors))
    with connect(dsn) as conn:
        with Timer() as write:
            for p in plans(vectors):
                write_partition(conn, p)
        with Timer() as exact:  # the index is absent until the load's end
            for q in queries:
                pgvector_search(conn, q, MODEL, k=10)
    with Timer() as build:
        assert load.end() == "built"
    with connect(dsn) as conn:
        with Timer() as read:
            n = sum(read_partition(conn, e, DAY, MODEL).num_rows for e in EMOTIONS)
        assert n == len(vectors), n
        heap, toast, total = conn.execute(
            "SELECT pg_relation_size(oid), pg_relation_size(reltoastrelid), pg_total_relation_size(oid) "
            "FROM pg_class WHERE oid = 'imagenes_fer'::regclass"
        ).fetchone()
    return {
        "write rows/s": len(vectors) / write.seconds,
        "index build s": build.seconds,
        "exact search ms": exact.seconds / len(queries) * 1000,
        "read rows/s": len(vectors) / read.seconds,
        "heap MiB": heap / 2**20,
        "toast MiB": toast / 2**20,
        "total MiB": total / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=35887)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--vectors",
        choices=("clustered", "uniform"),
        default="clustered",
        help="clustered like silver's (bench_index_build.silver), or uniform on the sphere (a harder graph)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.vectors == "clustered":
        vectors = arrow_to_vectors(silver(args.rows)["vector"])
    else:
        vectors = normalise(rng.standard_normal((args.rows, 512)).astype(np.float32))
    queries = vectors[rng.choice(len(vectors), QUERIES, replace=False)]
    print(f"{args.rows} {args.vectors} vectors, {args.rounds} rounds")
    root = Path(tempfile.mkdtemp(prefix="ferstore-"))
    results: dict[str, list[dict]] = {OLD: [], NEW: []}
    try:
        admin = embedded_start(root / "pg", cleanup_mode="delete")  # the tuned embedded server
        for _ in range(args.rounds):
            for storage in (OLD, NEW):
                results[storage].append(r := measure(admin, storage, vectors, queries))
                print(f"{storage}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()))
    finally:
        embedded_stop(root / "pg")
        shutil.rmtree(root, ignore_errors=True)
    median = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in results.items()}
    for key in median[NEW]:
        for storage in (OLD, NEW):
            row(f"{args.rows} rows, {storage}: {key}", median[storage][key], "")
    speed = {  # old / inline, > 1: inline is faster
        "write": median[NEW]["write rows/s"] / median[OLD]["write rows/s"],
        "index build": median[OLD]["index build s"] / median[NEW]["index build s"],
        "exact search": median[OLD]["exact search ms"] / median[NEW]["exact search ms"],
        "read back": median[NEW]["read rows/s"] / median[OLD]["read rows/s"],
        "size (old / inline)": median[OLD]["total MiB"] / median[NEW]["total MiB"],
    }
    for key, value in speed.items():
        row(f"  inline vs out of line: {key}", value, "x")


if __name__ == "__main__":
    main()
