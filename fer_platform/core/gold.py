"""The gold layer: summaries people look at, computed from every silver partition and the load log.

All functions take plain Arrow tables (silver rows of one model, or load-log rows; or silver streamed as a
``SilverVectors``) and return Arrow tables; the vectors are L2-normalised, so a dot product is a cosine.
Neighbour agreement is estimated from a fixed-size sample of queries, with its 95 % confidence interval.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from fer_platform.core.layout import EMOTIONS
from fer_platform.core.report import distance_decimals
from fer_platform.core.silver_scan import as_silver_vectors
from fer_platform.core.vecmath import exact_search, leave_one_out, mean_pairwise_cosine

NEIGHBOURS = 10
DECIMALS = 4  # gold tables are read by people: 0.178, not 0.17799999999999996
# centroid cosines: centroids of untuned vectors lie close together (0.99...), 4 places would hide them
CENTROID_DECIMALS = 6


def rounded(value: float | None, decimals: int = DECIMALS) -> float | None:
    """A figure of a gold table, rounded for people (None stays None)."""
    return None if value is None else round(float(value), decimals)


def vectors_and_labels(silver) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, emotions) of a silver table or ``SilverVectors``."""
    sv = as_silver_vectors(silver)
    return sv.vectors, sv.strings("emotion")


def centroids(vectors: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Unit-length mean vector of each emotion present."""
    out = {}
    for e in EMOTIONS:
        mask = labels == e
        if mask.any():
            c = vectors[mask].mean(axis=0)
            out[e] = c / (np.linalg.norm(c) or 1.0)
    return out


def emotion_summary(silver) -> pa.Table:
    """Per emotion and split: images, share of all images, mean intra-class cosine, and the
    nearest other emotion by centroid cosine (centroids over all splits)."""
    sv = as_silver_vectors(silver)
    vectors, labels = sv.vectors, sv.strings("emotion")
    splits = np.asarray([s or "(none)" for s in sv.columns["split"].to_pylist()], dtype=object)
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


def centroid_similarity(silver) -> pa.Table:
    """The 7x7 cosine matrix of emotion centroids: one row per emotion, one column per emotion
    (null where an emotion has no images)."""
    vectors, labels = vectors_and_labels(silver)
    cents = centroids(vectors, labels)
    cols: dict[str, list] = {"emotion": list(EMOTIONS)}
    for other in EMOTIONS:
        cols[other] = [
            rounded(cents[e] @ cents[other], CENTROID_DECIMALS) if e in cents and other in cents else None
            for e in EMOTIONS
        ]
    return pa.table(
        {"emotion": pa.array(cols["emotion"])} | {e: pa.array(cols[e], pa.float64()) for e in EMOTIONS}
    )


def similarity_matrix(table: pa.Table) -> np.ndarray:
    """The matrix of a ``centroid_similarity`` table (NaN where null)."""
    return np.array([[np.nan if v is None else v for v in table[e].to_pylist()] for e in EMOTIONS]).T


def similarity_rows(table: pa.Table) -> list[dict]:
    """The rows of a ``centroid_similarity`` table for people: every cosine at the decimals (3 to 6) at
    which the off-diagonal ones read apart."""
    rows = table.to_pylist()
    off = [r[e] for r in rows for e in EMOTIONS if e != r["emotion"] and r[e] is not None]
    decimals = distance_decimals(off, minimum=3, maximum=6) if off else 3
    return [{k: f"{v:.{decimals}f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]


SAMPLE_PER_EMOTION = 500  # queries per emotion for the agreement estimate (all of an emotion if fewer)
SPLIT_SAMPLE = 2000  # queries of a split for split_agreement
Z95 = 1.959964  # two-sided 95 % normal quantile


def _sample(positions: np.ndarray, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``positions`` without replacement (sorted), or all of them if ``size`` is None or more."""
    if size is None or len(positions) <= size:
        return positions
    return np.sort(rng.choice(positions, size=size, replace=False))


def _same_share(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """For each query position: the share of its ``k`` nearest other vectors (exact, over all of
    ``vectors``) with its label. Cost: len(queries) x N, linear in N for a fixed sample."""
    kk = min(k + 1, len(vectors))
    _, pos = exact_search(vectors, vectors[queries], kk, block=256)  # 256 x 4096 scores at a time
    nn = leave_one_out(pos, queries, kk - 1)
    return (labels[nn] == labels[queries][:, None]).mean(axis=1)


def _ci95(shares: np.ndarray, population: int) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``shares``, a simple random sample
    without replacement of a population of ``population`` (0 when the sample is the population)."""
    m = len(shares)
    if m < 2 or m >= population:
        return 0.0
    fpc = 1.0 - m / population
    return float(Z95 * np.sqrt(shares.var(ddof=1) / m * fpc))


def neighbour_agreement(
    silver, k: int = NEIGHBOURS, sample: int | None = SAMPLE_PER_EMOTION, seed: int = 0
) -> pa.Table:
    """For each emotion: the mean share of an image's ``k`` nearest neighbours (exact cosine over every
    image, self excluded) that carry the same emotion, beside the chance level (n_e - 1) / (N - 1); plus
    an ``all`` row (chance = the image-weighted mean).

    Estimated from a seeded random sample of ``sample`` images per emotion (each searched against the full
    set: cost linear in N) with the 95 % confidence interval of the estimate (``ci95``, a half-width;
    ``all`` is the stratified estimate, emotions weighted by their images). ``sample=None`` searches for
    every image: the exact all-pairs figure (quadratic; ``exact_neighbour_agreement``). ``silver`` is a
    silver table or a ``SilverVectors``."""
    sv = as_silver_vectors(silver)
    vectors, labels = sv.vectors, sv.strings("emotion")
    n = len(vectors)
    rng = np.random.default_rng(seed)
    kk = min(k, n - 1) if n > 1 else 0
    rows, total_var, total_agree, total_queries = [], 0.0, 0.0, 0
    for e in EMOTIONS:
        members = np.flatnonzero(labels == e)
        count = len(members)
        if not count:
            continue
        queries = _sample(members, sample, rng)
        shares = _same_share(vectors, labels, queries, k) if kk else np.zeros(len(queries))
        agree, ci = float(shares.mean()), _ci95(shares, count)
        total_agree += count / n * agree
        total_var += (count / n * ci / Z95) ** 2
        total_queries += len(queries)
        chance = (count - 1) / (n - 1) if n > 1 else 0.0
        rows.append(_agreement_row(e, count, kk, agree, chance, len(queries), ci))
    if n:
        counts = Counter(labels.tolist())
        chance = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)) if n > 1 else 0.0
        rows.append(_agreement_row("all", n, kk, total_agree, chance, total_queries, Z95 * total_var**0.5))
    return pa.Table.from_pylist(rows, schema=AGREEMENT_SCHEMA)


def exact_neighbour_agreement(silver, k: int = NEIGHBOURS) -> pa.Table:
    """``neighbour_agreement`` over every image (all pairs, quadratic): the reference the estimate is
    tested against."""
    return neighbour_agreement(silver, k, sample=None)


def _agreement_row(emotion, images, k, agree, chance, queries, ci) -> dict:
    return {
        "emotion": emotion,
        "images": images,
        "k": k,
        "agreement": rounded(agree),
        "chance": rounded(chance),
        "lift": rounded(agree / chance) if chance else None,
        "queries": queries,
        "ci95": rounded(ci),
    }


def split_agreement(
    silver, split: str = "test", k: int = NEIGHBOURS, sample: int | None = SPLIT_SAMPLE, seed: int = 0
) -> dict:
    """What a search for each image of ``split`` returns: the share of its ``k`` nearest other images
    (exact cosine over every image of ``silver``, any split, itself excluded) with its emotion, beside
    chance (for a query of emotion e: (n_e - 1) / (N - 1), averaged over the queries). The figure the
    demo prints: test images are never trained on, their neighbours are whatever the index holds.

    Estimated from a seeded sample of ``sample`` images of the split (all if fewer; None: all), with the
    95 % confidence interval's half-width (``ci95``); ``queries`` is the split's size, ``sampled`` how
    many were searched for."""
    sv = as_silver_vectors(silver)
    vectors, labels = sv.vectors, sv.strings("emotion")
    splits = sv.strings("split")
    members = np.flatnonzero(splits == split)
    n = len(vectors)
    out = {"split": split, "queries": int(len(members)), "k": 0, "agreement": None, "chance": None}
    out.update(sampled=0, ci95=None)
    if not len(members) or n < 2:
        return out
    queries = _sample(members, sample, np.random.default_rng(seed))
    same = _same_share(vectors, labels, queries, k)
    counts = Counter(labels.tolist())
    chance = np.mean([(counts[e] - 1) / (n - 1) for e in labels[queries]])
    return {
        **out,
        "k": min(k, n - 1),
        "agreement": rounded(same.mean()),
        "chance": rounded(chance),
        "sampled": int(len(queries)),
        "ci95": rounded(_ci95(same, len(members))),
    }


AGREEMENT_SCHEMA = pa.schema(
    [
        ("emotion", pa.string()),
        ("images", pa.int64()),
        ("k", pa.int64()),
        ("agreement", pa.float64()),  # an estimate from `queries` sampled images, +- ci95
        ("chance", pa.float64()),
        ("lift", pa.float64()),
        ("queries", pa.int64()),  # images searched for (all of the emotion when it has <= the sample size)
        ("ci95", pa.float64()),  # half-width of the 95 % confidence interval of `agreement` (0: exact)
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
