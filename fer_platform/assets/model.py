"""emotion_model: ResNet18 fine-tuned for emotions on bronze's train split; embedding_model: the model
whose vectors the platform serves (its id is the data version the vector layers depend on)."""

from dataclasses import replace
from typing import Optional

import dagster as dg

from fer_platform.assets.bronze import bronze_images
from fer_platform.catalog import DATA_VERSION_TAG
from fer_platform.core import ledger, models, plots, training
from fer_platform.core.bronze import read_labelled
from fer_platform.core.errors import FerError
from fer_platform.core.layout import EMOTIONS, MODELS
from fer_platform.core.report import markdown_table
from fer_platform.core.storage import LakeFiles
from fer_platform.io_managers.parquet import LAKE_FORMAT, LAKE_PATH
from fer_platform.resources import EmbedderResource, LakeResource, PostgresResource
from fer_platform.resources.environments import gpu_step_tags


class EmotionModelConfig(dg.Config):
    epochs: int = 10
    min_steps: int = training.MIN_STEPS
    """A small train split gets more epochs, up to this many optimiser steps in all (FER2013's 28,709 train
    images make 449 steps an epoch: 10 epochs; the demo's 280 make 5)."""
    batch_size: int = 64
    learning_rate: float = 1e-3
    loss: str = "cosine"
    """cosine (normalised softmax over the 512-d vectors: measured better for retrieval) or cross_entropy."""
    seed: int = 0
    base_weights: Optional[str] = None
    """Weights to start from: unset, the embedder's (auto when those are tuned): ImageNet where available."""
    device: str = "auto"
    """auto: a GPU when there is one, else the CPU."""
    num_threads: int = 0


def base_spec(config: EmotionModelConfig, embedder: EmbedderResource):
    """The untuned model a training run starts from (never a tuned one: retraining is reproducible)."""
    weights = config.base_weights or ("auto" if embedder.tuned else embedder.weights)
    return replace(embedder.base_spec(), weights=weights, device=config.device)


@dg.asset(
    deps=[bronze_images],
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: MODELS, LAKE_FORMAT: "files"},
    op_tags=gpu_step_tags(),  # the GPU workers' queue (Celery), a GPU node (Kubernetes)
    group_name="model",
    kinds={"pytorch"},
    description="ResNet18 fine-tuned for emotions on every bronze image of the train split (cosine "
    "classifier on the 512-d layer, native 48x48 input), measured on the test split beside the untuned "
    "weights. Files in `models/{model id}/`: weights.pt, config.json, snapshot.parquet (the bronze rows it "
    "saw), metrics.json.",
)
def emotion_model(
    context: dg.AssetExecutionContext,
    config: EmotionModelConfig,
    lake: LakeResource,
    embedder: EmbedderResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    bronze = read_labelled(lake.storage())
    with postgres.connect() as conn:  # test images with a train copy (leakage) stay out of the test figures
        leaked = ledger.leaked_test_ids(conn)
    settings = training.TrainingConfig(
        epochs=config.epochs,
        min_steps=config.min_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        loss=config.loss,
        seed=config.seed,
        device=config.device,
        num_threads=config.num_threads,
    )
    try:
        built = training.build_model(
            bronze,
            base_spec(config, embedder),
            settings,
            on_epoch=lambda r: context.log.info(r.line()),
            leaked=leaked,
        )
    except FerError as exc:
        raise dg.Failure(description=f"emotion_model: {exc}") from None
    metrics, trained = built["metrics"], built["trained"]
    files = LakeFiles(built["model"], built["files"])  # lands in models/<model id>/
    # The model id is the data version: a retrain that reproduces the same weights changes nothing downstream.
    return dg.MaterializeResult(
        value=files,
        data_version=dg.DataVersion(built["model"]),
        metadata=model_metadata(metrics, trained, built["data"]),
    )


def model_metadata(metrics: dict, trained, data) -> dict:
    tuned, untuned = metrics["tuned"], metrics["untuned"]
    figures = [
        {
            "figure": "10-NN emotion agreement",
            "tuned": tuned["agreement_at_10"],
            "untuned": untuned["agreement_at_10"],
            "chance": metrics["chance"],
        },
        {
            "figure": "nearest-centroid accuracy",
            "tuned": tuned["centroid_accuracy"],
            "untuned": untuned["centroid_accuracy"],
            "chance": 1 / len(EMOTIONS),
        },
    ]
    history = [
        {
            "epoch": h.epoch,
            "loss": round(h.loss, 4),
            "test_agreement": round(h.test_agreement, 3),
            "seconds": round(h.seconds, 1),
        }
        for h in trained.history
    ]
    meta = {
        "model": tuned["model"],
        "base_model": untuned["model"],
        "tuned_agreement_at_10": tuned["agreement_at_10"],
        "untuned_agreement_at_10": untuned["agreement_at_10"],
        "chance_agreement": metrics["chance"],
        "tuned_centroid_accuracy": tuned["centroid_accuracy"],
        "untuned_centroid_accuracy": untuned["centroid_accuracy"],
        "train_images": metrics["train_images"],
        "test_images": metrics["test_images"],
        "leaked_test_images_excluded": metrics["leaked_test_images_excluded"],
        "epochs": len(trained.history),
        "training_seconds": round(trained.seconds, 1),
        "device": trained.device,
        "test_figures": dg.MetadataValue.md(
            markdown_table(figures, ["figure", "tuned", "untuned", "chance"])
        ),
        "history": dg.MetadataValue.md(
            markdown_table(history, ["epoch", "loss", "test_agreement", "seconds"])
        ),
        "images_by_split": dg.MetadataValue.json(data.counts()),
    }
    if tuned["confusion"] is not None:
        png = plots.confusion_matrix(
            tuned["confusion"], EMOTIONS, "Tuned model, test split (nearest centroid)"
        )
        meta["confusion_matrix"] = dg.MetadataValue.md(plots.markdown_image(png, "confusion matrix"))
    return meta


@dg.asset(
    deps=[emotion_model],
    group_name="model",
    kinds={"pytorch"},
    output_required=False,
    description="The model whose vectors the platform serves: the embedder's weights resolved (for weights "
    "'auto' and 'tuned', the latest emotion_model that passed its check). Its model id is the data version, "
    "and it materialises only when that id changes: then image_embeddings, silver_embeddings, gold and the "
    "search index made by the previous model show as unsynced until re-materialised (a backfill of "
    "reembed_images).",
)
def embedding_model(context: dg.AssetExecutionContext, embedder: EmbedderResource):
    embedder.reread()  # a model approved earlier in this run (train_emotion_model) is served from now on
    model = embedder.served_model()
    if model == last_data_version(context, context.asset_key):
        context.log.info(f"still serving {model}: nothing downstream changes")
        return
    meta: dict = {"model": model, "weights": embedder.weights}
    if embedder.serves_tuned:
        record = embedder.approved()
        meta["approved_at"] = record.get("approved_at", "")
        meta["test_agreement_at_10"] = float(record.get("agreement_at_10") or 0.0)
        meta["test_centroid_accuracy"] = float(record.get("centroid_accuracy") or 0.0)
    else:
        note = embedder.weights_note()
        if note:
            context.log.warning(note)
    context.log.info(f"serving {model}")
    yield dg.MaterializeResult(data_version=dg.DataVersion(model), metadata=meta)


def last_data_version(context: dg.AssetExecutionContext, key: dg.AssetKey) -> Optional[str]:
    event = context.instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    return materialization.tags.get(DATA_VERSION_TAG) if materialization and materialization.tags else None


MODEL_ASSETS = [emotion_model, embedding_model]


@dg.asset_check(
    asset=emotion_model,
    blocking=True,
    description=f"Re-measures the stored model from its lake files alone (weights digest, the bronze rows of "
    f"its snapshot): on the test split it must beat the untuned base weights (same input size) by "
    f"{training.APPROVAL_MARGIN} in 10-NN emotion agreement and in nearest-centroid accuracy, with finite "
    "vectors. When it passes, the model is approved in the lake (`models/{id}/APPROVAL.json`, then the "
    "models/APPROVED pointer) and becomes what embedder weights 'tuned' serve.",
)
def emotion_model_beats_untuned(
    emotion_model: LakeFiles, lake: LakeResource, embedder: EmbedderResource, postgres: PostgresResource
) -> dg.AssetCheckResult:
    bronze = read_labelled(lake.storage())
    with postgres.connect() as conn:
        leaked = ledger.leaked_test_ids(conn)
    try:
        result = training.verify_model(emotion_model.files, bronze, device=embedder.device, leaked=leaked)
    except FerError as exc:
        return dg.AssetCheckResult(passed=False, description=f"model {emotion_model.folder}: {exc}")
    metrics, problems = result["metrics"], result["problems"]
    figures = {
        "tuned_agreement_at_10": metrics["tuned"]["agreement_at_10"],
        "untuned_agreement_at_10": metrics["untuned"]["agreement_at_10"],
        "tuned_centroid_accuracy": metrics["tuned"]["centroid_accuracy"],
        "untuned_centroid_accuracy": metrics["untuned"]["centroid_accuracy"],
    }
    meta = {
        "model": result["model"],
        **figures,
        "test_images": metrics["test_images"],
        "leaked_test_images_excluded": metrics["leaked_test_images_excluded"],
    }
    if not problems:
        models.approve(
            lake.storage(),
            result["model"],
            {
                "agreement_at_10": figures["tuned_agreement_at_10"],
                "centroid_accuracy": figures["tuned_centroid_accuracy"],
                "untuned_agreement_at_10": figures["untuned_agreement_at_10"],
                "untuned_centroid_accuracy": figures["untuned_centroid_accuracy"],
            },
        )
        meta["approved"] = dg.MetadataValue.path(lake.storage().uri(f"{models.MODELS}/{models.APPROVED}"))
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None, metadata=meta)
