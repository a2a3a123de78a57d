"""The gold layer: summaries people look at, computed from every silver partition and the load log.

All functions take plain Arrow tables (silver rows of one model, or load-log rows) and
return Arrow tables; the vectors are L2-normalised, so a dot product is a cosine.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from fer_platform.core.layout import EMOTIONS
from fer_platform.core.vecmath import (
    exact_search,
    leave_one_out,
    mean_pairwise_cosine,
    nearest_neighbours,
    normalise,
)
from fer_platform.core.vectors import arrow_to_vectors

NEIGHBOURS = 10
DECIMALS = 4  # gold tables are read by people: 0.178, not 0.17799999999999996


def rounded(value: float | None, decimals: int = DECIMALS) -> float | None:
    """A figure of a gold table, rounded for people (None stays None)."""
    return None if value is None else round(float(value), decimals)


def vectors_and_labels(silver: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return normalise(arrow_to_vectors(silver["vector"])), np.asarray(
        silver["emotion"].to_pylist(), dtype=object
    )


def centroids(vectors: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Unit-length mean vector of each emotion present."""
    out = {}
    for e in EMOTIONS:
        mask = labels == e
        if mask.any():
            c = vectors[mask].mean(axis=0)
            out[e] = c / (np.linalg.norm(c) or 1.0)
    return out


def emotion_summary(silver: pa.Table) -> pa.Table:
    """Per emotion and split: images, share of all images, mean intra-class cosine, and the
    nearest other emotion by centroid cosine (centroids over all splits)."""
    vectors, labels = vectors_and_labels(silver)
    splits = np.asarray([s or "(none)" for s in silver["split"].to_pylist()], dtype=object)
    cents = centroids(vectors, labels)
    total = len(vectors)
    rows = []
    for e in EMOTIONS:
        nearest, nearest_cos = None, None
        for other, c in cents.items():
            if other != e and e in cents:
                cos = float(cents[e] @ c)
                if nearest_cos is None or cos > nearest_cos:
                    nearest, nearest_cos = other, cos
        for split in sorted(set(splits[labels == e])):
            mask = (labels == e) & (splits == split)
            rows.append(
                {
                    "emotion": e,
                    "split": split,
                    "images": int(mask.sum()),
                    "share_of_total": rounded(mask.sum() / total),
                    "mean_intra_cosine": rounded(mean_pairwise_cosine(vectors[mask])),
                    "nearest_emotion": nearest,
                    "nearest_centroid_cosine": rounded(nearest_cos),
                }
            )
    return pa.Table.from_pylist(rows, schema=EMOTION_SUMMARY_SCHEMA)


EMOTION_SUMMARY_SCHEMA = pa.schema(
    [
        ("emotion", pa.string()),
        ("split", pa.string()),
        ("images", pa.int64()),
        ("share_of_total", pa.float64()),
        ("mean_intra_cosine", pa.float64()),
        ("nearest_emotion", pa.string()),
        ("nearest_centroid_cosine", pa.float64()),
    ]
)


def centroid_similarity(silver: pa.Table) -> pa.Table:
    """The 7x7 cosine matrix of emotion centroids: one row per emotion, one column per emotion
    (null where an emotion has no images)."""
    vectors, labels = vectors_and_labels(silver)
    cents = centroids(vectors, labels)
    cols: dict[str, list] = {"emotion": list(EMOTIONS)}
    for other in EMOTIONS:
        cols[other] = [
            rounded(cents[e] @ cents[other]) if e in cents and other in cents else None for e in EMOTIONS
        ]
    return pa.table(
        {"emotion": pa.array(cols["emotion"])} | {e: pa.array(cols[e], pa.float64()) for e in EMOTIONS}
    )


def similarity_matrix(table: pa.Table) -> np.ndarray:
    """The matrix of a ``centroid_similarity`` table (NaN where null)."""
    return np.array([[np.nan if v is None else v for v in table[e].to_pylist()] for e in EMOTIONS]).T


def neighbour_agreement(silver: pa.Table, k: int = NEIGHBOURS) -> pa.Table:
    """For each emotion: the mean share of an image's ``k`` nearest neighbours (exact cosine,
    self excluded) that carry the same emotion, beside the chance level (n_e - 1) / (N - 1);
    plus an ``all`` row (chance = the image-weighted mean)."""
    vectors, labels = vectors_and_labels(silver)
    n = len(vectors)
    nn = nearest_neighbours(vectors, k)
    same = (labels[nn] == labels[:, None]).mean(axis=1) if nn.size else np.zeros(n)
    rows = []
    for e in EMOTIONS:
        mask = labels == e
        count = int(mask.sum())
        if not count:
            continue
        chance = (count - 1) / (n - 1) if n > 1 else 0.0
        agree = float(same[mask].mean())
        rows.append(
            {
                "emotion": e,
                "images": count,
                "k": nn.shape[1],
                "agreement": rounded(agree),
                "chance": rounded(chance),
                "lift": rounded(agree / chance) if chance else None,
            }
        )
    if n:
        counts = Counter(labels.tolist())
        chance = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)) if n > 1 else 0.0
        agree = float(same.mean())
        rows.append(
            {
                "emotion": "all",
                "images": n,
                "k": nn.shape[1],
                "agreement": rounded(agree),
                "chance": rounded(chance),
                "lift": rounded(agree / chance) if chance else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=AGREEMENT_SCHEMA)


def split_agreement(silver: pa.Table, split: str = "test", k: int = NEIGHBOURS) -> dict:
    """What a search for each image of ``split`` returns: the share of its ``k`` nearest other images
    (exact cosine over every image of ``silver``, any split, itself excluded) with its emotion, beside
    chance (for a query of emotion e: (n_e - 1) / (N - 1), averaged over the queries). The figure the
    demo prints: test images are never trained on, their neighbours are whatever the index holds."""
    vectors, labels = vectors_and_labels(silver)
    splits = np.asarray(silver["split"].to_pylist(), dtype=object)
    queries = np.flatnonzero(splits == split)
    n = len(vectors)
    out = {"split": split, "queries": int(len(queries)), "k": 0, "agreement": None, "chance": None}
    if not len(queries) or n < 2:
        return out
    kk = min(k + 1, n)
    _, pos = exact_search(vectors, vectors[queries], kk, block=1024)  # 1024 x N floats at a time
    nn = leave_one_out(pos, queries, kk - 1)
    same = (labels[nn] == labels[queries][:, None]).mean(axis=1)
    counts = Counter(labels.tolist())
    chance = np.mean([(counts[e] - 1) / (n - 1) for e in labels[queries]])
    return {**out, "k": int(nn.shape[1]), "agreement": rounded(same.mean()), "chance": rounded(chance)}


AGREEMENT_SCHEMA = pa.schema(
    [
        ("emotion", pa.string()),
        ("images", pa.int64()),
        ("k", pa.int64()),
        ("agreement", pa.float64()),
        ("chance", pa.float64()),
        ("lift", pa.float64()),
    ]
)


def reason_category(reason: str | None) -> str:
    """The kind of a quarantine reason, without the file-specific detail:
    ``wrong size 64x64 (expected 48x48)`` -> ``wrong size``."""
    if not reason:
        return "(no reason)"
    text = re.split(r"[:(]", reason, maxsplit=1)[0]
    text = re.sub(r"\s*'[^']*'|\s*\d+x\d+", "", text)
    return text.strip() or reason.strip()


def daily_loads(rows: list[dict]) -> pa.Table:
    """Per load_date from load-log rows (``load_date, status, reason, size``): files seen,
    loaded, duplicates, label conflicts, quarantined (and by reason), bytes seen and loaded."""
    days: dict = defaultdict(
        lambda: {
            "seen": 0,
            "loaded": 0,
            "duplicate": 0,
            "conflict": 0,
            "quarantined": 0,
            "bytes_seen": 0,
            "bytes_loaded": 0,
            "reasons": Counter(),
        }
    )
    for r in rows:
        d = days[r["load_date"]]
        d["seen"] += 1
        d[r["status"]] += 1
        d["bytes_seen"] += int(r["size"] or 0)
        if r["status"] == "loaded":
            d["bytes_loaded"] += int(r["size"] or 0)
        if r["status"] == "quarantined":
            d["reasons"][reason_category(r["reason"])] += 1
    out = []
    for day in sorted(days):
        d = days[day]
        out.append(
            {
                "load_date": day,
                "files_seen": d["seen"],
                "loaded": d["loaded"],
                "duplicates": d["duplicate"],
                "conflicts": d["conflict"],
                "quarantined": d["quarantined"],
                "quarantined_by_reason": [{"reason": k, "files": v} for k, v in sorted(d["reasons"].items())],
                "bytes_seen": d["bytes_seen"],
                "bytes_loaded": d["bytes_loaded"],
            }
        )
    return pa.Table.from_pylist(out, schema=DAILY_LOADS_SCHEMA)


DAILY_LOADS_SCHEMA = pa.schema(
    [
        ("load_date", pa.date32()),
        ("files_seen", pa.int64()),
        ("loaded", pa.int64()),
        ("duplicates", pa.int64()),
        ("conflicts", pa.int64()),
        ("quarantined", pa.int64()),
        ("quarantined_by_reason", pa.list_(pa.struct([("reason", pa.string()), ("files", pa.int64())]))),
        ("bytes_seen", pa.int64()),
        ("bytes_loaded", pa.int64()),
    ]
)


# ---- issue 14, duplicates: FER2013's own duplicates, one row per content held more than once ----
LABEL_CONFLICT, TRAIN_TEST_LEAKAGE, DUPLICATE = "label_conflict", "train_test_leakage", "duplicate"
DUPLICATE_KINDS = (LABEL_CONFLICT, TRAIN_TEST_LEAKAGE, DUPLICATE)
DUPLICATES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("kind", pa.string()),
        ("copies", pa.int64()),
        ("emotions", pa.list_(pa.string())),
        ("splits", pa.list_(pa.string())),
        ("kept", pa.string()),  # the loaded copy's lake path; null for a label conflict
        ("paths", pa.list_(pa.string())),  # landing paths of every copy
        ("lake_paths", pa.list_(pa.string())),  # lake copies (a demoted copy keeps its file under raw/)
        ("statuses", pa.list_(pa.string())),
    ]
)


def duplicates(rows: list[dict]) -> pa.Table:
    """One row per content with more than one valid copy in the load log (``rows``: sha256, path, emotion,
    split, status, lake_path of the loaded/duplicate/conflict rows): a ``label_conflict`` (filed under
    several emotions), ``train_test_leakage`` (one emotion, in train and test) or a plain ``duplicate``."""
    by_sha: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_sha[r["sha256"]].append(r)
    out = []
    for sha, copies in sorted(by_sha.items()):
        if len(copies) < 2:
            continue
        copies.sort(key=lambda r: r["path"])
        emotions = sorted({c["emotion"] for c in copies})
        splits = sorted({c["split"] or "" for c in copies})
        statuses = [c["status"] for c in copies]
        if len(emotions) > 1 or "conflict" in statuses:
            kind = LABEL_CONFLICT
        elif "train" in splits and "test" in splits:
            kind = TRAIN_TEST_LEAKAGE
        else:
            kind = DUPLICATE
        out.append(
            {
                "image_id": sha,
                "kind": kind,
                "copies": len(copies),
                "emotions": emotions,
                "splits": splits,
                "kept": next((c["lake_path"] for c in copies if c["status"] == "loaded"), None),
                "paths": [c["path"] for c in copies],
                "lake_paths": [c["lake_path"] for c in copies if c["lake_path"]],
                "statuses": statuses,
            }
        )
    out.sort(key=lambda r: (DUPLICATE_KINDS.index(r["kind"]), r["image_id"]))
    return pa.Table.from_pylist(out, schema=DUPLICATES_SCHEMA)


# ---- end of issue 14, duplicates ----


def projection_2d(
    vectors: np.ndarray, max_points: int = 4000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the points kept, their 2-D PCA coordinates) for a scatter plot."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(vectors), size=min(max_points, len(vectors)), replace=False))
    x = vectors[keep].astype(np.float64)
    x = x - x.mean(axis=0)
    if len(x) < 2:
        return keep, np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return keep, x @ vt[:2].T
