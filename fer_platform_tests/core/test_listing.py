"""Issue 15: the landing sensor's listing of a local folder re-reads only the folders that changed, and
loses nothing: every listing equals the full one (``Storage.list_files``)."""

import datetime as dt
import os
import shutil
import time

from fer_platform.core import ledger, planner
from fer_platform.core.listing import ListingMemory
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage

OLD = time.time() - 86_400  # a day ago: settled, and no folder is racy


def _tree(root, per_folder=5):
    for split in ("train", "test"):
        for emotion in ("happy", "sad", "angry"):
            folder = root / split / emotion
            folder.mkdir(parents=True)
            for i in range(per_folder):
                (folder / f"{i}.png").write_bytes(b"x" * (i + 1))
                os.utime(folder / f"{i}.png", (OLD, OLD))
    _age_folders(root)


def _age_folders(root):
    for path in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        os.utime(path, (OLD, OLD))


def _check(memory, storage):
    got = memory.list_files(storage)
    assert sorted(got, key=lambda e: e.key) == storage.list_files(), "differs from the full listing"
    return got


def test_an_unchanged_tree_is_listed_from_the_memory_with_one_stat_per_folder(tmp_path):
    _tree(tmp_path)
    storage, memory = Storage(str(tmp_path)), ListingMemory(settle_seconds=5)
    assert len(_check(memory, storage)) == 30 and memory.full and memory.read == 9
    _check(memory, storage)
    assert (memory.full, memory.read, memory.reused, memory.changed) == (False, 0, 9, 0)
    assert memory.restated <= 9 * -(-5 // memory.restat_rotation)  # a rotating share, not every file


def test_a_file_copied_in_with_an_old_mtime_a_deleted_file_and_a_new_folder_are_seen(tmp_path):
    _tree(tmp_path / "landing")
    storage, memory = Storage(str(tmp_path / "landing")), ListingMemory(settle_seconds=5)
    _check(memory, storage)
    old = tmp_path / "old.png"
    old.write_bytes(b"an old file")
    os.utime(old, (OLD - 3600, OLD - 3600))
    shutil.copy2(old, tmp_path / "landing/train/sad/old.png")  # cp -p: the file's mtime is old
    assert "train/sad/old.png" in {e.key for e in _check(memory, storage)}
    assert memory.read == 1 and memory.reused == 8  # only its folder was read again
    (tmp_path / "landing/test/happy/0.png").unlink()
    assert "test/happy/0.png" not in {e.key for e in _check(memory, storage)}
    new = tmp_path / "landing/test/fear"
    new.mkdir()
    (new / "a.png").write_bytes(b"new")
    os.utime(new / "a.png", (OLD, OLD))
    assert "test/fear/a.png" in {e.key for e in _check(memory, storage)}
    os.rename(tmp_path / "landing/train/sad/old.png", tmp_path / "landing/train/sad/renamed.png")
    keys = {e.key for e in _check(memory, storage)}
    assert "train/sad/renamed.png" in keys and "train/sad/old.png" not in keys
    shutil.rmtree(tmp_path / "landing/train/angry")
    assert not any(e.key.startswith("train/angry/") for e in _check(memory, storage))


def test_a_file_written_in_place_after_it_was_seen_unsettled_is_stated_until_settled(tmp_path):
    _tree(tmp_path)
    storage, memory = Storage(str(tmp_path)), ListingMemory(settle_seconds=5)
    growing = tmp_path / "train/happy/growing.png"
    growing.write_bytes(b"half")  # being written: its mtime is now
    _age_folders(tmp_path)  # its folder looks unchanged from here on
    first = {e.key: e for e in _check(memory, storage)}
    assert first["train/happy/growing.png"].size == 4
    with open(growing, "ab") as f:  # written in place: the folder's mtime does not move
        f.write(b" and the rest")
    second = {e.key: e for e in _check(memory, storage)}
    assert second["train/happy/growing.png"].size == 17
    assert memory.read == 0 and memory.changed == 1  # its folder reused, the unsettled file stat'ed


def test_a_settled_file_overwritten_in_place_is_seen_within_the_rotation(tmp_path):
    _tree(tmp_path, per_folder=20)
    storage, memory = Storage(str(tmp_path)), ListingMemory(settle_seconds=5)
    _check(memory, storage)
    target = tmp_path / "test/sad/7.png"
    target.write_bytes(b"new content, longer")  # cp over it: opened, truncated, written; folder unchanged
    os.utime(target, (OLD + 60, OLD + 60))  # and settled
    for _tick in range(memory.restat_rotation):
        got = {e.key: e for e in memory.list_files(storage)}
        assert memory.read == 0
        if got["test/sad/7.png"].size == 19:
            break
    else:
        raise AssertionError(f"not seen in {memory.restat_rotation} ticks")
    assert memory.changed == 1
    _check(memory, storage)


def test_a_folder_changed_just_before_it_was_read_is_read_again(tmp_path):
    _tree(tmp_path)
    storage, memory = Storage(str(tmp_path)), ListingMemory(settle_seconds=5)
    (tmp_path / "train/sad/new.png").write_bytes(b"new")  # the folder's mtime is now: racy
    _check(memory, storage)
    _check(memory, storage)
    assert memory.read == 1, "a folder read within the racy window was trusted"


def test_a_lost_memory_or_another_root_lists_everything(tmp_path):
    _tree(tmp_path / "a")
    _tree(tmp_path / "b", per_folder=2)
    memory = ListingMemory(settle_seconds=5)
    _check(memory, Storage(str(tmp_path / "a")))
    assert len(_check(memory, Storage(str(tmp_path / "b")))) == 12 and memory.full
    fresh = ListingMemory(settle_seconds=5)  # a new process
    assert len(_check(fresh, Storage(str(tmp_path / "a")))) == 30 and fresh.full
    memory.full_listing_seconds = 0  # the hourly full listing
    _check(memory, Storage(str(tmp_path / "b")))
    assert memory.full and memory.read == 9


def _log(dsn, storage, entries):
    rows = [
        ledger.LedgerRow(
            source=storage.uri(e.key),
            path=e.key,
            size=e.size,
            modified_at=e.modified,
            sha256=f"{i}-{e.key}",
            emotion=e.key.split("/")[1],
            split=e.key.split("/")[0],
            load_date=dt.date(2026, 12, 1),
            status="loaded",
            reason=None,
            lake_path=None,
            run_id="t",
        )
        for i, e in enumerate(entries)
    ]
    with connect(dsn) as conn:
        ledger.insert(conn, rows)
        conn.commit()


def test_an_idle_tick_reuses_the_last_plan_until_something_it_read_changes(tmp_path, pg_dsn):
    _tree(tmp_path / "landing")
    storage = Storage(str(tmp_path / "landing"))
    listed = ListingMemory(settle_seconds=5)
    settings = planner.AutoLoaderSettings(settle_seconds=5)
    cursor = planner.Watermark()

    def tick():
        nonlocal cursor
        listing = listed.list_files(storage)
        memory = planner.LandingMemory(pg_dsn, storage)
        out = planner.plan_landing(
            storage, listing, listed.generation, memory, cursor, settings, time.time_ns() // 1000
        )
        cursor = out.cursor
        return out

    _log(pg_dsn, storage, storage.list_files())
    first = tick()
    assert not first.reused and first.already_logged == 30 and not first.batches
    again = tick()
    assert again.reused and again.already_logged == 30 and again.cursor == first.cursor
    # a file copied in with an old mtime: its folder changed, the plan is made again and takes it
    old = tmp_path / "old.png"
    old.write_bytes(b"an old file")
    os.utime(old, (OLD - 3600, OLD - 3600))
    shutil.copy2(old, tmp_path / "landing/train/sad/old.png")
    taken = tick()
    assert not taken.reused and [e.key for _, files, _ in taken.batches for e in files] == [
        "train/sad/old.png"
    ]
    _log(pg_dsn, storage, [e for e in storage.list_files() if e.key == "train/sad/old.png"])  # its run
    _age_folders(tmp_path / "landing")
    assert not tick().reused  # the folder's stamp moved (aged), the file is found logged
    assert tick().reused
    with connect(pg_dsn) as conn:  # load-log rows deleted: the memory is forgotten, the plan made again
        conn.execute("DELETE FROM load_log WHERE path = 'test/happy/0.png'")
        conn.commit()
    again = tick()
    assert not again.reused and [e.key for _, files, _ in again.batches for e in files] == [
        "test/happy/0.png"
    ]
