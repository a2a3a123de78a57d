"""raw_images and bronze_images through dg.materialize, with the real PostgreSQL and a temporary lake."""

import datetime as dt

import dagster as dg
import duckdb
import pyarrow.parquet as pq

from fer_platform.assets.bronze import bronze_images, bronze_images_valid
from fer_platform.assets.raw import raw_images
from fer_platform.core import images
from fer_platform.core.pg.connect import connect
from fer_platform.partitions import image_partitions, partition_key, utc_today
from fer_platform_tests.helpers import encoded, face, put

ASSETS = [raw_images, bronze_images, bronze_images_valid]


def _materialize(resources, emotion, day=None, files=None, instance=None):
    run_config = {"ops": {"raw_images": {"config": {"files": files}}}} if files is not None else None
    return dg.materialize(
        ASSETS,
        partition_key=partition_key(emotion, day or utc_today()),
        resources=resources,
        run_config=run_config,
        instance=instance,
    )


def test_today_is_a_valid_partition():
    assert partition_key("angry", utc_today()) in image_partitions.get_partition_keys()


def test_raw_and_bronze_of_one_partition(resources, landing, lake, pg_dsn):
    put(landing, "train/happy/a b é.png", face("happy", 1))
    put(landing, "test/happy/c.png", face("happy", 2))
    put(landing, "train/happy/bad.png", encoded("RGB"))
    put(landing, "train/sad/other.png", face("sad", 1))  # another partition's file
    today = utc_today()

    result = _materialize(resources, "happy")
    assert result.success

    raw_meta = result.asset_materializations_for_node("raw_images")[0].metadata
    assert raw_meta["loaded"].value == 2 and raw_meta["quarantined"].value == 1
    assert "mode RGB" in raw_meta["quarantined_files"].value
    bronze_file = lake / f"bronze/images/emotion=happy/load_date={today}/part-0.parquet"
    assert bronze_file.exists()
    assert (lake / f"raw/manifest/emotion=happy/load_date={today}/part-0.parquet").exists()
    assert (lake / "raw/images/fer2013/train/happy/a b é.png").read_bytes() == face("happy", 1)

    table = pq.read_table(bronze_file)
    assert "emotion" not in table.column_names  # partition columns live in the folder names
    rows = {r["name"]: r for r in table.to_pylist()}
    assert set(rows) == {"a b é.png", "c.png"}
    row = rows["c.png"]
    assert (row["width"], row["height"], row["mode"], row["split"]) == (48, 48, "L", "test")
    assert row["image_id"] == images.sha256(face("happy", 2)) and row["png"] == face("happy", 2)
    assert row["bytes"] == len(face("happy", 2)) and row["run_id"] == result.run_id

    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("bronze_images_valid", True)]

    # DuckDB reads the bronze layer with the partition columns from the folders
    got = duckdb.sql(
        f"SELECT emotion, load_date, count(*) FROM read_parquet('{lake}/bronze/images/**/*.parquet', "
        "hive_partitioning=true) GROUP BY ALL"
    ).fetchall()
    assert got == [("happy", today, 2)]
    # the sad file waits for its own partition
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM load_log WHERE emotion='sad'").fetchone()[0] == 0


def test_rematerialising_gives_the_same_rows(resources, landing, lake):
    for i in range(3):
        put(landing, f"train/angry/{i}.png", face("angry", i))
    today = utc_today()
    path = lake / f"bronze/images/emotion=angry/load_date={today}/part-0.parquet"
    assert _materialize(resources, "angry").success
    first = pq.read_table(path).select(["image_id", "filepath"]).to_pylist()
    put(landing, "train/angry/3.png", face("angry", 3))
    assert _materialize(resources, "angry", files=["train/angry/0.png"]).success  # already logged
    second = pq.read_table(path).select(["image_id", "filepath"]).to_pylist()
    assert second == first
    assert _materialize(resources, "angry").success  # picks up the new file only
    third = pq.read_table(path).to_pylist()
    assert len(third) == 4 and len({r["image_id"] for r in third}) == 4


def test_past_partition_rebuilds_from_the_ledger_without_new_files(resources, landing, lake):
    put(landing, "train/fear/a.png", face("fear", 1))
    yesterday = utc_today() - dt.timedelta(days=1)
    result = _materialize(resources, "fear", day=yesterday)
    assert result.success
    assert result.asset_materializations_for_node("raw_images")[0].metadata["files_seen"].value == 0
    assert (
        pq.read_table(lake / f"bronze/images/emotion=fear/load_date={yesterday}/part-0.parquet").num_rows == 0
    )


def test_blocking_check_fails_on_a_bronze_that_disagrees_with_the_ledger(resources, landing, lake, pg_dsn):
    put(landing, "train/sad/a.png", face("sad", 1))
    assert _materialize(resources, "sad").success
    with connect(pg_dsn) as conn:  # the ledger claims one more loaded file than the lake has
        conn.execute(
            "INSERT INTO load_log"
            " (source, path, size, modified_at, sha256, emotion, load_date, status, lake_path)"
            " VALUES ('x', 'x', 1, now(), 'ff', 'sad', %s, 'loaded', 'raw/x.png')",
            (utc_today(),),
        )
    result = dg.materialize(
        [bronze_images, bronze_images_valid, raw_images.to_source_asset()],
        partition_key=partition_key("sad", utc_today()),
        resources=resources,
        selection=[bronze_images],
        raise_on_error=False,
    )
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and not checks[0].passed
    assert "the load log has 2 loaded images" in checks[0].description
