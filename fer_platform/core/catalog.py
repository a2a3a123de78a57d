"""The column schemas of the platform's tables, in one place, as people read them in the catalog.

Each schema is the Arrow schema the layer writes (core/bronze.py, core/silver.py, core/gold.py,
core/search), with the Hive folder columns (``emotion``, ``load_date``) that a partitioned layer keeps in
its folder names; ``imagenes_fer`` is the PostgreSQL table (core/pg/schema.py), with its SQL types. The
Dagster side (fer_platform/catalog.py) turns them into ``dagster/column_schema``; the tests compare them
with what is written.
"""

from __future__ import annotations

import pyarrow as pa

from fer_platform.core import gold, silver
from fer_platform.core.bronze import BRONZE_SCHEMA, MANIFEST_SCHEMA
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.schema import EMBEDDING_DIM

# A partitioned layer's Hive folders: emotion=<e>/load_date=<d>/ (read back as columns).
PARTITION_FIELDS = (pa.field("emotion", pa.string()), pa.field("load_date", pa.date32()))

CENTROID_SCHEMA = pa.schema([("emotion", pa.string())] + [(e, pa.float64()) for e in EMOTIONS])
# the search index's ids.parquet (core/search/build.py): row i of the FAISS index is row i here
INDEX_IDS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("id", pa.int64()),
        ("filepath", pa.string()),
        ("emotion", pa.string()),
        ("split", pa.string()),
        ("load_date", pa.date32()),
    ]
)
# imagenes_fer as PostgreSQL declares it (core/pg/schema.py): (column, SQL type)
VECTORS_COLUMNS = (
    ("id", "bigint"),
    ("filepath", "text"),
    ("emotion", "text"),
    ("vector", f"vector({EMBEDDING_DIM})"),
    ("image_id", "text"),
    ("split", "text"),
    ("load_date", "date"),
    ("model", "text"),
    ("created_at", "timestamp with time zone"),
    ("written_by", "text"),
)

DESCRIPTIONS = {
    "image_id": "sha256 of the image's bytes: the image's identity in every layer",
    "id": "row id in imagenes_fer (PostgreSQL)",
    "filepath": "the image's lake path: raw/images/fer2013/`{split}`/`{emotion}`/`{name}`",
    "split": "train or test (the landing folder)",
    "emotion": "one of " + ", ".join(EMOTIONS) + " (the landing folder; a Hive folder in the lake)",
    "load_date": "the UTC day the file was loaded (a Hive folder in the lake)",
    "landing_path": "the file's key in the landing zone",
    "size": "bytes of the landing file",
    "source": "the landing zone's URI",
    "ingested_at": "when the file was loaded",
    "run_id": "the Dagster run that loaded it",
    "modified_at": "the landing file's modification time (with source and size: the version loaded)",
    "name": "the file name",
    "usage": "Training, PublicTest or PrivateTest from the file name (a challenge CSV row's), else null",
    "png": "the image, PNG bytes",
    "bytes": "bytes of the PNG",
    "model": "the embedding model's id (weights digest and settings)",
    "vector": f"{EMBEDDING_DIM}-d embedding, L2-normalised in silver (a cosine is a dot product)",
    "written_by": "fer-platform for the platform's rows, external for other clients' rows",
    "created_at": "when the row was written",
}


def type_name(kind: pa.DataType) -> str:
    """An Arrow type as the catalog shows it: lists without the name of their item field (which Parquet
    writers and readers name differently: ``item``, ``element``)."""
    if pa.types.is_fixed_size_list(kind):
        return f"fixed_size_list<{type_name(kind.value_type)}>[{kind.list_size}]"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{type_name(kind.value_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in kind) + ">"
    return str(kind)


def with_partition_columns(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus the Hive folder columns it does not hold already."""
    return pa.schema(list(schema) + [f for f in PARTITION_FIELDS if f.name not in schema.names])


def schemas() -> dict[str, pa.Schema]:
    """Asset name -> the Arrow schema of its table (partition columns included)."""
    return {
        "raw_images": with_partition_columns(MANIFEST_SCHEMA),
        "bronze_images": with_partition_columns(BRONZE_SCHEMA),
        "silver_embeddings": silver.SCHEMA,
        "gold_emotion_summary": gold.EMOTION_SUMMARY_SCHEMA,
        "gold_daily_loads": gold.DAILY_LOADS_SCHEMA,
        "gold_centroid_similarity": CENTROID_SCHEMA,
        "gold_neighbour_agreement": gold.AGREEMENT_SCHEMA,
        "gold_duplicates": gold.DUPLICATES_SCHEMA,
        "search_index": INDEX_IDS_SCHEMA,
    }


def columns(asset: str) -> list[tuple[str, str, str | None]]:
    """(name, type, description) of the columns of ``asset``'s table; ``image_embeddings`` is
    imagenes_fer's SQL columns."""
    if asset == "image_embeddings":
        return [(name, kind, DESCRIPTIONS.get(name)) for name, kind in VECTORS_COLUMNS]
    schema = schemas()[asset]
    if asset.startswith("gold_centroid"):
        return [
            (f.name, type_name(f.type), None if f.name == "emotion" else f"cosine with {f.name}")
            for f in schema
        ]
    return [(f.name, type_name(f.type), DESCRIPTIONS.get(f.name)) for f in schema]
