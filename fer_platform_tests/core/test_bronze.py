"""Reading bronze across partitions written by different versions of the platform."""

import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core.bronze import BRONZE_SCHEMA, read_bronze
from fer_platform.core.layout import BRONZE_IMAGES, hive_dir
from fer_platform.core.storage import Storage


def _write(lake, emotion, image_id, usage):
    columns = {"image_id": [image_id], "split": ["test"], "png": [b"x"]}
    if usage is not None:  # a partition written before bronze had a usage column has no such column at all
        columns["usage"] = [usage]
    folder = lake / hive_dir(BRONZE_IMAGES, emotion, "2026-12-01")
    folder.mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")


def test_a_partition_without_the_usage_column_reads_as_null_beside_newer_ones(tmp_path):
    # "angry" sorts first: the old file is the one a schema inferred from the first file would follow
    _write(tmp_path, "angry", "old", None)
    _write(tmp_path, "sad", "new", "PublicTest")
    table = read_bronze(Storage(str(tmp_path)))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows["old"]["usage"] is None
    assert rows["new"]["usage"] == "PublicTest"
    assert rows["new"]["emotion"] == "sad"
    assert set(BRONZE_SCHEMA.names) <= set(table.column_names)
    only = read_bronze(Storage(str(tmp_path)), ["image_id", "usage"], splits=["test"])
    assert sorted(only["usage"].to_pylist(), key=lambda v: v or "") == [None, "PublicTest"]
