"""Building a search index over the silver vectors, tuning HNSW to a recall target, and measuring recall.

Exact (flat inner product) below ``HNSW_THRESHOLD`` vectors, where a query is fast enough
anyway and recall is 1; HNSW at or above it, with ``ef_search`` tuned at build time on queries
the graph does not hold, to the smallest value that reaches ``RECALL_TARGET``. Recall is
always measured against exact search (``vecmath.exact_search``), never against FAISS itself.

An HNSW index is built in segments of at most ``SEGMENT_SIZE`` vectors (consecutive image_ids, as
even as the count allows), each its own graph; a query searches each and merges the answers
(``index.SearchIndex``). Inserting into one graph costs more the bigger it is (log N, and a graph
that outgrows the caches: +24 % per image per doubling measured by ``bench/bench_index_build.py``,
1.61x per image from 35,887 to 250,000 vectors in ``bench/bench_scale.py``): a segment's does not grow.
A query pays one graph walk per segment, but each walk is in a smaller graph, where the recall target
needs a lower ``ef_search``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_platform.core.pg.schema import EMBEDDING_DIM
from fer_platform.core.search.index import MAPPING_COLUMNS, SearchIndex
from fer_platform.core.silver_scan import SilverScan, SilverVectors, as_silver_vectors, no_rows
from fer_platform.core.vecmath import exact_search, exact_search_parts, merge_top, recall_of

HNSW_THRESHOLD = 20_000  # vectors; at or above it the index is HNSW
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
RECALL_TARGET = 0.99
TUNE_QUERIES = 500
SEGMENT_SIZE = 50_000  # vectors per HNSW segment at most: FER2013 (35,887) is one, 7x FER five of 50,000
ADD_BATCH = 8192  # vectors added to the index at a time (16 MiB of 512-d float32)
EF_CANDIDATES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def build_index(
    silver: pa.Table | SilverVectors | SilverScan,
    model: str,
    embedder: dict | None = None,
    hnsw_threshold: int = HNSW_THRESHOLD,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    target_recall: float = RECALL_TARGET,
    seed: int = 0,
    segment_size: int = SEGMENT_SIZE,
    tries: int = 3,
) -> SearchIndex:
    """An index over ``silver`` rows of ``model`` (exact below ``hnsw_threshold`` vectors, HNSW above, in
    segments of at most ``segment_size``): a silver table, silver in memory, or silver read from the lake
    (``silver_scan.SilverScan`` with ``MAPPING_COLUMNS``).

    The vectors are held once: silver is read twice, its columns first (the index's order, by image_id),
    then its vectors, each put straight into its place in the batch that adds it to the index, and every
    batch is freed once added. The tuning searches the index's own vectors. Silver that changes between
    the two reads (a partition rewritten meanwhile) is read again, up to ``tries`` times."""
    import faiss  # deferred: heavy

    source = silver if isinstance(silver, SilverScan) else as_silver_vectors(silver)
    for attempt in range(tries):
        columns = _columns_of(source)
        plan = _plan(columns, hnsw_threshold, segment_size, seed)
        try:
            chunks = _gather(source, columns, plan)
            break
        except SilverChanged:
            if attempt == tries - 1:
                raise
    held, kind, dim = plan.held, plan.kind, _dim(source)
    if kind == "hnsw":
        parts = [faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT) for _ in range(plan.segments)]
        for part in parts:
            part.hnsw.efConstruction = ef_construction
    else:
        parts = [faiss.IndexFlatIP(dim)]
    started = time.perf_counter()
    for i, (segment, _a, _b) in enumerate(plan.ranges):
        if held and i == len(plan.ranges) - 1:
            break  # the tuning sample: added after the tuning
        parts[segment].add(chunks[i])
        chunks[i] = None  # in the index now: freed, so that the vectors are in memory once
    seconds = {"add": time.perf_counter() - started}
    table = columns.take(pa.array(plan.order, pa.int64()))
    mapping = pa.table({c: _column(table, c) for c in MAPPING_COLUMNS})
    del table, columns
    meta = {
        "kind": kind,
        "model": model,
        "dim": dim,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "embedder": embedder or {},
        "faiss": faiss.__version__,
    }
    out = SearchIndex(parts, mapping, meta)
    if kind == "hnsw":
        queries = chunks[-1]
        meta.update(hnsw_m=m, ef_construction=ef_construction, tuning_queries=held, segment_size=segment_size)
        started = time.perf_counter()
        meta["ef_search"], meta["tuned_recall"] = tune_ef(out, queries, target_recall)
        seconds["tune"] = time.perf_counter() - started
        out.set_ef(meta["ef_search"])
        parts[-1].add(queries)
    meta["size"] = out.size
    meta["segments"] = [int(p.ntotal) for p in parts]
    out.seconds = {k: round(v, 3) for k, v in seconds.items()}  # where the build's time went (benchmarks)
    return out


class SilverChanged(RuntimeError):
    """Silver's rows differ between the build's two reads of it."""


@dataclass
class _Plan:
    """Where each silver row goes: ``order[p]`` is the silver row at index position p; ``ranges`` the
    (segment, first, end) positions of each batch added to the index, in order, the tuning sample last."""

    n: int
    kind: str
    held: int
    segments: int
    order: np.ndarray
    ranges: list[tuple[int, int, int]]


def _plan(columns: pa.Table, hnsw_threshold: int, segment_size: int, seed: int) -> _Plan:
    n = columns.num_rows
    order = pc.sort_indices(columns, [("image_id", "ascending")]).to_numpy()
    held, count, kind = 0, 1, "flat"
    if n >= hnsw_threshold:
        kind = "hnsw"
        # ef_search is tuned on queries the graph does not hold yet (a stored vector finds its own
        # neighbourhood too easily): a sample is moved to the end, added (to the last segment) after the
        # tuning
        held = min(TUNE_QUERIES, max(1, n // 20))
        picks = np.random.default_rng(seed).choice(n, size=held, replace=False)
        order = order[np.concatenate([np.setdiff1d(np.arange(n), picks), np.sort(picks)])]
        # a segment holds at least twice the tuning sample (only a segment_size below that makes segments
        # bigger than it: never empty ones)
        count = max(1, min(math.ceil(n / max(1, segment_size)), n // (2 * held)))
    # segment s holds positions bounds[s]..bounds[s+1]-1, n / segments each, the last one the tuning
    # sample too (after the tuning): none above segment_size; each added ADD_BATCH vectors at a time
    bounds = [min(round(n * s / count), n - held) for s in range(count)] + [n - held]
    ranges = [
        (s, at, min(at + ADD_BATCH, end))
        for s, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False))
        for at in range(start, end, ADD_BATCH)
    ]
    if held:
        ranges.append((count - 1, n - held, n))
    return _Plan(n, kind, held, count, order, ranges)


def _dim(source: SilverVectors | SilverScan) -> int:
    return source.vectors.shape[1] if isinstance(source, SilverVectors) else EMBEDDING_DIM


def _columns_of(source: SilverVectors | SilverScan) -> pa.Table:
    """Silver's columns without its vectors (the first read)."""
    if isinstance(source, SilverVectors):
        return source.columns
    batches = [pa.Table.from_batches([batch]) for _none, batch in source.batches(vectors=False)]
    return pa.concat_tables(batches) if batches else no_rows(source.columns)


def _ids(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _gather(source: SilverVectors | SilverScan, columns: pa.Table, plan: _Plan) -> list[np.ndarray]:
    """Silver's vectors, read once more, each put in its index position's batch (``plan.ranges``); raises
    SilverChanged when the rows are not those of ``columns``, in the same order."""
    dim = _dim(source)
    position = np.empty(plan.n, np.int64)
    position[plan.order] = np.arange(plan.n)  # silver row -> index position
    firsts = np.array([a for _s, a, _b in plan.ranges], np.int64)
    chunks = [np.empty((b - a, dim), np.float32) for _s, a, b in plan.ranges]
    ids = columns.column("image_id")
    row = 0
    for vectors, batch in source.batches():
        m = len(vectors)
        if row + m > plan.n or not _ids(batch.column("image_id")).equals(_ids(ids.slice(row, m))):
            raise SilverChanged("silver's rows changed while the index was built")
        at = position[row : row + m]
        which = np.searchsorted(firsts, at, side="right") - 1
        for c in np.unique(which):
            mine = which == c
            chunks[c][at[mine] - firsts[c]] = vectors[mine]
        row += m
    if row != plan.n:
        raise SilverChanged("silver's rows changed while the index was built")
    return chunks


def _column(table: pa.Table, name: str) -> pa.Array:
    """A column of the id mapping (nulls where silver lacks it; load dates as dates, as in silver, gold and
    bronze: one type for load_date in every file of the lake)."""
    kind = pa.date32() if name == "load_date" else pa.string()
    col = table[name] if name in table.column_names else pa.nulls(table.num_rows, kind)
    if name == "load_date" and col.type != pa.date32():
        col = pc.cast(col, pa.date32())
    return col


def tune_ef(index: SearchIndex, queries: np.ndarray, target: float, k: int = 10):
    """The smallest ``ef_search`` whose recall@k of ``queries`` (vectors the index does not hold) against
    exact search over what the index holds (its own vectors, read where FAISS keeps them) reaches
    ``target`` plus a small margin."""
    kk = min(k, index.size)
    _, truth = exact_search_parts(index.stored(), queries, kk, block=256)  # 256 x 4096 scores at a time
    recall = 0.0
    for ef in EF_CANDIDATES:
        index.set_ef(ef)
        _, got = index.raw_search(queries, kk)
        recall = recall_of(got, truth)
        if recall >= min(1.0, target + 0.005):
            return ef, recall
    return EF_CANDIDATES[-1], recall


def index_recall(
    index: SearchIndex, silver: pa.Table | SilverVectors, k: int = 10, sample: int = 200, seed: int = 1
) -> dict:
    """recall@k of ``index`` against exact search over ``silver``, compared by image_id: what the
    blocking check measures. Queries are a sample of silver vectors, each left out of its own
    answer (see ``vecmath.leave_one_out``; here by image_id, as the index's positions are not silver's)."""
    if silver.num_rows < 2:
        ok = index.size == silver.num_rows
        recall = 1.0 if ok else 0.0
        return {"recall": recall, "queries": 0, "k": k, "silver": silver.num_rows, "indexed": index.size}
    sv = as_silver_vectors(silver)
    vectors, ids = sv.vectors, sv.strings("image_id")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    kk = min(k, len(vectors) - 1)
    _, truth = exact_search(vectors, vectors[picks], kk + 1, block=256)
    return _recall_of_ids(index, ids, picks, vectors[picks], truth, kk, len(vectors))


def streamed_recall(index: SearchIndex, scan, k: int = 10, sample: int = 200, seed: int = 1) -> dict:
    """``index_recall`` over silver read twice as a stream, never whole: ``scan()`` yields (unit vectors,
    batch with ``image_id``) in the same order each time (``silver_scan.iter_silver_vectors``). The first
    pass keeps the ids and the sampled queries' vectors (the same sample as ``index_recall``'s), the second
    searches them exactly, batch by batch."""
    ids: list[str] = []
    for _vectors, batch in scan():
        ids.extend(batch.column("image_id").to_pylist())
    n = len(ids)
    if n < 2:
        recall = 1.0 if index.size == n else 0.0
        return {"recall": recall, "queries": 0, "k": k, "silver": n, "indexed": index.size}
    picks = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    kk = min(k, n - 1)
    by_value = np.argsort(picks)
    wanted = picks[by_value]
    queries = np.empty((len(picks), EMBEDDING_DIM), np.float32)
    best_s = np.full((len(picks), kk + 1), -np.inf, np.float32)
    best_i = np.full((len(picks), kk + 1), -1, np.int64)
    at = 0
    for vectors, _batch in scan():
        inside = wanted[(wanted >= at) & (wanted < at + len(vectors))]
        queries[by_value[np.searchsorted(wanted, inside)]] = vectors[inside - at]
        at += len(vectors)
    at = 0
    for vectors, _batch in scan():
        s, i = exact_search(vectors, queries, kk + 1, block=256)
        best_s, best_i = merge_top(best_s, best_i, s, i + at, kk + 1)
        at += len(vectors)
    return _recall_of_ids(index, np.asarray(ids, dtype=object), picks, queries, best_i, kk, n)


def _recall_of_ids(index, ids, picks, queries, truth, kk: int, n: int) -> dict:
    truth_ids = [[i for i in ids[row] if i != ids[own]][:kk] for row, own in zip(truth, picks, strict=True)]
    _, got = index.raw_search(queries, kk + 1)
    index_ids = index.ids
    got_ids = [
        [i for i in index_ids[row[row >= 0]] if i != ids[own]][:kk]
        for row, own in zip(got, picks, strict=True)
    ]
    hits = sum(len(set(g) & set(t)) for g, t in zip(got_ids, truth_ids, strict=True))
    return {
        "recall": hits / (len(picks) * kk),
        "queries": len(picks),
        "k": kk,
        "silver": n,
        "indexed": index.size,
    }
