"""Expanding the FER2013 challenge CSV: rows per second and peak memory, at FER2013's size, in one run.

    .venv/bin/python bench/bench_csv.py [rows] [--tracemalloc]      (default 35,887: fer2013.csv's rows)

Writes a CSV of the challenge format (random pixels, the three Usages in FER2013's proportions), expands it
into a temporary landing zone's staging folder (core/challenge.py), then expands it again (nothing new).
Peak memory: the process's peak RSS, and with --tracemalloc what Python allocated at most during the
expansion (slower: tracemalloc traces every allocation).
"""

import datetime as dt
import resource
import sys
import tracemalloc

import numpy as np
from common import Timer, row, workspace

from fer_platform.core import challenge
from fer_platform.core.storage import Storage


def write_csv(path, n: int) -> int:
    rng = np.random.default_rng(0)
    usages = rng.choice(["Training", "PublicTest", "PrivateTest"], size=n, p=[0.8, 0.1, 0.1])
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for i in range(n):
            f.write(f"{rng.integers(0, 7)},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usages[i]}\n")
    return path.stat().st_size


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 35_887
    traced = "--tracemalloc" in sys.argv
    with workspace("fercsv-") as (root, _admin, dsn):
        landing, lake = Storage(str(root / "landing"), confined=True), Storage(str(root / "lake"))
        (root / "landing").mkdir()
        size = write_csv(root / "landing" / "fer2013.csv", n)
        row("CSV written", size / 2**20, "MiB", f"{n:,} rows")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if traced:
            tracemalloc.start()
        with Timer() as t:
            report = challenge.expand_csv(landing, "fer2013.csv", landing, lake, dsn, dt.date.today())
        if traced:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            row("expansion: peak Python allocations (tracemalloc)", peak, "MiB")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert report.good == n, report.line()
        row("expansion", n / t.seconds, "rows/s", f"{t.seconds:.1f} s")
        row("peak RSS of the process (after / before expansion)", rss, "MiB", f"before {rss_before:.0f} MiB")
        with Timer() as t:
            again = challenge.expand_csv(landing, "fer2013.csv", landing, lake, dsn, dt.date.today())
        assert again.status == "unchanged"
        row("the same CSV again (nothing new)", t.seconds, "s")


if __name__ == "__main__":
    main()
