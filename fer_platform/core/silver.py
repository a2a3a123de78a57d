"""The silver layer: deduplicated, validated, L2-normalised vectors with lake file paths."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from fer_platform.core.layout import RAW_IMAGES, SILVER_EMBEDDINGS
from fer_platform.core.pg.schema import EMBEDDING_DIM
from fer_platform.core.vecmath import ZeroVectors, all_finite, normalise, unit_norm_errors
from fer_platform.core.vectors import arrow_to_vectors, vectors_to_arrow

NORM_TOLERANCE = 1e-5
COLUMNS = ("id", "image_id", "filepath", "emotion", "split", "load_date", "model", "vector")
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("image_id", pa.string()),
        ("filepath", pa.string()),
        ("emotion", pa.string()),
        ("split", pa.string()),
        ("load_date", pa.date32()),
        ("model", pa.string()),
        ("vector", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ]
)


class InvalidVectors(ValueError):
    pass


def lake_relative(uri: str) -> str:
    """``.../raw/images/fer2013/<split>/<emotion>/<name>`` of a full lake URI or path."""
    marker = RAW_IMAGES + "/"
    at = uri.rfind(marker)
    if at < 0:
        raise InvalidVectors(f"file path {uri!r} is not under the lake's {RAW_IMAGES}/")
    return uri[at:]


def build_silver(embeddings: pa.Table) -> pa.Table:
    """Silver rows from a partition's pgvector rows (see module docstring)."""
    # rows come from PostgreSQL in id order, once per image: then neither the sort nor the dedup copies them
    table = embeddings if _ascending(embeddings["id"]) else embeddings.sort_by([("id", "ascending")])
    if len(pc.unique(table["image_id"])) != table.num_rows:  # keep the first row of each image_id
        first = {}
        for i, image_id in enumerate(table["image_id"].to_pylist()):
            first.setdefault(image_id, i)
        table = table.take(pa.array(sorted(first.values()), pa.int64()))
    vectors = arrow_to_vectors(table["vector"])
    if vectors.shape[1:] != (EMBEDDING_DIM,):
        raise InvalidVectors(f"vectors have {vectors.shape[1:]} dims, expected {EMBEDDING_DIM}")
    if not all_finite(vectors):
        raise InvalidVectors("vectors contain NaN or inf")
    try:
        unit = normalise(vectors, strict=True)  # a zero vector has no direction to search by
    except ZeroVectors as exc:
        raise InvalidVectors(str(exc)) from None
    out = pa.table(
        {
            "id": table["id"],
            "image_id": table["image_id"],
            "filepath": pa.array([lake_relative(p) for p in table["filepath"].to_pylist()], pa.string()),
            "emotion": table["emotion"],
            "split": table["split"],
            "load_date": table["load_date"],
            "model": table["model"],
            "vector": vectors_to_arrow(unit),
        }
    )
    problems = silver_problems(out)
    if problems:
        raise InvalidVectors("; ".join(problems))
    return out


def _ascending(ids: pa.ChunkedArray) -> bool:
    """Strictly ascending ids (no copy of the table to find out)."""
    ids = ids.combine_chunks()
    return len(ids) < 2 or bool(pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py())


def silver_problems(table: pa.Table) -> list[str]:
    problems = []
    if table.num_rows == 0:
        return problems
    if table.schema.field("vector").type != pa.list_(pa.float32(), EMBEDDING_DIM):
        problems.append(
            f"vector column is {table.schema.field('vector').type}, expected fixed_size_list<float32, 512>"
        )
        return problems
    v = arrow_to_vectors(table["vector"])
    if not all_finite(v):
        problems.append("non-finite values")
    off = unit_norm_errors(v)
    if (off > NORM_TOLERANCE).any():
        problems.append(f"{int((off > NORM_TOLERANCE).sum())} vector(s) not of norm 1 +- {NORM_TOLERANCE}")
    dupes = table.num_rows - len(pc.unique(table["image_id"]))
    if dupes:
        problems.append(f"{dupes} duplicate image_id(s)")
    return problems


def read_silver(lake, columns: list[str] | None = None, model: str | None = None) -> pa.Table:
    """Every silver partition as one table (the Hive folders give emotion and load_date)."""
    root = lake.path(SILVER_EMBEDDINGS)
    empty = SCHEMA.empty_table().select(list(columns or SCHEMA.names))
    if not lake.fs.exists(root):  # no silver yet (or deleted): an empty layer, not an error
        return empty
    dataset = ds.dataset(root, format="parquet", partitioning="hive", filesystem=lake.fs)
    if not dataset.files:
        return empty
    flt = ds.field("model") == model if model else None
    table = dataset.to_table(columns=columns, filter=flt)
    if "load_date" in table.column_names and table.schema.field("load_date").type == pa.string():
        table = table.set_column(
            table.schema.get_field_index("load_date"), "load_date", pc.cast(table["load_date"], pa.date32())
        )
    return table


def count_silver_rows(lake, model: str | None = None) -> int:
    return read_silver(lake, ["image_id"], model).num_rows
