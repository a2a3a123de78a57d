import os
import time

import pytest

from fer_platform.core.storage import NotARegularFile, Storage


def test_local_listing_reading_writing(tmp_path):
    s = Storage(str(tmp_path))
    s.write_bytes("a/b/c é.png", b"123")
    s.write_bytes("top.txt", b"x")
    entries = s.list_files()
    assert [e.key for e in entries] == ["a/b/c é.png", "top.txt"]
    assert entries[0].size == 3
    assert abs(entries[0].modified.timestamp() - time.time()) < 60
    assert s.read_bytes("a/b/c é.png") == b"123"
    assert s.list_files("a") == entries[:1]
    assert s.uri("a/b") == f"{tmp_path}/a/b"
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_stat_many_reports_missing_and_current_mtime(tmp_path):
    s = Storage(str(tmp_path))
    s.write_bytes("x.png", b"1")
    os.utime(tmp_path / "x.png", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    found, missing = s.stat_many(["x.png", "gone.png"])
    assert missing == ["gone.png"]
    assert found[0].modified_us == 1_700_000_000_123_456
    assert found == [e for e in s.list_files() if e.key == "x.png"]


def test_move_and_delete(tmp_path):
    s = Storage(str(tmp_path))
    s.write_bytes("a.png", b"1")
    s.move("a.png", "_archive/d/a.png")
    assert not s.exists("a.png") and s.read_bytes("_archive/d/a.png") == b"1"
    s.delete("_archive/d/a.png")
    assert not s.exists("_archive/d/a.png")


def test_listing_a_missing_folder_is_empty(tmp_path):
    assert Storage(str(tmp_path / "nope")).list_files() == []


def test_confined_read_follows_a_linked_root_to_its_new_target_and_never_a_linked_folder(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, data in ((one, b"one"), (two, b"two")):
        (folder / "train/happy").mkdir(parents=True)
        (folder / "train/happy/a.png").write_bytes(data)
    root = tmp_path / "landing"
    root.symlink_to(one)  # the landing zone itself may be a link (e.g. onto a bigger disk)
    store = Storage(str(root), confined=True)
    assert store.read_bytes("train/happy/a.png") == b"one"
    root.unlink()
    root.symlink_to(two)  # re-pointed while the store lives: its real path is resolved again
    assert store.read_bytes("train/happy/a.png") == b"two"
    (two / "train/sad").symlink_to(two / "train/happy")  # a link inside the root, to a folder inside it
    with pytest.raises(NotARegularFile, match="path through a symbolic link"):
        store.read_bytes("train/sad/a.png")
    (two / "train/happy/b.png").symlink_to(two / "train/happy/a.png")
    with pytest.raises(NotARegularFile, match="symbolic link"):
        store.read_bytes("train/happy/b.png")


def test_a_folder_swapped_for_a_link_after_its_check_is_not_what_is_read(tmp_path, monkeypatch):
    """The file is opened by name inside the folder that was checked (its descriptor), so a folder replaced
    by a link to the outside between the check and the open never lets the outside file be read."""
    root, outside = tmp_path / "landing", tmp_path / "outside"
    (root / "train/happy").mkdir(parents=True)
    (root / "train/happy/a.png").write_bytes(b"inside")
    outside.mkdir()
    (outside / "a.png").write_bytes(b"secret")
    store = Storage(str(root), confined=True)
    checked = Storage._folder_is_real

    def swap_after_check(self, dir_fd, key):
        ok = checked(self, dir_fd, key)
        os.rename(root / "train/happy", root / "train/moved")
        (root / "train/happy").symlink_to(outside)  # the path now leads outside
        return ok

    monkeypatch.setattr(Storage, "_folder_is_real", swap_after_check)
    assert store.read_bytes("train/happy/a.png") == b"inside"


def test_write_many_lists_a_folder_once_and_still_removes_what_killed_writes_left(tmp_path, monkeypatch):
    """A killed writer's temporary file (its process gone) is removed when its name is written again, in any
    later batch; the folder is listed once per store, not after every batch (which grew a partition's
    copies with its square)."""
    lake = Storage(str(tmp_path))
    (tmp_path / "raw").mkdir()
    dead = tmp_path / "raw" / ".b.png.999999-0badf00d.tmp"  # pid 999999: no such process
    dead.write_bytes(b"half")
    live = tmp_path / "raw" / f".c.png.{os.getpid()}-0000abcd.tmp"  # this process: a write in progress
    live.write_bytes(b"half")
    listed = []
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: listed.append(p) or listdir(p))
    for batch in (["a.png"], ["b.png", "c.png"], ["d.png"]):
        lake.write_many([(f"raw/{n}", n.encode()) for n in batch])
    assert listed == [str(tmp_path / "raw")]
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir() if not p.name.startswith(".")) == [
        "a.png",
        "b.png",
        "c.png",
        "d.png",
    ]
