"""`make demo` end to end, with and without training the emotion model (issue 13).

    .venv/bin/python bench/bench_demo.py [--seed 0] [--per-class 40] [--test-per-class 10]

Three `fer-platform demo --json` processes, each on the generated sample landing of the demo's defaults:
  * a fresh home with weights auto and training on (what `make demo` does on a new machine): wall time, the
    up-front estimate beside the training job's time, the test split's 10-NN agreement (searches for every
    test image among all images, self excluded) beside chance, and the search example's share
  * the same home again, nothing new (no training, no run)
  * a fresh home with --skip-training (the untuned weights serve)

Weights are `auto`; ImageNet is made unreachable (TORCH_HOME in the workspace, HTTPS through a closed port on
127.0.0.1), so the base weights are the deterministic random ones, as on this machine anyway.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo(home: Path, *args: str, env: dict) -> tuple[dict, str, float]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "demo", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if out.returncode:
        sys.exit(f"demo failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout), out.stderr, seconds


def report(label: str, summary: dict, seconds: float) -> None:
    agreement = summary["agreement"]
    example = summary["search_example"] or {}
    training = summary["training"]
    print(f"{label}: {seconds:.1f} s wall, {len(summary['runs'])} runs, model {summary['model']}")
    if training["trained"]:
        print(
            f"    training job {training['seconds']} s (estimate said {training['estimate_seconds']:.0f} s), "
            f"{training['train_images']} train images"
        )
    if training.get("approved"):
        a = training["approved"]
        print(
            f"    check (test among test): tuned {a['agreement_at_10']:.3f} / untuned "
            f"{a['untuned_agreement_at_10']:.3f}; centroid accuracy {a['centroid_accuracy']:.3f} / "
            f"{a['untuned_centroid_accuracy']:.3f}"
        )
    if agreement["agreement"] is not None:
        print(
            f"    test-split search agreement@{agreement['k']} {agreement['agreement']:.3f} "
            f"(chance {agreement['chance']:.3f}, {agreement['queries']} queries); search example "
            f"{example.get('same_emotion')} of {len(example.get('hits', []))}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--test-per-class", type=int, default=10)
    args = ap.parse_args()
    sample = ["--seed", str(args.seed), "--per-class", str(args.per_class)]
    sample += ["--test-per-class", str(args.test_per_class)]
    root = Path(tempfile.mkdtemp(prefix="ferbench-demo-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FER_EMBED_WEIGHTS": "auto",
        "FER_DEMO_TRAIN": "1",
        "TORCH_HOME": str(root / "torch"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    homes = [root / "trained", root / "untrained"]
    try:
        first, err, seconds = demo(homes[0], *sample, env=env)
        said = re.search(r"training the emotion model on .*", err)
        print(f"up front: {said.group(0) if said else '(nothing said)'}")
        report("fresh home, training", first, seconds)
        again, _, seconds = demo(homes[0], *sample, env=env)
        report("same home again, nothing new", again, seconds)
        skipped, _, seconds = demo(homes[1], *sample, "--skip-training", env=env)
        report("fresh home, --skip-training", skipped, seconds)
    finally:
        for home in homes:
            subprocess.run(
                [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "db", "stop"],
                env=env,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
