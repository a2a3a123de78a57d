"""Memory of the big reads of the publish run (issue 15): silver streamed, the index built, its file read.

    .venv/bin/python bench/bench_reads_memory.py [--n 35887]

Silver-shaped Parquet (``bench_index_build.silver``: N clustered 512-d vectors, partitioned by emotion and
load date as silver is, a second model's rows beside them) and the index built over it, in a temp lake,
written twice: each partition one row group (pyarrow's default, as the lake was written before) and in the
row groups the lake's IO manager writes now (``silver_scan.row_group_rows``). Each read runs in a fresh
process, with a thread sampling its RSS every 2 ms; printed: the peak above the process's RSS before the
read, and the time.

- silver, three scans (what the recall check does): Arrow's dataset scanner as the platform used it
  (8,192-row batches, 2 read ahead, 1 file ahead) against ``silver_scan.iter_silver_vectors`` (file by
  file, one thread, no pre-buffering, 2,048-row batches), on one-group files; and ``iter_silver_vectors``
  on the files in small row groups;
- the index built: over silver read whole into one matrix (``read_silver_vectors``, as before: the matrix
  and the index's copy held together) against ``silver_scan.SilverScan`` (silver read twice, its vectors
  held once);
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
from fer_platform.core.search.index import (
    IDS_FILE,
    INDEX_FILE,
    MAPPING_COLUMNS,
    META_FILE,
    SearchIndex,
    index_dir,
    load_index,
)
from fer_platform.core.silver_scan import SilverScan, iter_silver_vectors, read_silver_vectors, row_group_rows
from fer_platform.core.storage import Storage
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import arrow_to_vectors

MODEL = "bench"
CASES = (
    "scanner",
    "silver_scan_one_group",
    "silver_scan",
    "build_held",
    "build_streamed",
    "index_bytes",
    "index_streamed",
)
ONE_GROUP = "one-group"  # the lake whose silver files are each one row group


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
    lake = Storage(str(root / ONE_GROUP if case in ("scanner", "silver_scan_one_group") else root))
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
    elif case in ("silver_scan", "silver_scan_one_group"):
        for _ in range(3):
            for _vectors, _batch in iter_silver_vectors(lake, MODEL, ("image_id",)):
                pass
    elif case == "build_held":
        build_index(read_silver_vectors(lake, MODEL, MAPPING_COLUMNS), MODEL)
    elif case == "build_streamed":
        build_index(SilverScan(lake, MODEL, MAPPING_COLUMNS), MODEL)
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
        for key in sorted(
            {(r["emotion"], r["load_date"]) for r in both.select(["emotion", "load_date"]).to_pylist()}
        ):
            part = both.filter(
                pc.and_(pc.equal(both["emotion"], key[0]), pc.equal(both["load_date"], key[1]))
            )
            part = part.drop_columns(["emotion", "load_date"])
            name = f"{SILVER_EMBEDDINGS}/emotion={key[0]}/load_date={key[1]}/part-0.parquet"
            for store, groups in (
                (Storage(f"{tmp}/{ONE_GROUP}"), {}),
                (lake, {"row_group_size": row_group_rows(part)}),
            ):
                Path(store.path(name)).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(part, store.path(name), compression="zstd", **groups)
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
        pairs = (
            ("scanner", "silver_scan_one_group"),
            ("silver_scan_one_group", "silver_scan"),
            ("build_held", "build_streamed"),
            ("index_bytes", "index_streamed"),
        )
        for old, new in pairs:
            row(
                f"{new} / {old}",
                got[new]["peak"] / max(1, got[old]["peak"]),
                "x memory",
                f"time {got[new]['seconds'] / got[old]['seconds']:.2f}x",
            )


if __name__ == "__main__":
    main()
