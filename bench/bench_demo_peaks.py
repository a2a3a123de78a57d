"""Where `demo`'s memory peaks: the highest RSS reached inside each asset, check and demo phase, attributed
by the Python stack at the moment (issue 15's 1 GiB target at FER size).

    .venv/bin/python bench/bench_demo_peaks.py [--n 35887] [--keep DIR]

Generates N FER-shaped images into a fresh home's landing zone (bench_scale.generate), starts its embedded
PostgreSQL, and runs ``fer-platform --home H demo --json`` as bench_scale does (``native``, random weights,
no training) with bench/peak_hook on its PYTHONPATH: a thread inside the demo process samples its RSS every
2 ms and records the main thread's stack each time it rises 4 MiB (peak_hook/sitecustomize.py). Prints the
kernel's high-water mark (ru_maxrss), then per phase (the innermost asset/check function or demo step on
the stack) its highest sampled RSS and the code line at that moment; ``--timeline`` also prints RSS every
5 s. Run it with another interpreter (``/path/to/python bench/bench_demo_peaks.py``) to measure the same
code on another torch build: the demo runs under the interpreter that runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_scale import cli, demo_env, generate, start_db, start_demo  # noqa: E402

HOOK = ROOT / "bench" / "peak_hook"


def phase_of(stack: list[str]) -> tuple[str, str]:
    """(the innermost asset, check or demo function on the stack, the innermost line of our code)."""
    ours = [s for s in stack if "/fer_platform/" in s]
    phases = [s for s in ours if "/assets/" in s or "/cli/demo.py" in s]
    name = phases[-1].rsplit(" in ", 1)[-1] if phases else "(imports, Dagster)"
    where = ours[-1].split("/fer_platform/")[-1] if ours else (stack[-1].rsplit("/", 1)[-1] if stack else "")
    return name, where


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=35887)
    ap.add_argument("--keep", help="keep the home here (must not exist)")
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args(argv)
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ferpeaks-"))
    home.mkdir(parents=True, exist_ok=bool(not args.keep))
    env = demo_env(HOOK)  # as bench_scale runs the demo, the hook first on the path
    trace = home / "peaks.json"
    try:
        gen = generate(home / "landing", args.n)
        print(f"N = {args.n:,}: generated in {gen['seconds']} s; python {sys.executable}")
        start_db(home, env)
        with open(home / "demo.json", "w") as out, open(home / "demo.err", "w") as err:
            proc = start_demo(home, {**env, "FER_PEAK_TRACE": str(trace)}, out, err)
            _pid, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):
            sys.exit(f"demo failed ({code}): {(home / 'demo.err').read_text()[-2000:]}")
        summary = json.loads((home / "demo.json").read_text())
        data = json.loads(trace.read_text())
        print(
            f"demo: exit {code}, {summary.get('seconds')} s, loaded {summary.get('loaded')}, "
            f"index {summary.get('index_size')}; peak (ru_maxrss) {usage.ru_maxrss / 1024:,.0f} MiB"
        )
        best: dict[str, tuple[int, str]] = {}
        for mark in data["marks"]:
            name, where = phase_of(mark["stack"])
            if mark["rss"] > best.get(name, (0, ""))[0]:
                best[name] = (mark["rss"], where)
        print(f"\n{'phase':<34} {'peak MiB':>9}  at")
        for name, (rss, where) in sorted(best.items(), key=lambda kv: -kv[1][0]):
            print(f"{name:<34} {rss:>9,}  {where}")
        if args.timeline and data["timeline"]:
            t0, last, row = data["timeline"][0][0], -5.0, []
            for t, rss in data["timeline"]:
                if t - t0 - last >= 5:
                    row.append(f"{t - t0:.0f}s:{rss}")
                    last = t - t0
            print("\nRSS (MiB) over the demo: " + " ".join(row))
    finally:
        cli(home, "db", "stop", env=env, capture_output=True)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
