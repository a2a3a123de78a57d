"""The emotion-tuned model: test-split figures of random, ImageNet and tuned weights; training time; images/s.

    .venv/bin/python bench/bench_model.py [--per-class 100] [--test-per-class 25] [--epochs 10]
                                          [--min-steps 0] [--device auto] [--threads N]

On a generated landing zone with a held-out test split, loaded through raw and bronze:
  * emotion_model materialised with its blocking check (the train_emotion_model job's assets): training time
    and the test-split figures it records (tuned, and untuned = the base weights at the same 48x48 input)
  * the same figures for the untuned weights as the pipeline serves them by default (fidelity, 224 px), and
    for ImageNet weights where they can be had (offline: "not available offline")
  * embedding images/s of the tuned model (batched, warm, best of 3) beside the untuned fidelity model
  * the re-embedding backfill with the tuned model: image_embeddings + silver_embeddings of every partition

The base weights are FER_EMBED_WEIGHTS (random unless set; auto or imagenet trains from ImageNet where it can
be had). Figures: 10-NN emotion agreement among the test images (exact cosine, self excluded; chance beside
it) and the accuracy of a nearest-centroid classifier (centroids of the train vectors) on the test images.
"""

import argparse
import time

import dagster as dg
from common import QUIET, Timer, resources, row, workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--min-steps", type=int, default=0, help="more epochs for a small split (the asset's default: 150)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from fer_platform.assets.bronze import bronze_images
    from fer_platform.assets.embeddings import image_embeddings, image_embeddings_complete
    from fer_platform.assets.model import embedding_model, emotion_model, emotion_model_beats_untuned
    from fer_platform.assets.raw import raw_images
    from fer_platform.assets.silver import silver_embeddings, silver_matches_postgres
    from fer_platform.core import training
    from fer_platform.core.bronze import read_labelled
    from fer_platform.core.embedding import Embedder, EmbedderSpec, WeightsUnavailable, resolve_weights
    from fer_platform.core.layout import EMOTIONS
    from fer_platform.core.sample_data import write_sample_landing
    from fer_platform.partitions import partition_key, utc_today
    from fer_platform.resources import EmbedderResource, PostgresResource
    from fer_platform.resources.environments import vector_resources

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    assets = [raw_images, bronze_images, image_embeddings, silver_embeddings, emotion_model, embedding_model]
    checks = [emotion_model_beats_untuned, image_embeddings_complete, silver_matches_postgres]
    with workspace("fermodel-") as (root, _admin, dsn):
        n = write_sample_landing(root / "landing", args.per_class, args.test_per_class, seed=1)["images"]
        res = resources(root, dsn, batch_size=args.batch_size)
        instance = dg.DagsterInstance.ephemeral()

        def run(select, partition=None, config=None, resources=res):
            result = dg.materialize(
                [*assets, *checks],
                selection=select,
                resources=resources,
                instance=instance,
                partition_key=partition_key(partition, utc_today()) if partition else None,
                run_config={**QUIET, **({"ops": config} if config else {})},
            )
            assert result.success
            return result

        with Timer() as t:
            for e in EMOTIONS:
                run([raw_images, bronze_images], e)
        print(
            f"{n} images ({args.per_class} train + {args.test_per_class} test per emotion), raw + bronze in "
            f"{t.seconds:.1f} s\n"
        )

        config = {
            "epochs": args.epochs,
            "min_steps": args.min_steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": args.device,
            "num_threads": args.threads,
        }
        with Timer() as t:
            trained = run([emotion_model, embedding_model], config={"emotion_model": {"config": config}})
        meta = trained.asset_materializations_for_node("emotion_model")[0].metadata
        (check,) = trained.get_asset_check_evaluations()
        model = meta["model"].value
        row(
            "emotion_model: training",
            meta["training_seconds"].value,
            "s",
            f"{args.epochs} epochs, {meta['train_images'].value} train images, {meta['device'].value}",
        )
        row("emotion_model + blocking check, whole run", t.seconds, "s", f"check passed: {check.passed}")
        chance = meta["chance_agreement"].value
        print(
            f"\ntest split: {meta['test_images'].value} images; 10-NN agreement chance level {chance:.3f}, "
            f"classifier chance {1 / len(EMOTIONS):.3f}"
        )

        data = training.Dataset.from_bronze(read_labelled(res["lake"].storage()))

        def figures(label: str, agreement: float, accuracy: float, note: str = "") -> None:
            print(
                f"{label:<44} 10-NN agreement {agreement:.3f}   centroid accuracy {accuracy:.3f}   {note}",
                flush=True,
            )

        served = training.measure(
            Embedder.get(EmbedderSpec(weights="random", batch_size=args.batch_size)), data
        )
        figures(
            "random weights, fidelity 224 px (served)",
            served["agreement_at_10"],
            served["centroid_accuracy"],
            served["model"],
        )
        figures(
            "random weights, native 48 px (check baseline)",
            meta["untuned_agreement_at_10"].value,
            meta["untuned_centroid_accuracy"].value,
            meta["base_model"].value,
        )
        try:
            resolve_weights(EmbedderSpec(weights="imagenet"))
        except WeightsUnavailable:
            print(f"{'ImageNet weights':<44} not available offline (no network, not cached)")
        else:
            for profile in ("fidelity", "native"):
                got = training.measure(Embedder.get(EmbedderSpec(weights="imagenet", profile=profile)), data)
                figures(
                    f"ImageNet weights, {profile}",
                    got["agreement_at_10"],
                    got["centroid_accuracy"],
                    got["model"],
                )
        figures(
            "tuned (emotion_model)",
            meta["tuned_agreement_at_10"].value,
            meta["tuned_centroid_accuracy"].value,
            model,
        )

        # images/s of the served models, batched and warm
        tuned_res = {
            **res,
            **vector_resources(
                PostgresResource(dsn=dsn),
                EmbedderResource(weights="tuned", lake=res["lake"], batch_size=args.batch_size),
            ),
        }
        pngs = data.train_pngs + data.test_pngs
        print()
        for label, embedder in (
            ("tuned model, native 48 px", tuned_res["embedder"].load()),
            (
                "untuned model, fidelity 224 px",
                Embedder.get(EmbedderSpec(weights="random", batch_size=args.batch_size)),
            ),
        ):
            embedder.embed(pngs[: args.batch_size * 2])  # warm-up
            seconds = []
            for _ in range(3):  # best of 3: the machine may be shared
                with Timer() as t:
                    embedder.embed(pngs)
                seconds.append(t.seconds)
            row(
                f"embedding images/s, {label}",
                len(pngs) / min(seconds),
                "images/s",
                f"{len(pngs)} images, best of 3 (worst {len(pngs) / max(seconds):.1f})",
            )

        # the re-embedding backfill with the tuned model (every partition, with the checks)
        run([embedding_model], resources=tuned_res)
        with Timer() as t:
            for e in EMOTIONS:
                run([image_embeddings, silver_embeddings], e, resources=tuned_res)
        row(
            "re-embedding backfill (tuned): embeddings + silver + checks",
            n / t.seconds,
            "images/s",
            f"{len(EMOTIONS)} partition runs, {t.seconds:.1f} s",
        )
        goal = meta["tuned_agreement_at_10"].value >= 0.9
        print(
            f"\ngoal tuned 10-NN agreement >= 0.9 on the test split: {'met' if goal else 'NOT met'} "
            f"({time.strftime('%Y-%m-%d')})"
        )


if __name__ == "__main__":
    main()
