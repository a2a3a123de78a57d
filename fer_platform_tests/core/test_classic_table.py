"""The classic contract of imagenes_fer (issue 14): the seed loader's three-column INSERT is accepted on a
fresh and on a migrated database, the platform's statements touch only its own rows, and an older table is
migrated once (rows marked as the platform's, paths made lake-relative)."""

import datetime as dt

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from fer_platform.core import convergence
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.schema import ensure_schema, schema_present, vector_index_present
from fer_platform.core.vectors import (
    count_model,
    count_partition,
    foreign_rows,
    partition_check,
    read_partition,
    write_partition,
)
from fer_platform_tests.helpers import embedding_plan, old_vectors_table

DAY = dt.date(2026, 11, 20)
CLASSIC = "INSERT INTO imagenes_fer (filepath, emotion, vector) VALUES (%s, %s, %s)"


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(512).astype(np.float32)


def _classic_insert(conn, filepath="seed/happy/x.png", emotion="happy", seed=0):
    register_vector(conn)
    return conn.execute(CLASSIC + " RETURNING id", (filepath, emotion, _vec(seed))).fetchone()[0]


def _embed(pngs):
    yield np.stack([_vec(len(p) * 7 + p[-1]) for p in pngs])


def _plan(ids, model="m1", emotion="happy"):
    return embedding_plan(ids, _embed, DAY, emotion, model)


def _all(conn):
    return conn.execute(
        "SELECT id, filepath, emotion, vector::text, image_id, split, load_date, model, written_by "
        "FROM imagenes_fer ORDER BY id"
    ).fetchall()


def test_the_classic_insert_on_a_fresh_database(pg_dsn):
    with connect(pg_dsn) as conn:
        row_id = _classic_insert(conn)
        row = conn.execute(
            "SELECT image_id, model, load_date, written_by FROM imagenes_fer WHERE id = %s", (row_id,)
        ).fetchone()
    assert row == (None, None, dt.date.today(), "external")


def test_an_older_table_is_migrated_once(pg_server):
    dsn = ensure_database(pg_server, f"old_{id(object())}")
    old_vectors_table(dsn)
    with connect(dsn) as conn:  # another client's row with every column filled: it is not the platform's
        conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model) "
            "VALUES ('train/happy/Training_9.jpg', 'happy', %s::vector, 'seed9', 'train', '2026-10-01', "
            "'resnet18-random-s0-fidelity')",
            ("[" + ",".join(["9"] + ["0"] * 511) + "]",),
        )
    with connect(dsn) as conn, pytest.raises(psycopg.errors.NotNullViolation):
        _classic_insert(conn)  # what the seed loader met
    with connect(dsn) as conn:
        assert not schema_present(conn)

    ensure_schema(dsn)
    with connect(dsn) as conn:
        rows = conn.execute("SELECT image_id, filepath, written_by FROM imagenes_fer ORDER BY id").fetchall()
        assert rows == [
            ("old0", "raw/images/fer2013/train/happy/a.png", "fer-platform"),
            ("old1", "raw/images/fer2013/test/happy/b.png", "fer-platform"),
            ("old2", "raw/images/fer2013/train/sad/c.png", "fer-platform"),
            ("seed9", "train/happy/Training_9.jpg", "external"),  # left as its client wrote it
        ]
        assert schema_present(conn), "the next run finds it by a catalog read: no DDL, no lock"
        assert vector_index_present(conn), "dropped for the rewrite, built again in one pass"
        # the README's expression of the seed's layout
        seed_path = conn.execute(
            "SELECT regexp_replace(filepath, '^raw/images/fer2013/', 'raw/imagenes/') FROM imagenes_fer "
            "WHERE image_id = 'old2'"
        ).fetchone()
        assert seed_path == ("raw/imagenes/train/sad/c.png",)
        row_id = _classic_insert(conn)
        before = _all(conn)
    ensure_schema(dsn)  # idempotent: the classic row stays external, nothing changes
    with connect(dsn) as conn:
        assert _all(conn) == before
        assert conn.execute("SELECT written_by FROM imagenes_fer WHERE id = %s", (row_id,)).fetchone() == (
            "external",
        )


def test_the_platform_leaves_foreign_rows_alone(pg_dsn):
    """Foreign rows in the partition the platform writes, with its model id and with another: a shrinking
    re-run of the partition deletes only its own rows; reads, counts, checks and the audit ignore them."""
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(["a", "b", "c"]))
        register_vector(conn)
        conn.execute(  # same partition, same model, an image id of its own: the seed loader with more columns
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, load_date, model, written_by) "
            "VALUES ('seed/happy/y.png', 'happy', %s, 'z', %s, 'm1', 'seed-loader')",
            (_vec(1), DAY),
        )
        conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector, load_date, model) "
            "VALUES ('seed/happy/w.png', 'happy', %s, %s, 'other-model')",
            (_vec(2), DAY),
        )
        _classic_insert(conn, seed=3)
        foreign_before = [r for r in _all(conn) if r[8] != "fer-platform"]

        stats = write_partition(conn, _plan(["b", "c", "d"]))  # "a" left the partition
        assert (stats["removed"], stats["embedded"], stats["reused"]) == (1, 1, 2)
        assert [r for r in _all(conn) if r[8] != "fer-platform"] == foreign_before, "unchanged, not deleted"
        assert read_partition(conn, "happy", DAY, "m1")["image_id"].to_pylist() == ["b", "c", "d"]
        assert count_partition(conn, "happy", DAY, "m1") == 3 and count_model(conn, "m1") == 3
        facts = partition_check(conn, "happy", DAY, "m1", ["b", "c", "d"])
        assert (facts["extra"], facts["missing"], facts["rows"]) == ([], [], 3)
        state = convergence.postgres_state(conn, "m1")
        assert state == {("happy", DAY): convergence.state_of(["b", "c", "d"])}
        assert foreign_rows(conn) == [
            {"written_by": "external", "model": None, "emotion": "happy", "rows": 1},
            {"written_by": "external", "model": "other-model", "emotion": "happy", "rows": 1},
            {"written_by": "seed-loader", "model": "m1", "emotion": "happy", "rows": 1},
        ]
