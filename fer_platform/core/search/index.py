"""A search index: its three files in the lake, reading them back (retrying while a rebuild replaces
them), and answering queries with FAISS.

The index is exact (flat inner product) below a size threshold and HNSW above it (see
``build``); vectors are L2-normalised, so inner product is cosine similarity and the distance
reported is the cosine distance ``1 - cos``. An HNSW index is made of segments, graphs of at most
``build.SEGMENT_SIZE`` vectors over consecutive positions, each searched and the answers merged: a
graph's insert cost grows with the graph, a segment's does not (issue 15). An index is three files
under ``index/<model>/``: ``index.faiss`` (the FAISS index of each segment, one after another),
``ids.parquet`` (row i of the index is row i of this table: image_id, id, filepath, emotion, split,
load_date) and ``meta.json`` (kind, model, size, the segments' sizes, the embedder settings that made
the vectors, the HNSW ``ef_search`` tuned at build time to reach the recall target, the digests of the
other two).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core.images import sha256
from fer_platform.core.layout import INDEX
from fer_platform.core.search.hits import Hit, iso
from fer_platform.core.storage import LakeFiles
from fer_platform.core.vecmath import exact_search, normalise

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
MAPPING_COLUMNS = ("image_id", "id", "filepath", "emotion", "split", "load_date")


class IndexUnavailable(Exception):
    """No usable index (one line saying which and what to do)."""


class IndexChanging(IndexUnavailable):
    """The index's files were read while a rebuild replaced them."""


def _write_parts(parts: list, f: BinaryIO) -> str:
    """Write the FAISS index of each segment, one after another, straight into ``f`` (never a copy of the
    index in memory: ``serialize_index`` makes a numpy copy, and its ``tobytes`` another); their sha256."""
    import faiss  # deferred: heavy

    digest = hashlib.sha256()

    def write(chunk: bytes) -> int:
        digest.update(chunk)
        f.write(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(write)
    for part in parts:
        faiss.write_index(part, writer)
    del writer  # flushes
    return digest.hexdigest()


def segment_count(meta: dict) -> int:
    """How many FAISS indexes the index file holds (files written before segments: one)."""
    return max(1, len(meta.get("segments") or [0]))


def _check_digests(meta: dict, found: dict[str, str]) -> None:
    """IndexChanging unless each file's sha256 in ``found`` is the one meta.json names."""
    mixed = [n for n, d in (meta.get("digests") or {}).items() if found.get(n) != d]
    if mixed:
        raise IndexChanging(
            f"the index files do not belong together ({', '.join(mixed)} changed): it is being rebuilt; "
            "try again in a moment"
        )


def _read_streamed(
    stream: BinaryIO, hashing: bool = True, count: int = 1
) -> tuple[list | None, str | None, int]:
    """(the ``count`` FAISS indexes read from ``stream`` piece by piece, one after another, or None if FAISS
    cannot read them; the sha256 of the file's bytes, None unless ``hashing``; their size). The file's bytes
    are never whole in memory beside the index made of them: at FER size that copy was 80 MiB more at the
    index check's peak."""
    import faiss  # deferred: heavy

    digest, size = (hashlib.sha256() if hashing else None), 0

    def read(n: int) -> bytes:
        nonlocal size
        data = stream.read(n)
        if digest is not None:
            digest.update(data)
        size += len(data)
        return data

    reader = faiss.PyCallbackIOReader(read)  # FAISS reads exactly an index's bytes: the next one follows
    try:
        parts = [faiss.read_index(reader) for _ in range(count)]
    except (RuntimeError, MemoryError):  # not a FAISS index, cut short, or two builds' bytes (a length
        parts = None  # field of one read as the other's: a huge allocation refused); the digest tells which
    while read(1 << 20):  # the rest, if any, belongs to the digest and the size
        pass
    return parts, (digest.hexdigest() if digest is not None else None), size


def index_dir(model: str) -> str:
    """Lake folder of the index of ``model``."""
    return f"{INDEX}/{model}"


@dataclass
class SearchIndex:
    parts: list  # one faiss.Index per segment, over consecutive positions
    mapping: pa.Table
    meta: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)  # a build's phases (build.build_index), for benchmarks

    @property
    def size(self) -> int:
        return sum(int(p.ntotal) for p in self.parts)

    @property
    def starts(self) -> np.ndarray:
        """The first position of each segment, and the size last."""
        return np.cumsum([0] + [int(p.ntotal) for p in self.parts])

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    # ---- files
    def file_writers(self) -> dict[str, bytes | Callable[[BinaryIO], None]]:
        """The index's three files, to be written in this order (``storage.LakeFiles``): the FAISS file
        streamed into the file it is written to, the id mapping's bytes, and meta.json with the digests of
        the other two (so a reader never pairs files of two builds: a rebuild replaces them one by one, and
        object stores have no multi-file rename), made once they are written."""
        buf = io.BytesIO()
        pq.write_table(self.mapping, buf, compression="zstd")
        ids = buf.getvalue()
        digests = {IDS_FILE: sha256(ids)}

        def index_file(f: BinaryIO) -> None:
            digests[INDEX_FILE] = _write_parts(self.parts, f)

        def meta_file(f: BinaryIO) -> None:
            if INDEX_FILE not in digests:
                raise RuntimeError("meta.json is written after the index file")
            meta = {**self.meta, "digests": dict(digests)}
            f.write(json.dumps(meta, indent=2, sort_keys=True, default=str).encode())

        return {INDEX_FILE: index_file, IDS_FILE: ids, META_FILE: meta_file}

    def to_files(self) -> dict[str, bytes]:
        """The three files' bytes (tests, benchmarks: the asset streams them, ``file_writers``)."""
        files, out = LakeFiles(self.model, self.file_writers()), {}
        for name in files.files:  # in order: meta.json is made from the others' digests
            buf = io.BytesIO()
            files.write(name, buf)
            out[name] = buf.getvalue()
        return out

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "SearchIndex":
        """The index of its three files in memory, checked against the digests meta.json names (a lake's
        index is read by ``load_index``, its FAISS file streamed)."""
        missing = [f for f in (INDEX_FILE, IDS_FILE, META_FILE) if f not in files]
        if missing:
            raise IndexUnavailable(f"index files missing: {', '.join(missing)}")
        meta = json.loads(files[META_FILE])
        _check_digests(meta, {n: sha256(files.get(n, b"")) for n in meta.get("digests") or {}})
        parts, _, _ = _read_streamed(io.BytesIO(files[INDEX_FILE]), False, segment_count(meta))
        if parts is None:
            raise IndexUnavailable("the index file cannot be read by FAISS")
        return cls._of(parts, files[IDS_FILE], meta)

    @classmethod
    def _of(cls, parts: list, ids: bytes, meta: dict) -> "SearchIndex":
        # one thread: arrow pool threads started after FAISS loads can abort the process at exit
        # (apache/arrow#34314); the mapping is small
        mapping = pq.read_table(io.BytesIO(ids), use_threads=False)
        sizes = [int(p.ntotal) for p in parts]
        if meta.get("segments") and list(meta["segments"]) != sizes:
            raise IndexUnavailable(
                f"index segments hold {sizes} vectors, its meta.json says {meta['segments']}"
            )
        if mapping.num_rows != sum(sizes):
            raise IndexUnavailable(
                f"index holds {sum(sizes)} vectors but its id mapping {mapping.num_rows} rows"
            )
        out = cls(parts, mapping, meta)
        out.set_ef(meta.get("ef_search"))
        return out

    # ---- queries
    def set_ef(self, ef: int | None) -> None:
        if ef and self.kind == "hnsw":
            for part in self.parts:
                part.hnsw.efSearch = int(ef)

    def stored(self) -> list[np.ndarray]:
        """Each segment's vectors where FAISS keeps them (numpy views, no copy): valid while the index lives
        and nothing is added to it."""
        import faiss  # deferred: heavy

        out = []
        for part in self.parts:
            flat = faiss.downcast_index(part.storage if hasattr(part, "storage") else part)
            out.append(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d))
        return out

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at ``positions`` (no copy of the whole index)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0].reconstruct_batch(positions)
        starts = self.starts
        out = np.empty((len(positions), self.parts[0].d), np.float32)
        segment = np.searchsorted(starts, positions, side="right") - 1
        for s in np.unique(segment):
            at = segment == s
            out[at] = self.parts[s].reconstruct_batch(positions[at] - starts[s])
        return out

    def _search(
        self, queries: np.ndarray, k: int, params: Callable[[int], Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) of the ``k`` nearest stored vectors of each query, over every segment
        (``params(s)``: segment s's search parameters; None skips the segment); -1 where fewer are found.
        One query searches the segments side by side (FAISS releases the GIL); a batch, each segment on
        every thread in turn."""
        starts = self.starts
        jobs = [(s, part, params(s) if params is not None else None) for s, part in enumerate(self.parts)]
        jobs = [j for j in jobs if params is None or j[2] is not None]  # None: the segment holds none

        def one(job) -> tuple[np.ndarray, np.ndarray]:
            s, part, p = job
            d, i = part.search(queries, min(k, int(part.ntotal)) or 1, **({"params": p} if p else {}))
            return d, np.where(i >= 0, i + starts[s], -1)

        side_by_side = len(queries) == 1 and len(jobs) > 1
        answers = list(_segment_pool().map(one, jobs) if side_by_side else map(one, jobs))
        sims, found = [a[0] for a in answers], [a[1] for a in answers]
        if len(found) == 1 and found[0].shape[1] == k:
            return sims[0], found[0]
        if not found:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        d, i = np.concatenate(sims, 1), np.concatenate(found, 1)
        d = np.where(i >= 0, d, -np.inf).astype(np.float32)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]  # segments in position order: ties keep it
        d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        if d.shape[1] < k:  # fewer stored (or selectable) than k
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        return d, i

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

    @functools.cached_property
    def _by_emotion(self) -> dict[str, np.ndarray]:
        """The positions of each emotion's images (computed once: a filtered query reads them)."""
        found: dict[str, list[int]] = {}
        for i, emotion in enumerate(self.emotions):
            found.setdefault(emotion, []).append(i)
        return {emotion: np.asarray(pos, np.int64) for emotion, pos in found.items()}

    @functools.cached_property
    def _selectors(self) -> dict[str, list]:
        return {}

    def _selector(self, emotion: str, segment: int):
        """A FAISS selector of the images of ``emotion`` in ``segment``, by their positions there (made once
        per emotion, read by every query); None when the segment holds none."""
        import faiss  # deferred: heavy

        if emotion not in self._selectors:
            starts, pos = self.starts, self.positions_of(emotion)
            self._selectors[emotion] = [
                faiss.IDSelectorBatch(local) if len(local := pos[(pos >= a) & (pos < b)] - a) else None
                for a, b in zip(starts[:-1], starts[1:], strict=True)
            ]
        return self._selectors[emotion][segment]

    @property
    def digest(self) -> str:
        """What identifies this build: the digests of its files (the same files give the same digest)."""
        return build_digest(self.meta)

    def position_of(self, image_id: str) -> int | None:
        return self._positions.get(image_id)

    def positions_of(self, emotion: str) -> np.ndarray:
        """Positions of the images of ``emotion`` (empty if none)."""
        return self._by_emotion.get(emotion, np.empty(0, np.int64))

    def row(self, position: int) -> dict[str, Any]:
        """The id mapping's row at ``position`` (image_id, id, filepath, emotion, split, load_date)."""
        out = self.mapping.slice(position, 1).to_pylist()[0]
        out["load_date"] = iso(out.get("load_date"))
        return out

    def rows(self, split: str | None = None, emotion: str | None = None, limit: int = 50) -> list[dict]:
        """Up to ``limit`` rows of ``split`` (and ``emotion``), taken in turn from each emotion (by file
        path), so that a short list still shows every emotion."""
        splits = np.asarray(self.mapping["split"].to_pylist(), dtype=object)
        paths = np.asarray(self.mapping["filepath"].to_pylist(), dtype=object)
        per: list[list[int]] = []
        for e in [emotion] if emotion else sorted(self._by_emotion):
            pos = self.positions_of(e)
            if split:
                pos = pos[splits[pos] == split]
            per.append([int(p) for p in pos[np.argsort(paths[pos], kind="stable")]])
        picked = [p for turn in itertools.zip_longest(*per) for p in turn if p is not None][:limit]
        return [self.row(p) for p in picked]

    def raw_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) of the ``k`` nearest stored vectors of each query."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) > 1:
            return self._search(queries, min(k, self.size))
        with single_thread():  # one query: threads only add synchronisation (measured by bench/)
            return self._search(queries, min(k, self.size))

    def search(
        self, query: np.ndarray, k: int = 10, emotion: str | None = None, exclude: str | None = None
    ) -> list[Hit]:
        """The ``k`` nearest images of one query vector, closest first.

        ``emotion`` keeps only that emotion (FAISS filters during the search; if the
        graph search finds fewer than ``k`` that exist, exact search over the subset
        answers instead). ``exclude`` drops one image_id (the query itself): the search asks for
        one more and drops it, so no filter over every other id is built per query.
        """
        import faiss  # deferred: heavy

        q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
        allowed = self.positions_of(emotion) if emotion else None
        skip = self.position_of(exclude) if exclude is not None else None
        if skip is not None and emotion and self.emotions[skip] != emotion:
            skip = None  # filtered out anyway
        available = self.size if allowed is None else len(allowed)
        want = min(k, available - (skip is not None))
        if want <= 0:
            return []
        ask = want + (skip is not None)
        if allowed is None and skip is None:
            sims, pos = self.raw_search(q, want)
        else:
            # the filter (emotion) is the selector; the query itself is one more answer, dropped below
            def params(segment: int):
                kw = {}
                if emotion:
                    kw["sel"] = self._selector(emotion, segment)
                    if kw["sel"] is None:
                        return None  # the segment holds none of the emotion
                if self.kind == "hnsw":  # the same walk whether the query itself is among the answers or not
                    kw["efSearch"] = max(int(self.meta.get("ef_search") or 64), 4 * ask)
                    return faiss.SearchParametersHNSW(**kw)
                return faiss.SearchParameters(**kw)

            with single_thread():
                sims, pos = self._search(q, ask, params)
            sims, pos = _drop(sims, pos, skip, want)
            # the filtered graph walk came up short: exact search over the subset answers
            if int((pos[0] >= 0).sum()) < want:
                subset = np.arange(self.size) if allowed is None else allowed
                sims, pos = exact_search(self.vectors_at(subset), q, ask)
                sims, pos = _drop(sims, subset[pos], skip, want)
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


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _segment_pool() -> ThreadPoolExecutor:
    """Threads that search one query's segments side by side (one per core, at most 8); made again in a
    forked child, where the parent's threads do not exist."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, min(8, os.cpu_count() or 1))
            _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="fer-index-segments"))
        return _POOL[1]


def _drop(sims: np.ndarray, pos: np.ndarray, skip: int | None, want: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``want`` answers of one query (1 x n arrays) other than position ``skip`` (none: -1)."""
    keep = pos[0] >= 0
    if skip is not None:
        keep &= pos[0] != skip
    return sims[:, keep][:, :want], pos[:, keep][:, :want]


def build_digest(meta: dict) -> str:
    """The digest of an index build, from its meta.json (the digests of its other files)."""
    return sha256(json.dumps(meta.get("digests") or {}, sort_keys=True).encode())


def read_digest(lake, model: str) -> str | None:
    """The digest of the build in the lake now, from its meta.json alone (a few hundred bytes); None if
    there is none or it cannot be read whole."""
    try:
        return build_digest(json.loads(lake.read_bytes(f"{index_dir(model)}/{META_FILE}")))
    except (FileNotFoundError, ValueError):
        return None


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


def load_index(lake, model: str, tries: int = 3, stamps: Path | None = None) -> SearchIndex:
    """The index of ``model`` from the lake (a core.storage.Storage); read again if a rebuild was
    replacing its files meanwhile.

    ``stamps``: a local folder of verified stamps (a short-lived reader such as the CLI passes one). The
    digests of a build's files are checked once per version of those files (their sizes and modification
    times, and meta.json's bytes, unchanged before and after the read); a later read of the same version
    skips the hashing. A rebuild changes them, so it is checked again."""
    folder = index_dir(model)
    stamp = _stamp_path(stamps, lake.uri(folder)) if stamps is not None else None
    must_hash, changing = stamps is None, 0
    while True:  # each pass returns, raises, or counts a rebuild seen (at most tries); one more if unhashed
        before = _versions(lake, folder) if stamps is not None else None
        known = _read_stamp(stamp) if stamp is not None else None
        hashing = must_hash or known is None or known.get("files") != before
        try:
            meta_bytes = lake.read_bytes(f"{folder}/{META_FILE}")
            meta = json.loads(meta_bytes)
            with lake.open_read(f"{folder}/{INDEX_FILE}") as stream:  # streamed: see _read_streamed
                index, index_digest, index_size = _read_streamed(stream, hashing, segment_count(meta))
            ids = lake.read_bytes(f"{folder}/{IDS_FILE}")
        except FileNotFoundError:
            raise IndexUnavailable(
                f"no search index for model {model} at {lake.uri(folder)}: materialise search_index "
                "(fer-platform demo, or the UI)"
            ) from None
        sizes = {META_FILE: len(meta_bytes), INDEX_FILE: index_size, IDS_FILE: len(ids)}
        record = None
        if before is not None and before == _versions(lake, folder):
            sizes_match = all(sizes[n] == before[n][0] for n in sizes)
            record = {"meta": sha256(meta_bytes), "files": before} if sizes_match else None
        verified = record is not None and known == record
        if not verified and not hashing:  # the stamped version changed under the read: read it again, hashed
            must_hash = True
            time.sleep(0.5)  # a rebuild is replacing the files
            continue
        try:
            if not verified:
                _check_digests(meta, {INDEX_FILE: index_digest, IDS_FILE: sha256(ids)})
            if index is None:
                raise IndexUnavailable(f"the index at {lake.uri(folder)} cannot be read by FAISS")
            out = SearchIndex._of(index, ids, meta)
        except IndexChanging:
            changing += 1
            if changing >= tries:
                raise
            time.sleep(0.5 * changing)
            continue
        if record is not None and not verified:
            _write_stamp(stamp, record)
        return out


def _versions(lake, folder: str) -> dict[str, list[int]] | None:
    """[size, mtime in us] of each index file (None if one is missing)."""
    found, missing = lake.stat_many([f"{folder}/{n}" for n in (META_FILE, INDEX_FILE, IDS_FILE)])
    if missing:
        return None
    return {e.key.rsplit("/", 1)[-1]: [int(e.size), int(e.modified_us)] for e in found}


def _stamp_path(stamps: Path, uri: str) -> Path:
    return stamps / f"{sha256(uri.encode())[:24]}.json"


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, record: dict) -> None:
    """Best effort: without a stamp the next read hashes again, nothing worse."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


_WARM: dict[tuple[str, str], SearchIndex] = {}
WARM_KEEP = 4  # indexes a process keeps in memory (one per lake and model it queried)


def warm_index(lake, model: str, stamps: Path | None = None) -> SearchIndex:
    """The index of ``model`` kept in memory by this process: a query after the first reads meta.json
    alone (a few hundred bytes) to see that the build in the lake is still the one in memory, and reads the
    other files only when it changed (a rebuilt index is picked up by the next query)."""
    key = (lake.uri(index_dir(model)), model)
    held = _WARM.get(key)
    if held is not None and read_digest(lake, model) == held.digest:
        return held
    index = load_index(lake, model, stamps=stamps)
    _WARM.pop(key, None)
    while len(_WARM) >= WARM_KEEP:
        _WARM.pop(next(iter(_WARM)))
    _WARM[key] = index
    return index
