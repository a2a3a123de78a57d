"""One similarity search, end to end: check the query, find its vector, ask a backend, shape the answer.

The query is either an image (embedded with the model the stored vectors were made with) or
the image_id of a stored image (its stored vector, itself left out of the answer). The
backend is the FAISS index in the lake (``index``) or PostgreSQL (``pgvector``); both answer
the same question and return the same shape.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_platform.core.embedding import Embedder, model_id
from fer_platform.core.images import sha256
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect
from fer_platform.core.search.hits import Hit, iso
from fer_platform.core.search.index import SearchIndex, warm_index
from fer_platform.core.search.pgvector import pgvector_row, pgvector_search

BACKENDS = ("index", "pgvector")


class QueryError(ValueError):
    """A query that cannot be answered (one line: what and why)."""


class UnknownImage(QueryError):
    """A query by the id of an image the backend does not hold."""


def find_similar(
    lake,
    spec,
    *,
    image: bytes | None = None,
    image_id: str | None = None,
    k: int = 10,
    emotion: str | None = None,
    backend: str = "index",
    dsn: str | None = None,
    index: SearchIndex | None = None,
    conn=None,
    stamps: Path | None = None,
) -> dict[str, Any]:
    """The ``k`` images nearest to a query image (embedded with ``spec``, the model the vectors were
    made with) or to a stored image (``image_id``, itself excluded), closest first.

    A long-running caller (the search service) passes what it keeps open: ``index``, the index already
    in memory (else the one this process keeps, read from ``lake`` when it changed: ``warm_index``, with
    ``stamps``, a folder of verified stamps), and ``conn``, an open connection (else one to ``dsn``).
    Excluding the query image costs one more neighbour (asked for and dropped), not a filter."""
    _check_query(image, image_id, k, emotion, backend)
    model = model_id(spec)
    if backend == "index":
        if index is None:
            index = warm_index(lake, model, stamps)  # first: without an index there is nothing to embed for
        query, vector = _index_query(index, model, spec, image, image_id)
        hits, size = index.search(vector, k, emotion=emotion, exclude=image_id), index.size
    else:
        vector = embed_query(image, spec) if image is not None else None
        with connect(dsn) if conn is None else contextlib.nullcontext(conn) as conn:
            query, vector = _pgvector_query(conn, model, image, image_id, vector)
            hits, size = pgvector_search(conn, vector, model, k, emotion=emotion, exclude=image_id), None
    return _answer(query, model, backend, k, emotion, size, hits)


def _check_query(
    image: bytes | None, image_id: str | None, k: int, emotion: str | None, backend: str
) -> None:
    """A ``QueryError`` for a query that cannot be asked, before anything is loaded."""
    if (image is None) == (image_id is None):
        raise QueryError("give exactly one of an image or an image id")
    if backend not in BACKENDS:
        raise QueryError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if emotion is not None and emotion not in EMOTIONS:
        raise QueryError(f"unknown emotion {emotion!r} (expected one of {', '.join(EMOTIONS)})")
    if k < 1:
        raise QueryError("k must be at least 1")


def embed_query(image: bytes, spec) -> np.ndarray:
    """The vector of a query image; a ``QueryError`` if it is not an image that can be read."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise QueryError(f"the query file is not an image that can be read ({type(exc).__name__})") from None
    return Embedder.get(spec).embed([image])[0]


def _index_query(
    index: SearchIndex, model: str, spec, image: bytes | None, image_id: str | None
) -> tuple[dict[str, Any], np.ndarray]:
    """(what the index knows of the query, its vector): an image is embedded, and said to be a loaded
    image if the index holds it; an image id must be in the index, which gives its vector."""
    if image is not None:
        vector = embed_query(image, spec)
        query: dict[str, Any] = {"image_id": sha256(image)}
        pos = index.position_of(query["image_id"])
    else:
        query = {"image_id": image_id}
        pos = index.position_of(image_id)
        if pos is None:
            raise UnknownImage(f"image {image_id} is not in the index of model {model}")
        vector = index.vectors_at([pos])[0]
    if pos is not None:  # the query is a loaded image: say which
        query.update(index.mapping.slice(pos, 1).to_pylist()[0])
    return query, vector


def _pgvector_query(
    conn, model: str, image: bytes | None, image_id: str | None, vector: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray]:
    """(what PostgreSQL knows of the query, its vector): ``vector`` is the embedded image's, or None
    for an image id, whose stored vector is the query."""
    query: dict[str, Any] = {"image_id": sha256(image) if image is not None else image_id}
    stored = pgvector_row(conn, query["image_id"], model)
    if stored is None:
        if vector is None:
            raise UnknownImage(f"image {image_id} has no vector of model {model} in PostgreSQL")
        return query, vector
    stored_vector = stored.pop("vector")
    query.update(stored)  # the query is a loaded image: say which
    return query, stored_vector if vector is None else vector


def _answer(
    query: dict[str, Any],
    model: str,
    backend: str,
    k: int,
    emotion: str | None,
    size: int | None,
    hits: list[Hit],
) -> dict[str, Any]:
    """The result document (what the CLI prints as JSON and ``sheet.result_sheet`` draws)."""
    query = {key: iso(v) if key == "load_date" else v for key, v in query.items()}
    same = sum(h.emotion == query.get("emotion") for h in hits) if query.get("emotion") else None
    return {
        "query": query,
        "model": model,
        "backend": backend,
        "k": k,
        "emotion_filter": emotion,
        "index_size": size,
        "hits": [h.as_dict() for h in hits],
        "same_emotion": same,
    }
