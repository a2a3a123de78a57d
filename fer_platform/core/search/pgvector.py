"""The pgvector backend: the same queries as the FAISS index, answered by PostgreSQL's HNSW index.

The vectors table (see ``core.vectors``) holds every model's vectors with their partition
columns; a query filters by model (and emotion) and orders by cosine distance ``<=>``. Only the platform's
rows are searched (rows other clients inserted have no image id or partition to answer with), and their
``filepath`` is the lake-relative path.
"""

from __future__ import annotations

import numpy as np
from pgvector.psycopg import register_vector

from fer_platform.core.pg.schema import PLATFORM_ROWS, VECTORS_TABLE
from fer_platform.core.search.hits import Hit, iso
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import as_numpy


def pgvector_search(
    conn,
    query: np.ndarray,
    model: str,
    k: int = 10,
    emotion: str | None = None,
    exclude: str | None = None,
    ef_search: int = 100,
) -> list[Hit]:
    """The ``k`` nearest rows of ``model`` in PostgreSQL by cosine distance (HNSW index).

    Filters (model, emotion) use pgvector's iterative index scans, so a filtered query
    still returns ``k`` rows; if the index scan still comes up short of the rows that
    exist, the query is answered by an exact scan.
    """
    _register(conn)
    q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    where, params = [PLATFORM_ROWS, "model = %s"], [model]
    if emotion:
        where.append("emotion = %s")
        params.append(emotion)
    if exclude:
        where.append("image_id <> %s")
        params.append(exclude)
    sql = (
        f"SELECT image_id, filepath, emotion, split, load_date, vector <=> %s AS distance "
        f"FROM {VECTORS_TABLE} WHERE {' AND '.join(where)} ORDER BY vector <=> %s LIMIT %s"
    )
    args = [q, *params, q, k]
    with conn.transaction():
        # pgvector accepts ef_search up to 1000; a larger k is completed by the iterative scan
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), "
            "set_config('hnsw.iterative_scan', 'strict_order', true)",
            (str(min(1000, max(ef_search, k))),),
        )
        rows = conn.execute(sql, args).fetchall()
        if len(rows) < k:
            available = conn.execute(
                f"SELECT count(*) FROM {VECTORS_TABLE} WHERE {' AND '.join(where)}", params
            ).fetchone()[0]
            if len(rows) < min(k, available):
                conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                rows = conn.execute(sql, args).fetchall()
    return [
        Hit(
            rank=i + 1,
            image_id=r[0],
            filepath=r[1],
            emotion=r[2],
            split=r[3],
            load_date=iso(r[4]),
            distance=float(r[5]),
        )
        for i, r in enumerate(rows)
    ]


def pgvector_row(conn, image_id: str, model: str) -> dict | None:
    """The stored row of ``image_id`` for ``model``: filepath (lake path), emotion, split, load_date,
    vector; None if PostgreSQL holds no vector of it."""
    _register(conn)
    row = conn.execute(
        f"SELECT filepath, emotion, split, load_date, vector FROM {VECTORS_TABLE} "
        f"WHERE {PLATFORM_ROWS} AND image_id = %s AND model = %s",
        (image_id, model),
    ).fetchone()
    if row is None:
        return None
    return {
        "image_id": image_id,
        "filepath": row[0],
        "emotion": row[1],
        "split": row[2],
        "load_date": row[3],
        "vector": as_numpy(row[4]),
    }


def _register(conn) -> None:
    """pgvector's types on ``conn``, once (registering asks the server for the type's oid: a round trip a
    connection kept open, as the search service keeps its own, pays only the first time)."""
    if conn.adapters.types.get("vector") is None:
        register_vector(conn)
