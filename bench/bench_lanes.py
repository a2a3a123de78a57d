"""The embedder on the CPU: one forward at a time on all of torch's threads against lanes (each a thread of
its own, embedding batches of its own), on the same images in one process, per profile.

    .venv/bin/python bench/bench_lanes.py [--images 4096] [--profiles native,fast,fidelity] [--repeat 3]

Per profile (batch 64), the best of ``--repeat`` rounds, each mode once per round in turn:
  * the model alone, one forward at a time on all threads (how it ran before the lanes)
  * the model alone in lanes (``Embedder.forward_all``: what ``image_embeddings`` runs, decoding aside)
  * decoding + model, one decoding thread ahead of one forward at a time on all threads (before)
  * decoding + model in lanes (``Embedder.stream`` now)
Where a profile keeps one lane (``fidelity``'s batch of 64: the lanes' memory bound), both are one path.
"""

import argparse
import time

import numpy as np
from common import row

from fer_platform.core.embedding import Embedder, EmbedderSpec, preprocess, resolve_weights
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.sample_data import render_face


def rate(fn, images: int) -> float:
    started = time.perf_counter()
    fn()
    return images / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--profiles", default="native,fast,fidelity")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch  # deferred: heavy

    rng = np.random.default_rng(0)
    pngs = [render_face(EMOTIONS[i % len(EMOTIONS)], rng) for i in range(args.images)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(pngs)} generated faces")
    for profile in args.profiles.split(","):
        share = {"native": 1, "fast": 4}.get(profile, 16)  # the bigger inputs: fewer images, same time
        measure(profile, pngs[: max(256, len(pngs) // share)], args.repeat)


def measure(profile: str, images: list[bytes], repeat: int) -> None:
    spec = EmbedderSpec(weights="random", profile=profile)
    model = Embedder.get(spec)
    one_lane = Embedder(spec, resolve_weights(spec))  # another instance of the same model: one lane
    lanes, threads = model.lanes()
    bs = model.spec.batch_size
    batches = [preprocess(images[i : i + bs], model.spec) for i in range(0, len(images), bs)]
    modes = {
        "model alone, one forward on all threads": lambda: [model.forward(b) for b in batches],
        f"model alone, {lanes} lane(s) sharing {threads} thread(s)": lambda: list(model.forward_all(batches)),
        "decoding + model, one decoding thread + one forward": lambda: list(
            _one_lane_stream(one_lane, images)
        ),
        f"decoding + model, {lanes} lane(s) (stream now)": lambda: list(model.stream(images)),
    }
    for fn in modes.values():  # warm: oneDNN primitives for both batch shapes, the lanes' threads
        fn()
    best = dict.fromkeys(modes, 0.0)
    for _ in range(repeat):
        for name, fn in modes.items():
            best[name] = max(best[name], rate(fn, len(images)))
    print(f"\n{profile} ({len(images)} images, batch {bs}):")
    names = list(modes)
    for name in names:
        row(f"  {name}", best[name], "images/s", f"{best[name] / best[names[0]]:.2f}x the first")
    row("  decoding + model / model alone, in lanes", best[names[3]] / best[names[1]], "", "")
    row("  decoding + model / model alone, before", best[names[2]] / best[names[0]], "", "")


def _one_lane_stream(model: Embedder, pngs):
    """``stream`` as it ran before the lanes: one decoding thread ahead of one forward on all threads (the
    path a GPU and one thread still take), on an instance of its own."""
    model.lanes = lambda batches=None: (1, 0)
    return model.stream(pngs)


if __name__ == "__main__":
    main()
