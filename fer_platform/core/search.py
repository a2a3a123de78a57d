"""Similarity search: a FAISS index over the silver vectors, its files in the lake, and queries.

The index is exact (flat inner product) below a size threshold and HNSW above it;
vectors are L2-normalised, so inner product is cosine similarity and the distance
reported is the cosine distance ``1 - cos``. An index is three files under
``index/<model>/``: ``index.faiss`` (the FAISS index), ``ids.parquet`` (row i of the
index is row i of this table: image_id, id, filepath, emotion, split, load_date) and
``meta.json`` (kind, model, size, the embedder settings that made the vectors, the
HNSW ``ef_search`` tuned at build time to reach the recall target).

FAISS is imported only here, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pgvector.psycopg import register_vector
from PIL import Image, UnidentifiedImageError

from fer_platform.core.embedding import Embedder, model_id
from fer_platform.core.images import sha256
from fer_platform.core.layout import EMOTIONS, INDEX
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import VECTORS_TABLE
from fer_platform.core.sheet import contact_sheet
from fer_platform.core.silver import lake_relative
from fer_platform.core.vectors import arrow_to_vectors, as_numpy

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
MAPPING_COLUMNS = ("image_id", "id", "filepath", "emotion", "split", "load_date")

HNSW_THRESHOLD = 20_000  # vectors; at or above it the index is HNSW
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
RECALL_TARGET = 0.99
TUNE_QUERIES = 500
EF_CANDIDATES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


class IndexUnavailable(Exception):
    """No usable index (one line saying which and what to do)."""


class IndexChanging(IndexUnavailable):
    """The index's files were read while a rebuild replaced them."""


def index_dir(model: str) -> str:
    """Lake folder of the index of ``model``."""
    return f"{INDEX}/{model}"


@dataclass
class Hit:
    rank: int
    image_id: str
    filepath: str
    emotion: str
    split: str | None
    load_date: str | None
    distance: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchIndex:
    index: Any  # faiss.Index
    mapping: pa.Table
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    # ---- files
    def to_files(self) -> dict[str, bytes]:
        import faiss  # deferred: heavy

        buf = io.BytesIO()
        pq.write_table(self.mapping, buf, compression="zstd")
        files = {INDEX_FILE: faiss.serialize_index(self.index).tobytes(), IDS_FILE: buf.getvalue()}
        # the digests of the other two, so a reader never pairs files of two builds (a rebuild
        # replaces them one by one; object stores have no multi-file rename)
        meta = {**self.meta, "digests": {name: sha256(data) for name, data in files.items()}}
        files[META_FILE] = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "SearchIndex":
        import faiss  # deferred: heavy

        missing = [f for f in (INDEX_FILE, IDS_FILE, META_FILE) if f not in files]
        if missing:
            raise IndexUnavailable(f"index files missing: {', '.join(missing)}")
        meta = json.loads(files[META_FILE])
        mixed = [n for n, d in (meta.get("digests") or {}).items() if sha256(files.get(n, b"")) != d]
        if mixed:
            raise IndexChanging(f"the index files do not belong together ({', '.join(mixed)} changed): it is being "
                                "rebuilt; try again in a moment")  # fmt: skip
        index = faiss.deserialize_index(np.frombuffer(files[INDEX_FILE], dtype=np.uint8))
        # one thread: arrow pool threads started after FAISS loads can abort the process at exit
        # (apache/arrow#34314); the mapping is small
        mapping = pq.read_table(io.BytesIO(files[IDS_FILE]), use_threads=False)
        if mapping.num_rows != index.ntotal:
            raise IndexUnavailable(f"index holds {index.ntotal} vectors but its id mapping {mapping.num_rows} rows")
        out = cls(index, mapping, meta)
        out.set_ef(meta.get("ef_search"))
        return out

    # ---- queries
    def set_ef(self, ef: int | None) -> None:
        if ef and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef)

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at ``positions`` (no copy of the whole index)."""
        return self.index.reconstruct_batch(np.asarray(positions, dtype=np.int64))

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """image_id of each position."""
        return np.asarray(self.mapping["image_id"].to_pylist(), dtype=object)

    @functools.cached_property
    def emotions(self) -> np.ndarray:
        return np.asarray(self.mapping["emotion"].to_pylist(), dtype=object)

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.ids)}

    def position_of(self, image_id: str) -> int | None:
        return self._positions.get(image_id)

    def raw_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) of the ``k`` nearest stored vectors of each query."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) > 1:
            return self.index.search(queries, min(k, self.size))
        with single_thread():  # one query: threads only add synchronisation (measured by bench/)
            return self.index.search(queries, min(k, self.size))

    def search(self, query: np.ndarray, k: int = 10, emotion: str | None = None, exclude: str | None = None) -> list[Hit]:
        """The ``k`` nearest images of one query vector, closest first.

        ``emotion`` keeps only that emotion (FAISS filters during the search; if the
        graph search finds fewer than ``k`` that exist, exact search over the subset
        answers instead). ``exclude`` drops one image_id (the query itself).
        """
        import faiss  # deferred: heavy

        q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
        allowed = np.flatnonzero(self.emotions == emotion) if emotion else np.arange(self.size)
        if exclude is not None:
            allowed = allowed[self.ids[allowed] != exclude]
        want = min(k, len(allowed))
        if want == 0:
            return []
        extra = 1 if exclude is not None else 0
        if emotion is None and exclude is None:
            sims, pos = self.raw_search(q, want)
        else:
            selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
            if self.kind == "hnsw":
                ef = max(int(self.meta.get("ef_search") or 64), 4 * (want + extra))
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            else:
                params = faiss.SearchParameters(sel=selector)
            with single_thread():
                sims, pos = self.index.search(q, want, params=params)
            if int((pos[0] >= 0).sum()) < want:  # the filtered graph walk came up short: exact over the subset
                sims, pos = exact_search(self.vectors_at(allowed), q, want)
                pos = allowed[pos]
        return self.hits(sims[0], pos[0])

    def hits(self, sims: np.ndarray, positions: np.ndarray) -> list[Hit]:
        rows = self.mapping.take(pa.array([int(p) for p in positions if p >= 0], pa.int64())).to_pylist()
        return [
            Hit(rank=i + 1, image_id=r["image_id"], filepath=r["filepath"], emotion=r["emotion"], split=r["split"],
                load_date=_iso(r["load_date"]), distance=float(1.0 - s))
            for i, (r, s) in enumerate(zip(rows, [s for s, p in zip(sims, positions) if p >= 0]))
        ]  # fmt: skip


@contextlib.contextmanager
def single_thread():
    import faiss  # deferred: heavy

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# --------------------------------------------------------------------------- building
def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner product with numpy (independent of FAISS): (similarities, positions)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), block * 16):
        chunk = vectors[start : start + block * 16]
        for q0 in range(0, len(queries), block):
            s = queries[q0 : q0 + block] @ chunk.T
            kk = min(k, s.shape[1])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s[q0 : q0 + block], np.take_along_axis(s, top, 1)], axis=1)
            cand_i = np.concatenate([best_i[q0 : q0 + block], top + start], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s[q0 : q0 + block] = np.take_along_axis(cand_s, order, 1)
            best_i[q0 : q0 + block] = np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def build_index(
    silver: pa.Table,
    model: str,
    embedder: dict | None = None,
    hnsw_threshold: int = HNSW_THRESHOLD,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    target_recall: float = RECALL_TARGET,
    seed: int = 0,
) -> SearchIndex:
    """An index over ``silver`` rows of ``model`` (exact below ``hnsw_threshold`` vectors, HNSW above)."""
    import faiss  # deferred: heavy

    table = silver.sort_by([("image_id", "ascending")])
    vectors = normalise(arrow_to_vectors(table["vector"]))
    dim = vectors.shape[1]
    held = 0
    if len(vectors) >= hnsw_threshold:
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        kind = "hnsw"
        # ef_search is tuned on queries the graph does not hold yet (a stored vector finds its own
        # neighbourhood too easily): a sample is moved to the end, added after the tuning
        held = min(TUNE_QUERIES, max(1, len(vectors) // 20))
        picks = np.random.default_rng(seed).choice(len(vectors), size=held, replace=False)
        order = np.concatenate([np.setdiff1d(np.arange(len(vectors)), picks), np.sort(picks)])
        table, vectors = table.take(pa.array(order, pa.int64())), vectors[order]
    else:
        index = faiss.IndexFlatIP(dim)
        kind = "flat"
    if len(vectors):
        index.add(vectors[: len(vectors) - held])
    mapping = pa.table({c: _column(table, c) for c in MAPPING_COLUMNS})
    meta = {
        "kind": kind,
        "model": model,
        "size": int(index.ntotal),
        "dim": dim,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "embedder": embedder or {},
        "faiss": faiss.__version__,
    }
    out = SearchIndex(index, mapping, meta)
    if kind == "hnsw":
        base, queries = vectors[: len(vectors) - held], vectors[len(vectors) - held :]
        meta.update(hnsw_m=m, ef_construction=ef_construction, tuning_queries=held)
        meta["ef_search"], meta["tuned_recall"] = tune_ef(out, base, queries, target_recall)
        out.set_ef(meta["ef_search"])
        index.add(queries)
        meta["size"] = int(index.ntotal)
    return out


def tune_ef(index: SearchIndex, base: np.ndarray, queries: np.ndarray, target: float, k: int = 10):
    """The smallest ``ef_search`` whose recall@k of ``queries`` (vectors the index does not hold)
    against exact search over ``base`` (what it holds) reaches ``target`` plus a small margin."""
    kk = min(k, len(base))
    _, truth = exact_search(base, queries, kk)
    recall = 0.0
    for ef in EF_CANDIDATES:
        index.set_ef(ef)
        _, got = index.raw_search(queries, kk)
        recall = recall_of(got, truth)
        if recall >= min(1.0, target + 0.005):
            return ef, recall
    return EF_CANDIDATES[-1], recall


def leave_one_out(positions: np.ndarray, selves: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` positions other than the query's own: a stored vector used as a
    query finds itself trivially, which would flatter recall; without it, it is a fair query."""
    out = np.full((len(positions), k), -1, dtype=np.int64)
    for i, (row, own) in enumerate(zip(positions, selves)):
        others = row[row != own][:k]
        out[i, : len(others)] = others
    return out


def recall_of(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``got``."""
    hits = sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth))
    return hits / max(1, truth.size)


def index_recall(index: SearchIndex, silver: pa.Table, k: int = 10, sample: int = 200, seed: int = 1) -> dict:
    """recall@k of ``index`` against exact search over ``silver``, compared by image_id: what the
    blocking check measures. Queries are a sample of silver vectors, each left out of its own
    answer (see ``leave_one_out``)."""
    if silver.num_rows < 2:
        ok = index.size == silver.num_rows
        return {"recall": 1.0 if ok else 0.0, "queries": 0, "k": k, "silver": silver.num_rows, "indexed": index.size}
    vectors = normalise(arrow_to_vectors(silver["vector"]))
    ids = np.asarray(silver["image_id"].to_pylist(), dtype=object)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    kk = min(k, len(vectors) - 1)
    _, truth = exact_search(vectors, vectors[picks], kk + 1)
    truth_ids = [[i for i in ids[row] if i != ids[own]][:kk] for row, own in zip(truth, picks)]
    _, got = index.raw_search(vectors[picks], kk + 1)
    index_ids = index.ids
    got_ids = [[i for i in index_ids[row[row >= 0]] if i != ids[own]][:kk] for row, own in zip(got, picks)]
    hits = sum(len(set(g) & set(t)) for g, t in zip(got_ids, truth_ids))
    return {"recall": hits / (len(picks) * kk), "queries": len(picks), "k": kk, "silver": len(vectors), "indexed": index.size}


# --------------------------------------------------------------------------- the lake
def load_index(lake, model: str, tries: int = 3) -> SearchIndex:
    """The index of ``model`` from the lake (a core.storage.Storage); read again if a rebuild was
    replacing its files meanwhile."""
    folder = index_dir(model)
    for attempt in range(tries):
        files = {}
        for name in (META_FILE, INDEX_FILE, IDS_FILE):
            try:
                files[name] = lake.read_bytes(f"{folder}/{name}")
            except FileNotFoundError:
                raise IndexUnavailable(
                    f"no search index for model {model} at {lake.uri(folder)}: materialise search_index "
                    "(fer-platform demo, or the UI)"
                ) from None
        try:
            return SearchIndex.from_files(files)
        except IndexChanging:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- pgvector backend
def pgvector_search(conn, query: np.ndarray, model: str, k: int = 10, emotion: str | None = None,
                    exclude: str | None = None, ef_search: int = 100) -> list[Hit]:  # fmt: skip
    """The ``k`` nearest rows of ``model`` in PostgreSQL by cosine distance (HNSW index).

    Filters (model, emotion) use pgvector's iterative index scans, so a filtered query
    still returns ``k`` rows; if the index scan still comes up short of the rows that
    exist, the query is answered by an exact scan.
    """
    register_vector(conn)
    q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    where, params = ["model = %s"], [model]
    if emotion:
        where.append("emotion = %s")
        params.append(emotion)
    if exclude:
        where.append("image_id <> %s")
        params.append(exclude)
    sql = (
        f"SELECT image_id, filepath, emotion, split, load_date, vector <=> %s AS distance FROM {VECTORS_TABLE} "
        f"WHERE {' AND '.join(where)} ORDER BY vector <=> %s LIMIT %s"
    )
    args = [q, *params, q, k]
    with conn.transaction():
        # pgvector accepts ef_search up to 1000; a larger k is completed by the iterative scan
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(1000, max(ef_search, k))),))
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
        rows = conn.execute(sql, args).fetchall()
        if len(rows) < k:
            available = conn.execute(
                f"SELECT count(*) FROM {VECTORS_TABLE} WHERE {' AND '.join(where)}", params
            ).fetchone()[0]
            if len(rows) < min(k, available):
                conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                rows = conn.execute(sql, args).fetchall()
    return [
        Hit(rank=i + 1, image_id=r[0], filepath=_lake_path(r[1]), emotion=r[2], split=r[3],
            load_date=_iso(r[4]), distance=float(r[5]))
        for i, r in enumerate(rows)
    ]  # fmt: skip


def pgvector_row(conn, image_id: str, model: str) -> dict | None:
    """The stored row of ``image_id`` for ``model``: filepath (lake path), emotion, split, load_date, vector."""
    register_vector(conn)
    row = conn.execute(
        f"SELECT filepath, emotion, split, load_date, vector FROM {VECTORS_TABLE} WHERE image_id = %s AND model = %s",
        (image_id, model),
    ).fetchone()
    if row is None:
        return None
    return {"image_id": image_id, "filepath": _lake_path(row[0]), "emotion": row[1], "split": row[2],
            "load_date": row[3], "vector": as_numpy(row[4])}  # fmt: skip


def _lake_path(uri: str) -> str:
    try:
        return lake_relative(uri)
    except ValueError:
        return uri


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table[name] if name in table.column_names else pa.nulls(table.num_rows, pa.string())
    if name == "load_date":
        col = pa.array([_iso(v) for v in col.to_pylist()], pa.string())
    return col


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# --------------------------------------------------------------------------- one search, end to end
BACKENDS = ("index", "pgvector")


class QueryError(ValueError):
    """A query that cannot be answered (one line: what and why)."""


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
) -> dict[str, Any]:
    """The ``k`` images nearest to a query image (embedded with ``spec``, the model the vectors were
    made with) or to a stored image (``image_id``, itself excluded), closest first."""
    if (image is None) == (image_id is None):
        raise QueryError("give exactly one of an image or an image id")
    if backend not in BACKENDS:
        raise QueryError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if emotion is not None and emotion not in EMOTIONS:
        raise QueryError(f"unknown emotion {emotion!r} (expected one of {', '.join(EMOTIONS)})")
    if k < 1:
        raise QueryError("k must be at least 1")
    model = model_id(spec)
    index = load_index(lake, model) if backend == "index" else None
    query: dict[str, Any] = {"image_id": image_id}
    if image is not None:
        vector = embed_query(image, spec)
        query["image_id"] = sha256(image)
        pos = index.position_of(query["image_id"]) if index is not None else None
        if pos is not None:  # the query is a loaded image: say which
            query.update(index.mapping.slice(pos, 1).to_pylist()[0])
    elif index is not None:
        pos = index.position_of(image_id)
        if pos is None:
            raise QueryError(f"image {image_id} is not in the index of model {model}")
        vector = index.vectors_at([pos])[0]
        query.update(index.mapping.slice(pos, 1).to_pylist()[0])
    else:
        vector = None
    if backend == "index":
        hits = index.search(vector, k, emotion=emotion, exclude=image_id)
        size = index.size
    else:
        with connect(dsn) as conn:
            stored = pgvector_row(conn, query["image_id"], model)
            if vector is None and stored is None:
                raise QueryError(f"image {image_id} has no vector of model {model} in PostgreSQL")
            if stored is not None:  # the query is a loaded image: say which
                vector = stored.pop("vector") if vector is None else vector
                stored.pop("vector", None)
                query.update(stored)
            hits = pgvector_search(conn, vector, model, k, emotion=emotion, exclude=image_id)
        size = None
    query = {key: _iso(v) if key == "load_date" else v for key, v in query.items()}
    return {
        "query": query,
        "model": model,
        "backend": backend,
        "k": k,
        "emotion_filter": emotion,
        "index_size": size,
        "hits": [h.as_dict() for h in hits],
        "same_emotion": sum(h.emotion == query.get("emotion") for h in hits) if query.get("emotion") else None,
    }


def embed_query(image: bytes, spec) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise QueryError(f"the query file is not an image that can be read ({type(exc).__name__})") from None
    return Embedder.get(spec).embed([image])[0]


def result_sheet(result: dict[str, Any], lake, query_image: bytes | None = None) -> bytes:
    """A contact sheet of a ``find_similar`` result: the query, then each neighbour."""
    q = result["query"]
    if query_image is None:
        query_image = lake.read_bytes(q["filepath"])
    tiles = [(query_image, f"query\n{q.get('emotion') or ''}")]
    for h in result["hits"]:
        tiles.append((lake.read_bytes(h["filepath"]), f"#{h['rank']} {h['emotion']}\nd={h['distance']:.3f}"))
    return contact_sheet(tiles)

