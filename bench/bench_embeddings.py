"""Embeddings: the pipeline vs the naive classic loader vs the model alone, on the same images.

    .venv/bin/python bench/bench_embeddings.py [--per-class 100] [--test-per-class 5]

Prints, on one machine in one run:
  * model-only throughput of the batched model (preprocessed tensors in memory, warm)
  * image_embeddings + silver_embeddings (Dagster materialisations, one run per partition,
    with their asset checks) in images/s, and its ratio to model-only
  * the naive classic loader: one image at a time through the model, one INSERT per row, one commit
  * the fast profile: images/s and cosine similarity of its vectors to fidelity vectors
  * COPY rows/s vs row-by-row INSERT rows/s into the vector table (with its HNSW index)
  * the cost of re-running every partition on unchanged data
"""

import argparse
import datetime as dt
import io
import time

import dagster as dg
import numpy as np
from common import QUIET, Timer, resources, row, workspace
from pgvector.psycopg import register_vector
from PIL import Image

from fer_platform.automation.jobs import INGEST_ASSETS, RUN_CHECKS
from fer_platform.core.embedding import Embedder, preprocess
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.core.vectors import as_numpy
from fer_platform.partitions import partition_key, utc_today


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import torch  # deferred: heavy

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; weights "
        f"{__import__('os').environ['FER_EMBED_WEIGHTS']}"
    )
    with workspace() as (root, _admin, dsn):
        n = write_sample_landing(root / "landing", args.per_class, args.test_per_class, seed=1)["images"]
        res = resources(root, dsn, batch_size=args.batch_size)
        # One instance for every run, as a deployment has (not a new ephemeral one per run); quiet logs.
        run_opts = {"instance": dg.DagsterInstance.ephemeral(), "run_config": QUIET}
        today = utc_today()
        keys = [partition_key(e, today) for e in EMOTIONS]
        everything = [*INGEST_ASSETS, *RUN_CHECKS]
        with Timer() as t:  # raw + bronze first: not part of what is measured below
            for k in keys:
                dg.materialize(
                    everything,
                    partition_key=k,
                    resources=res,
                    **run_opts,
                    selection=dg.AssetSelection.assets("raw_images", "bronze_images"),
                )
        print(f"{n} images in {len(keys)} partitions (raw + bronze loaded in {t.seconds:.1f} s)\n")

        pngs = [p.read_bytes() for p in sorted((root / "lake/raw/images").rglob("*.png"))]
        spec = res["embedder"].spec()
        model = Embedder.get(spec)
        batches = [
            preprocess(pngs[i : i + spec.batch_size], spec) for i in range(0, len(pngs), spec.batch_size)
        ]
        for b in batches[:2]:
            model.forward(b)  # warm-up: oneDNN primitives for both batch shapes
        model.forward(batches[-1])

        def model_only_rate() -> float:
            with Timer() as t:
                for b in batches:
                    model.forward(b)
            return len(pngs) / t.seconds

        before = model_only_rate()
        row("model only (batched, preprocessed, fidelity)", before, "images/s", f"batch {spec.batch_size}")
        with Timer() as t:
            for i in range(0, len(pngs), spec.batch_size):
                preprocess(pngs[i : i + spec.batch_size], spec)
        row("preprocessing alone (decode + transforms, 1 thread)", len(pngs) / t.seconds, "images/s")

        embed_sel = dg.AssetSelection.assets("image_embeddings", "silver_embeddings")
        with Timer() as t:
            for k in keys:
                r = dg.materialize(
                    everything, partition_key=k, resources=res, selection=embed_sel, **run_opts
                )
                assert r.success and all(c.passed for c in r.get_asset_check_evaluations())
        pipeline = n / t.seconds
        after = model_only_rate()  # the machine's speed drifts: compare with the mean of before and after
        model_only = (before + after) / 2
        row("model only again, after the pipeline", after, "images/s")
        row(
            "pipeline: image_embeddings + silver_embeddings + checks",
            pipeline,
            "images/s",
            f"{pipeline / model_only:.1%} of model-only (mean), {len(keys)} runs",
        )
        with connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0] == n

        with Timer() as t:
            for k in keys:
                r = dg.materialize(
                    everything, partition_key=k, resources=res, selection=embed_sel, **run_opts
                )
                (m,) = [  # the step may also record the served model (embedding_model)
                    m
                    for m in r.asset_materializations_for_node("image_embeddings")
                    if m.asset_key == dg.AssetKey("image_embeddings")
                ]
                assert m.metadata["embedded"].value == 0
        row(
            "re-run of every partition on unchanged data",
            t.seconds,
            "s total",
            f"{t.seconds / len(keys):.2f} s per partition",
        )

        naive = naive_loader(root, dsn, spec, pngs)
        row(
            "naive classic loader (1 image/forward, INSERT per row)",
            naive,
            "images/s",
            f"pipeline is {pipeline / naive:.2f}x",
        )

        fast_res = resources(root, dsn, batch_size=args.batch_size, profile="fast")
        fast_model = Embedder.get(fast_res["embedder"].spec())
        fast_model.forward(preprocess(pngs[: spec.batch_size], fast_model.spec))
        with Timer() as t:
            for k in keys:
                assert dg.materialize(
                    everything, partition_key=k, resources=fast_res, selection=embed_sel, **run_opts
                ).success
        row(f"pipeline, fast profile (bf16 autocast: {fast_model.bf16}, 112 px)", n / t.seconds, "images/s")
        cos = fidelity_vs_fast(dsn, res["embedder"].model_id(), fast_res["embedder"].model_id())
        row("fast vs fidelity cosine, mean", cos.mean(), "", f"min {cos.min():.4f}, {len(cos)} images")

        copy_rate, insert_rate, copy_noidx, insert_noidx = copy_vs_insert(dsn, 2000)
        row("binary COPY into imagenes_fer (HNSW index)", copy_rate, "rows/s")
        row("row-by-row INSERT into imagenes_fer (HNSW index)", insert_rate, "rows/s")
        row("binary COPY, table without HNSW index", copy_noidx, "rows/s")
        row("row-by-row INSERT, table without HNSW index", insert_noidx, "rows/s")


def naive_loader(root, dsn, spec, pngs) -> float:
    """The classic loader: PIL + torchvision transforms + model per image, INSERT per row, one commit.
    Into a table without the HNSW index (the classic pipeline indexed later): favourable to it."""
    import torch  # deferred: heavy
    import torchvision.transforms as T  # deferred: heavy

    model = Embedder.get(spec).model
    tf = T.Compose(
        [
            T.Grayscale(3),
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE naive (id bigserial PRIMARY KEY, filepath text, emotion text, vector vector(512))"
        )
        conn.commit()
        register_vector(conn)
        with torch.inference_mode():
            model(tf(Image.open(io.BytesIO(pngs[0]))).unsqueeze(0))
            t0 = time.perf_counter()
            for i, data in enumerate(pngs):
                x = tf(Image.open(io.BytesIO(data))).unsqueeze(0)
                v = model(x)[0].numpy()
                conn.execute(
                    "INSERT INTO naive (filepath, emotion, vector) VALUES (%s, %s, %s)", (f"f{i}", "happy", v)
                )
            conn.commit()
            return len(pngs) / (time.perf_counter() - t0)


def fidelity_vs_fast(dsn, fid_model, fast_model) -> np.ndarray:
    with connect(dsn) as conn:
        register_vector(conn)
        rows = conn.execute(
            "SELECT a.vector, b.vector FROM imagenes_fer a JOIN imagenes_fer b USING (image_id) "
            "WHERE a.model = %s AND b.model = %s",
            (fid_model, fast_model),
        ).fetchall()
    a = np.stack([as_numpy(r[0]) for r in rows])
    b = np.stack([as_numpy(r[1]) for r in rows])
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


DAY = dt.date(2026, 1, 1)


def copy_vs_insert(dsn, n):
    X = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
    rates = []
    for index in (True, False):
        for how in ("copy", "insert"):
            with connect(dsn) as conn:
                register_vector(conn)
                conn.execute("DROP TABLE IF EXISTS t_rate")
                conn.execute("CREATE TABLE t_rate (LIKE imagenes_fer INCLUDING DEFAULTS)")
                if index:
                    conn.execute("CREATE INDEX ON t_rate USING hnsw (vector vector_cosine_ops)")
                conn.commit()
                t0 = time.perf_counter()
                with conn.transaction():
                    if how == "copy":
                        with conn.cursor().copy(
                            "COPY t_rate (id, filepath, emotion, vector, image_id, load_date, model) "
                            "FROM STDIN (FORMAT BINARY)"
                        ) as cp:
                            cp.set_types(["int8", "text", "text", "vector", "text", "date", "text"])
                            for i in range(n):
                                cp.write_row((i, "f", "happy", X[i], f"i{i}", DAY, "m"))
                    else:
                        for i in range(n):
                            conn.execute(
                                "INSERT INTO t_rate"
                                " (id, filepath, emotion, vector, image_id, load_date, model)"
                                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                (i, "f", "happy", X[i], f"i{i}", DAY, "m"),
                            )
                rates.append(n / (time.perf_counter() - t0))
    return rates


if __name__ == "__main__":
    main()
