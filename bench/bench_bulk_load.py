"""Bulk loads and the HNSW index (issue 15): image_embeddings' write path against the model alone.

    FER_EMBED_PROFILE=native FER_EMBED_WEIGHTS=random \\
        .venv/bin/python bench/bench_bulk_load.py [--images 35887] [--write-rows 35887] [--table-rows 108000]
        .venv/bin/python bench/bench_bulk_load.py --images 35887 --demo-shape

On the tuned embedded server (``embedded_start``), in one run:
  * model only: the embedder's stream (decode, transforms, model) over the same images in the same
    parallel streams as the loaders, without the database, images/s (between the runs: it drifts)
  * the image_embeddings write path (plan + embed + COPY, one loader per emotion partition in parallel
    threads, as the demo and the sensor launch one run per partition) over ``--images`` images, with the
    HNSW index deferred (the rule) and maintained row by row (forced), images/s and ratio to model-only
  * the write alone (precomputed vectors): ``--write-rows`` rows COPYed with the index maintained vs
    deferred + built, into an empty table and into one holding ``--table-rows`` rows
  * ``--demo-shape``: the partitions one after another (the demo, a bulk load's queued runs), each judged
    alone vs declared as one load (``DeclaredLoad``), the model alone interleaved partition by partition
"""

import argparse
import datetime as dt
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from common import Timer, row
from PIL import Image

from fer_platform.core.embedding import Embedder, EmbedderSpec, preprocess
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.embedded import embedded_start, embedded_stop
from fer_platform.core.pg.schema import DeclaredLoad, ensure_schema
from fer_platform.core.vectors import EmbeddingPlan, write_partition

DAY = dt.date(2026, 12, 1)
# FER2013's share of each emotion (train + test): 35,887 images
SHARES = {"angry": 4953, "disgust": 547, "fear": 5121, "happy": 8989, "sad": 6077, "surprise": 4002}
SHARES["neutral"] = 35887 - sum(SHARES.values())


def fer_pngs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` FER-shaped images (48x48 grey PNGs): a smooth face-like blob plus noise, all distinct."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(18, 30), rng.uniform(18, 30), rng.uniform(10, 20)
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = np.clip(blob + rng.normal(0, 25, (48, 48)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def partitions(n: int) -> dict[str, tuple[int, int]]:
    """(start, stop) of each emotion's share of ``n`` images."""
    out, start = {}, 0
    for i, emotion in enumerate(EMOTIONS):
        stop = n if i == len(EMOTIONS) - 1 else start + round(n * SHARES[emotion] / 35887)
        out[emotion] = (start, stop)
        start = stop
    return out


def plan(emotion, ids, pngs, model, embed) -> EmbeddingPlan:
    return EmbeddingPlan(
        emotion=emotion,
        load_date=DAY,
        model=model,
        image_ids=ids,
        filepaths=[f"raw/images/fer2013/train/{emotion}/{i}.png" for i in ids],
        splits=["train"] * len(ids),
        pngs=pngs,
        embed=embed,
    )


def parallel_load(dsn: str, plans: list[EmbeddingPlan], defer: bool | None) -> list[dict]:
    """One loader per partition, all at once (the demo's and the sensor's runs)."""
    results, errors = [], []

    def load(p):
        try:
            with connect(dsn) as conn:
                results.append(write_partition(conn, p, defer_index=defer))
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def reset(admin: str, name: str) -> str:
    with connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    dsn = ensure_database(admin, name)
    ensure_schema(dsn)
    return dsn


def step(admin, pngs, model, defer: bool | None, label: str, model_only: float) -> None:
    dsn = reset(admin, "bench_step")
    embed = model.stream
    plans = [
        plan(e, [f"{label}{i:06d}" for i in range(a, b)], pngs[a:b], model.model_id, embed)
        for e, (a, b) in partitions(len(pngs)).items()
    ]
    with Timer() as t:
        results = parallel_load(dsn, plans, defer)
    rate = len(pngs) / t.seconds
    built = sum(r["index"] == "built" for r in results)
    deferred = sum(r["index_deferred"] for r in results)
    row(
        f"image_embeddings write path, index {label}",
        rate,
        "images/s",
        f"{rate / model_only:.1%} of model-only; {deferred}/{len(plans)} deferred, {built} build(s)",
    )
    with connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0] == len(pngs)
        assert conn.execute("SELECT to_regclass('imagenes_fer_vector_hnsw') IS NOT NULL").fetchone()[0]


def demo_shape(admin, pngs, model) -> None:
    """The demo's and bulk-load's shape: one run per emotion partition, ONE AFTER ANOTHER, into one table.
    Interleaved partition by partition, so the machine's drift hits all three alike: the model alone on the
    partition's images, its load with each partition judged alone (``is_bulk`` per partition: the code
    before the declared load), and its load inside one ``DeclaredLoad`` of the whole load's rows."""
    alone, declared = reset(admin, "bench_alone"), reset(admin, "bench_declared")
    seconds = {"model only": 0.0, "per partition": 0.0, "declared": 0.0}
    lines = []
    with DeclaredLoad(declared) as load:
        assert load.begin(len(pngs))
        for emotion, (a, b) in partitions(len(pngs)).items():
            part = pngs[a:b]
            with Timer() as t:
                sum(1 for _ in model.stream(part))
            seconds["model only"] += t.seconds
            line = [f"{emotion} {b - a}: model {t.seconds:.1f} s"]
            for label, dsn in (("per partition", alone), ("declared", declared)):
                ids = [f"{label[0]}{i:06d}" for i in range(a, b)]
                with Timer() as t, connect(dsn) as conn:
                    stats = write_partition(conn, plan(emotion, ids, part, model.model_id, model.stream))
                seconds[label] += t.seconds
                line.append(
                    f"{label} {t.seconds:.1f} s ({'deferred' if stats['index_deferred'] else 'LIVE index'}, "
                    f"index {stats['index']} {stats['index_seconds']:.1f} s)"
                )
            lines.append("; ".join(line))
        with Timer() as t:
            load.end()
        seconds["declared"] += t.seconds
        lines.append(f"declared load's one index build at the end: {t.seconds:.1f} s ({load.index})")
    for line in lines:
        print("   ", line)
    model_rate = len(pngs) / seconds["model only"]
    row("model only, partition by partition (no database)", model_rate, "images/s")
    for label in ("per partition", "declared"):
        rate = len(pngs) / seconds[label]
        row(
            f"image_embeddings, 7 partitions one after another, {label}",
            rate,
            "images/s",
            f"{rate / model_rate:.1%} of model-only",
        )
    for dsn in (alone, declared):
        with connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0] == len(pngs)
            assert conn.execute("SELECT to_regclass('imagenes_fer_vector_hnsw') IS NOT NULL").fetchone()[0]


def write_only(admin: str, rows: int, table_rows: int) -> None:
    """COPY of precomputed vectors: index maintained vs deferred + built, into a table of ``table_rows``."""
    vectors = np.random.default_rng(1).standard_normal((rows + table_rows, 512)).astype(np.float32)

    def vec_plan(emotion, start, stop):
        def embed(pngs):
            for i in range(start, stop, 1000):
                yield vectors[i : min(i + 1000, stop)]

        ids = [f"w{i:07d}" for i in range(start, stop)]
        return plan(emotion, ids, [b""] * len(ids), "m-write", embed)

    rates = {}
    for label, defer in (("maintained", False), ("deferred + build", True)):
        dsn = reset(admin, "bench_write")
        if table_rows:
            with connect(dsn) as conn:  # the table as it stands before the load (index built after)
                write_partition(conn, vec_plan("sad", rows, rows + table_rows), defer_index=True)
        with Timer() as t, connect(dsn) as conn:
            write_partition(conn, vec_plan("happy", 0, rows), defer_index=defer)
        rates[label] = rows / t.seconds
        row(f"write {rows} rows into {table_rows} rows, index {label}", rates[label], "rows/s")
    row(
        f"  deferred + build vs maintained at {table_rows} rows",
        rates["deferred + build"] / rates["maintained"],
        "x",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=35887)
    ap.add_argument("--write-rows", type=int, default=35887)
    ap.add_argument("--table-rows", type=int, default=108000)
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--skip-write", action="store_true")
    ap.add_argument("--demo-shape", action="store_true", help="only the partitions one after another")
    args = ap.parse_args()

    import torch  # deferred: heavy

    profile = os.environ.get("FER_EMBED_PROFILE", "native")
    spec = EmbedderSpec(weights=os.environ["FER_EMBED_WEIGHTS"], profile=profile)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; profile {profile}; "
        f"{os.cpu_count()} cores"
    )
    root = Path(tempfile.mkdtemp(prefix="ferbulk-"))
    try:
        admin = embedded_start(root / "pg", cleanup_mode="delete")  # the tuned embedded server
        if not args.skip_step:
            with Timer() as t:
                pngs = fer_pngs(args.images)
            print(f"{len(pngs)} generated images in {t.seconds:.1f} s")
            model = Embedder.get(spec)
            model.forward(preprocess(pngs[: spec.batch_size], model.spec))  # warm

            def model_only_rate() -> float:
                """The same parallel streams as the loaders (decode, transforms, model), no database."""
                parts = [pngs[a:b] for a, b in partitions(len(pngs)).values()]
                threads = [
                    threading.Thread(target=lambda p=p: sum(1 for _ in model.stream(p))) for p in parts
                ]
                with Timer() as t:
                    for th in threads:
                        th.start()
                    for th in threads:
                        th.join()
                return len(pngs) / t.seconds

            if args.demo_shape:
                demo_shape(admin, pngs, model)
                return
            before = model_only_rate()
            row(f"model only ({profile}, 7 parallel streams as the loaders, no database)", before, "images/s")
            step(admin, pngs, model, None, "deferred", before)
            after = model_only_rate()
            row("model only again", after, "images/s")
            step(admin, pngs, model, False, "maintained", (before + after) / 2)
            row("model only again", model_only_rate(), "images/s")
        if not args.skip_write:
            write_only(admin, args.write_rows, 0)
            write_only(admin, args.write_rows, args.table_rows)
    finally:
        embedded_stop(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
