"""Scale (issue 15): the whole pipeline at N images, per stage, and how its cost per image grows with N.

    .venv/bin/python bench/bench_scale.py --n 35887,250000 [--home DIR] [--json PATH] [--workers 2]

For each N (``--n`` repeatable or a comma list; default 2,000, what ``make bench`` runs):
  1. generates N FER-shaped 48x48 PNGs straight into a fresh home's landing zone, in FER2013's emotion and
     train/test proportions (a pool of faces drawn by core/sample_data.py per emotion, then shifted,
     flipped, re-lit and noised in numpy, several processes): its rate is reported, not counted;
  2. starts the home's embedded PostgreSQL (``fer-platform db start``), then runs
     ``fer-platform --home H demo --json`` as a user would, with FER_EMBED_PROFILE=native,
     FER_EMBED_WEIGHTS=random, FER_DEMO_TRAIN=0, while a thread samples memory every 0.2 s;
  3. reads the demo's runs back from the Dagster instance under the home (run records and STEP_START /
     STEP_SUCCESS / STEP_FAILURE events) and prints, per stage (step key: raw_images, bronze_images,
     image_embeddings, silver_embeddings, gold_*, search_index, the checks that run as their own steps)
     and per demo phase (start-up and planning before the first run, gaps between runs: planning and
     audit, Dagster's own time inside runs, after the last run: final audit and summary):
       * summed step time over partitions, its ms per image and images/s;
       * busy wall time (the union of the stage's step intervals: steps of one stage that overlapped,
         e.g. partitions in parallel, count once); the demo runs its runs one after the other, so the two
         agree unless something ran in parallel;
       * peak memory while the stage ran: the demo process tree's RSS, the PostgreSQL server's processes'
         PSS (proportional set size: shared buffers counted once across backends, not once per backend),
         both sampled every 0.2 s (a peak shorter than that can be missed); and, for the whole demo, the
         kernel's exact high-water mark of the demo process (ru_maxrss from wait4);
  4. measures the model alone at ``native`` in this process (preprocessed batches in memory, warm, as
     bench_embeddings.py does; before and after the demo, mean) and the ratio image_embeddings / model-only.

With several N, the per-image cost of every stage at each N against the first N: ratios > 1.2 are flagged
(issue 15's target: every stage at 250k within 1.2x of its cost at 35,887). Everything goes to a JSON file
too (default bench/out/bench_scale.json) so BENCHMARKS.md can be updated from it.

Homes are temporary folders, deleted afterwards, unless ``--home DIR`` is given: then N's home is
``DIR/n<N>`` (which must not exist yet) and is kept, with its PostgreSQL stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fer_platform.core.layout import EMOTIONS, SPLITS  # noqa: E402
from fer_platform.core.sample_data import render_face  # noqa: E402

# FER2013 (fer2013.csv): images per emotion in Training and in PublicTest + PrivateTest; 35,887 in all
FER_COUNTS = {
    "train": {
        "angry": 3995,
        "disgust": 436,
        "fear": 4097,
        "happy": 7215,
        "neutral": 4965,
        "sad": 4830,
        "surprise": 3171,
    },
    "test": {
        "angry": 958,
        "disgust": 111,
        "fear": 1024,
        "happy": 1774,
        "neutral": 1233,
        "sad": 1247,
        "surprise": 831,
    },
}
FER_SIZE = 35_887
FLAG_RATIO = 1.2  # issue 15: every stage's cost per image within 1.2x of its cost at the first N
SAMPLE_SECONDS = 0.2
POOL_PER_EMOTION = 64  # drawn faces per emotion; every image is one of them shifted, flipped, re-lit, noised
CHUNK = 4000  # images per generation task
STAGE_ORDER = ("raw_images", "bronze_images", "image_embeddings", "silver_embeddings")
PHASES = (
    "demo: start-up + planning",
    "demo: between runs",
    "demo: inside runs, outside steps",
    "demo: after runs",
)


def parse_sizes(values: list[str]) -> list[int]:
    """``--n`` values, each a number or a comma list (``35887,250000``, ``35_887``), in the order given."""
    sizes = []
    for value in values:
        for part in value.split(","):
            part = part.strip().replace("_", "")
            if not part:
                continue
            n = int(part)
            if n < 14:
                raise ValueError(f"--n {n}: at least 14 images (one per emotion and split)")
            sizes.append(n)
    if not sizes:
        raise ValueError("--n: no size given")
    return sizes


def fer_counts(n: int) -> dict[tuple[str, str], int]:
    """Images per (split, emotion) for N images in FER2013's proportions (largest remainder, at least one
    each), summing to N."""
    cells = [(s, e) for s in SPLITS for e in EMOTIONS]
    exact = {c: FER_COUNTS[c[0]][c[1]] * n / FER_SIZE for c in cells}
    counts = {c: max(1, int(exact[c])) for c in cells}
    by_remainder = sorted(cells, key=lambda c: (exact[c] - int(exact[c]), c), reverse=True)
    i = 0
    while sum(counts.values()) < n:
        counts[by_remainder[i % len(cells)]] += 1
        i += 1
    while sum(counts.values()) > n:  # only with the minimum of one at tiny N
        biggest = max(cells, key=lambda c: counts[c])
        counts[biggest] -= 1
    return counts


def face_pool(seed: int) -> dict[str, np.ndarray]:
    """Per emotion, POOL_PER_EMOTION faces drawn by sample_data.render_face, as (k, 48, 48) uint8."""
    pool = {}
    for e_i, emotion in enumerate(EMOTIONS):
        faces = []
        for i in range(POOL_PER_EMOTION):
            data = render_face(emotion, np.random.default_rng([seed, 99, e_i, i]))
            faces.append(np.asarray(Image.open(io.BytesIO(data)).convert("L")))
        pool[emotion] = np.stack(faces)
    return pool


def vary(faces: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` new 48x48 images from ``faces``: each a face shifted by up to 3 px, flipped half the time,
    with its own contrast, brightness, lighting gradient and noise (vectorised; no two alike)."""
    pad = 3
    padded = np.pad(faces, ((0, 0), (pad, pad), (pad, pad)), mode="edge").astype(np.float32)
    base = rng.integers(0, len(faces), count)
    dy, dx = rng.integers(0, 2 * pad + 1, (2, count))
    rows = np.arange(48)[None, :] + dy[:, None]
    cols = np.arange(48)[None, :] + dx[:, None]
    flip = rng.random(count) < 0.5
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    x = padded[base[:, None, None], rows[:, :, None], cols[:, None, :]]
    light = np.linspace(-1, 1, 48, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi, count).astype(np.float32)
    shade = (
        np.cos(angle)[:, None, None] * light[None, None, :]
        + np.sin(angle)[:, None, None] * light[None, :, None]
    )
    mean = x.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.75, 1.25, (count, 1, 1)).astype(np.float32)
    x = (x - mean) * contrast + mean + rng.uniform(-25, 25, (count, 1, 1)).astype(np.float32)
    x += shade * rng.uniform(0, 25, (count, 1, 1)).astype(np.float32)
    x += rng.normal(0, 1, x.shape).astype(np.float32) * rng.uniform(2, 7, (count, 1, 1)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def _write_chunk(task: tuple) -> int:
    landing, split, emotion, start, count, seed = task
    if not _POOLS:
        _POOLS.update(face_pool(seed))
    pool = _POOLS[emotion]
    rng = np.random.default_rng([seed, SPLITS.index(split), EMOTIONS.index(emotion), start])
    folder = Path(landing) / split / emotion
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(vary(pool, count, rng)):
        out = io.BytesIO()
        Image.fromarray(img, mode="L").save(out, format="PNG", optimize=False)
        (folder / f"{split}_{emotion}_{start + i:07d}.png").write_bytes(out.getvalue())
    return count


_POOLS: dict[str, np.ndarray] = {}  # a worker's face pool, drawn once


def generate(landing: Path, n: int, seed: int = 0, workers: int = 2) -> dict:
    """Write N images into ``landing`` (``<split>/<emotion>/*.png``) in ``workers`` processes."""
    tasks = []
    for (split, emotion), count in fer_counts(n).items():
        for start in range(0, count, CHUNK):
            tasks.append((str(landing), split, emotion, start, min(CHUNK, count - start), seed))
    started = time.perf_counter()
    if workers <= 1:
        written = sum(map(_write_chunk, tasks))
    else:
        with ProcessPoolExecutor(workers) as ex:
            written = sum(ex.map(_write_chunk, tasks))
    seconds = time.perf_counter() - started
    return {"images": written, "seconds": round(seconds, 2), "images_per_s": round(written / seconds, 1)}


# --- what the demo did, from the Dagster instance ---


@dataclass
class Interval:
    """A step (``step`` set) or a whole run, from its events: seconds since the epoch."""

    run: str
    job: str
    start: float
    end: float
    step: str | None = None
    ok: bool = True

    @property
    def seconds(self) -> float:
        return self.end - self.start


def read_runs(instance, runs: list[dict]) -> tuple[list[Interval], list[Interval]]:
    """(runs, steps) of the demo's runs (its JSON summary's ``runs``): a run from its record's start and end
    time, a step from its STEP_START to its STEP_SUCCESS or STEP_FAILURE event."""
    from dagster import DagsterEventType  # deferred: only the events need it

    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    run_iv, step_iv = [], []
    for r in runs:
        record = instance.get_run_record_by_id(r["run_id"])
        if record is None or record.start_time is None or record.end_time is None:
            continue
        run_iv.append(Interval(r["run_id"], r["job"], record.start_time, record.end_time, ok=r["success"]))
        started: dict[str, float] = {}
        for entry in instance.all_logs(r["run_id"], of_type=kinds):
            kind = entry.dagster_event.event_type
            if kind == DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif entry.step_key in started:
                ok = kind == DagsterEventType.STEP_SUCCESS
                t0 = started.pop(entry.step_key)
                step_iv.append(Interval(r["run_id"], r["job"], t0, entry.timestamp, entry.step_key, ok))
    return run_iv, step_iv


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def phases(runs: list[Interval], steps: list[Interval], demo_start: float, demo_end: float) -> dict:
    """The demo's own time around its runs: [(start, end), ...] per phase (PHASES)."""
    ordered = sorted(runs, key=lambda r: r.start)
    out: dict[str, list[tuple[float, float]]] = {p: [] for p in PHASES}
    if not ordered:
        out[PHASES[0]].append((demo_start, demo_end))
        return out
    out[PHASES[0]].append((demo_start, ordered[0].start))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start > a.end:
            out[PHASES[1]].append((a.end, b.start))
    by_run: dict[str, list[tuple[float, float]]] = {}
    for s in steps:
        by_run.setdefault(s.run, []).append((s.start, s.end))
    for r in ordered:  # a run's time outside its steps: launch, resources, IO managers, event writes
        cursor = r.start
        for a, b in sorted(by_run.get(r.run, [])):
            if a > cursor:
                out[PHASES[2]].append((cursor, a))
            cursor = max(cursor, b)
        if r.end > cursor:
            out[PHASES[2]].append((cursor, r.end))
    out[PHASES[3]].append((max(r.end for r in ordered), demo_end))
    return out


def peak_in(
    samples: list[tuple[float, float, float]], spans: list[tuple[float, float]]
) -> tuple[float, float]:
    """(peak demo RSS, peak PostgreSQL PSS) in bytes over the samples (t, demo, pg) inside any span; a span
    shorter than the sampling period gets the sample nearest to it."""
    demo = pg = 0.0
    if not samples:
        return demo, pg
    times = np.array([s[0] for s in samples])
    for a, b in spans:
        lo, hi = np.searchsorted(times, a), np.searchsorted(times, b, side="right")
        if hi <= lo:  # no sample inside: the nearest one
            lo = int(np.clip(lo, 0, len(samples) - 1))
            hi = lo + 1
        for _t, d, p in samples[lo:hi]:
            demo, pg = max(demo, d), max(pg, p)
    return demo, pg


def stage_order(name: str) -> tuple:
    if name in STAGE_ORDER:
        return (0, STAGE_ORDER.index(name), name)
    if name.startswith("gold_"):
        return (1, 0, name)
    if name == "search_index":
        return (2, 0, name)
    if name in PHASES:
        return (4, PHASES.index(name), name)
    return (3, 0, name)


def stages(
    n: int,
    runs: list[Interval],
    steps: list[Interval],
    samples: list[tuple[float, float, float]],
    demo_start: float,
    demo_end: float,
) -> list[dict]:
    """One row per step key and per demo phase: count, summed and busy seconds, per-image cost, peaks."""
    spans: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}
    failed: dict[str, int] = {}
    for s in steps:
        spans.setdefault(s.step, []).append((s.start, s.end))
        counts[s.step] = counts.get(s.step, 0) + 1
        failed[s.step] = failed.get(s.step, 0) + (not s.ok)
    for name, found in phases(runs, steps, demo_start, demo_end).items():
        spans[name] = found
        counts[name] = len(found)
    rows = []
    for name in sorted(spans, key=stage_order):
        found = spans[name]
        summed = sum(b - a for a, b in found)
        busy = union_seconds(found)
        demo_peak, pg_peak = peak_in(samples, found)
        rows.append(
            {
                "stage": name,
                "count": counts[name],
                "failed": failed.get(name, 0),
                "seconds": round(summed, 3),
                "busy_seconds": round(busy, 3),
                "ms_per_image": round(1000 * summed / n, 4),
                "images_per_s": round(n / summed, 1) if summed > 0 else None,
                "peak_demo_rss_mib": round(demo_peak / 2**20, 1),
                "peak_postgres_pss_mib": round(pg_peak / 2**20, 1),
            }
        )
    return rows


def cost_ratios(first: dict, later: dict, flag: float = FLAG_RATIO) -> list[dict]:
    """Per stage, cost per image at ``later``'s N over ``first``'s (both results of ``measure``); flagged
    above ``flag``. A stage found at one size only is listed with ratio None."""
    a = {r["stage"]: r for r in first["stages"]}
    b = {r["stage"]: r for r in later["stages"]}
    out = []
    for name in sorted(set(a) | set(b), key=stage_order):
        ra, rb = a.get(name), b.get(name)
        ratio = None
        if ra and rb and ra["ms_per_image"] > 0:
            ratio = round(rb["ms_per_image"] / ra["ms_per_image"], 3)
        out.append(
            {
                "stage": name,
                "n1": first["n"],
                "n2": later["n"],
                "ms_per_image_n1": ra["ms_per_image"] if ra else None,
                "ms_per_image_n2": rb["ms_per_image"] if rb else None,
                "ratio": ratio,
                "flagged": ratio is not None and ratio > flag,
            }
        )
    return out


# --- running it ---


def rss_split(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident bytes of a process (/proc/PID/status: RssAnon, RssFile + RssShmem):
    the file-backed part is mostly shared libraries' pages, which the kernel may drop and read again."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                name, kib, _unit = line.split()
                fields[name] = int(kib) * 1024
    return fields.get("RssAnon:", 0), fields.get("RssFile:", 0) + fields.get("RssShmem:", 0)


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: (time, RSS of the demo's process tree, PSS of the PostgreSQL server's
    processes), in bytes; and in ``split`` the demo tree's (anonymous, file-backed) RSS of each sample."""

    def __init__(self, demo_pid: int, pg_pid: int | None):
        super().__init__(daemon=True)
        self.demo_pid, self.pg_pid = demo_pid, pg_pid
        self.samples: list[tuple[float, float, float]] = []
        self.split: list[tuple[float, float]] = []
        self.stop = threading.Event()

    @staticmethod
    def _tree(pid: int | None) -> list[psutil.Process]:
        if pid is None:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            demo = pg = anon = file = 0.0
            for p in self._tree(self.demo_pid):
                try:
                    demo += p.memory_info().rss
                    a, f = rss_split(p.pid)
                    anon, file = anon + a, file + f
                except (psutil.Error, OSError):
                    pass
            for p in self._tree(self.pg_pid):
                try:
                    pg += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.samples.append((t, demo, pg))
            self.split.append((anon, file))
            self.stop.wait(SAMPLE_SECONDS)


def peak_split(sampler: Sampler) -> list[float]:
    """[anonymous, file-backed] MiB of the demo's process tree at its highest sampled RSS."""
    if not sampler.samples:
        return [0.0, 0.0]
    i = max(range(len(sampler.samples)), key=lambda j: sampler.samples[j][1])
    return [round(x / 2**20, 1) for x in sampler.split[i]]


def demo_env(*pythonpath: Path) -> dict:
    """The environment the demo runs in: ``native``, random weights, no training, this checkout's code
    (after ``pythonpath``), no home or landing of the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in ("FER_LANDING", "FER_HOME", "FER_LAKE_URL")}
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in (*pythonpath, ROOT)),
        FER_EMBED_PROFILE="native",
        FER_EMBED_WEIGHTS="random",
        FER_DEMO_TRAIN="0",
    )
    return env


def cli_argv(home: Path, *args: str) -> list[str]:
    """The command line of ``fer-platform --home HOME ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fer_platform.cli", "--home", str(home), *args]


def cli(home: Path, *args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv(home, *args), env=env, cwd=ROOT, **kw)


def start_db(home: Path, env: dict) -> None:
    """``fer-platform db start`` on ``home``, or exit with its error."""
    started = cli(home, "db", "start", env=env, capture_output=True, text=True)
    if started.returncode:
        sys.exit(f"db start failed: {started.stderr[-2000:]}")


def start_demo(home: Path, env: dict, out, err, **popen) -> subprocess.Popen:
    """``fer-platform demo --json`` on ``home``, its output into the files ``out`` and ``err``."""
    return subprocess.Popen(
        cli_argv(home, "demo", "--json"), stdout=out, stderr=err, env=env, cwd=ROOT, **popen
    )


def postmaster_pid(home: Path) -> int | None:
    try:
        return int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def model_only_rate(pngs: list[bytes]) -> dict:
    """The model alone at the environment's profile (native here): preprocessed batches in memory, warm,
    run as ``image_embeddings`` runs the model (``Embedder.forward_all``: its lanes on the CPU); and, for
    reference, one forward at a time on all of torch's threads (how it ran before the lanes)."""
    from fer_platform.core.embedding import Embedder, preprocess  # deferred: torch
    from fer_platform.resources.environments import embedder_from_env  # deferred: dagster

    spec = embedder_from_env().spec()
    model = Embedder.get(spec)
    batches = [preprocess(pngs[i : i + spec.batch_size], spec) for i in range(0, len(pngs), spec.batch_size)]
    warm = [batches[0], batches[-1]] * max(2, model.lanes()[0])  # oneDNN primitives, both batch shapes
    for _ in model.forward_all(warm):
        pass
    for b in (batches[0], batches[-1]):
        model.forward(b)
    started = time.perf_counter()
    for _ in model.forward_all(batches):
        pass
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    for b in batches:
        model.forward(b)
    one_forward = time.perf_counter() - started
    return {
        "images_per_s": round(len(pngs) / seconds, 1),
        "one_forward_images_per_s": round(len(pngs) / one_forward, 1),
        "lanes": model.lanes()[0],
        "images": len(pngs),
        "batch_size": spec.batch_size,
    }


def sample_pngs(landing: Path, count: int) -> list[bytes]:
    files = sorted(landing.rglob("*.png"))
    step = max(1, len(files) // count)
    return [p.read_bytes() for p in files[::step][:count]]


def measure(n: int, home: Path, env: dict, workers: int, seed: int, model_images: int) -> dict:
    """One N: generate, run the demo, read it back."""
    import dagster as dg  # deferred: heavy, and only once a demo has run

    load = os.getloadavg()
    gen = generate(home / "landing", n, seed, workers)
    print(
        f"\nN = {n:,}: generated {gen['images']:,} images in {gen['seconds']} s "
        f"({gen['images_per_s']:,.0f}/s)"
    )
    pngs = sample_pngs(home / "landing", min(n, model_images))
    before = model_only_rate(pngs)
    start_db(home, env)
    pg_pid = postmaster_pid(home)
    out_path, err_path = home / "demo.json", home / "demo.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        demo_start = time.time()
        proc = start_demo(home, env, out, err)
        sampler = Sampler(proc.pid, pg_pid)
        sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        demo_end = time.time()
        sampler.stop.set()
        sampler.join()
    if proc.returncode not in (0, 1):
        sys.exit(f"demo failed ({proc.returncode}): {err_path.read_text()[-2000:]}")
    summary = json.loads(out_path.read_text())
    after = model_only_rate(pngs)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs, steps = read_runs(instance, summary["runs"])
    rows = stages(n, runs, steps, sampler.samples, demo_start, demo_end)
    model_only = (before["images_per_s"] + after["images_per_s"]) / 2
    emb = next((r for r in rows if r["stage"] == "image_embeddings"), None)
    return {
        "n": n,
        "generation": gen,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "demo": {
            "exit_code": proc.returncode,
            "seconds": round(demo_end - demo_start, 2),
            "images_per_s": round(n / (demo_end - demo_start), 1),
            "runs": len(runs),
            "failed_runs": sum(not r.ok for r in runs),
            "loaded": summary.get("loaded"),
            "duplicates": summary.get("duplicates"),
            "postgres_rows": summary.get("postgres_rows"),
            "silver_rows": summary.get("silver_rows"),
            "index_size": summary.get("index_size"),
            "disagreements": summary.get("disagreements"),
            "peak_demo_rss_mib_exact": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "peak_demo_rss_mib_sampled": round(max((s[1] for s in sampler.samples), default=0) / 2**20, 1),
            "peak_postgres_pss_mib": round(max((s[2] for s in sampler.samples), default=0) / 2**20, 1),
            "peak_total_mib": round(max((s[1] + s[2] for s in sampler.samples), default=0) / 2**20, 1),
            # the demo's anonymous memory at its highest, and the split at the sampled RSS peak
            "peak_demo_anon_mib": round(max((a for a, _f in sampler.split), default=0) / 2**20, 1),
            "demo_anon_file_mib_at_peak": peak_split(sampler),
            "samples": len(sampler.samples),
        },
        "model_only": {"before": before, "after": after, "images_per_s": round(model_only, 1)},
        "image_embeddings_vs_model_only": round(emb["images_per_s"] / model_only, 3) if emb else None,
        "stages": rows,
    }


def print_result(r: dict) -> None:
    d = r["demo"]
    print(
        f"demo: {d['seconds']:.1f} s ({d['images_per_s']:.0f} images/s), {d['runs']} runs "
        f"({d['failed_runs']} failed), exit {d['exit_code']}; loaded {d['loaded']}, duplicates "
        f"{d['duplicates']}, pgvector {d['postgres_rows']}, silver {d['silver_rows']}, "
        f"index {d['index_size']}"
    )
    print(
        f"peak memory: demo process {d['peak_demo_rss_mib_exact']:.0f} MiB (ru_maxrss; sampled "
        f"{d['peak_demo_rss_mib_sampled']:.0f}), PostgreSQL {d['peak_postgres_pss_mib']:.0f} MiB PSS, "
        f"together "
        f"{d['peak_total_mib']:.0f} MiB (sampled); load average {r['load_average_before'][0]} -> "
        f"{r['load_average_after'][0]}"
    )
    if "demo_anon_file_mib_at_peak" in d:
        anon, file = d["demo_anon_file_mib_at_peak"]
        print(
            f"demo process at its sampled peak: {anon:.0f} MiB anonymous + {file:.0f} MiB file-backed "
            f"(shared libraries' pages); anonymous at its highest {d['peak_demo_anon_mib']:.0f} MiB"
        )
    header = f"{'stage':<46} {'n':>4} {'sum s':>8} {'busy s':>8} {'ms/img':>8} {'img/s':>9} "
    header += f"{'demo MiB':>9} {'pg MiB':>7}"
    print(header)
    for s in r["stages"]:
        rate = f"{s['images_per_s']:>9.0f}" if s["images_per_s"] else f"{'-':>9}"
        fail = f"  ({s['failed']} failed)" if s["failed"] else ""
        print(
            f"{s['stage']:<46} {s['count']:>4} {s['seconds']:>8.2f} {s['busy_seconds']:>8.2f} "
            f"{s['ms_per_image']:>8.3f} {rate} {s['peak_demo_rss_mib']:>9.0f} "
            f"{s['peak_postgres_pss_mib']:>7.0f}{fail}"
        )
    m = r["model_only"]
    ratio = r["image_embeddings_vs_model_only"]
    print(
        f"model only at native: {m['before']['images_per_s']:.0f} / {m['after']['images_per_s']:.0f} "
        "images/s "
        f"before / after the demo ({m['before']['images']} images, batch {m['before']['batch_size']}, "
        f"{m['before'].get('lanes', 1)} lane(s); one forward at a time on all threads: "
        f"{m['before'].get('one_forward_images_per_s', 0):.0f} / "
        f"{m['after'].get('one_forward_images_per_s', 0):.0f}); "
        f"image_embeddings = {'-' if ratio is None else f'{ratio:.1%}'} of their mean"
    )


def print_ratios(ratios: list[dict]) -> None:
    if not ratios:
        return
    n1, n2 = ratios[0]["n1"], ratios[0]["n2"]
    print(f"\ncost per image at N = {n2:,} / at N = {n1:,} (flagged above {FLAG_RATIO}):")
    for r in ratios:
        shown = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"  {r['stage']:<46} {shown:>6}{'  > ' + str(FLAG_RATIO) if r['flagged'] else ''}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", action="append", help="images (repeatable, or a comma list); default 2000")
    ap.add_argument("--home", help="keep each N's home as DIR/n<N> (default: temporary, deleted)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "bench_scale.json"))
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--model-images", type=int, default=2048, help="images the model-only rate is measured on"
    )
    args = ap.parse_args(argv)
    try:
        sizes = parse_sizes(args.n or ["2000"])
    except ValueError as exc:
        ap.error(str(exc))
    env = demo_env()
    os.environ.update(FER_EMBED_PROFILE="native", FER_EMBED_WEIGHTS="random")  # the model-only rate's model
    keep = Path(args.home).resolve() if args.home else None
    if keep:
        for n in sizes:
            if (keep / f"n{n}").exists():
                sys.exit(f"{keep / f'n{n}'} exists: give a --home whose n<N> folders are new")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/bench_scale.py", *(argv if argv is not None else sys.argv[1:])])
    results: list[dict] = []
    for n in sizes:
        home = keep / f"n{n}" if keep else Path(tempfile.mkdtemp(prefix=f"ferscale-{n}-"))
        home.mkdir(parents=True, exist_ok=True)
        try:
            results.append(measure(n, home, env, args.workers, args.seed, args.model_images))
        finally:
            cli(home, "db", "stop", env=env, capture_output=True)
            if not keep:
                shutil.rmtree(home, ignore_errors=True)
        print_result(results[-1])
        ratios = [x for later in results[1:] for x in cost_ratios(results[0], later)]
        record = {  # after every N: a run stopped half-way keeps the sizes it measured
            "benchmark": "bench_scale",
            "command": command,
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "flag_ratio": FLAG_RATIO,
            "results": results,
            "ratios": ratios,
        }
        out.write_text(json.dumps(record, indent=1))
    for later in results[1:]:
        print_ratios([r for r in record["ratios"] if r["n2"] == later["n"]])
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
