"""Vector maths shared by search, gold and training: unit length, cosine, exact nearest neighbours, recall.

Every vector the platform compares is L2-normalised first, so an inner product is a cosine
similarity and the nearest neighbours by inner product are the nearest by cosine. Only numpy
here: exact search is the reference the FAISS and pgvector indexes are measured against, so it
must not depend on either.
"""

from __future__ import annotations

import numpy as np


class ZeroVectors(ValueError):
    """Vectors of length zero where every vector must have a direction (one line: how many)."""


ROW_BLOCK = 1024  # rows per block where a whole-matrix temporary would double what is held


def normalise(vectors: np.ndarray, strict: bool = False) -> np.ndarray:
    """Each row scaled to unit length, as contiguous float32 (what FAISS takes).

    A zero row has no direction: it stays zero (a zero query matches nothing better than
    anything else), or, with ``strict``, ``ZeroVectors`` is raised (silver refuses to store one).
    Works ``ROW_BLOCK`` rows at a time into the one output array: the squares and the float32 copy of
    the input are a block's, not the matrix's (a partition of 63k vectors held 3x its size before).
    """
    vectors = np.asarray(vectors)
    out = np.empty(vectors.shape, np.float32)
    zeros = 0
    for at in range(0, len(vectors), ROW_BLOCK):
        block = vectors[at : at + ROW_BLOCK]
        norms = np.linalg.norm(block, axis=1, keepdims=True)  # per row: the same values as whole
        zero = norms == 0
        zeros += int(zero.sum())
        norms[zero] = 1.0
        np.divide(block, norms, out=out[at : at + ROW_BLOCK], casting="unsafe")
    if strict and zeros:
        raise ZeroVectors(f"{zeros} zero vector(s) cannot be normalised")
    return out


def unit_norm_errors(vectors: np.ndarray) -> np.ndarray:
    """| ||v|| - 1 | of each row, in float64, a block of rows at a time."""
    out = np.empty(len(vectors), np.float64)
    for at in range(0, len(vectors), ROW_BLOCK):
        block = vectors[at : at + ROW_BLOCK].astype(np.float64)
        out[at : at + len(block)] = np.abs(np.linalg.norm(block, axis=1) - 1.0)
    return out


def all_finite(vectors: np.ndarray) -> bool:
    """No NaN or inf, checked a block of rows at a time (no matrix-sized boolean temporary)."""
    return all(np.isfinite(vectors[at : at + ROW_BLOCK]).all() for at in range(0, len(vectors), ROW_BLOCK))


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over distinct pairs of unit vectors: (|sum|^2 - n) / (n (n - 1)), in O(n)."""
    n = len(vectors)
    if n < 2:
        return None
    s = vectors.astype(np.float64).sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner product with numpy (independent of FAISS): (similarities, positions)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    n = len(vectors)
    k = min(k, n)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, n, block * 16):
        chunk = vectors[start : start + block * 16]
        for q0 in range(0, len(queries), block):
            s = queries[q0 : q0 + block] @ chunk.T
            kk = min(k, s.shape[1])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_s[q0 : q0 + block], best_i[q0 : q0 + block] = merge_top(
                best_s[q0 : q0 + block],
                best_i[q0 : q0 + block],
                np.take_along_axis(s, top, 1),
                top + start,
                k,
            )
    return best_s, best_i


def exact_search_parts(
    parts: list[np.ndarray], queries: np.ndarray, k: int, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """``exact_search`` over matrices that are one after another (an index's segments, read where they
    are): positions count across them."""
    k = min(k, sum(len(p) for p in parts))
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    at = 0
    for part in parts:
        if len(part):
            s, i = exact_search(part, queries, k, block)
            best_s, best_i = merge_top(best_s, best_i, s, i + at, k)
        at += len(part)
    return best_s, best_i


def merge_top(
    best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of two top lists of the same queries (similarities, positions), ties in order."""
    cand_s, cand_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)


def leave_one_out(positions: np.ndarray, selves: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` positions other than the query's own: a stored vector used as a
    query finds itself trivially, which would flatter recall; without it, it is a fair query."""
    out = np.full((len(positions), k), -1, dtype=np.int64)
    for i, (row, own) in enumerate(zip(positions, selves, strict=True)):
        others = row[row != own][:k]
        out[i, : len(others)] = others
    return out


def nearest_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` nearest other vectors of every vector (exact, self excluded)."""
    if len(vectors) < 2:
        return np.empty((len(vectors), 0), dtype=np.int64)
    kk = min(k + 1, len(vectors))
    _, pos = exact_search(vectors, vectors, kk, block=1024)
    return leave_one_out(pos, np.arange(len(vectors)), kk - 1)


def recall_of(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``got``."""
    hits = sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth, strict=True))
    return hits / max(1, truth.size)
