"""FER2013's own duplicates against a real PostgreSQL: label conflicts and train/test leakage are resolved
the same way whatever the listing order, the batches or the timestamps."""

import datetime as dt
import itertools
import os

import pyarrow as pa
import pytest

from fer_platform.core import images, ledger, training
from fer_platform.core.ingest import ingest
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.core.storage import Storage
from fer_platform_tests.helpers import face, put

DAY1, DAY2 = dt.date(2026, 11, 24), dt.date(2026, 11, 25)
SAME = face("happy", 7)  # the pixels every copy below shares
MTIME = 1_800_000_000  # one timestamp for every file: the rule must not need them


def _land(landing, keys, data=SAME):
    for k in keys:
        os.utime(put(landing, k, data), (MTIME, MTIME))


def _ingest(landing, lake, dsn, keys, day, reverse=False):
    ls = Storage(str(landing))
    entries = ls.stat_many(keys)[0]
    return ingest(ls, Storage(str(lake)), dsn, entries[::-1] if reverse else entries, day, "run")


def _rows(dsn):
    with connect(dsn) as conn:
        cur = conn.execute("SELECT path, status, reason, lake_path, emotion, load_date FROM load_log")
        return {r[0]: dict(zip([d.name for d in cur.description], r, strict=True)) for r in cur.fetchall()}


def _assert_conflict(rows, paths):
    for p in paths:
        assert rows[p]["status"] == "conflict", rows[p]
        assert rows[p]["reason"].startswith("label conflict: the same content is also filed as ")
        others = [o for o in paths if o != p]
        for o in others:
            assert f"{rows[o]['emotion']} ({o})" in rows[p]["reason"]
        assert p not in rows[p]["reason"]


@pytest.mark.parametrize("reverse", [False, True])
def test_a_label_conflict_in_one_batch_loads_no_copy(pg_dsn, landing, lake, reverse):
    _land(landing, ["train/happy/a.png", "train/sad/b.png"])
    _land(landing, ["train/happy/other.png"], face("happy", 8))
    report = _ingest(
        landing,
        lake,
        pg_dsn,
        ["train/happy/a.png", "train/sad/b.png", "train/happy/other.png"],
        DAY1,
        reverse,
    )
    assert report.counts == {"conflict": 2, "loaded": 1}
    rows = _rows(pg_dsn)
    _assert_conflict(rows, ["train/happy/a.png", "train/sad/b.png"])
    assert rows["train/happy/a.png"]["lake_path"] is None and rows["train/sad/b.png"]["lake_path"] is None
    assert [p.name for p in (lake / "raw").rglob("*.png")] == ["other.png"]
    assert report.demoted == []


@pytest.mark.parametrize("first", ["train/happy/a.png", "test/sad/b.png"])
def test_a_label_conflict_across_batches_demotes_the_loaded_copy(pg_dsn, landing, lake, first):
    second = "test/sad/b.png" if first == "train/happy/a.png" else "train/happy/a.png"
    _land(landing, [first, second])
    assert _ingest(landing, lake, pg_dsn, [first], DAY1).counts == {"loaded": 1}
    with connect(pg_dsn) as conn:  # the raw manifest of the first copy's partition, as it was written
        emotion = _rows(pg_dsn)[first]["emotion"]
        manifest = ledger.partition_rows(conn, emotion, DAY1)

    report = _ingest(landing, lake, pg_dsn, [second], DAY2)

    assert report.counts == {"conflict": 1}
    rows = _rows(pg_dsn)
    _assert_conflict(rows, [first, second])
    assert [(d.path, d.status) for d in report.demoted] == [(first, "conflict")]
    assert report.demoted_partitions == [(emotion, DAY1)]
    with connect(pg_dsn) as conn:
        assert ledger.status_counts(conn) == {"conflict": 2}
        # a manifest not yet re-derived does not bring the demoted copy back
        assert ledger.restore(conn, emotion, DAY1, manifest) == 0
        conn.commit()
    assert _rows(pg_dsn)[first]["status"] == "conflict"


def test_a_third_copy_of_a_conflicted_content_is_a_conflict_too(pg_dsn, landing, lake):
    _land(landing, ["train/happy/a.png", "train/sad/b.png", "test/happy/c.png"])
    _ingest(landing, lake, pg_dsn, ["train/happy/a.png", "train/sad/b.png"], DAY1)
    report = _ingest(landing, lake, pg_dsn, ["test/happy/c.png"], DAY2)  # same emotion as a copy: still
    assert report.counts == {"conflict": 1} and report.demoted == []
    _assert_conflict(_rows(pg_dsn), ["train/happy/a.png", "train/sad/b.png", "test/happy/c.png"])


LEAK = "train/test leakage: same content as raw/images/fer2013/test/happy/t.png (the test copy is kept)"


def _assert_test_copy_kept(dsn, lake):
    rows = _rows(dsn)
    assert rows["test/happy/t.png"]["status"] == "loaded"
    assert rows["test/happy/t.png"]["lake_path"] == "raw/images/fer2013/test/happy/t.png"
    assert (lake / "raw/images/fer2013/test/happy/t.png").read_bytes() == SAME
    assert rows["train/happy/a.png"]["status"] == "duplicate"
    assert rows["train/happy/a.png"]["reason"] == LEAK
    return rows


@pytest.mark.parametrize("reverse", [False, True])
def test_a_cross_split_duplicate_in_one_batch_keeps_the_test_copy(pg_dsn, landing, lake, reverse):
    _land(landing, ["train/happy/a.png", "test/happy/t.png"])
    report = _ingest(landing, lake, pg_dsn, ["train/happy/a.png", "test/happy/t.png"], DAY1, reverse)
    assert report.counts == {"loaded": 1, "duplicate": 1}
    rows = _assert_test_copy_kept(pg_dsn, lake)
    assert rows["train/happy/a.png"]["lake_path"] is None


@pytest.mark.parametrize("train_first", [True, False])
def test_a_cross_split_duplicate_across_batches_keeps_the_test_copy(pg_dsn, landing, lake, train_first):
    _land(landing, ["train/happy/a.png", "train/happy/b.png", "test/happy/t.png"])
    trains = ["train/happy/a.png", "train/happy/b.png"]
    order = [trains, ["test/happy/t.png"]] if train_first else [["test/happy/t.png"], trains]
    first = _ingest(landing, lake, pg_dsn, order[0], DAY1)
    if train_first:  # a loaded, b its plain duplicate
        assert first.counts == {"loaded": 1, "duplicate": 1}
        assert (
            _rows(pg_dsn)["train/happy/b.png"]["reason"]
            == "same content as raw/images/fer2013/train/happy/a.png"
        )
        with connect(pg_dsn) as conn:
            manifest = ledger.partition_rows(conn, "happy", DAY1)

    second = _ingest(landing, lake, pg_dsn, order[1], DAY2)

    rows = _assert_test_copy_kept(pg_dsn, lake)
    assert rows["train/happy/b.png"]["status"] == "duplicate" and rows["train/happy/b.png"]["reason"] == LEAK
    with connect(pg_dsn) as conn:
        assert ledger.status_counts(conn) == {"loaded": 1, "duplicate": 2}
    if train_first:
        assert second.counts == {"loaded": 1}
        assert [(d.path, d.status) for d in second.demoted] == [("train/happy/a.png", "duplicate")]
        assert second.demoted_partitions == [("happy", DAY1)]
        with connect(pg_dsn) as conn:
            assert ledger.restore(conn, "happy", DAY1, manifest) == 0
            assert ledger.partition_rows(conn, "happy", DAY1) == []
            assert [r["filepath"] for r in ledger.partition_rows(conn, "happy", DAY2)] == [
                "raw/images/fer2013/test/happy/t.png"
            ]
    else:
        assert second.counts == {"duplicate": 2} and second.demoted == []


def test_an_old_load_log_is_migrated_to_allow_conflicts(pg_dsn):
    with connect(pg_dsn) as conn:  # the constraint as a database created before this release has it
        conn.execute("ALTER TABLE load_log DROP CONSTRAINT load_log_status_check")
        conn.execute("ALTER TABLE load_log ADD CHECK (status IN ('loaded', 'duplicate', 'quarantined'))")
        conn.commit()
    ensure_schema(pg_dsn)
    ensure_schema(pg_dsn)  # idempotent
    with connect(pg_dsn) as conn:
        conn.execute(
            "INSERT INTO load_log (source, path, size, modified_at, load_date, status) "
            "VALUES ('s', 'p', 1, now(), current_date, 'conflict')"
        )
        with pytest.raises(Exception, match="load_log_status_check"):
            conn.execute(
                "INSERT INTO load_log (source, path, size, modified_at, load_date, status) "
                "VALUES ('s2', 'p', 1, now(), current_date, 'bogus')"
            )


def test_leaked_test_images_are_left_out_of_the_models_test_figures(pg_dsn, landing, lake):
    """The load log names the test images with a train copy; the emotion model's data set leaves them out of
    its test split (and its snapshot), and says how many."""
    _land(landing, ["train/happy/a.png", "test/happy/t.png"])
    _ingest(landing, lake, pg_dsn, ["train/happy/a.png", "test/happy/t.png"], DAY1)
    with connect(pg_dsn) as conn:
        leaked = ledger.leaked_test_ids(conn)
    assert leaked == {images.sha256(SAME)}

    rows = [(images.sha256(SAME), "happy", "test", SAME)]  # bronze holds the kept (test) copy
    for i, (emotion, split) in enumerate(
        itertools.product(("happy", "sad"), ("train", "train", "test", "test"))
    ):
        png = face(emotion, 100 + i)
        rows.append((images.sha256(png), emotion, split, png))
    bronze = pa.Table.from_pylist(
        [dict(zip(("image_id", "emotion", "split", "png"), r, strict=True)) for r in rows]
    )

    data = training.Dataset.from_bronze(bronze, leaked)
    assert data.leaked_test_images == 1 and len(data.test_labels) == 4 and len(data.train_labels) == 4
    assert images.sha256(SAME) not in data.snapshot["image_id"].to_pylist()
    with_leak = training.Dataset.from_bronze(bronze)  # what the figures measured before
    assert with_leak.leaked_test_images == 0 and len(with_leak.test_labels) == 5
    figures = {"agreement_at_10": 0.5, "centroid_accuracy": 0.5}
    assert training.compare(figures, figures, data)["leaked_test_images_excluded"] == 1
