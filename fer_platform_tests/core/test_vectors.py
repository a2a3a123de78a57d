"""Partition replacement in PostgreSQL + pgvector with binary COPY."""

import datetime as dt
import threading

import numpy as np
import pytest

from fer_platform.core.pg.connect import connect
from fer_platform.core.report import progress_every
from fer_platform.core.vectors import (
    NonFiniteVectors,
    arrow_to_vectors,
    count_partition,
    partition_check,
    read_partition,
    write_partition,
)
from fer_platform_tests.helpers import embedding_plan

DAY = dt.date(2026, 11, 20)


class FakeModel:
    """Deterministic vectors from the image bytes; counts what it was asked to embed."""

    def __init__(self, batch=4, fail_after=None, nan_after=None):
        self.calls, self.batch, self.fail_after, self.nan_after = 0, batch, fail_after, nan_after

    def __call__(self, pngs):
        for start in range(0, len(pngs), self.batch):
            chunk = pngs[start : start + self.batch]
            if self.fail_after is not None and start >= self.fail_after:
                raise RuntimeError("model crashed mid-partition")
            out = np.stack(
                [np.random.default_rng(list(p)).standard_normal(512).astype(np.float32) for p in chunk]
            )
            if self.nan_after is not None and start >= self.nan_after:
                out[0, 0] = np.nan
            self.calls += len(chunk)
            yield out


def _plan(n, model, emotion="happy", force=False, offset=0):
    ids = [f"img{i:03d}" for i in range(offset, offset + n)]
    return embedding_plan(ids, model, DAY, emotion, force=force, lake_root="/lake/")


def _rows(dsn):
    with connect(dsn) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT image_id, id FROM imagenes_fer WHERE model='m1'")}


def test_write_read_round_trip(pg_dsn):
    model = FakeModel()
    with connect(pg_dsn) as conn:
        stats = write_partition(conn, _plan(10, model))
        table = read_partition(conn, "happy", DAY, "m1")
    assert stats["embedded"] == 10 and stats["rows"] == 10 and model.calls == 10
    assert table.num_rows == 10 and table.schema.field("vector").type.list_size == 512
    vecs = arrow_to_vectors(table["vector"])
    expected = np.random.default_rng(list(b"img003")).standard_normal(512).astype(np.float32)
    i = table["image_id"].to_pylist().index("img003")
    np.testing.assert_allclose(vecs[i], expected, rtol=1e-6)


def test_rerun_reuses_vectors_and_keeps_ids(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(8, FakeModel()))
    before = _rows(pg_dsn)
    again = FakeModel()
    with connect(pg_dsn) as conn:
        stats = write_partition(conn, _plan(8, again))
    assert again.calls == 0 and stats["reused"] == 8 and _rows(pg_dsn) == before


def test_partition_shrinks_and_grows_exactly(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(6, FakeModel()))
        before = _rows(pg_dsn)
        model = FakeModel()
        stats = write_partition(conn, _plan(6, model, offset=3))  # img003..img008
    after = _rows(pg_dsn)
    assert stats["removed"] == 3 and stats["embedded"] == 3 and model.calls == 3
    assert sorted(after) == [f"img{i:03d}" for i in range(3, 9)]
    assert all(after[k] == before[k] for k in ("img003", "img004", "img005"))


def test_force_reembeds_and_keeps_ids(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(5, FakeModel()))
        before = _rows(pg_dsn)
        model = FakeModel()
        stats = write_partition(conn, _plan(5, model, force=True))
    assert model.calls == 5 and stats["embedded"] == 5 and _rows(pg_dsn) == before


@pytest.mark.parametrize("failure", [dict(fail_after=8), dict(nan_after=8)])
def test_failure_mid_partition_leaves_previous_rows_intact(pg_dsn, failure):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(6, FakeModel()))
    before = _rows(pg_dsn)
    with pytest.raises((RuntimeError, NonFiniteVectors)):
        with connect(pg_dsn) as conn:
            write_partition(conn, _plan(20, FakeModel(**failure)))  # 14 new images, breaks after 8
    assert _rows(pg_dsn) == before


def test_concurrent_runs_of_one_partition_do_not_interleave(pg_dsn):
    errors = []

    def run():
        try:
            with connect(pg_dsn) as conn:
                write_partition(conn, _plan(30, FakeModel()))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    with connect(pg_dsn) as conn:
        assert count_partition(conn, "happy", DAY, "m1") == 30
        facts = partition_check(conn, "happy", DAY, "m1", [f"img{i:03d}" for i in range(30)])
    assert (facts["missing"], facts["extra"], facts["duplicated"], facts["wrong_dims"]) == ([], [], [], [])


def test_partitions_and_models_are_separate(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(4, FakeModel(), emotion="happy"))
        write_partition(conn, _plan(3, FakeModel(), emotion="sad", offset=10))
        other = _plan(4, FakeModel(), emotion="happy")
        other.model = "m2"
        write_partition(conn, other)
        assert count_partition(conn, "happy", DAY, "m1") == 4
        assert count_partition(conn, "sad", DAY, "m1") == 3
        assert count_partition(conn, "happy", DAY, "m2") == 4
        facts = partition_check(conn, "happy", DAY, "m1", ["img000", "img001", "img002", "img999"])
    assert facts["missing"] == ["img999"] and facts["extra"] == ["img003"]


def test_a_load_logs_its_progress_at_most_every_interval_and_at_the_end():
    """One log line per batch was one event-log write per 64 images (~7 % of image_embeddings at FER size):
    progress is logged at most every interval, and always when the last batch is in."""
    lines: list[str] = []
    quiet = progress_every(lines.append, seconds=3600)
    for done in range(64, 5000, 64):
        quiet(done, 5000)
    quiet(5000, 5000)
    assert len(lines) == 1 and lines[0].startswith("embedded 5,000/5,000 new images (")
    chatty = progress_every(lines.append, seconds=0)
    for done in (64, 128, 192):
        chatty(done, 192)
    assert [line.split(" new")[0] for line in lines[1:]] == [
        "embedded 64/192",
        "embedded 128/192",
        "embedded 192/192",
    ]


def test_an_image_another_partition_holds_moves_here_with_its_row_and_vector(pg_dsn):
    """The content hash is the identity: an image logged under one partition and then under another (its
    load log lost and restored) keeps one row, its id and its vector, now in the second partition; an image
    the partition already holds is left as it is; a forced re-embed moves too."""
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan(4, FakeModel(), emotion="happy"))  # img000-img003
        write_partition(conn, _plan(1, FakeModel(), emotion="sad", offset=4))  # img004
        before = _rows(pg_dsn)
        model = FakeModel()
        stats = write_partition(
            conn, _plan(3, model, emotion="sad", offset=2)
        )  # img002, img003 held by happy
        assert (stats["moved"], stats["embedded"], stats["reused"], model.calls) == (2, 0, 3, 0)
        assert count_partition(conn, "happy", DAY, "m1") == 2 and count_partition(conn, "sad", DAY, "m1") == 3
        row = conn.execute("SELECT emotion, filepath FROM imagenes_fer WHERE image_id = 'img003'").fetchone()
        assert row == ("sad", "/lake/raw/images/fer2013/train/sad/img003.png")
        assert _rows(pg_dsn) == before  # the same rows, ids kept: moved, not copied

        forced = embedding_plan(
            ["img000", "img004"], FakeModel(), DAY, "happy", force=True, lake_root="/lake/"
        )
        stats = write_partition(conn, forced)  # img004 back from sad, and img001 removed from happy
        assert (stats["moved"], stats["embedded"], stats["removed"]) == (1, 2, 1)
        assert count_partition(conn, "happy", DAY, "m1") == 2 and count_partition(conn, "sad", DAY, "m1") == 2
    after = _rows(pg_dsn)
    assert after["img004"] == before["img004"] and "img001" not in after and len(after) == 4


def _rows_read(conn) -> int:
    """Rows of the vectors table read so far by scans (sequential and through indexes), as counted by the
    server's statistics (flushed on demand: PostgreSQL 15 or later)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    conn.execute("SELECT pg_stat_clear_snapshot()")
    n = conn.execute(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
        "WHERE relname = 'imagenes_fer'"
    ).fetchone()[0]
    conn.commit()
    return n


def test_writing_new_images_reads_none_of_the_other_partitions_rows(pg_dsn):
    """Issue 15: a partition of new images costs its own rows, not the table's. Looking for images another
    partition holds (to move them) went through every row of the model, by whatever plan the planner found
    for a join on a freshly loaded table without statistics (a nested loop: 0.28 s for 547 images after
    4,953)."""
    with connect(pg_dsn) as conn:
        conn.execute(
            "ALTER TABLE imagenes_fer SET (autovacuum_enabled = off)"
        )  # no statistics, as after a load
        conn.commit()
        write_partition(conn, _plan(3000, FakeModel(batch=500), emotion="happy"))
        before = _rows_read(conn)
        stats = write_partition(conn, _plan(300, FakeModel(batch=500), emotion="sad", offset=5000))
        read = _rows_read(conn) - before
    assert stats["embedded"] == 300 and stats["moved"] == 0
    assert read < 300, f"{read} rows read to write 300 new images beside 3,000"
