"""The GPU paths of the embedder and of the emotion-model training (needs a CUDA device).

    python bench/bench_gpu.py [--images 2048] [--per-class 100] [--test-per-class 25] [--epochs 10]

Without the database or Dagster (what a GPU node runs in the embedding and training steps):
  * fidelity on CUDA vs the same model on the CPU: cosine of the vectors (TF32 convolutions allowed,
    as torch's defaults are), and batched == one at a time on the GPU
  * images/s on the GPU: fidelity (fp32, 224 px) and fast (bf16 autocast, 112 px), each with its cosine to
    fidelity; preprocessing runs in the embedder's background thread as in the pipeline
  * emotion-model training on the GPU: time, and the test-split figures beside the untuned weights
Exits with a message (status 0) where no CUDA device is present.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from fer_platform.core import training  # noqa: E402
from fer_platform.core.embedding import TRAIN_PROFILE, Embedder, EmbedderSpec, replace_profile  # noqa: E402
from fer_platform.core.layout import EMOTIONS  # noqa: E402
from fer_platform.core.sample_data import render_face  # noqa: E402


def row(label, value, unit, note=""):
    print(f"{label:<58} {value:>10.3f} {unit:<10} {note}", flush=True)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()

    import torch  # deferred: heavy

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here")
        return
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    pngs = [render_face(EMOTIONS[i % 7], np.random.default_rng([7, i])) for i in range(args.images)]

    cpu = Embedder.get(EmbedderSpec(weights="random", device="cpu", batch_size=64))
    gpu = Embedder.get(EmbedderSpec(weights="random", device="cuda", batch_size=256))
    ref = cpu.embed(pngs[:256])
    got = gpu.embed(pngs[:256])
    c = cosines(ref, got)
    row("fidelity: CUDA vs CPU vectors, cosine min", c.min(), "", f"mean {c.mean():.6f}, 256 images")
    single = np.concatenate([gpu.embed([p]) for p in pngs[:32]])
    c = cosines(single, got[:32])
    row("fidelity on CUDA: batched vs one at a time, cosine min", c.min(), "", "32 images")

    def rate(model):
        model.embed(pngs[:512])  # warm-up: cuDNN picks its kernels
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.embed(pngs)
        torch.cuda.synchronize()
        return len(pngs) / (time.perf_counter() - t0), out

    fid_rate, fid = rate(gpu)
    row("fidelity (fp32, 224 px) on the GPU", fid_rate, "images/s", f"batch 256, {len(pngs)} images")
    fast = Embedder.get(EmbedderSpec(weights="random", device="cuda", batch_size=256, profile="fast"))
    fast_rate, fv = rate(fast)
    c = cosines(fid, fv)
    row(
        f"fast (bf16 autocast: {fast.bf16}, 112 px) on the GPU",
        fast_rate,
        "images/s",
        f"cosine to fidelity mean {c.mean():.4f}, min {c.min():.4f}",
    )

    def faces(split_i, n):
        out, labels = [], []
        for e_i, e in enumerate(EMOTIONS):
            for i in range(n):
                out.append(render_face(e, np.random.default_rng([0, split_i, e_i, i])))
                labels.append(e_i)
        return out, np.array(labels)

    tr, trl = faces(0, args.per_class)
    te, tel = faces(1, args.test_per_class)
    data = training.Dataset(
        pa.table({"image_id": [str(i) for i in range(len(tr) + len(te))]}), tr, trl, te, tel
    )
    base = EmbedderSpec(weights="random")
    t0 = time.perf_counter()
    model = training.train(
        data,
        base,
        training.TrainingConfig(epochs=args.epochs, device="cuda"),
        on_epoch=lambda r: print("    " + r.line(), flush=True),
    )
    seconds = time.perf_counter() - t0
    tuned = training.measure(model.embedder(), data)
    untuned = training.measure(training.untuned_embedder(replace_profile(base, TRAIN_PROFILE)), data)
    row(
        f"training on the GPU, {args.epochs} epochs, {len(tr)} train images",
        seconds,
        "s",
        f"device {model.device}",
    )
    for name, m in (("tuned", tuned), ("untuned (48 px)", untuned)):
        row(
            f"{name}: test 10-NN agreement",
            m["agreement_at_10"],
            "",
            f"nearest-centroid accuracy {m['centroid_accuracy']:.3f}",
        )


if __name__ == "__main__":
    main()
