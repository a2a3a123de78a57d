"""Vectors in PostgreSQL + pgvector: partition replacement by binary COPY, and reads as Arrow.

A partition's rows for a model are made equal to the partition's images in one
transaction, under an advisory lock on (partition, model): rows of images that
left the partition are deleted, images that already have a vector keep their row
(and id), new images are embedded while their rows stream into ``COPY ... FROM
STDIN (FORMAT BINARY)``, so the model and PostgreSQL overlap. A load that adds many rows relative to the
table COPYs without the HNSW index and builds it afterwards (see ``pg.schema``, issue 15).

Every statement here touches only the platform's rows (``written_by``, see ``pg.schema``): a row another
client inserted (the classic three-column INSERT) is never deleted, changed, read into silver or counted
by the checks; ``foreign_rows`` counts them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa
from pgvector.psycopg import register_vector

from fer_platform.core import faults
from fer_platform.core.pg.schema import (
    EMBEDDING_DIM,
    PLATFORM_ROWS,
    PLATFORM_WRITER,
    VECTORS_LIKE,
    VECTORS_TABLE,
    begin_bulk_load,
    end_bulk_load,
    ensure_vector_index,
    vector_index_present,
)

VECTOR_TYPE = pa.list_(pa.float32(), EMBEDDING_DIM)
_COPY_COLUMNS = ("filepath", "emotion", "vector", "image_id", "split", "load_date", "model", "written_by")
_COPY_TYPES = ("text", "text", "vector", "text", "text", "date", "text", "text")


def partition_lock_key(emotion: str, load_date: dt.date, model: str) -> int:
    digest = hashlib.sha256(f"{VECTORS_TABLE}|{emotion}|{load_date}|{model}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class EmbeddingPlan:
    """What a partition's vectors must be: one row per image; ``embed`` makes the missing vectors."""

    emotion: str
    load_date: dt.date
    model: str
    image_ids: list[str]
    filepaths: list[str]  # lake-relative: raw/images/fer2013/<split>/<emotion>/<name>
    splits: list[str | None]
    pngs: Sequence[bytes]  # a list, or ``BinaryRows`` over bronze's column (not copied into Python first)
    embed: Callable[[Sequence[bytes]], Iterator[np.ndarray]]
    force: bool = False
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)


class BinaryRows(Sequence[bytes]):
    """Rows of an Arrow binary column as ``bytes``, made only when read (a batch at a time by the embedder):
    a partition's PNGs are held once, in the column, not a second time as Python objects (63k images in
    one partition at 7x FER: ~190 MB)."""

    def __init__(self, column: pa.ChunkedArray | pa.Array, rows: Sequence[int] | None = None):
        self._column = column
        self._rows = np.arange(len(column)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if not isinstance(i, slice):
            return self._column[int(self._rows[i])].as_py()
        rows = self._rows[i]
        if len(rows) and (np.diff(rows) == 1).all():  # a run of rows: one zero-copy slice
            return self._column.slice(int(rows[0]), len(rows)).to_pylist()
        # row by row: ``take`` on a column of several chunks would first join them all (a copy per batch)
        return [self._column[int(r)].as_py() for r in rows]

    def select(self, rows: Sequence[int]) -> BinaryRows:
        return BinaryRows(self._column, self._rows[np.asarray(rows, dtype=np.int64)])


def rows_of(pngs: Sequence[bytes], rows: Sequence[int]) -> Sequence[bytes]:
    """``pngs`` at ``rows``, as lazily as ``pngs`` is."""
    return pngs.select(rows) if isinstance(pngs, BinaryRows) else [pngs[i] for i in rows]


class NonFiniteVectors(ValueError):
    pass


def write_partition(
    conn: psycopg.Connection,
    plan: EmbeddingPlan,
    on_batch: Callable[[int, int], None] | None = None,
    defer_index: bool | None = None,
) -> dict:
    """Make the (partition, model) rows equal to ``plan`` in one transaction; returns counts.

    A load that adds many rows relative to the table COPYs without the HNSW index, which is built once
    the last concurrent loader ends (``pg.schema.begin_bulk_load``); a small one inserts into the live
    index. Either way the index is ensured at the end (``index``: present, built, or loading: another
    loader builds it). ``defer_index`` overrides the rule (the benchmark compares both)."""
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    register_vector(conn)
    # a caller's open transaction is not this function's to end: then the load keeps the index live
    deferred = own and begin_bulk_load(conn, rows_to_add(conn, plan), defer_index)
    try:
        stats = _replace_partition(conn, plan, on_batch)
    except BaseException:
        if deferred:
            with contextlib.suppress(psycopg.Error):  # a lost connection: the next run or audit rebuilds
                end_bulk_load(conn)
        raise
    started = time.monotonic()
    if deferred:
        faults.point("vectors.index_deferred")
    if deferred:
        stats["index"] = end_bulk_load(conn)
    elif own:
        stats["index"] = ensure_vector_index(conn)
    else:
        stats["index"] = "present" if vector_index_present(conn) else "loading"
    stats["index_deferred"] = deferred
    stats["index_seconds"] = round(time.monotonic() - started, 3)
    plan.stats.update(stats)
    return stats


def rows_to_add(conn: psycopg.Connection, plan: EmbeddingPlan) -> int:
    """How many rows ``plan`` inserts into the vectors table (and its index): its images without a
    vector for the model, or all of them when forced (their rows are rewritten)."""
    ids = list(set(plan.image_ids))
    if plan.force:
        return len(ids)
    have = conn.execute(
        f"SELECT count(*) FROM {VECTORS_TABLE} WHERE model = %s AND image_id = ANY(%s)", (plan.model, ids)
    ).fetchone()[0]
    conn.rollback()
    return len(ids) - int(have)


def _replace_partition(
    conn: psycopg.Connection, plan: EmbeddingPlan, on_batch: Callable[[int, int], None] | None
) -> dict:
    started = time.monotonic()
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s)",
            (partition_lock_key(plan.emotion, plan.load_date, plan.model),),
        )
        existing = {
            r[0]
            for r in conn.execute(
                f"SELECT image_id FROM {VECTORS_TABLE} "
                f"WHERE {PLATFORM_ROWS} AND model = %s AND image_id = ANY(%s)",
                (plan.model, plan.image_ids),
            )
        }
        # the content hash is the identity: an image's vector that another partition holds (its file
        # was logged there before the load log was lost and restored) moves to this partition. Only the rows
        # found above are looked at, by the (image_id, model) index, and none when every image is new: a join
        # of all the partition's images with the table was planned, on a freshly loaded table without
        # statistics, as a nested loop over every row of the model (547 images after 4,953: 0.28 s, not 1 ms).
        # The update decides on each row as it stands (another partition's writer may move one meanwhile);
        # the rare rows it moved then take this partition's filepath and split.
        moved_ids: list[str] = []
        if existing:
            moved_ids = [
                r[0]
                for r in conn.execute(
                    f"""UPDATE {VECTORS_TABLE} SET emotion = %s, load_date = %s
                        WHERE {PLATFORM_ROWS} AND model = %s AND image_id = ANY(%s)
                          AND (emotion <> %s OR load_date <> %s) RETURNING image_id""",
                    (
                        plan.emotion,
                        plan.load_date,
                        plan.model,
                        sorted(existing),
                        plan.emotion,
                        plan.load_date,
                    ),
                )
            ]
        if moved_ids:
            moved_here = set(moved_ids)
            picks = [i for i, image_id in enumerate(plan.image_ids) if image_id in moved_here]
            conn.execute(
                f"""UPDATE {VECTORS_TABLE} v SET filepath = p.filepath, split = p.split
                    FROM unnest(%s::text[], %s::text[], %s::text[]) AS p(image_id, filepath, split)
                    WHERE v.model = %s AND v.image_id = ANY(%s) AND v.image_id = p.image_id
                      AND v.{PLATFORM_ROWS}""",
                (
                    [plan.image_ids[i] for i in picks],
                    [plan.filepaths[i] for i in picks],
                    [plan.splits[i] for i in picks],
                    plan.model,
                    moved_ids,
                ),
            )
        moved = len(moved_ids)
        removed = conn.execute(
            f"""DELETE FROM {VECTORS_TABLE}
                WHERE {PLATFORM_ROWS} AND emotion = %s AND load_date = %s AND model = %s
                  AND NOT (image_id = ANY(%s))""",
            (plan.emotion, plan.load_date, plan.model, plan.image_ids),
        ).rowcount
        seen: set[str] = set()
        todo = []
        for i, image_id in enumerate(plan.image_ids):
            if image_id in seen or (image_id in existing and not plan.force):
                continue
            seen.add(image_id)
            todo.append(i)
        target = VECTORS_TABLE
        if plan.force and existing:
            conn.execute(f"CREATE TEMP TABLE fer_staging {VECTORS_LIKE} ON COMMIT DROP")
            target = "fer_staging"
        written = 0
        with conn.cursor().copy(
            f"COPY {target} ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_COPY_TYPES))
            batches = plan.embed(rows_of(plan.pngs, todo)) if todo else iter(())
            for vectors in batches:
                if not np.isfinite(vectors).all():
                    raise NonFiniteVectors(
                        f"the model produced non-finite values for partition {plan.emotion}|{plan.load_date}"
                    )
                for vec in vectors:
                    i = todo[written]
                    copy.write_row(
                        (
                            plan.filepaths[i],
                            plan.emotion,
                            vec,
                            plan.image_ids[i],
                            plan.splits[i],
                            plan.load_date,
                            plan.model,
                            PLATFORM_WRITER,
                        )
                    )
                    written += 1
                if on_batch:
                    on_batch(written, len(todo))
                faults.point("vectors.batch_copied")
        if written != len(todo):
            raise RuntimeError(f"embedder returned {written} vectors for {len(todo)} images")
        if target != VECTORS_TABLE:
            conn.execute(
                f"""INSERT INTO {VECTORS_TABLE} ({", ".join(_COPY_COLUMNS)})
                    SELECT {", ".join(_COPY_COLUMNS)} FROM fer_staging
                    ON CONFLICT (image_id, model) DO UPDATE SET
                      filepath = EXCLUDED.filepath, emotion = EXCLUDED.emotion, vector = EXCLUDED.vector,
                      split = EXCLUDED.split, load_date = EXCLUDED.load_date, created_at = now()
                    WHERE {VECTORS_TABLE}.{PLATFORM_ROWS}"""
            )
    rows = len(set(plan.image_ids))
    stats = {
        "rows": rows,
        "embedded": written,
        "reused": rows - written,
        "removed": removed,
        "moved": moved,
        "seconds": round(time.monotonic() - started, 3),
    }
    return stats


def read_partition(conn: psycopg.Connection, emotion: str, load_date: dt.date, model: str) -> pa.Table:
    """The partition's rows for ``model`` as Arrow; ``vector`` is fixed_size_list<float32, 512>."""
    register_vector(conn)
    rows = (
        conn.cursor(binary=True)
        .execute(  # binary: vectors arrive as float32 buffers, not text
            f"""SELECT id, image_id, filepath, split, model, created_at, vector FROM {VECTORS_TABLE}
            WHERE {PLATFORM_ROWS} AND emotion = %s AND load_date = %s AND model = %s ORDER BY id""",
            (emotion, load_date, model),
        )
        .fetchall()
    )
    vectors = np.stack([as_numpy(r[6]) for r in rows]) if rows else np.empty((0, EMBEDDING_DIM), np.float32)
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "image_id": pa.array([r[1] for r in rows], pa.string()),
            "filepath": pa.array([r[2] for r in rows], pa.string()),
            "split": pa.array([r[3] for r in rows], pa.string()),
            "model": pa.array([r[4] for r in rows], pa.string()),
            "created_at": pa.array([r[5] for r in rows], pa.timestamp("us", tz="UTC")),
            "vector": vectors_to_arrow(vectors),
            "emotion": pa.array([emotion] * len(rows), pa.string()),
            "load_date": pa.array([load_date] * len(rows), pa.date32()),
        }
    )


def as_numpy(value) -> np.ndarray:
    """A pgvector value as float32 numpy (the driver returns Vector objects or arrays by version)."""
    value = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(value, dtype=np.float32)


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), vectors.shape[1] if vectors.ndim == 2 else EMBEDDING_DIM
    )


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.empty((0, EMBEDDING_DIM), np.float32)
    width = arr.type.list_size
    return (
        arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width).astype(np.float32, copy=False)
    )


def partition_check(
    conn: psycopg.Connection, emotion: str, load_date: dt.date, model: str, image_ids: Sequence[str]
) -> dict:
    """Facts for the embeddings check: missing/extra/duplicated ids, wrong dims, non-finite values."""
    rows = conn.execute(
        f"""SELECT image_id, count(*), min(vector_dims(vector)), max(vector_dims(vector))
            FROM {VECTORS_TABLE} WHERE {PLATFORM_ROWS} AND emotion = %s AND load_date = %s AND model = %s
            GROUP BY image_id""",
        (emotion, load_date, model),
    ).fetchall()
    have = {r[0]: r for r in rows}
    want = set(image_ids)
    register_vector(conn)
    nonfinite = 0
    for (vec,) in conn.cursor(binary=True).execute(
        f"SELECT vector FROM {VECTORS_TABLE} WHERE {PLATFORM_ROWS} AND emotion = %s AND load_date = %s "
        "AND model = %s",
        (emotion, load_date, model),
    ):
        nonfinite += int(not np.isfinite(as_numpy(vec)).all())
    return {
        "missing": sorted(want - have.keys()),
        "extra": sorted(have.keys() - want),
        "duplicated": sorted(k for k, r in have.items() if r[1] > 1),
        "wrong_dims": sorted(k for k, r in have.items() if r[2] != EMBEDDING_DIM or r[3] != EMBEDDING_DIM),
        "nonfinite": nonfinite,
        "rows": sum(r[1] for r in rows),
    }


def count_partition(conn: psycopg.Connection, emotion: str, load_date: dt.date, model: str) -> int:
    return conn.execute(
        f"SELECT count(*) FROM {VECTORS_TABLE} WHERE {PLATFORM_ROWS} AND emotion = %s AND load_date = %s "
        "AND model = %s",
        (emotion, load_date, model),
    ).fetchone()[0]


def count_model(conn: psycopg.Connection, model: str) -> int:
    return conn.execute(
        f"SELECT count(*) FROM {VECTORS_TABLE} WHERE {PLATFORM_ROWS} AND model = %s", (model,)
    ).fetchone()[0]


def foreign_rows(conn: psycopg.Connection) -> list[dict]:
    """Rows the platform did not write, per (written_by, model, emotion): what the foreign-rows check
    reports. The platform leaves them alone."""
    rows = conn.execute(
        f"""SELECT written_by, model, emotion, count(*) FROM {VECTORS_TABLE} WHERE NOT ({PLATFORM_ROWS})
            GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2 NULLS FIRST, 3"""
    ).fetchall()
    return [{"written_by": w, "model": m, "emotion": e, "rows": int(n)} for w, m, e, n in rows]
