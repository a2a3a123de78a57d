"""Memory of the two big reads of the publish run (issue 15): silver streamed, and the index file loaded.

    .venv/bin/python bench/bench_reads_memory.py [--n 35887]

Silver-shaped Parquet (``bench_index_build.silver``: N clustered 512-d vectors, partitioned by emotion and
load date as silver is, a second model's rows beside them) and the index built over it, in a temp lake. Each
read runs in a fresh process, with a thread sampling its RSS every 2 ms; printed: the peak above the
process's RSS before the read, and the time.

- silver, three scans (what the recall check does): Arrow's dataset scanner as the platform used it
  (8,192-row batches, 2 read ahead, 1 file ahead) against ``silver_scan.iter_silver_vectors`` (file by
  file, one thread, no pre-buffering, 2,048-row batches);
- the index: its files' bytes read whole then deserialised (``SearchIndex.from_files``, as before) against
  ``load_index`` (the FAISS file streamed into FAISS).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import row

from fer_platform.core.layout import SILVER_EMBEDDINGS
from fer_platform.core.memory import limit_arenas, release_memory
from fer_platform.core.search.build import build_index
from fer_platform.core.search.index import IDS_FILE, INDEX_FILE, META_FILE, SearchIndex, index_dir, load_index
from fer_platform.core.silver_scan import iter_silver_vectors
from fer_platform.core.storage import Storage
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import arrow_to_vectors

MODEL = "bench"
CASES = ("scanner", "silver_scan", "index_bytes", "index_streamed")


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024


def _scanner(lake: Storage) -> None:
    import pyarrow.dataset as ds

    dataset = ds.dataset(lake.path(SILVER_EMBEDDINGS), format="parquet", partitioning="hive")
    for batch in dataset.to_batches(
        columns=["image_id", "vector"],
        filter=ds.field("model") == MODEL,
        batch_size=8192,
        batch_readahead=2,
        fragment_readahead=1,
    ):
        normalise(arrow_to_vectors(batch.column("vector")))


def child(case: str, root: Path) -> None:
    limit_arenas()  # as the demo and the run workers run
    lake = Storage(str(root))
    release_memory()
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    if case == "scanner":
        for _ in range(3):
            _scanner(lake)
    elif case == "silver_scan":
        for _ in range(3):
            for _vectors, _batch in iter_silver_vectors(lake, MODEL, ("image_id",)):
                pass
    elif case == "index_bytes":
        folder = index_dir(MODEL)
        SearchIndex.from_files(
            {n: lake.read_bytes(f"{folder}/{n}") for n in (META_FILE, INDEX_FILE, IDS_FILE)}
        )
    else:
        load_index(lake, MODEL)
    seconds = time.perf_counter() - started
    done.set()
    print(json.dumps({"peak": max(peak[0], _rss()) - base, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=35887)
    ap.add_argument("--child", choices=CASES)
    ap.add_argument("--lake")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.lake))
        return
    from bench_index_build import silver  # deferred: only the parent generates

    with tempfile.TemporaryDirectory(prefix="ferbench-reads-") as tmp:
        lake = Storage(tmp)
        rows = silver(args.n)
        index = build_index(rows, MODEL)
        for name, data in index.to_files().items():
            lake.write_bytes(f"{index_dir(MODEL)}/{name}", data)
        del index
        rows = rows.set_column(
            rows.schema.get_field_index("load_date"), "load_date", pc.cast(rows["load_date"], pa.date32())
        )
        other = rows.slice(0, args.n // 10)  # another model's rows in the same files: filtered out
        both = pa.concat_tables(
            [
                rows.append_column("model", pa.array([MODEL] * rows.num_rows)),
                other.append_column("model", pa.array(["other"] * other.num_rows)),
            ]
        )
        pq.write_to_dataset(both, lake.path(SILVER_EMBEDDINGS), partition_cols=["emotion", "load_date"])
        del rows, other, both
        got = {}
        for case in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", case, "--lake", tmp],
                capture_output=True,
                text=True,
                check=True,
            )
            got[case] = json.loads(out.stdout.strip().splitlines()[-1])
            row(
                f"N={args.n} {case}: peak above the process",
                got[case]["peak"],
                "MiB",
                f"{got[case]['seconds']:.2f} s",
            )
        for old, new in (("scanner", "silver_scan"), ("index_bytes", "index_streamed")):
            row(
                f"{new} / {old}",
                got[new]["peak"] / max(1, got[old]["peak"]),
                "x memory",
                f"time {got[new]['seconds'] / got[old]['seconds']:.2f}x",
            )


if __name__ == "__main__":
    main()
