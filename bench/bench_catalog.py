"""What the catalog figures cost, beside what they ride on, in one run (ratios; the machine is shared).

    .venv/bin/python bench/bench_catalog.py [files]        (default 35,887: FER2013's size)

- the landing backlog (core/backlog.py ``measure``) against the tick's own planning (``plan_tick``) over the
  same listing of ``files`` landing files, every one in the load log (an idle tick: the common case);
- a partitioned layer's table-wide row count (``HiveParquetIOManager.layer_rows``: one Parquet footer per
  partition) over 7 emotions x 5 and x 50 days, against writing the partition's own file (FER2013's
  ``files`` / 7 rows of the raw manifest's columns).
"""

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from common import Timer, row
from upath import UPath

from fer_platform.core import backlog
from fer_platform.core.bronze import MANIFEST_SCHEMA
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.planner import AutoLoaderSettings, Watermark, plan_tick
from fer_platform.core.storage import FileEntry, Storage
from fer_platform.io_managers.parquet import HiveParquetIOManager

REPEATS = 5


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        with Timer() as t:
            fn()
        times.append(t.seconds)
    return statistics.median(times)


def main(files: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ferbench-catalog-"))
    landing = Storage(str(root / "landing"))
    modified = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
    listing = [
        FileEntry(f"train/{EMOTIONS[i % 7]}/{i:07d}.png", 1000 + i % 97, modified) for i in range(files)
    ]
    base = landing.uri() + "/"
    logged = {(base + e.key, e.size, e.modified_us) for e in listing}
    now_us = time.time_ns() // 1000
    cursor = Watermark().advanced(listing)

    def tick():
        plan_tick(landing, listing, lambda _e: logged, cursor, AutoLoaderSettings(), now_us=now_us)

    def tick_and_backlog():
        known = backlog.Recorder(lambda _e: logged)
        planned = plan_tick(landing, listing, known, cursor, AutoLoaderSettings(), now_us=now_us)
        backlog.measure(landing.uri(), listing, known, now_us, 5.0, planned)

    planned, measured = best(tick), best(tick_and_backlog)
    row(f"idle tick planning, {files} files", planned, "s")
    row("  the same with the backlog measured", measured, "s", f"{measured / planned:.2f}x")

    manager = HiveParquetIOManager(UPath(root / "lake"))
    per = max(1, files // 7)
    table = pa.Table.from_pylist(
        [
            {
                "image_id": f"{i:064x}",
                "filepath": f"raw/images/fer2013/train/happy/{i}.png",
                "split": "train",
                "landing_path": f"train/happy/{i}.png",
                "size": 1000,
                "source": "file:///landing",
                "ingested_at": modified,
                "run_id": "r",
                "modified_at": modified,
            }
            for i in range(per)
        ],
        schema=MANIFEST_SCHEMA,
    )
    layer = UPath(root / "lake" / "raw" / "manifest")
    first = dt.date(2026, 1, 1)
    for days in (5, 50):
        for d in range(days):
            for e in EMOTIONS:
                path = layer / f"emotion={e}" / f"load_date={first + dt.timedelta(days=d)}" / "part-0.parquet"
                if not path.exists():
                    manager.write_table(table, path)
        target = layer / "emotion=happy" / f"load_date={first}" / "part-0.parquet"
        write = best(lambda: manager.write_table(table, target))  # noqa: B023
        count = best(lambda: manager.layer_rows(layer))
        row(f"write one partition ({per} rows)", write, "s")
        row(f"  table-wide row count over {7 * days} partitions", count, "s", f"{count / write:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 35_887)
