"""Builders of good and broken landing files for tests, and the local resources pointed at test places."""

import io
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

from fer_platform.core.sample_data import render_face
from fer_platform.core.vectors import EmbeddingPlan


def face(emotion: str = "happy", seed: int = 0) -> bytes:
    return render_face(emotion, np.random.default_rng(seed))


def encoded(mode: str = "L", size=(48, 48), fmt: str = "PNG", value=100) -> bytes:
    buf = io.BytesIO()
    color = value if mode == "L" else (value, 50, 20)
    Image.new(mode, size, color=color).save(buf, format=fmt)
    return buf.getvalue()


def put(root: Path, key: str, data: bytes) -> Path:
    p = root / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def folder_resources(dsn: str, lake: Path, landing: Path, **embedder) -> dict:
    """The environments' own resources (``environment_resources``) on a database and two folders;
    ``embedder`` settings (e.g. ``weights="random"``) replace the environment's."""
    from fer_platform.resources import EmbedderResource, PostgresResource
    from fer_platform.resources.environments import environment_resources, vector_resources

    res = environment_resources(str(lake), str(landing), PostgresResource(dsn=dsn))
    if embedder:
        res.update(vector_resources(res["postgres"], EmbedderResource(lake=res["lake"], **embedder)))
    return res


# The vectors table as it was before the classic contract (issue 14): NOT NULL image_id, load_date and model,
# no written_by; the platform wrote absolute paths or URIs. For tests of the migration of older databases.
OLD_VECTORS_TABLE = """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE imagenes_fer (
        id          bigserial PRIMARY KEY,
        filepath    text NOT NULL,
        emotion     text NOT NULL,
        vector      vector(512) NOT NULL,
        image_id    text NOT NULL,
        split       text,
        load_date   date NOT NULL,
        model       text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (image_id, model)
    );
    CREATE INDEX imagenes_fer_vector_hnsw ON imagenes_fer USING hnsw (vector vector_cosine_ops)"""
OLD_PATHS = (
    "/home/ana/fer/lake/raw/images/fer2013/train/happy/a.png",
    "abfs://lake@acct.dfs.core.windows.net/fer/raw/images/fer2013/test/happy/b.png",
    "s3://fer-lake/raw/images/fer2013/train/sad/c.png",
)


def old_vectors_table(dsn: str, model: str = "resnet18-random-s0-fidelity") -> None:
    """An older vectors table on ``dsn`` holding one platform row per ``OLD_PATHS`` (vector 1, 2, 3 at 0)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(OLD_VECTORS_TABLE)
        for i, path in enumerate(OLD_PATHS):
            emotion = path.split("/")[-2]
            vec = "[" + ",".join([str(i + 1)] + ["0"] * 511) + "]"
            conn.execute(
                "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model) "
                "VALUES (%s, %s, %s::vector, %s, %s, '2026-10-01', %s)",
                (path, emotion, vec, f"old{i}", path.split("/")[-3], model),
            )


def embedding_plan(
    ids, embed, load_date, emotion="happy", model="m1", force=False, lake_root=""
) -> EmbeddingPlan:
    """A partition's plan of generated train images ``ids`` (each id's bytes as its PNG), embedded by
    ``embed``;
    ``lake_root`` before the lake-relative paths stands for an older, absolute filepath."""
    return EmbeddingPlan(
        emotion=emotion,
        load_date=load_date,
        model=model,
        image_ids=ids,
        filepaths=[f"{lake_root}raw/images/fer2013/train/{emotion}/{i}.png" for i in ids],
        splits=["train"] * len(ids),
        pngs=[i.encode() for i in ids],
        embed=embed,
        force=force,
    )


def materialization(result, asset: str):
    """The materialisation of ``asset`` in a run's result (its step may also record others: the first load
    records the served model, embedding_model, from the image_embeddings step)."""
    (found,) = [m for m in result.asset_materializations_for_node(asset) if m.asset_key.path == [asset]]
    return found


def ingester(defs, instance, key):
    """``ingest(keys)``: an ``ingest_images`` run of partition ``key`` over those landing keys, in process on
    ``instance``, asserted to succeed; its result."""
    from fer_platform.assets.raw import ingest_run_config  # deferred: loads dagster (most helpers need none)

    def ingest(keys):
        result = defs.resolve_job_def("ingest_images").execute_in_process(
            partition_key=key, instance=instance, run_config=ingest_run_config(keys)
        )
        assert result.success
        return result

    return ingest
