"""core.storage.Storage against real object stores (Azurite, moto S3), reached through FER_ENV's resources."""

import datetime as dt

import pytest

from fer_platform.core.challenge import expand_csv
from fer_platform.core.storage import Storage
from fer_platform.resources.environments import resolved_resources
from fer_platform_tests.core.test_challenge_csv import DAY, bad_rows, good_rows

NOW_SLACK = dt.timedelta(minutes=2)


@pytest.fixture
def landing(cloud_store, monkeypatch):
    monkeypatch.setenv("FER_PG_DSN", "postgresql://unused@127.0.0.1:1/unused")  # required, not connected here
    return resolved_resources(("landing",), cloud_store.env)["landing"].storage()


def test_list_read_write_stat_move_delete(cloud_store, landing):
    prefix = cloud_store.landing_url.split("/", 3)[3]  # the key prefix inside the container/bucket
    assert landing.list_files() == [] and landing.list_files("nothing/here") == []
    landing.write_bytes("train/happy/a é 1.png", b"123")
    landing.write_many([("train/sad/b.png", b"4567"), ("test/sad/c.png", b"89"), ("top.txt", b"x")])

    entries = landing.list_files()
    assert [e.key for e in entries] == [
        "test/sad/c.png",
        "top.txt",
        "train/happy/a é 1.png",
        "train/sad/b.png",
    ]
    assert [e.size for e in entries] == [2, 1, 3, 4]
    now = dt.datetime.now(dt.timezone.utc)
    assert all(
        e.modified.utcoffset() == dt.timedelta(0) and abs(now - e.modified) < NOW_SLACK for e in entries
    )
    assert [e.key for e in landing.list_files("train")] == ["train/happy/a é 1.png", "train/sad/b.png"]
    assert landing.uri("train/sad/b.png") == f"{cloud_store.landing_url}/train/sad/b.png"

    assert landing.read_bytes("train/happy/a é 1.png") == b"123"
    assert landing.read_many(["train/sad/b.png", "test/sad/c.png"]) == [b"4567", b"89"]
    found, missing = landing.stat_many(["train/sad/b.png", "gone/sad/x.png", "test/sad/c.png"])
    assert missing == ["gone/sad/x.png"]
    assert found == [e for e in entries if e.key in ("train/sad/b.png", "test/sad/c.png")][::-1]
    assert landing.exists("top.txt") and not landing.exists("nope.txt")

    landing.move("train/sad/b.png", "_archive/2026-01-01/train/sad/b.png")
    landing.delete("top.txt")
    assert landing.read_bytes("_archive/2026-01-01/train/sad/b.png") == b"4567"
    assert not landing.exists("train/sad/b.png") and not landing.exists("top.txt")
    # what the cloud's own SDK lists, under the landing prefix
    assert cloud_store.list_keys(prefix + "/") == [
        f"{prefix}/_archive/2026-01-01/train/sad/b.png",
        f"{prefix}/test/sad/c.png",
        f"{prefix}/train/happy/a é 1.png",
    ]
    with pytest.raises(FileNotFoundError):
        landing.read_bytes("train/sad/b.png")


def test_listings_see_what_other_clients_wrote_and_deleted(cloud_store, landing):
    prefix = cloud_store.landing_url.split("/", 3)[3]
    landing.write_bytes("train/fear/one.png", b"1")
    assert [e.key for e in landing.list_files()] == ["train/fear/one.png"] and landing.exists(
        "train/fear/one.png"
    )
    cloud_store.put(f"{prefix}/train/fear/two.png", b"22")  # another client, e.g. an uploader
    cloud_store.remove(f"{prefix}/train/fear/one.png")
    assert [(e.key, e.size) for e in landing.list_files()] == [("train/fear/two.png", 2)]
    assert landing.stat_many(["train/fear/one.png"]) == ([], ["train/fear/one.png"])
    assert not landing.exists("train/fear/one.png")


def test_a_challenge_csv_in_an_object_store_is_streamed_and_expanded_once(
    cloud_store, landing, pg_dsn, tmp_path
):
    """The CSV read through the store's streaming open; an appended (re-uploaded, longer) CSV resumes."""
    lake = Storage(str(tmp_path / "lake"))
    header = "emotion,pixels,Usage\n"
    landing.write_bytes(
        "fer2013/fer2013.csv", (header + "".join(good_rows()[:3]) + bad_rows()[0][0]).encode()
    )
    first = expand_csv(landing, "fer2013/fer2013.csv", landing, lake, pg_dsn, DAY)
    assert (first.good, [n for n, _ in first.quarantined]) == (3, [4])
    staged = [e.key for e in landing.list_files("_csv")]
    assert staged == [
        "_csv/fer2013~fer2013.csv/test/happy/PublicTest_2.png",
        "_csv/fer2013~fer2013.csv/test/sad/PrivateTest_3.png",
        "_csv/fer2013~fer2013.csv/train/happy/Training_1.png",
    ]
    assert expand_csv(landing, "fer2013/fer2013.csv", landing, lake, pg_dsn, DAY).status == "unchanged"

    landing.write_bytes(
        "fer2013/fer2013.csv",
        (header + "".join(good_rows()[:3]) + bad_rows()[0][0] + good_rows()[3]).encode(),
    )
    appended = expand_csv(landing, "fer2013/fer2013.csv", landing, lake, pg_dsn, DAY)
    assert appended.resumed and (appended.skipped, appended.good, appended.quarantined) == (4, 1, [])
