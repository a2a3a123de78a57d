import os
import time

from fer_platform.core.storage import Storage


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
