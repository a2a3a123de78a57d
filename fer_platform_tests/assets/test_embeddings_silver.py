"""raw -> bronze -> image_embeddings -> silver_embeddings through dg.materialize, real PostgreSQL."""

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from pgvector.psycopg import register_vector

from fer_platform.assets.embeddings import image_embeddings_complete
from fer_platform.assets.silver import silver_matches_postgres
from fer_platform.automation.jobs import INGEST_ASSETS, RUN_CHECKS
from fer_platform.core.pg.connect import connect
from fer_platform.core.vectors import arrow_to_vectors
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import encoded, face, materialization, put

MODEL = "resnet18-random-s0-fidelity"


def _run(resources, emotion, force=False):
    run_config = {"ops": {"image_embeddings": {"config": {"force": True}}}} if force else None
    result = dg.materialize(
        [*INGEST_ASSETS, *RUN_CHECKS],
        partition_key=partition_key(emotion, utc_today()),
        resources=resources,
        run_config=run_config,
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations()), result.get_asset_check_evaluations()
    return result


def _pg(dsn):
    with connect(dsn) as conn:
        return conn.execute(
            "SELECT image_id, id, emotion, split, filepath, model FROM imagenes_fer ORDER BY image_id"
        ).fetchall()


@pytest.fixture
def two_partitions(landing):
    for i in range(4):
        put(landing, f"train/happy/h{i}.png", face("happy", i))
    put(landing, "test/happy/h_test.png", face("happy", 10))
    for i in range(3):
        put(landing, f"train/sad/s{i}.png", face("sad", i))
    return landing


def test_two_partitions_then_a_rerun_changes_nothing(resources, two_partitions, pg_dsn, lake):
    first = _run(resources, "happy")
    _run(resources, "sad")
    rows = _pg(pg_dsn)
    assert len(rows) == 8 and {r[5] for r in rows} == {MODEL}
    assert {r[2] for r in rows} == {"happy", "sad"}
    assert all(r[4].startswith("raw/images/fer2013/") for r in rows), "lake-relative in every environment"
    meta = materialization(first, "image_embeddings").metadata
    assert meta["embedded"].value == 5 and meta["model"].value == MODEL

    again = _run(resources, "happy")
    assert _pg(pg_dsn) == rows, "no duplicates, unchanged ids"
    meta = materialization(again, "image_embeddings").metadata
    assert meta["embedded"].value == 0 and meta["reused"].value == 5

    forced = _run(resources, "happy", force=True)
    assert materialization(forced, "image_embeddings").metadata["embedded"].value == 5
    assert [r[:2] for r in _pg(pg_dsn)] == [r[:2] for r in rows]


def test_new_file_adds_one_vector(resources, two_partitions, pg_dsn):
    _run(resources, "sad")
    before = dict((r[0], r[1]) for r in _pg(pg_dsn))
    put(two_partitions, "train/sad/s_new.png", face("sad", 99))
    result = _run(resources, "sad")
    assert materialization(result, "image_embeddings").metadata["embedded"].value == 1
    after = dict((r[0], r[1]) for r in _pg(pg_dsn))
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())


def test_silver_is_readable_by_standard_readers(resources, two_partitions, lake):
    _run(resources, "happy")
    _run(resources, "sad")
    today = utc_today()
    silver = lake / "silver/embeddings"
    assert (silver / f"emotion=happy/load_date={today}/part-0.parquet").exists()

    con = duckdb.connect()
    got = con.sql(
        f"SELECT emotion, load_date, split, count(*) AS n, min(len(vector)) AS dims, "
        f"max(abs(list_dot_product(vector, vector) - 1)) AS off "
        f"FROM read_parquet('{silver}/**/*.parquet', hive_partitioning=true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [(g[0], g[1], g[2], g[3], g[4]) for g in got] == [
        ("happy", today, "test", 1, 512),
        ("happy", today, "train", 4, 512),
        ("sad", today, "train", 3, 512),
    ]
    assert max(g[5] for g in got) < 1e-5

    frame = pd.read_parquet(silver)
    assert len(frame) == 8 and set(frame["emotion"].astype(str)) == {"happy", "sad"}
    assert frame["filepath"].str.startswith("raw/images/fer2013/").all()
    table = ds.dataset(silver, partitioning="hive").to_table()
    assert str(table.schema.field("vector").type) == "fixed_size_list<element: float>[512]"
    v = arrow_to_vectors(table["vector"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_checks_fail_when_postgres_and_silver_disagree(resources, two_partitions, pg_dsn):
    _run(resources, "happy")
    with connect(pg_dsn) as conn:
        conn.execute("DELETE FROM imagenes_fer WHERE id = (SELECT min(id) FROM imagenes_fer)")
    result = dg.materialize(
        [*INGEST_ASSETS, *RUN_CHECKS],
        partition_key=partition_key("happy", utc_today()),
        resources=resources,
        # a check-only selection has no partitioned asset to take the partition from: add bronze
        selection=dg.AssetSelection.checks(image_embeddings_complete)
        | dg.AssetSelection.assets("bronze_images"),
        raise_on_error=False,
    )
    evals = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert evals["bronze_images_valid"].passed
    assert not evals["image_embeddings_complete"].passed
    assert "1 missing image(s)" in evals["image_embeddings_complete"].description


def test_silver_check_catches_a_count_mismatch(resources, two_partitions, pg_dsn):
    _run(resources, "sad")
    with connect(pg_dsn) as conn:  # a vector Postgres has but silver never saw
        conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model, "
            "written_by) SELECT filepath, emotion, vector, 'extra', split, load_date, model, written_by "
            "FROM imagenes_fer LIMIT 1"
        )
    result = dg.materialize(
        [*INGEST_ASSETS, *RUN_CHECKS],
        partition_key=partition_key("sad", utc_today()),
        resources=resources,
        selection=dg.AssetSelection.checks(silver_matches_postgres)
        | dg.AssetSelection.assets("bronze_images"),
        raise_on_error=False,
    )
    ev = {c.check_name: c for c in result.get_asset_check_evaluations()}["silver_matches_postgres"]
    assert not ev.passed and "silver has 3 rows, PostgreSQL 4" in ev.description


def test_a_partition_of_only_broken_files_gives_empty_layers(resources, landing, lake, pg_dsn):
    put(landing, "train/surprise/broken.png", encoded("RGB"))
    result = _run(resources, "surprise")
    assert result.asset_materializations_for_node("raw_images")[0].metadata["quarantined"].value == 1
    silver = lake / f"silver/embeddings/emotion=surprise/load_date={utc_today()}/part-0.parquet"
    assert silver.exists() and ds.dataset(silver).count_rows() == 0
    assert _pg(pg_dsn) == []


def test_silver_materialised_alone_over_lost_vectors_fails_against_the_load_log(
    resources, two_partitions, pg_dsn
):
    """A UI materialisation of silver alone after the vectors were lost: silver and PostgreSQL agree (both
    empty), but the check compares with the load log too, so the lost images are not silently published."""
    _run(resources, "sad")
    with connect(pg_dsn) as conn:
        conn.execute("DELETE FROM imagenes_fer")
    result = dg.materialize(
        [*INGEST_ASSETS, *RUN_CHECKS],
        partition_key=partition_key("sad", utc_today()),
        resources=resources,
        selection=dg.AssetSelection.assets("silver_embeddings")
        | dg.AssetSelection.checks(silver_matches_postgres),
        raise_on_error=False,
    )
    ev = {c.check_name: c for c in result.get_asset_check_evaluations()}["silver_matches_postgres"]
    assert not ev.passed and "does not hold the load log's 3 loaded images" in ev.description


FOREIGN = (
    "SELECT id, filepath, emotion, vector::text, image_id, split, load_date, model, created_at, written_by "
    "FROM imagenes_fer WHERE written_by <> 'fer-platform' ORDER BY id"
)


def test_foreign_rows_survive_ingest_runs_and_are_counted_not_compared(resources, two_partitions, pg_dsn):
    """The seed loader's classic INSERT, plus a foreign row with the current model id and one with another,
    in the partition being loaded: re-runs leave them as they are, the checks that compare layers count
    only the platform's rows (and pass), and imagenes_fer_foreign_rows reports the three."""
    _run(resources, "happy")
    today = utc_today()
    with connect(pg_dsn) as conn:
        register_vector(conn)
        vec = np.ones(512, np.float32)
        conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector) VALUES ('h.png', 'happy', %s)", (vec,)
        )
        for image_id, model in (("seed-1", MODEL), ("seed-2", "other-model")):
            conn.execute(
                "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, load_date, model) "
                "VALUES ('h.png', 'happy', %s, %s, %s, %s)",
                (vec, image_id, today, model),
            )
        foreign = conn.execute(FOREIGN).fetchall()

    for force in (False, True):
        result = _run(resources, "happy", force=force)  # every check passes (asserted in _run)
        meta = materialization(result, "image_embeddings").metadata
        assert meta["removed"].value == 0 and meta["dagster/row_count"].value == 5
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["silver_matches_postgres"].metadata["postgres_rows"].value == 5
        assert checks["image_embeddings_complete"].metadata["vectors"].value == 5
        counted = checks["imagenes_fer_foreign_rows"]
        assert counted.passed and counted.metadata["foreign_rows"].value == 3
        assert "other-model" in counted.metadata["by_writer_model_emotion"].value
        with connect(pg_dsn) as conn:
            assert conn.execute(FOREIGN).fetchall() == foreign, "unchanged, not deleted"
