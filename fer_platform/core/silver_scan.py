"""Silver streamed for the readers that need every vector at once (gold, the search index): the columns
they name and the vectors, read batch by batch into one preallocated float32 matrix.

``read_silver`` returns Arrow tables; holding the vector column as Arrow lists and then a numpy copy of it
doubles the largest thing in memory (and ``to_pylist`` of it is ~30x). Here each batch's vectors are
copied into their rows of the matrix and the batch is dropped: the vectors are in memory once, the other
columns (short strings, dates) as Arrow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fer_platform.core.layout import SILVER_EMBEDDINGS
from fer_platform.core.pg.schema import EMBEDDING_DIM
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import arrow_to_vectors

BATCH_ROWS = 2048  # 4 MiB of 512-d float32 vectors per batch
# the lake's Parquet files are written in row groups of about this much data: a reader that streams a file
# (``iter_silver_vectors``: gold, the search index and its check) holds one row group's pages at a time.
# pyarrow's default (1 Mi rows) made each partition one row group. One scan of silver at FER size (its
# largest partition 19 MiB) rose +66 MiB above the process that way, +62 with groups of 4,096 rows, +41 with
# groups of at most a batch (2,048 rows of 2.2 KiB: ~1,900 here), and a 7x partition (63,000 rows, 130 MiB)
# would be one group too
ROW_GROUP_BYTES = 4 << 20


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group for writing ``table``: ``ROW_GROUP_BYTES`` of its data, at least 1,024 rows."""
    per_row = table.nbytes / max(1, table.num_rows)
    return max(1024, int(ROW_GROUP_BYTES // max(1.0, per_row)))


@dataclass
class SilverVectors:
    """Silver rows as a unit-length float32 matrix (``vectors``) beside the other columns (``columns``, an
    Arrow table, row i of one is row i of the other)."""

    vectors: np.ndarray
    columns: pa.Table

    @property
    def num_rows(self) -> int:
        return len(self.vectors)

    def strings(self, name: str) -> np.ndarray:
        """A column as a numpy object array (what label comparisons use)."""
        return np.asarray(self.columns[name].to_pylist(), dtype=object)

    def batches(self, vectors: bool = True) -> Iterator[tuple[np.ndarray | None, pa.Table]]:
        """The rows as one batch, as ``SilverScan`` gives them (``vectors=False``: None for the vectors)."""
        yield (self.vectors if vectors else None), self.columns

    @classmethod
    def from_table(cls, table: pa.Table) -> "SilverVectors":
        """From silver rows already in memory (tests, small tables)."""
        others = [c for c in table.column_names if c != "vector"]
        return cls(normalise(arrow_to_vectors(table["vector"])), table.select(others))


def as_silver_vectors(silver: pa.Table | SilverVectors) -> SilverVectors:
    return silver if isinstance(silver, SilverVectors) else SilverVectors.from_table(silver)


@dataclass(frozen=True)
class SilverScan:
    """Silver rows of ``model`` read from the lake afresh on every ``batches()``, in the same order each
    time, never held whole (``iter_silver_vectors``): what reads silver twice, the columns first and the
    vectors then (``search.build.build_index``), holds one batch of it at a time."""

    lake: Any
    model: str | None
    columns: tuple[str, ...] = ("emotion", "split")
    batch_rows: int = BATCH_ROWS

    def batches(self, vectors: bool = True) -> Iterator[tuple[np.ndarray | None, pa.RecordBatch]]:
        return iter_silver_vectors(self.lake, self.model, self.columns, self.batch_rows, vectors=vectors)


def no_rows(columns: tuple[str, ...]) -> pa.Table:
    """An empty table of silver's ``columns`` (load dates as dates, the others strings)."""
    return pa.table({c: pa.array([], pa.date32() if c == "load_date" else pa.string()) for c in columns})


def _dataset(lake, model: str | None):
    """(silver's dataset, the filter of ``model``), or None when silver has no file."""
    root = lake.path(SILVER_EMBEDDINGS)
    if not lake.fs.exists(root):
        return None
    dataset = ds.dataset(root, format="parquet", partitioning="hive", filesystem=lake.fs)
    if not dataset.files:
        return None
    return dataset, (ds.field("model") == model if model else None)


def count_silver_vectors(lake, model: str | None) -> int:
    found = _dataset(lake, model)
    return found[0].count_rows(filter=found[1]) if found else 0


def iter_silver_vectors(
    lake,
    model: str | None,
    columns: tuple[str, ...] = ("emotion", "split"),
    batch_rows: int = BATCH_ROWS,
    vectors: bool = True,
) -> Iterator[tuple[np.ndarray | None, pa.RecordBatch]]:
    """Silver rows of ``model`` a batch at a time: (unit-length float32 vectors, the batch's ``columns``), in
    the same order on every scan of the same files; one batch in memory at a time. ``vectors=False``: the
    columns alone (the vector column is not read; None in its place).

    File by file, each read in pieces of ``batch_rows`` rows by one thread without pre-buffering its column
    chunks, its columns cast to the dataset's types. Arrow's dataset scanner (one batch read ahead, one file)
    held 251 MiB above the process through three scans of silver's 70 MiB of vectors at FER size, and this
    111 MiB, in 0.83x the time (bench/bench_reads_memory.py)."""
    found = _dataset(lake, model)
    if not found:
        return
    dataset = found[0]
    for fragment in dataset.get_fragments():
        keys = ds.get_partition_keys(fragment.partition_expression)  # emotion, load_date: in the folders
        if model and "model" in keys and keys["model"] != model:  # a folder of another model: not opened
            continue
        with fragment.filesystem.open_input_file(fragment.path) as f:
            reader = pq.ParquetFile(f, pre_buffer=False)
            in_file = reader.schema_arrow.names
            if model and "model" not in in_file and "model" not in keys:  # no row says it is of the model
                continue
            read = (*columns, "vector", "model") if vectors else (*columns, "model")
            wanted = [c for c in read if c in in_file and c not in keys]
            for batch in reader.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False):
                if model and "model" not in keys:
                    batch = batch.filter(pc.equal(batch.column("model"), model))
                if batch.num_rows:
                    yield (
                        normalise(arrow_to_vectors(batch.column("vector"))) if vectors else None,
                        _columns(batch, columns, keys, dataset),
                    )


def _columns(batch: pa.RecordBatch, columns: tuple[str, ...], keys: dict, dataset) -> pa.RecordBatch:
    """``columns`` of ``batch``: from the file, from the folder names (hive keys), or null where neither has
    one (as the dataset scanner gave a file without the column)."""
    out = {}
    for c in columns:
        kind = dataset.schema.field(c).type if c in dataset.schema.names else pa.string()
        if c in keys:
            out[c] = pa.array([keys[c]] * batch.num_rows, kind)
        elif c in batch.schema.names:  # as the scanner gave it: every file in the dataset's type
            col = batch.column(c)
            out[c] = col if col.type == kind else col.cast(kind)
        else:
            out[c] = pa.nulls(batch.num_rows, kind)
    return pa.RecordBatch.from_pydict(out)


def read_silver_vectors(
    lake, model: str | None, columns: tuple[str, ...] = ("emotion", "split"), batch_rows: int = BATCH_ROWS
) -> SilverVectors:
    """Every silver row of ``model``: its vectors (normalised again, batch by batch: cheap, and a reader
    never trusts a file's norms) and ``columns``, streamed with a dataset scanner."""
    empty = SilverVectors(np.empty((0, EMBEDDING_DIM), np.float32), no_rows(columns))
    vectors = np.empty((count_silver_vectors(lake, model), EMBEDDING_DIM), np.float32)
    parts: list[pa.RecordBatch] = []
    at = 0
    for batch_vectors, batch in iter_silver_vectors(lake, model, columns, batch_rows):
        m = len(batch_vectors)
        if at + m > len(vectors):  # a partition grew between the count and the scan
            vectors = np.concatenate([vectors, np.empty((at + m - len(vectors), EMBEDDING_DIM), np.float32)])
        vectors[at : at + m] = batch_vectors
        parts.append(batch)
        at += m
    pa.default_memory_pool().release_unused()  # the batches' buffers, back to the system now
    if not parts:
        return empty
    table = pa.Table.from_batches(parts)
    if "load_date" in table.column_names and table.schema.field("load_date").type != pa.date32():
        i = table.schema.get_field_index("load_date")
        table = table.set_column(i, "load_date", pc.cast(table["load_date"], pa.date32()))
    return SilverVectors(vectors[:at], table.select(list(columns)))
