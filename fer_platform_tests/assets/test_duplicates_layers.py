"""FER2013's duplicates through the ingest assets, the convergence audit and gold: a copy that a later run
demotes (a label conflict, the train side of a train/test leak) leaves its partition in every layer once the
audit's repair runs, and gold_duplicates reports both with a warning."""

import datetime as dt

import dagster as dg
import pyarrow.parquet as pq

from fer_platform.automation.jobs import INGEST_ASSETS, PUBLISH_ASSETS, RUN_CHECKS
from fer_platform.core import convergence, images, ledger
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import face, folder_resources, put

MODEL = "resnet18-random-s0-fidelity"
EVERYTHING = [*INGEST_ASSETS, *PUBLISH_ASSETS, *RUN_CHECKS]
CONFLICTED, LEAKED = face("happy", 901), face("angry", 902)


def _ingest(res, emotion, day, files):
    result = dg.materialize(
        EVERYTHING,
        partition_key=partition_key(emotion, day),
        resources=res,
        selection=dg.AssetSelection.assets(*INGEST_ASSETS),
        run_config={"ops": {"raw_images": {"config": {"files": files}}}},
    )
    assert result.success
    return result.asset_materializations_for_node("raw_images")[0].metadata


def _ids(lake, layer, emotion, day):
    path = lake / layer / f"emotion={emotion}" / f"load_date={day}" / "part-0.parquet"
    return set(pq.read_table(path, columns=["image_id"])["image_id"].to_pylist())


def test_a_demoted_copy_leaves_every_layer_and_gold_reports_it(pg_dsn, lake, landing):
    res = folder_resources(pg_dsn, lake, landing, weights="random", batch_size=16)
    today = utc_today()
    before = today - dt.timedelta(days=1)
    for seed, emotion in enumerate(("happy", "sad", "angry")):
        put(landing, f"train/{emotion}/{emotion}0.png", face(emotion, 10 + seed))
        put(landing, f"test/{emotion}/{emotion}1.png", face(emotion, 20 + seed))
    put(landing, "train/happy/c.png", CONFLICTED)
    put(landing, "train/sad/c.png", CONFLICTED)  # the same pixels under another emotion
    put(landing, "train/angry/l.png", LEAKED)
    put(landing, "test/angry/l.png", LEAKED)  # the same pixels in the test split
    conflicted, leaked = images.sha256(CONFLICTED), images.sha256(LEAKED)

    _ingest(res, "happy", before, ["train/happy/c.png", "train/happy/happy0.png", "test/happy/happy1.png"])
    _ingest(res, "angry", before, ["train/angry/l.png", "train/angry/angry0.png", "test/angry/angry1.png"])
    assert conflicted in _ids(lake, "silver/embeddings", "happy", before)
    meta = _ingest(res, "sad", today, ["train/sad/c.png", "train/sad/sad0.png", "test/sad/sad1.png"])
    assert meta["conflicts"].value == 1 and meta["demoted_partitions"].value == [f"happy|{before}"]
    meta = _ingest(res, "angry", today, ["test/angry/l.png"])
    assert meta["loaded"].value == 1 and meta["demoted_partitions"].value == [f"angry|{before}"]

    store = Storage(str(lake))
    with connect(pg_dsn) as conn:
        audit = convergence.audit(conn, store, MODEL)
        # a not yet re-derived manifest holds the demoted copies: they are not put back
        assert convergence.restore_load_log(conn, store) == 0
    assert audit.partitions == [("angry", before), ("happy", before)]
    layers = {p: {d.layer for d in audit.disagreements if d.partition == p} for p in audit.partitions}
    assert layers[("happy", before)] == {"raw manifest", "bronze", "postgres", "silver"}
    # the test copy's run moved the leaked image's vector to its own partition already
    assert layers[("angry", before)] == {"raw manifest", "bronze", "silver"}
    for emotion, day in audit.partitions:  # what the sensor and demo ask for: no new file, re-derived
        _ingest(res, emotion, day, [])
    with connect(pg_dsn) as conn:
        assert convergence.audit(conn, store, MODEL).partitions == []
        vectors = dict(conn.execute("SELECT image_id, emotion || '|' || split FROM imagenes_fer").fetchall())
        statuses = ledger.status_counts(conn)
    assert conflicted not in vectors and vectors[leaked] == "angry|test"
    for layer in ("raw/manifest", "bronze/images", "silver/embeddings"):
        assert conflicted not in _ids(lake, layer, "happy", before) | _ids(lake, layer, "sad", today)
        assert leaked not in _ids(lake, layer, "angry", before) and leaked in _ids(
            lake, layer, "angry", today
        )
        assert len(_ids(lake, layer, "happy", before)) == 2
    assert statuses == {"loaded": 7, "conflict": 2, "duplicate": 1}

    result = dg.materialize(
        EVERYTHING, resources=res, selection=dg.AssetSelection.assets(*PUBLISH_ASSETS)
    )  # a warning does not fail the run
    assert result.success
    rows = {r["kind"]: r for r in pq.read_table(lake / "gold/duplicates.parquet").to_pylist()}
    assert set(rows) == {"label_conflict", "train_test_leakage"}
    assert rows["label_conflict"]["image_id"] == conflicted and rows["label_conflict"]["kept"] is None
    assert rows["label_conflict"]["emotions"] == ["happy", "sad"]
    assert rows["train_test_leakage"]["kept"] == "raw/images/fer2013/test/angry/l.png"
    assert rows["train_test_leakage"]["splits"] == ["test", "train"]
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "gold_duplicates_clean"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["label_conflicts"].value == 1 and check.metadata["train_test_leakage"].value == 1
    (day,) = [
        r for r in pq.read_table(lake / "gold/daily_loads.parquet").to_pylist() if r["load_date"] == today
    ]
    assert day["conflicts"] == 1
    ids = set(
        pq.read_table(lake / f"index/{MODEL}/ids.parquet", columns=["image_id"])["image_id"].to_pylist()
    )
    assert conflicted not in ids and leaked in ids and len(ids) == 7
