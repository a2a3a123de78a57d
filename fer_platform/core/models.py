"""Emotion models in the lake: their files, their approval, and fetching one to serve it.

A model is a folder ``models/<model id>/`` (written by the lake IO manager, which then names
it in ``models/LATEST``):

    config.json        architecture, profile (input size), base weights, training settings, digest
    weights.pt         the backbone's state dict (ResNet18 without classifier: 512-d vectors)
    snapshot.parquet   the bronze rows it trained and was measured on: image_id, emotion, split, load_date
    metrics.json       test-split figures, tuned beside untuned; the training history

Approval is recorded in the lake too, by the model's blocking check when it passes:
``models/<model id>/APPROVAL.json`` (this model passed, with the figures) and then the pointer
``models/APPROVED`` (the latest model that passed). Every environment that can read the lake
(runs, sensors, the ``fer-platform search`` command, a notebook) can resolve ``weights: tuned``
without reaching the Dagster instance; the run's check evaluation in the instance stays the
audit trail.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import posixpath
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core.embedding import (
    DIM,
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    TRAIN_PROFILE,
    EmbedderSpec,
    Weights,
    WeightsUnavailable,
    model_id,
    replace_profile,
    weights_digest,
)
from fer_platform.core.layout import EMOTIONS, MODELS
from fer_platform.core.storage import Storage

SNAPSHOT = "snapshot.parquet"
METRICS = "metrics.json"
APPROVED = "APPROVED"
APPROVAL = "APPROVAL.json"
MODEL_FILES = (MODEL_CONFIG, MODEL_WEIGHTS, SNAPSHOT, METRICS)


def model_dir(model: str) -> str:
    return posixpath.join(MODELS, model)


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def package(trained, metrics: dict, snapshot: pa.Table, training: dict) -> tuple[str, dict[str, bytes]]:
    """(model id, files) of a trained model (a ``training.TrainedModel``); names the model in ``metrics``."""
    import torch  # deferred: heavy

    buf = io.BytesIO()
    torch.save(trained.state_dict, buf)
    weights = buf.getvalue()
    digest = weights_digest(weights)
    spec = replace_profile(trained.base_spec, TRAIN_PROFILE)
    mid = model_id(spec, Weights("tuned", f"tuned-{digest}", None, profile=TRAIN_PROFILE))
    config = {
        "model": mid,
        "architecture": "resnet18",
        "embedding_dim": DIM,
        "profile": TRAIN_PROFILE,
        "input_size": spec.input_size,
        "resize_to": spec.resize_to,
        "normalize": "imagenet mean/std on Grayscale(3)",
        "weights_digest": digest,
        "base": {
            "weights": trained.base_spec.weights,
            "seed": trained.base_spec.seed,
            "resolved": trained.base_weights.tag,
            "model": model_id(spec, trained.base_weights),
        },
        "emotions": list(EMOTIONS),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    metrics["tuned"]["model"] = mid
    out = io.BytesIO()
    pq.write_table(snapshot, out, compression="zstd")
    files = {
        MODEL_CONFIG: _json(config),
        MODEL_WEIGHTS: weights,
        SNAPSHOT: out.getvalue(),
        METRICS: _json({**metrics, "training": training}),
    }
    return mid, files


def unpack(files: dict[str, bytes]) -> dict:
    """config, metrics, snapshot (Arrow) and state dict of a model's files; checks the weights digest."""
    import torch  # deferred: heavy

    missing = [f for f in MODEL_FILES if f not in files]
    if missing:
        raise WeightsUnavailable(f"model files missing: {', '.join(missing)}")
    config = json.loads(files[MODEL_CONFIG])
    digest = weights_digest(files[MODEL_WEIGHTS])
    if digest != config.get("weights_digest"):
        raise WeightsUnavailable(
            f"model {config.get('model')}: weights.pt has digest {digest}, its config names "
            f"{config.get('weights_digest')}"
        )
    return {
        "config": config,
        "metrics": json.loads(files[METRICS]),
        "snapshot": pq.read_table(io.BytesIO(files[SNAPSHOT]), use_threads=False),
        "state_dict": torch.load(io.BytesIO(files[MODEL_WEIGHTS]), map_location="cpu", weights_only=True),
    }


# --------------------------------------------------------------------------- approval
def approve(lake: Storage, model: str, summary: dict) -> dict:
    """Record that ``model`` passed its check: its APPROVAL.json, then the APPROVED pointer (last, so a
    reader never sees a pointer to a model without its approval)."""
    if not lake.exists(f"{model_dir(model)}/{MODEL_WEIGHTS}"):
        raise WeightsUnavailable(f"cannot approve {model}: {lake.uri(model_dir(model))} holds no weights")
    record = {
        "model": model,
        "approved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **summary,
    }
    lake.write_bytes(f"{model_dir(model)}/{APPROVAL}", _json(record))
    lake.write_bytes(f"{MODELS}/{APPROVED}", _json(record))
    return record


def approved_model(lake: Storage) -> dict | None:
    """The latest approved model's record (``model``, ``approved_at``, figures), or None."""
    try:
        return json.loads(lake.read_bytes(f"{MODELS}/{APPROVED}"))
    except FileNotFoundError:
        return None


def approval_of(lake: Storage, model: str) -> dict | None:
    """The approval record of one model, or None if it never passed its check."""
    try:
        return json.loads(lake.read_bytes(f"{model_dir(model)}/{APPROVAL}"))
    except FileNotFoundError:
        return None


def resolve_tuned(lake: Storage, weights: str) -> dict:
    """The approval record that ``weights`` (``tuned``: the latest approved model; ``tuned:<model id>``:
    that model, which must have passed its check) names; one readable line if there is none."""
    if weights == "tuned":
        record = approved_model(lake)
        if record is None:
            raise WeightsUnavailable(
                f"weights 'tuned': no approved emotion model in {lake.uri(MODELS)} (no {APPROVED} pointer): "
                "materialise emotion_model (job train_emotion_model) and let its check pass, or set "
                "FER_EMBED_WEIGHTS to auto, imagenet, random or a weights path"
            )
        return record
    model = weights.split(":", 1)[1].strip()
    record = approval_of(lake, model)
    if record is None:
        raise WeightsUnavailable(
            f"weights {weights!r}: {lake.uri(model_dir(model))} is not an approved emotion model "
            f"(no {APPROVAL})"
        )
    return record


# --------------------------------------------------------------------------- when to train again
RETRAIN_GROWTH = 0.05  # the train split must have grown by this share since the approved model's snapshot


def snapshot_train_ids(lake: Storage, model: str) -> set[str]:
    """The image ids of the train split a model was trained on (its snapshot.parquet)."""
    try:
        data = lake.read_bytes(f"{model_dir(model)}/{SNAPSHOT}")
    except FileNotFoundError:
        return set()
    snap = pq.read_table(io.BytesIO(data), columns=["image_id", "split"], use_threads=False)
    return {
        i
        for i, s in zip(snap["image_id"].to_pylist(), snap["split"].to_pylist(), strict=True)
        if s == "train"
    }


def training_due(lake: Storage, train_ids: set[str], growth: float = RETRAIN_GROWTH) -> str | None:
    """Why an emotion model should be trained on a train split of ``train_ids`` now, or None: there is no
    approved model yet, or the train split holds at least ``growth`` (5 %) more images than the approved
    model saw (new images it never trained on; at least one). A train split that grew less, or only lost
    images, keeps the approved model: retraining costs minutes per thousand images, and the same data gives
    the same model."""
    if not train_ids:
        return None
    record = approved_model(lake)
    if record is None:
        return "no approved emotion model yet"
    seen = snapshot_train_ids(lake, record["model"])
    new = len(train_ids - seen)
    if new and new >= max(1.0, growth * len(seen)):
        return (
            f"the train split grew by {new:,} image(s) the approved model {record['model']} never saw "
            f"({len(seen):,} -> {len(train_ids):,})"
        )
    return None


def default_cache() -> Path:
    return Path(os.environ.get("FER_MODEL_CACHE") or Path.home() / ".cache" / "fer-platform" / "models")


def local_model_folder(lake: Storage, model: str, cache: Path | None = None) -> Path:
    """A local folder with the model's config.json and weights.pt: the lake folder itself when the lake
    is local, else a copy in ``cache`` (downloaded once, published by an atomic rename)."""
    if lake.local:
        folder = Path(lake.path(model_dir(model)))
        if not (folder / MODEL_WEIGHTS).is_file():
            raise WeightsUnavailable(f"model {model} has no weights at {folder}")
        return folder
    target = (cache or default_cache()) / model
    if (target / MODEL_CONFIG).is_file() and (target / MODEL_WEIGHTS).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model}.", dir=target.parent))
    try:
        for name in (MODEL_CONFIG, MODEL_WEIGHTS):
            try:
                (tmp / name).write_bytes(lake.read_bytes(f"{model_dir(model)}/{name}"))
            except FileNotFoundError:
                raise WeightsUnavailable(
                    f"model {model} has no {name} at {lake.uri(model_dir(model))}"
                ) from None
        try:
            os.replace(tmp, target)
        except OSError:  # another process published it first
            if not (target / MODEL_WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def serving_spec(spec: EmbedderSpec, folder: Path) -> EmbedderSpec:
    """``spec`` with its weights pointing at a local model folder (its profile comes from the folder)."""
    return replace(spec, weights=str(folder))
