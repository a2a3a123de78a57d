"""The lake IO manager writes Hive folders that standard readers understand."""

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from fer_platform.core.storage import LakeFiles
from fer_platform.io_managers.parquet import LAKE_FORMAT, LAKE_PATH, LakeIOManager
from fer_platform.partitions import image_partitions, partition_key


@dg.asset(partitions_def=image_partitions, io_manager_key="io", metadata={LAKE_PATH: "silver/things"})
def things(context: dg.AssetExecutionContext) -> pa.Table:
    emotion = context.partition_key.keys_by_dimension["emotion"]
    return pa.table({"id": [1, 2], "emotion": [emotion, emotion], "v": [0.5, 1.5]})


@dg.asset(partitions_def=image_partitions, io_manager_key="io")
def doubled(things: pa.Table) -> pa.Table:
    return things.append_column("w", pa.array([x * 2 for x in things["v"].to_pylist()]))


@dg.asset(io_manager_key="io")
def summary() -> pd.DataFrame:
    return pd.DataFrame({"n": [3]})


def test_hive_layout_round_trip_and_standard_readers(tmp_path):
    io = LakeIOManager(base_url=str(tmp_path))
    for emotion, day in [("angry", "2026-11-01"), ("sad", "2026-11-02")]:
        res = dg.materialize(
            [things, doubled], partition_key=partition_key(emotion, day), resources={"io": io}
        )
        assert res.success
        loaded = res.output_for_node("doubled")
        assert loaded.column("w").to_pylist() == [1.0, 3.0]
    assert (tmp_path / "silver/things/emotion=angry/load_date=2026-11-01/part-0.parquet").exists()
    assert (tmp_path / "doubled/emotion=sad/load_date=2026-11-02/part-0.parquet").exists()
    assert dg.materialize([summary], resources={"io": io}).success
    assert (tmp_path / "summary.parquet").exists()

    q = (
        "SELECT emotion, load_date, sum(v) "
        f"FROM read_parquet('{tmp_path}/silver/things/**/*.parquet', hive_partitioning=true) "
        "GROUP BY ALL ORDER BY 1"
    )
    assert duckdb.sql(q).fetchall() == [
        ("angry", __import__("datetime").date(2026, 11, 1), 2.0),
        ("sad", __import__("datetime").date(2026, 11, 2), 2.0),
    ]
    assert sorted(pd.read_parquet(tmp_path / "silver/things")["emotion"].astype(str).unique()) == [
        "angry",
        "sad",
    ]
    assert ds.dataset(tmp_path / "silver/things", partitioning="hive").to_table().num_rows == 4
    assert not list(tmp_path.rglob(".*.tmp"))


FAIL = {"after": None}  # bytes a streamed file's writer writes before it fails (None: it does not fail)


@dg.asset(io_manager_key="io", metadata={LAKE_PATH: "index", LAKE_FORMAT: "files"})
def built(context: dg.AssetExecutionContext) -> LakeFiles:
    version = context.run.run_id[:8]

    def big(f):  # a streamed file: written in pieces, as the search index's FAISS file is
        for i in range(64):
            if FAIL["after"] is not None and i * 4096 >= FAIL["after"]:
                raise OSError("the writer failed part-way")
            f.write(version.encode() * 512)

    return LakeFiles(version, {"big.bin": big, "meta.json": version.encode()})


def test_a_streamed_file_that_fails_part_way_leaves_nothing_and_the_last_set_stays_published(tmp_path):
    io = LakeIOManager(base_url=str(tmp_path))
    FAIL["after"] = None
    first = dg.materialize([built], resources={"io": io})
    assert first.success
    published = (tmp_path / "index" / "LATEST").read_text()
    meta = first.get_asset_materialization_events()[0].materialization.metadata
    assert (tmp_path / "index" / published / "big.bin").stat().st_size == 64 * 4096 == meta["bytes"].value - 8
    FAIL["after"] = 100_000
    second = dg.materialize([built], resources={"io": io}, raise_on_error=False)
    assert not second.success
    assert (tmp_path / "index" / "LATEST").read_text() == published  # readers still get the whole first set
    assert not list(tmp_path.rglob(".*.tmp"))  # the part-written file is gone
    failed = tmp_path / "index" / second.run_id[:8]
    assert not (failed / "big.bin").exists() and not (failed / "meta.json").exists()
