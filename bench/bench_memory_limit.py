"""The demo under a hard memory limit (issue 15): how much memory it needs, as a container's limit sees it.

    sudo .venv/bin/python bench/bench_memory_limit.py [--n 35887] [--limits 0,1024,800,700]

The peak RSS that bench_scale.py reports counts every page the demo's process has touched and still maps,
among them the shared libraries' pages (PyTorch's CUDA build maps ~220 MiB of them), which the kernel drops
and reads again whenever memory is short. What a limit binds on is less: for each limit (MiB; 0: none), in
a fresh home with N generated FER-shaped images (bench_scale.generate), the page cache dropped first (so the
demo's own reads of libraries and files are charged to it), ``fer-platform demo`` runs inside a memory
cgroup of that size with no swap (cgroup v2 ``memory.max``, or v1 ``memory.limit_in_bytes``), as a container
with that limit would run it; its embedded PostgreSQL runs outside the limit, as a database service does.
Per limit: whether it finished and loaded every image, its time against the unlimited run's (the ratio:
how much re-reading the limit cost), its major page faults (pages read back from disk), the kernel's
high-water mark of its RSS (ru_maxrss) and the cgroup's (RSS + page cache charged to it), and OOM kills.
A run that takes more than ``--timeout-factor`` x the unlimited run's time (at least 120 s) is stopped and
reported as thrashing. Needs root (a cgroup and /proc/sys/vm/drop_caches); Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import ROOT, cli, demo_env, generate, start_db, start_demo

CGROUP_NAME = "fer-bench-memory-limit"
V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """A memory cgroup of ``mib`` MiB without swap, v2 where the unified hierarchy has the memory
    controller, else v1."""

    def __init__(self, mib: int):
        self.limit = mib << 20
        controllers = V2 / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.version, self.path = 2, V2 / CGROUP_NAME
        elif V1.is_dir():
            self.version, self.path = 1, V1 / CGROUP_NAME
        else:
            sys.exit("no memory cgroup controller here (cgroup v2 memory or v1 /sys/fs/cgroup/memory)")

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir(exist_ok=True)
        if self.version == 2:
            self._write("memory.max", str(self.limit))
            self._write("memory.swap.max", "0")
        else:
            self._write("memory.limit_in_bytes", str(self.limit))
            if (self.path / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: none allowed
                self._write("memory.memsw.limit_in_bytes", str(self.limit))
            self._write("memory.max_usage_in_bytes", "0")
        return self

    def join(self) -> None:
        """Called in the child before it runs the demo: it and everything it starts are in the group."""
        self._write("cgroup.procs", str(os.getpid()))

    def stats(self) -> dict:
        if self.version == 2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            peak = self.path / "memory.peak"
            return {
                "cgroup_peak_mib": round(int(peak.read_text()) / 2**20, 1) if peak.exists() else None,
                "oom_kills": int(events.get("oom_kill", 0)),
                "reclaims_at_limit": int(events.get("max", 0)),
            }
        oom = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return {
            "cgroup_peak_mib": round(int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20, 1),
            "oom_kills": int(oom.get("oom_kill", 0)),
            "reclaims_at_limit": int((self.path / "memory.failcnt").read_text()),
        }

    def __exit__(self, *exc) -> None:
        for _ in range(50):  # the demo's last children may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def run_demo(n: int, mib: int, timeout: float | None, seed: int, workers: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"fermem-{mib}-"))
    env = demo_env()
    try:
        generate(home / "landing", n, seed, workers)
        start_db(home, env)
        group = MemoryCgroup(mib) if mib else None
        drop_caches()
        with (
            open(home / "demo.json", "w") as out,
            open(home / "demo.err", "w") as err,
            group or contextlib.nullcontext(),
        ):
            t0 = time.time()
            proc = start_demo(
                home,
                env,
                out,
                err,
                start_new_session=True,  # stopped as a group when it thrashes past the timeout
                preexec_fn=group.join if group else None,
            )
            stopped = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if timeout and time.time() - t0 > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    stopped = True
                    _pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
            seconds = time.time() - t0
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its compute-log watchers, before the group goes
            cg = group.stats() if group else {}
        summary = {}
        if not stopped:
            try:
                summary = json.loads((home / "demo.json").read_text())
            except ValueError:
                pass
        return {
            "limit_mib": mib or None,
            "finished": not stopped and os.waitstatus_to_exitcode(status) in (0, 1),
            "stopped_after_s": round(seconds, 1) if stopped else None,
            "exit_code": None if stopped else os.waitstatus_to_exitcode(status),
            "seconds": round(seconds, 2),
            "loaded_all": summary.get("loaded") == n and summary.get("index_size") == n,
            "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            "major_faults": usage.ru_majflt,
            **cg,
        }
    finally:
        cli(home, "db", "stop", env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=35887)
    ap.add_argument("--limits", default="0,1024,800,700", help="MiB, comma-separated; 0: no limit (first)")
    ap.add_argument("--timeout-factor", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "bench_memory_limit.json"))
    args = ap.parse_args()
    limits = [int(x) for x in args.limits.split(",")]
    if limits[0] != 0:
        limits.insert(0, 0)  # the unlimited run: the reference of the ratios and the timeout
    if os.geteuid() != 0:
        sys.exit("needs root: a memory cgroup and /proc/sys/vm/drop_caches")
    results, base = [], None
    for mib in limits:
        timeout = None if base is None else max(120.0, args.timeout_factor * base)
        r = run_demo(args.n, mib, timeout, args.seed, args.workers)
        if base is None:
            base = r["seconds"]
        r["seconds_vs_unlimited"] = round(r["seconds"] / base, 3)
        results.append(r)
        shown = "none" if not mib else f"{mib} MiB"
        state = "finished" if r["finished"] else f"stopped after {r['stopped_after_s']} s (thrashing)"
        print(
            f"limit {shown:>9}: {state}, {r['seconds']:.1f} s ({r['seconds_vs_unlimited']:.2f}x), "
            f"every image loaded and indexed: {r['loaded_all']}; ru_maxrss {r['ru_maxrss_mib']:.0f} MiB, "
            f"major faults {r['major_faults']:,}"
            + (
                f", cgroup peak {r['cgroup_peak_mib']:.0f} MiB, OOM kills {r['oom_kills']}"
                if r.get("cgroup_peak_mib") is not None
                else ""
            ),
            flush=True,
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "bench_memory_limit", "n": args.n, "results": results}, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
