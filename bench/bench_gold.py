"""Gold and the search index at FER2013's size and at 4x: the exact all-pairs agreement against the sampled
estimate, silver read whole against streamed, and a warm query with and without excluding itself.

    .venv/bin/python bench/bench_gold.py [--sizes 35887,143548] [--queries 200]

Silver is generated (512-d vectors clustered by emotion with FER2013's class shares, L2-normalised) and
written as silver partitions of a temporary lake. Every step runs in a fresh process that prints its time
and its peak RSS (VmHWM; ``base`` is the process after its imports), so memory figures do not mix:
  * old gold: read_silver (whole table) + exact all-pairs 10-NN agreement and the test split's (the
    code before issue 15: vecmath.nearest_neighbours)
  * new gold: silver_scan.read_silver_vectors + gold.neighbour_agreement / split_agreement (sampled)
  * old / new index: search.build.build_index over silver read whole / streamed
  * queries: the index read cold (hashing its files), again with a verified stamp, a warm query
    (meta.json only), and one query by id with the query excluded by one more neighbour (now) against
    a filter over the other N-1 ids (before), against no exclusion
The growth exponent between two sizes is log(t2/t1) / log(n2/n1): 2 is quadratic, 1 linear.
"""

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import filter_every_other, row

from fer_platform.core import gold
from fer_platform.core.layout import EMOTIONS, SILVER_EMBEDDINGS
from fer_platform.core.search import index as index_module
from fer_platform.core.search.build import build_index
from fer_platform.core.silver import read_silver
from fer_platform.core.silver_scan import read_silver_vectors
from fer_platform.core.storage import Storage
from fer_platform.core.vecmath import exact_search, leave_one_out, nearest_neighbours, normalise
from fer_platform.core.vectors import arrow_to_vectors, vectors_to_arrow

SHARES = (0.138, 0.015, 0.143, 0.251, 0.173, 0.112, 0.168)  # FER2013's classes
MODEL = "bench"


def generate(lake: Storage, n: int, seed: int = 0) -> None:
    """``n`` silver rows clustered by emotion (overlapping, as real embeddings: agreement well below 1)."""
    rng = np.random.default_rng(seed)
    latent = 64
    centres = rng.standard_normal((len(EMOTIONS), latent)).astype(np.float32)
    sub = rng.standard_normal((len(EMOTIONS) * 20, latent)).astype(np.float32)  # sub-clusters per emotion
    basis = np.linalg.qr(rng.standard_normal((512, latent)))[0].T.astype(np.float32)
    emotions = rng.choice(len(EMOTIONS), size=n, p=SHARES)
    subs = emotions * 20 + rng.integers(0, 20, n)
    root = lake.path(SILVER_EMBEDDINGS)
    for start in range(0, n, 50_000):
        e, s = emotions[start : start + 50_000], subs[start : start + 50_000]
        z = centres[e] + 1.5 * sub[s] + 4.0 * rng.standard_normal((len(e), latent)).astype(np.float32)
        x = z @ basis + 0.05 * rng.standard_normal((len(e), 512)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = np.arange(start, start + len(e))
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "image_id": pa.array([f"{i:064x}" for i in ids]),
                "filepath": pa.array(
                    [f"raw/images/fer2013/train/{EMOTIONS[j]}/{i}.png" for i, j in zip(ids, e, strict=True)]
                ),
                "emotion": pa.array([EMOTIONS[j] for j in e]),
                "split": pa.array(np.where(rng.random(len(e)) < 0.2, "test", "train")),
                "load_date": pa.array(["2026-11-20"] * len(e)),
                "model": pa.array([MODEL] * len(e)),
                "vector": vectors_to_arrow(x),
            }
        )
        pq.write_to_dataset(
            table,
            root,
            partition_cols=["emotion", "load_date"],
            basename_template=f"part-{start}-{{i}}.parquet",
        )


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(name: str, lake_dir: str, queries: int) -> dict:
    """One measurement, in this (fresh) process."""
    import faiss  # noqa: F401  # deferred: heavy; loaded before the baseline (the index steps need it)

    lake = Storage(lake_dir)
    base = peak_mib()
    t0 = time.perf_counter()
    out: dict = {}
    if name == "old_gold":
        silver = read_silver(lake, model=MODEL)
        vectors = normalise(arrow_to_vectors(silver["vector"]))
        labels = np.asarray(silver["emotion"].to_pylist(), dtype=object)
        nn = nearest_neighbours(vectors, 10)
        out["agreement"] = float((labels[nn] == labels[:, None]).mean())
        test = np.flatnonzero(np.asarray(silver["split"].to_pylist(), dtype=object) == "test")
        _, pos = exact_search(vectors, vectors[test], 11, block=1024)
        out["test_agreement"] = float((labels[leave_one_out(pos, test, 10)] == labels[test][:, None]).mean())
    elif name == "new_gold":
        silver = read_silver_vectors(lake, MODEL)
        overall = gold.neighbour_agreement(silver).to_pylist()[-1]
        test = gold.split_agreement(silver, "test")
        out.update(agreement=overall["agreement"], ci95=overall["ci95"], queries=overall["queries"])
        out.update(test_agreement=test["agreement"], test_ci95=test["ci95"])
    elif name in ("old_index", "new_index"):
        if name == "old_index":
            index = build_index(read_silver(lake, model=MODEL), MODEL)
        else:  # as the asset does
            index = build_index(read_silver_vectors(lake, MODEL, index_module.MAPPING_COLUMNS), MODEL)
        out["kind"] = index.kind
        if name == "new_index":
            for file, data in index.to_files().items():
                lake.write_bytes(f"{index_module.index_dir(MODEL)}/{file}", data)
    elif name == "queries":
        out.update(_queries(lake, queries))
    out.update(seconds=time.perf_counter() - t0, base_mib=base, peak_mib=peak_mib())
    return out


def _queries(lake: Storage, n_queries: int) -> dict:

    stamps = Path(tempfile.mkdtemp(prefix="ferbench-stamps-"))
    timed = {}
    t0 = time.perf_counter()
    index_module.load_index(lake, MODEL, stamps=stamps)  # hashes, writes the stamp
    timed["cold_read_hashed_ms"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    index = index_module.load_index(lake, MODEL, stamps=stamps)
    timed["cold_read_stamped_ms"] = (time.perf_counter() - t0) * 1000
    index_module.warm_index(lake, MODEL)
    t0 = time.perf_counter()
    for _ in range(20):
        index_module.warm_index(lake, MODEL)
    timed["warm_lookup_ms"] = (time.perf_counter() - t0) * 1000 / 20
    shutil.rmtree(stamps, ignore_errors=True)
    rng = np.random.default_rng(3)
    picks = rng.choice(index.size, size=n_queries, replace=False)
    vectors = index.vectors_at(picks)
    index.position_of(index.ids[0])  # the id map, built once per index
    plain, excluded, filtered, same = [], [], [], 0
    ef = int(index.meta.get("ef_search") or 64)
    for p, v in zip(picks, vectors, strict=True):
        own = index.ids[p]
        t0 = time.perf_counter()
        index.search(v, 10)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = [h.image_id for h in index.search(v, 10, exclude=own)]
        excluded.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # before: a selector of every other position, built per query
        pos = filter_every_other(index, v, int(p), 10, max(ef, 40))
        old = [index.ids[q] for q in pos if q >= 0]
        filtered.append(time.perf_counter() - t0)
        same += got == old
    for label, samples in (("plain", plain), ("excluded", excluded), ("filtered", filtered)):
        timed[f"query_{label}_p50_ms"] = float(np.percentile(np.asarray(samples) * 1000, 50))
    timed["exclusion_equals_filter"] = same / len(picks)
    return timed


def run_step(name: str, lake_dir: str, queries: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--step", name, "--lake", lake_dir, "--queries", str(queries)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="35887,143548")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-old-above", type=int, default=10**9, help="no old gold or index above this N")
    ap.add_argument("--step")
    ap.add_argument("--lake")
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.lake, args.queries)))
        return
    results: dict[int, dict] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        root = Path(tempfile.mkdtemp(prefix="ferbench-gold-"))
        try:
            lake = Storage(str(root / "lake"))
            t0 = time.perf_counter()
            generate(lake, n)
            print(f"\n{n} silver vectors x 512 (generated in {time.perf_counter() - t0:.1f} s)", flush=True)
            names = ["new_gold", "new_index", "queries"]
            if n <= args.skip_old_above:
                names[:0] = ["old_gold", "old_index"]
            res = results[n] = {}
            for name in names:  # printed as each step ends
                r = res[name] = run_step(name, str(root / "lake"), args.queries)
                extra = {k: v for k, v in r.items() if k not in ("seconds", "base_mib", "peak_mib")}
                row(
                    f"[{n}] {name}",
                    r["seconds"],
                    "s",
                    f"peak {r['peak_mib']:.0f} MiB (base {r['base_mib']:.0f})",
                )
                if extra:
                    print(f"    {json.dumps(extra, default=str)}", flush=True)
            if "old_gold" in res:
                row(
                    f"[{n}] old gold / new gold (time)",
                    res["old_gold"]["seconds"] / res["new_gold"]["seconds"],
                    "x",
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    sizes = sorted(results)
    if len(sizes) == 2:
        a, b = sizes
        for name in ("old_gold", "new_gold", "new_index"):
            if name in results[a] and name in results[b]:
                exp = math.log(results[b][name]["seconds"] / results[a][name]["seconds"]) / math.log(b / a)
                row(f"growth exponent {name} ({a} -> {b})", exp, "")


if __name__ == "__main__":
    main()
