"""Ingestion against a real PostgreSQL: statuses, quarantine, duplicates, re-runs, source cleanup."""

import datetime as dt
import os
import shutil
import threading

import pytest

from fer_platform.core import ingest as ingest_mod
from fer_platform.core import ledger
from fer_platform.core.ingest import ingest, pending_files, select_files
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage, StorageUnavailable
from fer_platform_tests.helpers import encoded, face, put

DAY = dt.date(2026, 11, 25)


def _run(landing, lake, dsn, keys=None, on_success="keep", emotion=None, day=DAY):
    ls, lk = Storage(str(landing)), Storage(str(lake))
    entries = ls.stat_many(keys)[0] if keys is not None else pending_files(ls, dsn, emotion)[0]
    return ingest(ls, lk, dsn, entries, day, "run-1", on_success)


def _ledger(dsn):
    with connect(dsn) as conn:
        cur = conn.execute(
            "SELECT path, status, reason, lake_path, sha256, emotion, split FROM load_log ORDER BY path"
        )
        return [dict(zip([d.name for d in cur.description], r, strict=True)) for r in cur.fetchall()]


def test_good_and_broken_files_of_one_batch(pg_dsn, landing, lake):
    put(landing, "train/happy/a.png", face("happy", 1))
    put(landing, "train/happy/b copy é.png", face("happy", 1))  # same bytes as a.png
    put(landing, "test/happy/c.png", face("happy", 2))
    put(landing, "train/happy/trunc.png", face("happy", 3)[:100])
    put(landing, "train/happy/empty.png", b"")
    put(landing, "train/happy/text.png", b"not an image at all")
    put(landing, "train/happy/rgb.png", encoded("RGB"))
    put(landing, "train/happy/big.png", encoded("L", (96, 96)))
    put(landing, "train/happy/jpeg.png", encoded(fmt="JPEG"))

    report = _run(landing, lake, pg_dsn, emotion="happy")

    assert report.counts == {"loaded": 2, "duplicate": 1, "quarantined": 6}
    rows = {r["path"]: r for r in _ledger(pg_dsn)}
    assert len(rows) == 9
    # the listing is sorted by key, so the first copy is the one loaded
    assert rows["train/happy/a.png"]["status"] == "loaded"
    assert rows["train/happy/b copy é.png"]["status"] == "duplicate"
    assert rows["test/happy/c.png"]["lake_path"] == "raw/images/fer2013/test/happy/c.png"
    assert (lake / "raw/images/fer2013/test/happy/c.png").read_bytes() == face("happy", 2)
    for name, reason in [
        ("trunc", "truncated"),
        ("empty", "empty file"),
        ("text", "not a PNG"),
        ("rgb", "mode RGB"),
        ("big", "wrong size 96x96"),
        ("jpeg", "JPEG content"),
    ]:
        row = rows[f"train/happy/{name}.png"]
        assert row["status"] == "quarantined" and reason in row["reason"]
        assert row["lake_path"] == f"quarantine/{DAY}/train/happy/{name}.png"
        assert (lake / row["lake_path"]).read_bytes() == (landing / f"train/happy/{name}.png").read_bytes()
    # nothing but loaded files under raw/
    assert sorted(p.name for p in (lake / "raw").rglob("*.png")) == ["a.png", "c.png"]


def test_rerun_loads_nothing_twice(pg_dsn, landing, lake):
    for i in range(3):
        put(landing, f"train/sad/{i}.png", face("sad", i))
    first = _run(landing, lake, pg_dsn, emotion="sad")
    assert first.counts["loaded"] == 3
    assert _run(landing, lake, pg_dsn, emotion="sad").outcomes == []  # pending filter
    again = _run(landing, lake, pg_dsn, keys=[f"train/sad/{i}.png" for i in range(3)])  # explicit list
    assert again.outcomes == [] and len(again.already_logged) == 3
    assert len(_ledger(pg_dsn)) == 3


def test_same_content_elsewhere_or_touched_is_a_duplicate(pg_dsn, landing, lake):
    p = put(landing, "train/fear/a.png", face("fear", 5))
    _run(landing, lake, pg_dsn, emotion="fear")
    put(landing, "train/fear/again.png", face("fear", 5))
    os.utime(p, (p.stat().st_atime + 10, p.stat().st_mtime + 10))  # same bytes, new version
    report = _run(landing, lake, pg_dsn, emotion="fear")
    assert report.counts == {"duplicate": 2}
    assert all("same content as raw/images/fer2013/train/fear/a.png" in o.reason for o in report.outcomes)


def test_overwritten_file_is_a_new_version_kept_beside_the_old(pg_dsn, landing, lake):
    p = put(landing, "train/angry/a.png", face("angry", 1))
    _run(landing, lake, pg_dsn, emotion="angry")
    p.write_bytes(face("angry", 2))
    os.utime(p, (p.stat().st_atime + 5, p.stat().st_mtime + 5))
    report = _run(landing, lake, pg_dsn, emotion="angry")
    assert report.counts == {"loaded": 1}
    new_path = report.outcomes[0].lake_path
    assert (
        new_path.startswith("raw/images/fer2013/train/angry/a.")
        and new_path != "raw/images/fer2013/train/angry/a.png"
    )
    assert (lake / "raw/images/fer2013/train/angry/a.png").read_bytes() == face("angry", 1)
    assert (lake / new_path).read_bytes() == face("angry", 2)


@pytest.mark.parametrize("on_success", ["delete", "archive"])
def test_sources_are_removed_only_after_the_commit(pg_dsn, landing, lake, on_success):
    put(landing, "train/happy/a.png", face("happy", 1))
    put(landing, "train/happy/bad.png", b"junk")
    report = _run(landing, lake, pg_dsn, emotion="happy", on_success=on_success)
    assert report.counts == {"loaded": 1, "quarantined": 1}
    assert not (landing / "train/happy/a.png").exists() and not (landing / "train/happy/bad.png").exists()
    archived = sorted(str(p.relative_to(landing)) for p in landing.rglob("*.png"))
    if on_success == "archive":
        assert archived == [f"_archive/{DAY}/train/happy/a.png", f"_archive/{DAY}/train/happy/bad.png"]
        assert pending_files(Storage(str(landing)), pg_dsn)[0] == []  # the archive is never re-listed
    else:
        assert archived == []


def test_failed_commit_keeps_sources_and_logs_nothing(pg_dsn, landing, lake, monkeypatch):
    put(landing, "train/happy/a.png", face("happy", 1))

    def broken_insert(conn, rows):
        raise RuntimeError("database went away mid-load")

    monkeypatch.setattr(ingest_mod.ledger, "insert", broken_insert)
    with pytest.raises(RuntimeError):
        _run(landing, lake, pg_dsn, emotion="happy", on_success="delete")
    assert (landing / "train/happy/a.png").exists()
    assert _ledger(pg_dsn) == []
    monkeypatch.undo()
    assert _run(landing, lake, pg_dsn, emotion="happy", on_success="delete").counts == {"loaded": 1}
    assert not (landing / "train/happy/a.png").exists()


def test_a_source_overwritten_during_its_load_is_not_deleted(pg_dsn, landing, lake, monkeypatch):
    path = put(landing, "train/happy/a.png", face("happy", 1))
    real_insert = ingest_mod.ledger.insert

    def insert_while_a_new_version_lands(conn, rows):
        path.write_bytes(face("happy", 2))  # the producer overwrites the file mid-load
        os.utime(path, (1_900_000_000, 1_900_000_000))
        real_insert(conn, rows)

    monkeypatch.setattr(ingest_mod.ledger, "insert", insert_while_a_new_version_lands)
    assert _run(landing, lake, pg_dsn, emotion="happy", on_success="delete").counts == {"loaded": 1}
    assert path.read_bytes() == face("happy", 2)  # the unlogged new version stays
    monkeypatch.undo()
    assert _run(landing, lake, pg_dsn, emotion="happy", on_success="delete").counts == {"loaded": 1}
    assert not path.exists() and len(_ledger(pg_dsn)) == 2


def test_a_retry_after_a_crash_between_commit_and_cleanup_cleans_the_sources(
    pg_dsn, landing, lake, monkeypatch
):
    put(landing, "train/happy/a.png", face("happy", 1))

    def crash(*args):
        raise RuntimeError("worker killed after the commit")

    monkeypatch.setattr(ingest_mod, "_clean_sources", crash)
    with pytest.raises(RuntimeError):
        _run(landing, lake, pg_dsn, keys=["train/happy/a.png"], on_success="archive")
    assert (landing / "train/happy/a.png").exists() and len(_ledger(pg_dsn)) == 1
    monkeypatch.undo()
    report = _run(landing, lake, pg_dsn, keys=["train/happy/a.png"], on_success="archive")
    assert report.outcomes == [] and report.already_logged == ["train/happy/a.png"]
    assert (landing / f"_archive/{DAY}/train/happy/a.png").exists() and not (
        landing / "train/happy/a.png"
    ).exists()


def test_concurrent_runs_log_each_file_once(pg_dsn, landing, lake):
    keys = [
        put(landing, f"train/neutral/{i}.png", face("neutral", i)) and f"train/neutral/{i}.png"
        for i in range(40)
    ]
    put(landing, "test/neutral/dup.png", face("neutral", 0))
    keys.append("test/neutral/dup.png")
    errors = []

    def worker():
        try:
            _run(landing, lake, pg_dsn, keys=keys)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    rows = _ledger(pg_dsn)
    assert len(rows) == 41
    assert sum(r["status"] == "loaded" for r in rows) == 40
    assert sum(r["status"] == "duplicate" for r in rows) == 1


def test_select_files_takes_new_files_only_for_today(pg_dsn, landing):
    put(landing, "train/sad/a.png", face("sad", 1))
    put(landing, "train/happy/b.png", face("happy", 1))
    put(landing, "notes.txt", b"x")
    ls = Storage(str(landing))
    today = DAY
    files, missing, ignored = select_files(ls, pg_dsn, "sad", today, today)
    assert [f.key for f in files] == ["train/sad/a.png"] and ignored == [
        ("notes.txt", "stray file at the landing root")
    ]
    assert select_files(ls, pg_dsn, "sad", today - dt.timedelta(days=1), today) == ([], [], [])
    files, missing, _ = select_files(
        ls, pg_dsn, "sad", today, today, ["train/sad/a.png", "train/sad/gone.png"]
    )
    assert [f.key for f in files] == ["train/sad/a.png"] and missing == ["train/sad/gone.png"]
    with pytest.raises(ValueError, match="another emotion"):
        select_files(ls, pg_dsn, "sad", today, today, ["train/happy/b.png"])


def test_unroutable_and_misplaced_files_are_quarantined_with_the_layout_reason(pg_dsn, landing, lake):
    put(landing, "train/contempt/a.png", face("happy", 1))
    put(landing, "validation/happy/b.png", face("happy", 2))
    report = _run(landing, lake, pg_dsn, keys=["train/contempt/a.png", "validation/happy/b.png"])
    reasons = {o.key: o.reason for o in report.outcomes}
    assert report.counts == {"quarantined": 2}
    assert "unknown emotion folder 'contempt'" in reasons["train/contempt/a.png"]
    assert "unknown split folder 'validation'" in reasons["validation/happy/b.png"]
    with connect(pg_dsn) as conn:
        assert ledger.status_counts(conn) == {"quarantined": 2}


def test_a_landing_zone_that_cannot_be_reached_fails_the_run_and_quarantines_nothing(pg_dsn, landing, lake):
    """A store failure is not a file's fault: one line, nothing logged, the files are retried later."""
    for i in range(3):
        put(landing, f"train/happy/{i}.png", face("happy", i))
    store = Storage(str(landing))
    entries = store.list_files()
    shutil.rmtree(landing)
    landing.write_bytes(b"")  # the mount point is now something else: nothing under it can be read
    with pytest.raises(StorageUnavailable, match="nothing was quarantined"):
        ingest(store, Storage(str(lake)), pg_dsn, entries, dt.date(2026, 11, 30), "run")
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM load_log").fetchone()[0] == 0


def test_a_lake_that_refuses_writes_fails_the_run_and_quarantines_nothing(pg_dsn, landing, lake):
    """A full, read-only or otherwise refusing lake is not the files' fault: nothing is logged, the files
    stay."""
    for i in range(2):
        put(landing, f"train/happy/{i}.png", face("happy", i))
    (lake / "raw").write_bytes(b"")  # no folder can be made under it: every copy fails, the lake still lists
    store = Storage(str(landing), confined=True)
    with pytest.raises(StorageUnavailable, match="cannot write to the lake"):
        ingest(store, Storage(str(lake)), pg_dsn, store.list_files(), dt.date(2026, 11, 30), "run", "delete")
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM load_log").fetchone()[0] == 0
    assert len(list((landing / "train/happy").iterdir())) == 2


def test_a_path_through_a_linked_folder_is_never_read_deleted_or_moved(pg_dsn, landing, lake, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(face("happy", 1))
    (landing / "train").mkdir(parents=True)
    os.symlink(outside, landing / "train/happy")
    store = Storage(str(landing), confined=True)
    entries, _ = store.stat_many(["train/happy/x.png"])  # as a run's explicit file list would name it
    report = ingest(store, Storage(str(lake)), pg_dsn, entries, dt.date(2026, 11, 30), "run", "delete")
    (o,) = report.outcomes
    assert o.status == "quarantined" and "path through a symbolic link" in o.reason and o.lake_path is None
    assert (outside / "x.png").exists() and not list(lake.rglob("*.png"))


def test_a_big_load_keeps_the_load_log_lookups_on_their_indexes(pg_dsn, landing, lake):
    """Each batch asks the load log about its files by source, content and lake path (500 each). A load that
    grows the table keeps its statistics fresh, so those lookups stay index scans (a never analyzed table
    looked small and was scanned whole for every batch, quadratic over a 250,000-file load), and the lake
    path has an index to use."""
    when = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
    rows = [
        ledger.LedgerRow(
            source=f"/elsewhere/train/happy/{i}.png",
            path=f"train/happy/{i}.png",
            size=2300,
            modified_at=when,
            sha256=f"{i:064x}",
            emotion="happy",
            split="train",
            load_date=DAY,
            status="loaded",
            reason=None,
            lake_path=f"raw/images/fer2013/train/happy/{i}.png",
            run_id="earlier",
        )
        for i in range(30_000)
    ]
    with connect(pg_dsn) as conn:
        ledger.insert(conn, rows)  # an earlier big load, in one go
        conn.commit()
    for i in range(3):
        put(landing, f"train/happy/new{i}.png", face("happy", 40_000 + i))
    assert _run(landing, lake, pg_dsn).counts["loaded"] == 3  # a batch: statistics first, then its lookups
    picks = rows[::60]  # 500 of them
    with connect(pg_dsn) as conn:
        for column in ("source", "sha256", "lake_path"):
            values = [getattr(r, column) for r in picks]
            plan = "\n".join(
                r[0]
                for r in conn.execute(f"EXPLAIN SELECT * FROM load_log WHERE {column} = ANY(%s)", (values,))
            )
            assert "Seq Scan" not in plan and "Index" in plan, f"{column}: {plan[:300]}"
