"""search_index's build at growing N (issue 15): where its time goes, per image, and what bounds it.

    .venv/bin/python bench/bench_index_build.py [--sizes 20000,40000,80000] [--ef-construction 200,80]
        [--segment-size 50000,0]

Clustered 512-d vectors like silver's (``bench_gold.generate``'s model: emotions, sub-clusters, noise), in
memory; for each N and each efConstruction, ``build.build_index`` (as the asset calls it: HNSW at or
above ``HNSW_THRESHOLD``), its phases timed inside (graph add, ef_search tuning), the serialisation
(``to_files``), and the blocking check's recall measurement (``index_recall``, 200 queries against exact
search): ms per image of each, the tuned ef_search and recall, and the check's recall; and the warm query a
user makes (one image by id, itself excluded, 200 of them one at a time): its median ms. ``--segment-size``
compares segment sizes side by side (0: one graph, as before segments). The sizes run one after another, so
the machine's drift is in the ratios; the per-image growth between sizes is the point.
"""

import argparse
import itertools
import time

import numpy as np
import pyarrow as pa
from common import row

from fer_platform.core.layout import EMOTIONS
from fer_platform.core.search import build
from fer_platform.core.search.build import build_index, index_recall
from fer_platform.core.vectors import vectors_to_arrow

SHARES = (0.138, 0.015, 0.143, 0.251, 0.173, 0.112, 0.168)  # FER2013's classes


def silver(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    latent = 64
    centres = rng.standard_normal((len(EMOTIONS), latent)).astype(np.float32)
    sub = rng.standard_normal((len(EMOTIONS) * 20, latent)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((512, latent)))[0].T.astype(np.float32)
    e = rng.choice(len(EMOTIONS), size=n, p=SHARES)
    s = e * 20 + rng.integers(0, 20, n)
    z = centres[e] + 1.5 * sub[s] + 4.0 * rng.standard_normal((n, latent)).astype(np.float32)
    x = z @ basis + 0.05 * rng.standard_normal((n, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return pa.table(
        {
            "image_id": pa.array([f"{i:064x}" for i in range(n)]),
            "filepath": pa.array(
                [f"raw/images/fer2013/train/{EMOTIONS[j]}/{i}.png" for i, j in enumerate(e)]
            ),
            "emotion": pa.array([EMOTIONS[j] for j in e]),
            "split": pa.array(["train"] * n),
            "load_date": pa.array(["2026-11-20"] * n),
            "vector": vectors_to_arrow(x),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,40000,80000")
    ap.add_argument("--ef-construction", default=str(build.HNSW_EF_CONSTRUCTION))
    ap.add_argument("--segment-size", default=str(build.SEGMENT_SIZE), help="0: one graph")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    efcs = [int(s) for s in args.ef_construction.split(",")]
    segs = [int(s) for s in args.segment_size.split(",")]
    results = {}
    for n in sizes:
        table = silver(n)
        for efc, seg in itertools.product(efcs, segs):
            t0 = time.perf_counter()
            index = build_index(
                table,
                "bench",
                hnsw_threshold=min(n, build.HNSW_THRESHOLD),
                ef_construction=efc,
                segment_size=seg or n,
            )
            total = time.perf_counter() - t0
            t1 = time.perf_counter()
            files = index.to_files()
            serialise = time.perf_counter() - t1
            t2 = time.perf_counter()
            check = index_recall(index, table)
            checked = time.perf_counter() - t2
            per = {k: 1000 * v / n for k, v in index.seconds.items()}
            per.update(build=1000 * total / n, serialise=1000 * serialise / n, check=1000 * checked / n)
            per["query_ms"] = query_p50(index)
            results[(n, efc, seg)] = per
            row(
                f"N={n} efConstruction={efc} segments {index.meta.get('segments')}: warm query by id (p50)",
                per["query_ms"],
                "ms",
            )
            row(
                f"N={n} efConstruction={efc} segment_size={seg or 'one graph'}: build (add + tune + rest)",
                per["build"],
                "ms/image",
                f"add {per['add']:.3f}, tune {per.get('tune', 0):.3f}; "
                f"ef_search {index.meta.get('ef_search')} "
                f"recall {index.meta.get('tuned_recall', 1):.4f}; check recall {check['recall']:.4f} "
                f"({check['queries']} queries) {per['check']:.3f} ms/image; serialise {per['serialise']:.3f} "
                f"ms/image, {sum(len(b) for b in files.values()) >> 20} MiB",
            )
    for efc, seg in itertools.product(efcs, segs):
        for a, b in zip(sizes, sizes[1:], strict=False):
            for phase in ("build", "add", "tune", "check", "query_ms"):
                if phase in results[(a, efc, seg)] and results[(a, efc, seg)][phase]:
                    row(
                        f"efConstruction={efc} segment_size={seg or 'one graph'}: "
                        f"{'warm query' if phase == 'query_ms' else phase + ' per image'}, N={b} / N={a}",
                        results[(b, efc, seg)].get(phase, 0) / results[(a, efc, seg)][phase],
                        "x",
                    )


def query_p50(index, queries: int = 200, seed: int = 2) -> float:
    """Median ms of one warm query by id (the image's own vector, itself excluded, 10 neighbours)."""
    picks = np.random.default_rng(seed).choice(index.size, size=min(queries, index.size), replace=False)
    vectors, took = index.vectors_at(picks), []
    for p, v in zip(picks, vectors, strict=True):
        t = time.perf_counter()
        index.search(v, 10, exclude=index.ids[p])
        took.append(time.perf_counter() - t)
    return float(np.median(took) * 1000)


if __name__ == "__main__":
    main()
