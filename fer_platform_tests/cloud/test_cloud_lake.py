"""The same assets with the lake and the landing zone in Azure (Azurite) or S3 (moto): two partitions
raw -> bronze -> image_embeddings -> silver, then the search index, with FER_ENV's own resources and the
real PostgreSQL; objects land under Hive paths, standard readers read silver from the store, and
ingestion over the same cloud landing zone loads nothing twice."""

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from fer_platform.assets.search import search_index
from fer_platform.automation.jobs import INGEST_ASSETS, RUN_CHECKS
from fer_platform.core.ingest import ingest, pending_files
from fer_platform.core.pg.connect import connect
from fer_platform.core.vectors import arrow_to_vectors
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources.environments import resolved_resources, resources_for
from fer_platform_tests.helpers import face

MODEL = "resnet18-random-s0-fidelity"
FILES = {
    "train/happy/h0.png": face("happy", 0),
    "train/happy/h1.png": face("happy", 1),
    "test/happy/h2.png": face("happy", 2),
    "train/sad/s0.png": face("sad", 0),
    "train/sad/s1.png": face("sad", 1),
}


def _materialize(resources, selection=None, partition=None):
    result = dg.materialize(
        [*INGEST_ASSETS, search_index, *RUN_CHECKS],
        resources=resources,
        partition_key=partition,
        selection=selection,
    )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(c.passed for c in evaluations), evaluations
    return result


def _load_log(dsn):
    with connect(dsn) as conn:
        return conn.execute("SELECT source, status FROM load_log ORDER BY source").fetchall()


@pytest.mark.slow
def test_partitions_to_search_index_in_the_cloud(cloud_store, pg_dsn, monkeypatch):
    monkeypatch.setenv("FER_PG_DSN", pg_dsn)
    resources = resources_for(cloud_store.env)
    built = resolved_resources(("landing", "lake"), cloud_store.env)
    landing, lake = built["landing"].storage(), built["lake"].storage()
    landing.write_many(FILES.items())
    day = utc_today()

    for emotion in ("happy", "sad"):
        _materialize(resources, dg.AssetSelection.assets(*INGEST_ASSETS), partition_key(emotion, day))
    index_run = _materialize(resources, dg.AssetSelection.assets(search_index))
    assert {c.check_name for c in index_run.get_asset_check_evaluations()} == {"search_index_recall"}

    # the objects, as the cloud's own SDK lists them, under Hive paths
    prefix = cloud_store.lake_url.split("/", 3)[3]
    keys = {k[len(prefix) + 1 :] for k in cloud_store.list_keys(prefix + "/")}
    for emotion in ("happy", "sad"):
        for layer in ("raw/manifest", "bronze/images", "silver/embeddings"):
            assert f"{layer}/emotion={emotion}/load_date={day}/part-0.parquet" in keys
    assert {f"raw/images/fer2013/{k}" for k in FILES} <= keys
    assert {f"index/{MODEL}/index.faiss", f"index/{MODEL}/ids.parquet", "index/LATEST"} <= keys
    assert lake.read_bytes("index/LATEST").decode() == MODEL

    # a standard reader reads silver straight from the store (pandas + fsspec, pyarrow dataset)
    silver_url = f"{cloud_store.lake_url}/silver/embeddings"
    frame = pd.read_parquet(silver_url, storage_options=cloud_store.storage_options)
    assert len(frame) == 5
    assert sorted(frame.groupby(frame["emotion"].astype(str)).size().items()) == [("happy", 3), ("sad", 2)]
    assert frame["filepath"].str.startswith("raw/images/fer2013/").all()
    table = ds.dataset(lake.path("silver/embeddings"), filesystem=lake.fs, partitioning="hive").to_table()
    np.testing.assert_allclose(np.linalg.norm(arrow_to_vectors(table["vector"]), axis=1), 1.0, atol=1e-5)

    # PostgreSQL holds lake-relative paths (valid on any server), each an image in the cloud lake
    with connect(pg_dsn) as conn:
        paths = [r[0] for r in conn.execute("SELECT filepath FROM imagenes_fer ORDER BY filepath")]
    assert paths == sorted(f"raw/images/fer2013/{k}" for k in FILES)
    assert all(lake.read_bytes(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    # ingestion over the same cloud landing zone again (the landing sensor's path): nothing twice
    logged = _load_log(pg_dsn)
    assert [s for _, s in logged] == ["loaded"] * 5
    assert pending_files(landing, pg_dsn) == ([], [])
    again = ingest(landing, lake, pg_dsn, landing.list_files(), day, "rerun")
    assert again.outcomes == [] and sorted(again.already_logged) == sorted(FILES)
    assert _load_log(pg_dsn) == logged

    # a new upload is pending exactly once, loads, and is archived inside the cloud landing zone
    landing.write_bytes("train/sad/s_new.png", face("sad", 7))
    pending, _ = pending_files(landing, pg_dsn)
    assert [e.key for e in pending] == ["train/sad/s_new.png"]
    report = ingest(landing, lake, pg_dsn, pending, day, "new", on_success="archive")
    assert report.counts == {"loaded": 1} and report.source_errors == []
    archived = f"_archive/{day}/train/sad/s_new.png"
    assert pending_files(landing, pg_dsn) == ([], [(archived, "archive of processed files")])
    assert not landing.exists("train/sad/s_new.png") and landing.exists(f"_archive/{day}/train/sad/s_new.png")
    assert lake.read_bytes("raw/images/fer2013/train/sad/s_new.png") == face("sad", 7)
    assert len(_load_log(pg_dsn)) == 6


def _failure_messages(result) -> list[str]:
    """The error messages (and their causes) of every failure event: step, resource init, run."""
    out = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            out.append(error.message.strip())
            error = error.cause
    return out


@pytest.mark.parametrize("env", ["azure", "aws"])
def test_a_store_that_cannot_be_reached_fails_the_run_at_start_in_one_line(env, request, pg_dsn, monkeypatch):
    store = request.getfixturevalue(f"{env}_store")
    monkeypatch.setenv("FER_PG_DSN", pg_dsn)
    if env == "azure":  # a wrong account key (Azurite checks signatures)
        secret = "A" * 86 + "=="
        good = store.variables["AZURE_STORAGE_CONNECTION_STRING"]
        key = good.split("AccountKey=")[1].split(";")[0]
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good.replace(key, secret))
        expected = "cannot reach abfs://"
    else:  # a bucket that does not exist (moto accepts any credentials)
        secret = store.variables["AWS_SECRET_ACCESS_KEY"]
        monkeypatch.setenv("FER_LANDING", "s3://no-such-bucket-here/landing")
        expected = (
            "s3://no-such-bucket-here/landing: there is no container or bucket named 'no-such-bucket-here'"
        )
    result = dg.materialize(
        INGEST_ASSETS,
        resources=resources_for(env),
        partition_key=partition_key("happy", utc_today()),
        selection=dg.AssetSelection.assets("raw_images"),
        raise_on_error=False,
    )
    assert not result.success
    ours = [m for m in _failure_messages(result) if expected in m]
    assert ours and all("\n" not in m and secret not in m for m in ours), _failure_messages(result)
