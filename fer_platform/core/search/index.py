"""A search index: its three files in the lake, reading them back (retrying while a rebuild replaces
them), and answering queries with FAISS.

The index is exact (flat inner product) below a size threshold and HNSW above it (see
``build``); vectors are L2-normalised, so inner product is cosine similarity and the distance
reported is the cosine distance ``1 - cos``. An index is three files under
``index/<model>/``: ``index.faiss`` (the FAISS index), ``ids.parquet`` (row i of the
index is row i of this table: image_id, id, filepath, emotion, split, load_date) and
``meta.json`` (kind, model, size, the embedder settings that made the vectors, the
HNSW ``ef_search`` tuned at build time to reach the recall target, the digests of the other two).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core.images import sha256
from fer_platform.core.layout import INDEX
from fer_platform.core.search.hits import Hit, iso
from fer_platform.core.vecmath import exact_search, normalise

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
MAPPING_COLUMNS = ("image_id", "id", "filepath", "emotion", "split", "load_date")


class IndexUnavailable(Exception):
    """No usable index (one line saying which and what to do)."""


class IndexChanging(IndexUnavailable):
    """The index's files were read while a rebuild replaced them."""


def index_dir(model: str) -> str:
    """Lake folder of the index of ``model``."""
    return f"{INDEX}/{model}"


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
            raise IndexChanging(
                f"the index files do not belong together ({', '.join(mixed)} changed): it is being rebuilt; "
                "try again in a moment"
            )
        index = faiss.deserialize_index(np.frombuffer(files[INDEX_FILE], dtype=np.uint8))
        # one thread: arrow pool threads started after FAISS loads can abort the process at exit
        # (apache/arrow#34314); the mapping is small
        mapping = pq.read_table(io.BytesIO(files[IDS_FILE]), use_threads=False)
        if mapping.num_rows != index.ntotal:
            raise IndexUnavailable(
                f"index holds {index.ntotal} vectors but its id mapping {mapping.num_rows} rows"
            )
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

    def search(
        self, query: np.ndarray, k: int = 10, emotion: str | None = None, exclude: str | None = None
    ) -> list[Hit]:
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
            # the filtered graph walk came up short: exact search over the subset answers
            if int((pos[0] >= 0).sum()) < want:
                sims, pos = exact_search(self.vectors_at(allowed), q, want)
                pos = allowed[pos]
        return self.hits(sims[0], pos[0])

    def hits(self, sims: np.ndarray, positions: np.ndarray) -> list[Hit]:
        rows = self.mapping.take(pa.array([int(p) for p in positions if p >= 0], pa.int64())).to_pylist()
        found = [s for s, p in zip(sims, positions, strict=True) if p >= 0]
        return [
            Hit(
                rank=i + 1,
                image_id=r["image_id"],
                filepath=r["filepath"],
                emotion=r["emotion"],
                split=r["split"],
                load_date=iso(r["load_date"]),
                distance=float(1.0 - s),
            )
            for i, (r, s) in enumerate(zip(rows, found, strict=True))
        ]


@contextlib.contextmanager
def single_thread():
    """FAISS on one OpenMP thread for the block (a single query gains nothing from more)."""
    import faiss  # deferred: heavy

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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
