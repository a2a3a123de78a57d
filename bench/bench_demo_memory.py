"""Where `demo`'s memory goes (issue 15): RSS of one process after each thing the demo holds, in order.

    .venv/bin/python bench/bench_demo_memory.py HOME        (a home a demo loaded: bench_scale.py --home)

Imports (numpy and pyarrow, dagster, the code location's definitions, torch), the served model at
``native``, then on HOME's silver (the model the index was built for): silver streamed into one matrix, the
index built from it, its files serialised, the home's index loaded as ``load_index`` reads it (the recall
check, the demo's search example), silver read again (the agreement), each with the RSS growth and what
``release_memory`` (gc, Arrow's pool, ``malloc_trim``) gives back. Arrow's allocator and its bytes held are
printed too. Not part of ``make bench`` (it needs a loaded home).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROC = psutil.Process()
rows: list[dict] = []


def mark(label: str) -> None:
    rss = PROC.memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prev = rows[-1]["rss_mib"] if rows else 0.0
    rows.append(
        {"step": label, "rss_mib": round(rss), "delta_mib": round(rss - prev), "peak_mib": round(peak)}
    )
    print(f"{label:<58} rss {rss:7.0f} MiB ({rss - prev:+6.0f})  peak {peak:7.0f} MiB", flush=True)


def main(home: Path) -> None:
    os.environ.setdefault("FER_EMBED_PROFILE", "native")
    os.environ.setdefault("FER_EMBED_WEIGHTS", "random")
    os.environ["FER_HOME"] = str(home)
    mark("python")
    import numpy  # noqa: F401
    import pyarrow as pa

    mark("numpy, pyarrow")
    import dagster  # noqa: F401

    mark("dagster")
    from fer_platform.definitions import defs  # noqa: F401

    mark("fer_platform.definitions (the code location)")
    import torch  # noqa: F401

    mark("torch")
    from fer_platform.core.embedding import Embedder
    from fer_platform.core.memory import release_memory
    from fer_platform.core.search import build
    from fer_platform.core.search.index import MAPPING_COLUMNS, load_index
    from fer_platform.core.silver_scan import read_silver_vectors
    from fer_platform.core.storage import Storage
    from fer_platform.resources.environments import embedder_from_env

    Embedder.get(embedder_from_env().spec())
    mark("the model at native (ResNet18, random weights)")
    Embedder.release_all()
    release_memory()
    mark("model released (Embedder.release_all + release_memory)")

    lake = Storage(str(home / "lake"))
    meta = json.loads(next((home / "lake" / "index").glob("*/meta.json")).read_text())
    model = meta["model"]
    silver = read_silver_vectors(lake, model, MAPPING_COLUMNS)
    mark(f"silver streamed: {silver.num_rows:,} vectors ({silver.vectors.nbytes / 2**20:.0f} MiB matrix)")
    index = build.build_index(silver, model)
    mark(f"index built ({index.kind}), silver still held")
    del silver
    release_memory()
    mark("silver dropped, released")
    files = index.to_files()
    mark(f"index files serialised ({sum(len(b) for b in files.values()) / 2**20:.0f} MiB)")
    del index, files
    release_memory()
    mark("built index and its files dropped (the asset's files are written)")
    back = load_index(lake, model)
    mark("the home's index loaded, its file streamed (recall check, search example)")
    silver = read_silver_vectors(lake, model, ("image_id",))
    mark("silver read again beside it (recall check)")
    del back, silver
    release_memory()
    mark("all dropped, released")
    pool = pa.default_memory_pool()
    print(f"arrow pool: {pool.backend_name}, {pa.total_allocated_bytes() / 2**20:.1f} MiB allocated")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve())
