"""Tables of the first two layers: the raw manifest and the bronze image table (Arrow)."""

from __future__ import annotations

import datetime as dt
import io
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from fer_platform.core import images
from fer_platform.core.layout import BRONZE_IMAGES, usage_of
from fer_platform.core.storage import Storage

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("filepath", pa.string()),
        ("split", pa.string()),
        ("landing_path", pa.string()),
        ("size", pa.int64()),
        ("source", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        # the landing file's modification time: with source and size, the version the load log
        # knows it by (a lost load log is restored from the manifests: core/convergence.py)
        ("modified_at", pa.timestamp("us", tz="UTC")),
    ]
)

BRONZE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("filepath", pa.string()),
        ("name", pa.string()),
        ("split", pa.string()),
        # Training, PublicTest or PrivateTest: the file name's prefix (a challenge CSV row's Usage, and
        # Kaggle's own JPEG naming), else null
        ("usage", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("png", pa.binary()),
        ("source", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ]
)


def manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def bronze_table(manifest: pa.Table, lake: Storage, run_id: str | None) -> pa.Table:
    """One row per loaded image, read back from the lake copy (so bronze reflects what the lake holds)."""
    rows = manifest.to_pylist()
    blobs = lake.read_many([r["filepath"] for r in rows])
    out = []
    for r, data in zip(rows, blobs, strict=True):
        sha = images.sha256(data)
        if sha != r["image_id"]:
            raise ValueError(
                f"lake file {r['filepath']} does not match its load log entry (sha256 {sha[:12]}...)"
            )
        with Image.open(io.BytesIO(data)) as im:
            width, height, mode, fmt = im.width, im.height, im.mode, im.format
        out.append(
            {
                "image_id": r["image_id"],
                "filepath": r["filepath"],
                "name": posixpath.basename(r["filepath"]),
                "split": r["split"],
                "usage": usage_of(r["filepath"]),
                "width": width,
                "height": height,
                "mode": mode,
                "format": fmt,
                "bytes": len(data),
                "png": images.to_png(data),
                "source": r["source"],
                "ingested_at": r["ingested_at"],
                "run_id": run_id,
            }
        )
    return pa.Table.from_pylist(out, schema=BRONZE_SCHEMA)


def with_partition_columns(table: pa.Table, emotion: str, load_date: dt.date) -> pa.Table:
    n = table.num_rows
    return table.append_column("emotion", pa.array([emotion] * n, pa.string())).append_column(
        "load_date", pa.array([load_date] * n, pa.date32())
    )


LABELLED_COLUMNS = [
    "image_id",
    "split",
    "png",
    "emotion",
    "load_date",
]  # emotion, load_date: the Hive folders


HIVE_KEYS = ("emotion", "load_date")  # bronze's Hive folders


def read_labelled(lake: Storage) -> pa.Table:
    """The bronze rows a model trains on and is judged on: both splits, each image with its emotion."""
    return read_bronze(lake, LABELLED_COLUMNS, splits=["train", "test"])


def read_bronze(lake: Storage, columns: list[str] | None = None, splits: list[str] | None = None) -> pa.Table:
    """Every bronze partition as one table (the Hive folders give emotion and load_date), optionally
    only some columns and splits."""
    root = lake.path(BRONZE_IMAGES)
    if not lake.fs.exists(root):
        return pa.table(
            {
                c: pa.array([], BRONZE_SCHEMA.field(c).type if c in BRONZE_SCHEMA.names else pa.string())
                for c in (columns or BRONZE_SCHEMA.names)
            }
        )
    # The full schema, not the first file's: a partition written before a column existed (``usage``) reads
    # that column as null instead of hiding it from every other partition.
    schema = pa.schema(
        [f for f in BRONZE_SCHEMA if f.name not in HIVE_KEYS] + [pa.field(k, pa.string()) for k in HIVE_KEYS]
    )
    dataset = ds.dataset(root, format="parquet", partitioning="hive", filesystem=lake.fs, schema=schema)
    flt = ds.field("split").isin(splits) if splits else None
    table = dataset.to_table(columns=columns, filter=flt)
    if "load_date" in table.column_names and table.schema.field("load_date").type == pa.string():
        table = table.set_column(
            table.schema.get_field_index("load_date"), "load_date", pc.cast(table["load_date"], pa.date32())
        )
    return table
