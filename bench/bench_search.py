"""Search: query latency and recall@10 of the FAISS index and of pgvector, at FER2013's size and at 1M.

    .venv/bin/python bench/bench_search.py [--sizes 35887[,1000000]] [--queries 200] [--latent 32]

For each size N, on synthetic 512-d vectors shaped like embeddings (a mixture of many
clusters, L2-normalised; queries are held-out points of the same mixture):
  * the product's index (search.build.build_index): its kind, build time, the ef_search it tuned,
    single-query latency p50/p95 and recall@10 against exact search
  * FAISS flat (exact) latency, as the index's own reference
  * pgvector: COPY load rate, HNSW build time (m=16, ef_construction=64), then for rising
    hnsw.ef_search the recall@10 and latency; the first ef_search that reaches 0.99 is reported
  * exact pgvector (sequential scan) latency, the reference every recall is measured against
Latency is one query at a time, wall clock, from the calling Python process (pgvector: over the
Unix socket, in one connection, a prepared statement).
"""

import argparse
import time

import numpy as np
import pyarrow as pa
from common import Timer, row, workspace
from pgvector.psycopg import register_vector

from fer_platform.core.pg.connect import connect
from fer_platform.core.search.build import build_index
from fer_platform.core.search.index import single_thread
from fer_platform.core.vecmath import exact_search, recall_of
from fer_platform.core.vectors import vectors_to_arrow

DIM = 512


def synthetic(n: int, queries: int, seed: int = 0, latent: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Vectors shaped like image embeddings: a mixture of clusters on a ``latent``-dimensional subspace
    of the 512 dimensions, plus a little noise in all of them, L2-normalised (embeddings of real
    images have a low intrinsic dimension; ``latent=512`` gives isotropic clusters, a much harder case
    for any graph index)."""
    rng = np.random.default_rng(seed)
    total = n + queries
    centres = rng.standard_normal((max(8, n // 500), latent)).astype(np.float32)
    z = centres[rng.integers(0, len(centres), total)] + 0.6 * rng.standard_normal((total, latent)).astype(
        np.float32
    )
    basis = (
        np.linalg.qr(rng.standard_normal((DIM, latent)))[0].T.astype(np.float32)
        if latent < DIM
        else np.eye(DIM, dtype=np.float32)
    )
    x = np.empty((total, DIM), np.float32)
    for i in range(0, total, 100_000):  # in blocks: 1M x 512 float32 is 2 GB
        x[i : i + 100_000] = z[i : i + 100_000] @ basis + 0.05 * rng.standard_normal(
            (min(100_000, total - i), DIM)
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def bench_faiss(vectors, queries, truth):
    import faiss  # deferred: heavy

    n = len(vectors)
    silver = pa.table(
        {"image_id": pa.array([f"{i:08d}" for i in range(n)]), "vector": vectors_to_arrow(vectors)}
    )
    with Timer() as t:
        index = build_index(silver, "bench")
    row(
        f"[{n}] index build ({index.kind}, search.build.build_index)",
        t.seconds,
        "s",
        f"ef_search {index.meta.get('ef_search', '-')}, "
        f"tuned recall {index.meta.get('tuned_recall', 1.0):.3f}",
    )
    index.raw_search(queries[:5], 10)
    lat, got = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, pos = index.raw_search(q[None, :], 10)
        lat.append(time.perf_counter() - t0)
        got.append(pos[0])
    p50, p95 = percentiles(lat)
    # the index's positions -> image ids -> positions in the input (image_id i is input row i)
    as_input = np.asarray([[int(index.ids[p]) if p >= 0 else -1 for p in row] for row in got])
    recall = recall_of(as_input, truth)
    row(
        f"[{n}] FAISS {index.kind} (the product's index) p50",
        p50,
        "ms",
        f"p95 {p95:.3f} ms, recall@10 {recall:.4f}",
    )
    if index.kind != "flat":
        flat = faiss.IndexFlatIP(DIM)
        flat.add(vectors)
        lat = []
        with single_thread():  # as the product's index searches one query
            for q in queries:
                t0 = time.perf_counter()
                flat.search(q[None, :], 10)
                lat.append(time.perf_counter() - t0)
        p50, p95 = percentiles(lat)
        row(f"[{n}] FAISS flat (exact) p50", p50, "ms", f"p95 {p95:.3f} ms")
    return index


def bench_pgvector(dsn, vectors, queries, truth):
    n = len(vectors)
    with connect(dsn) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench_vectors")
        conn.execute(f"CREATE TABLE bench_vectors (id bigint PRIMARY KEY, vector vector({DIM}))")
        with (
            Timer() as t,
            conn.cursor().copy("COPY bench_vectors (id, vector) FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["int8", "vector"])
            for i, v in enumerate(vectors):
                cp.write_row((i, v))
        conn.commit()
        row(f"[{n}] pgvector COPY load", n / t.seconds, "rows/s")
        conn.execute("SET maintenance_work_mem = '6GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")  # 2 cores: the leader plus one worker
        with Timer() as t:
            conn.execute(
                "CREATE INDEX ON bench_vectors USING hnsw (vector vector_cosine_ops) "
                "WITH (m = 16, ef_construction = 64)"
            )
            conn.commit()
        row(f"[{n}] pgvector HNSW build (m=16, ef_construction=64)", t.seconds, "s")
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE bench_vectors")
        sql = "SELECT id FROM bench_vectors ORDER BY vector <=> %s LIMIT 10"
        chosen = None
        for ef in (40, 64, 100, 160, 250, 400, 640, 1000):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            cur = conn.cursor()
            cur.execute(sql, (queries[0],), prepare=True)
            lat, got = [], []
            for q in queries:
                t0 = time.perf_counter()
                ids = [r[0] for r in cur.execute(sql, (q,), prepare=True).fetchall()]
                lat.append(time.perf_counter() - t0)
                got.append(ids)
            recall = sum(len(set(g) & set(t.tolist())) for g, t in zip(got, truth, strict=True)) / truth.size
            p50, p95 = percentiles(lat)
            print(
                f"    ef_search {ef:<5} recall@10 {recall:.4f}  p50 {p50:.2f} ms  p95 {p95:.2f} ms",
                flush=True,
            )
            if recall >= 0.99:
                chosen = (ef, recall, p50, p95)
                break
        if chosen:
            ef, recall, p50, p95 = chosen
            row(
                f"[{n}] pgvector HNSW p50 at ef_search {ef}",
                p50,
                "ms",
                f"p95 {p95:.2f} ms, recall@10 {recall:.4f}",
            )
        else:
            row(f"[{n}] pgvector HNSW: recall 0.99 not reached up to ef_search 1000", 0, "")
        conn.execute("SET enable_indexscan = off")
        plan = " ".join(r[0] for r in conn.execute("EXPLAIN " + sql, (queries[0],)).fetchall())
        assert "Index Scan" not in plan, plan
        lat = []
        exact_queries = queries if n <= 100_000 else queries[:20]
        for q in exact_queries:
            t0 = time.perf_counter()
            conn.execute(sql, (q,), prepare=False).fetchall()  # a cached plan would keep the index scan
            lat.append(time.perf_counter() - t0)
        p50, p95 = percentiles(lat)
        row(
            f"[{n}] pgvector exact (sequential scan) p50",
            p50,
            "ms",
            f"p95 {p95:.2f} ms, {len(exact_queries)} queries",
        )
        conn.execute("DROP TABLE bench_vectors")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="35887", help="comma-separated; 1000000 takes about 20 min here")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-pgvector", action="store_true")
    ap.add_argument(
        "--latent", type=int, default=32, help="intrinsic dimension of the synthetic vectors (512: isotropic)"
    )
    args = ap.parse_args()

    import faiss  # deferred: heavy

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    with workspace("ferbench-search-") as (_root, _admin, dsn):
        for n in (int(s) for s in args.sizes.split(",")):
            vectors, queries = synthetic(n, args.queries, latent=args.latent)
            with Timer() as t:
                _, truth = exact_search(vectors, queries, 10)
            print(
                f"\n{n} vectors x {DIM} dims (intrinsic {args.latent}), {len(queries)} held-out queries "
                f"(exact top-10 in {t.seconds:.1f} s)"
            )
            bench_faiss(vectors, queries, truth)
            if not args.skip_pgvector:
                bench_pgvector(dsn, vectors, queries, truth)


if __name__ == "__main__":
    main()
