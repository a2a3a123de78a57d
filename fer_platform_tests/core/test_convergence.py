"""core/convergence.py on a real PostgreSQL and a temporary lake: the digest is the same in SQL and in Python,
the audit finds each layer that disagrees, and a lost load log is put back from the raw manifests."""

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core import convergence, ledger
from fer_platform.core.bronze import manifest_table
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage
from fer_platform.core.vectors import EmbeddingPlan, write_partition

DAY = dt.date(2026, 11, 30)
MODEL = "m1"


def _ids(n, tag="x"):
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]


def _log(conn, emotion, ids):
    rows = [
        ledger.LedgerRow(
            source=f"file:///landing/train/{emotion}/{i[:8]}.png",
            path=f"train/{emotion}/{i[:8]}.png",
            size=100,
            modified_at=dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc),
            sha256=i,
            emotion=emotion,
            split="train",
            load_date=DAY,
            status="loaded",
            reason=None,
            lake_path=f"raw/images/fer2013/train/{emotion}/{i[:8]}.png",
            run_id="r",
        )
        for i in ids
    ]
    with conn.transaction():
        ledger.insert(conn, rows)


def _write(lake, layer, emotion, table):
    path = lake / layer / f"emotion={emotion}" / f"load_date={DAY}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _vectors(conn, emotion, ids):
    plan = EmbeddingPlan(
        emotion,
        DAY,
        MODEL,
        ids,
        [f"/lake/raw/images/fer2013/train/{emotion}/{i[:8]}.png" for i in ids],
        ["train"] * len(ids),
        [b""] * len(ids),
        embed=lambda pngs: iter([np.ones((len(pngs), 512), np.float32)]),
    )
    write_partition(conn, plan)


def _all_layers(conn, lake, emotion, ids):
    with conn.transaction():
        rows = ledger.partition_rows(conn, emotion, DAY)
    _write(lake, "raw/manifest", emotion, manifest_table(rows))
    _write(lake, "bronze/images", emotion, pa.table({"image_id": ids}))
    _vectors(conn, emotion, ids)
    _write(lake, "silver/embeddings", emotion, pa.table({"image_id": ids, "model": [MODEL] * len(ids)}))


def test_the_digest_is_the_same_in_sql_and_python(pg_dsn):
    ids = _ids(50)
    with connect(pg_dsn) as conn:
        _log(conn, "happy", ids)
        assert convergence.ledger_state(conn) == {("happy", DAY): convergence.state_of(ids)}
    assert convergence.state_of(ids) != convergence.state_of(ids[:-1] + _ids(1, "y"))


def test_the_audit_finds_every_layer_that_disagrees(pg_dsn, lake):
    store = Storage(str(lake))
    ids = _ids(6)
    with connect(pg_dsn) as conn:
        _log(conn, "sad", ids)
        audit = convergence.audit(conn, store, MODEL)
        assert {d.layer for d in audit.disagreements} == {"raw manifest", "bronze", "postgres", "silver"}
        _all_layers(conn, lake, "sad", ids)
        audit = convergence.audit(conn, store, MODEL)
        assert [d.line() for d in audit.disagreements] == [
            "search index: the search index is missing (silver has 6 images)"
        ]
        assert audit.index_stale and audit.partitions == []
        # the same count but other images; a partition file deleted; rows missing in PostgreSQL
        _write(lake, "bronze/images", "sad", pa.table({"image_id": ids[:5] + _ids(1, "other")}))
        (lake / f"silver/embeddings/emotion=sad/load_date={DAY}/part-0.parquet").unlink()
        conn.execute("DELETE FROM imagenes_fer WHERE image_id = %s", (ids[0],))
        conn.commit()
        lines = convergence.audit(conn, store, MODEL).lines()
        assert f"sad|{DAY}: bronze holds 6 images but not the same ones as the load log" in lines
        assert f"sad|{DAY}: silver is missing (the load log has 6 images)" in lines
        assert f"sad|{DAY}: postgres holds 5 images, the load log 6" in lines
        assert convergence.audit(conn, store, MODEL, skip=[("sad", DAY)]).partitions == []


def test_a_lost_load_log_is_put_back_from_the_raw_manifests(pg_dsn, lake):
    store = Storage(str(lake))
    ids = _ids(4)
    with connect(pg_dsn) as conn:
        _log(conn, "fear", ids)
        before = conn.execute(
            "SELECT source, size, modified_at, sha256, lake_path FROM load_log ORDER BY sha256"
        ).fetchall()
        _all_layers(conn, lake, "fear", ids)
        conn.execute("DELETE FROM load_log")
        conn.commit()
        assert convergence.restore_load_log(conn, store) == 4
        after = conn.execute(
            "SELECT source, size, modified_at, sha256, lake_path FROM load_log ORDER BY sha256"
        ).fetchall()
        assert after == before  # the same versions: the landing files are known again, not new
        assert convergence.restore_load_log(conn, store) == 0  # nothing twice
        # content the load log holds elsewhere is not put back a second time
        conn.execute("DELETE FROM load_log WHERE sha256 = %s", (ids[0],))
        conn.execute(
            "UPDATE load_log SET load_date = %s WHERE sha256 = %s", (DAY + dt.timedelta(days=1), ids[1])
        )
        conn.commit()
        assert convergence.restore_load_log(conn, store) == 1
        assert conn.execute("SELECT count(*) FROM load_log WHERE sha256 = %s", (ids[1],)).fetchone()[0] == 1


def test_an_unreadable_partition_file_is_one_partition_missing_not_a_failed_audit(pg_dsn, lake):
    store = Storage(str(lake))
    ids = _ids(3)
    with connect(pg_dsn) as conn:
        _log(conn, "angry", ids)
        _all_layers(conn, lake, "angry", ids)
        for layer in ("silver/embeddings", "raw/manifest"):
            (lake / layer / f"emotion=angry/load_date={DAY}/part-0.parquet").write_bytes(b"PAR1 not parquet")
        conn.execute("DELETE FROM load_log")
        conn.commit()
        assert convergence.restore_load_log(conn, store) == 0  # nothing to read it from: no exception
        lines = convergence.audit(conn, store, MODEL).lines()
        assert f"angry|{DAY}: silver is missing (the load log has 0 images)" not in lines  # 0 = 0: agrees
        _log(conn, "angry", ids)
        lines = convergence.audit(conn, store, MODEL).lines()
        assert f"angry|{DAY}: silver is missing (the load log has 3 images)" in lines
        assert f"angry|{DAY}: raw manifest is missing (the load log has 3 images)" in lines
