"""Fine-tuning the embedder's ResNet18 for emotions, and measuring it on the held-out test split.

The model keeps the embedder's architecture (ResNet18 without its classifier: a 512-d vector),
starts from the base weights (ImageNet where available, random here) and is trained on the
**train** split with a cosine classifier on top of the 512-d layer (normalised-softmax loss:
the logits are ``scale * cos(vector, class weight)``, so training optimises exactly the
cosine geometry the search uses; plain cross-entropy on a linear head is the alternative).
It trains and serves at the images' native 48x48 (the ``native`` embedder profile, recorded in
the model's config so the embedder reproduces the preprocessing).

Evaluation uses the **test** split only: 10-NN emotion agreement among the test images (self
excluded; exact cosine) and the accuracy of a nearest-centroid classifier (centroids from
the train vectors, the only use of train images there), for the tuned and the untuned
weights side by side, with the confusion matrix of the tuned model.

torch is imported inside the functions that need them (torchvision never: `core.resnet`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_platform.core import models
from fer_platform.core.embedding import (
    TRAIN_PROFILE,
    Embedder,
    EmbedderSpec,
    Weights,
    build_backbone,
    preprocess,
    replace_profile,
    resolve_device,
    resolve_weights,
)
from fer_platform.core.errors import FerError
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.vecmath import nearest_neighbours, normalise

K = 10  # neighbours for the agreement
LOSSES = ("cosine", "cross_entropy")
MIN_STEPS = 150  # the emotion_model asset's default min_steps (measured on the demo's landing: BENCHMARKS.md)
SNAPSHOT_COLUMNS = ("image_id", "emotion", "split", "load_date")


class NotEnoughImages(FerError):
    """The bronze layer cannot train or evaluate a model (one line: what is missing)."""


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    min_steps: int = 0  # a small train split gets more epochs, up to this many optimiser steps in all
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "cosine"  # cosine (normalised softmax) | cross_entropy (linear head)
    scale: float = 16.0  # logit scale of the cosine classifier
    augment: bool = True  # random shifts of up to 3 px and horizontal flips
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # 0: torch's default; else for the training only
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise FerError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.epochs < 0 or self.batch_size < 2 or self.min_steps < 0:
            raise FerError("epochs and min_steps must be >= 0 and batch_size >= 2")

    def steps_per_epoch(self, train_images: int) -> int:
        n, b = train_images, self.batch_size
        return n // b + (1 if n % b >= 2 else 0)  # a last batch of one is dropped: BatchNorm needs >= 2

    def epochs_for(self, train_images: int) -> int:
        """The epochs training runs on ``train_images``: ``epochs``, or more when that many passes over a
        small split would make fewer than ``min_steps`` optimiser steps (a 280-image split is 5 steps an
        epoch: 10 epochs of it leave the model half-trained)."""
        per_epoch = self.steps_per_epoch(train_images)
        if not self.epochs or not self.min_steps or not per_epoch:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_steps / per_epoch))


@dataclass
class Dataset:
    """The bronze rows a model trains and is measured on (deduplicated, in a fixed order)."""

    snapshot: pa.Table  # image_id, emotion, split, load_date: what the model saw, as Parquet in the lake
    train_pngs: list[bytes]
    train_labels: np.ndarray  # int class index into EMOTIONS
    test_pngs: list[bytes]
    test_labels: np.ndarray
    leaked_test_images: int = 0  # test images left out: their content also has a train copy

    @classmethod
    def from_bronze(cls, bronze: pa.Table, leaked: Collection[str] = ()) -> "Dataset":
        """Train and test rows of ``bronze`` (image_id, emotion, split, png[, load_date]): one row per
        image_id (an image that is in both splits counts as train, so test stays unseen), sorted by
        image_id so the same bronze gives the same order whatever the file order. A test image whose
        content the load log also holds as a train copy (``leaked``: image ids; bronze keeps the test copy,
        the train copy is logged as a duplicate) is left out of the test figures, counted."""
        if "load_date" not in bronze.column_names:
            bronze = bronze.append_column("load_date", pa.nulls(bronze.num_rows, pa.date32()))
        bronze = bronze.filter(pc.is_in(bronze["split"], pa.array(["train", "test"])))
        leaked_test = pc.and_(
            pc.equal(bronze["split"], "test"),
            pc.is_in(bronze["image_id"], pa.array(list(leaked), pa.string())),
        )
        n_leaked = len(pc.unique(bronze.filter(leaked_test)["image_id"]))
        bronze = bronze.filter(pc.invert(leaked_test))
        order = pc.sort_indices(
            bronze, [("image_id", "ascending"), ("split", "descending")]
        )  # train before test
        bronze = bronze.take(order)
        ids = bronze["image_id"].to_pylist()
        keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
        bronze = bronze.take(pa.array(keep, pa.int64()))
        emotions = bronze["emotion"].to_pylist()
        unknown = sorted({e for e in emotions if e not in EMOTIONS})
        if unknown:
            raise NotEnoughImages(f"bronze rows with unknown emotions {unknown}")
        labels = np.array([EMOTIONS.index(e) for e in emotions], dtype=np.int64)
        split = np.array(bronze["split"].to_pylist(), dtype=object)
        pngs = bronze["png"].to_pylist()
        train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        data = cls(
            snapshot=bronze.select(list(SNAPSHOT_COLUMNS)),
            train_pngs=[pngs[i] for i in train],
            train_labels=labels[train],
            test_pngs=[pngs[i] for i in test],
            test_labels=labels[test],
            leaked_test_images=n_leaked,
        )
        data.validate()
        return data

    def validate(self) -> None:
        for name, labels in (("train", self.train_labels), ("test", self.test_labels)):
            classes = len(set(labels.tolist()))
            if classes < 2 or len(labels) < 2 * classes:
                raise NotEnoughImages(
                    f"the {name} split of bronze has {len(labels)} image(s) of {classes} emotion(s): a model "
                    "needs at least two emotions with two images each in both train and test"
                )

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {e: int((labels == i).sum()) for i, e in enumerate(EMOTIONS)}
            for split, labels in (("train", self.train_labels), ("test", self.test_labels))
        }


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    test_agreement: float  # 10-NN agreement among the test images after this epoch
    seconds: float  # since training started

    def line(self) -> str:
        return (
            f"epoch {self.epoch}/{self.epochs}: loss {self.loss:.4f}, test 10-NN agreement "
            f"{self.test_agreement:.3f} ({self.seconds:.1f} s)"
        )


@dataclass
class TrainedModel:
    state_dict: dict  # the backbone's (no classifier), CPU tensors
    config: TrainingConfig
    base_spec: EmbedderSpec
    base_weights: Weights
    history: list[EpochReport] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    backbone: object = None  # the trained torch module (eval mode), for measuring without reloading

    def embedder(self, spec: EmbedderSpec | None = None) -> Embedder:
        """The trained model behind the same preprocessing and forward pass the embedder serves with."""
        spec = replace_profile(spec or self.base_spec, TRAIN_PROFILE)
        return Embedder(
            spec, Weights("tuned", "tuned-unsaved", None, profile=TRAIN_PROFILE), model=self.backbone
        )


# --------------------------------------------------------------------------- training
def train(
    data: Dataset,
    base_spec: EmbedderSpec,
    config: TrainingConfig = TrainingConfig(),
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedModel:
    """Fine-tune ResNet18 from ``base_spec``'s weights on ``data``'s train split (deterministic for a
    seed on one machine and device); ``on_epoch`` gets each epoch's loss and test agreement."""
    import torch  # deferred: heavy
    import torch.nn.functional as F  # deferred: heavy

    started = time.monotonic()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    base_weights = resolve_weights(base_spec)
    spec = replace_profile(base_spec, TRAIN_PROFILE)
    x_train = torch.from_numpy(preprocess(data.train_pngs, spec))
    y_train = torch.from_numpy(data.train_labels)
    x_test = preprocess(data.test_pngs, spec)

    deterministic = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        backbone = build_backbone(base_weights, base_spec.seed).to(device)
        torch.manual_seed(config.seed)
        classes = len(EMOTIONS)
        if config.loss == "cosine":
            head = torch.nn.Linear(512, classes, bias=False)
            torch.nn.init.normal_(head.weight, std=0.01)
        else:
            head = torch.nn.Linear(512, classes)
        head = head.to(device)
        params = list(backbone.parameters()) + list(head.parameters())
        optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        n = len(x_train)
        per_epoch, epochs = config.steps_per_epoch(n), config.epochs_for(n)
        scheduler = (
            torch.optim.lr_scheduler.OneCycleLR(
                optimiser,
                max_lr=config.learning_rate,
                pct_start=0.2,
                total_steps=max(1, epochs * per_epoch),
            )
            if epochs
            else None
        )
        gen = torch.Generator().manual_seed(config.seed)
        size = spec.input_size
        history: list[EpochReport] = []
        for epoch in range(1, epochs + 1):
            backbone.train()
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for b in range(per_epoch):
                idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
                x = x_train[idx]
                if config.augment:
                    x = _augment(x, size, gen)
                x, y = x.to(device), y_train[idx].to(device)
                features = backbone(x)
                if config.loss == "cosine":
                    logits = config.scale * F.normalize(features) @ F.normalize(head.weight).T
                else:
                    logits = head(features)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    raise FerError(
                        f"training diverged at epoch {epoch} (loss {loss.item()}): lower the learning rate"
                    )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            backbone.eval()
            test_vectors = _embed_module(backbone, x_test, device, config.eval_batch_size)
            report = EpochReport(
                epoch,
                epochs,
                total / max(1, seen),
                agreement_at_k(test_vectors, data.test_labels)["all"],
                time.monotonic() - started,
            )
            history.append(report)
            if on_epoch:
                on_epoch(report)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic
        torch.set_num_threads(threads)
    backbone = backbone.eval().cpu()
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    return TrainedModel(
        state, config, base_spec, base_weights, history, time.monotonic() - started, str(device), backbone
    )


def _augment(x, size: int, gen):
    """A random shift of up to 3 px (edge pixels repeated) and a random horizontal flip, per batch."""
    import torch  # deferred: heavy
    import torch.nn.functional as F  # deferred: heavy

    padded = F.pad(x, (3, 3, 3, 3), mode="replicate")
    dx, dy = (int(v) for v in torch.randint(0, 7, (2,), generator=gen))
    x = padded[:, :, dy : dy + size, dx : dx + size]
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    return x.contiguous()


def _embed_module(module, batch: np.ndarray, device, batch_size: int) -> np.ndarray:
    import torch  # deferred: heavy

    out = []
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            out.append(module(torch.from_numpy(batch[i : i + batch_size]).to(device)).float().cpu().numpy())
    return normalise(np.concatenate(out) if out else np.empty((0, 512), np.float32))


# --------------------------------------------------------------------------- measuring
def agreement_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = K) -> dict:
    """Share of each image's ``k`` nearest other images (exact cosine) with its label: overall
    (``all``), per emotion, and the chance level (the share a random neighbour would have)."""
    vectors = normalise(np.asarray(vectors, dtype=np.float32))
    n = len(vectors)
    if not np.isfinite(vectors).all():
        return {"all": 0.0, "chance": _chance(labels), "per_emotion": {}, "nonfinite": True}
    nn = nearest_neighbours(vectors, k)
    same = (labels[nn] == labels[:, None]).mean(axis=1) if nn.size else np.zeros(n)
    per = {EMOTIONS[c]: float(same[labels == c].mean()) for c in sorted(set(labels.tolist()))}
    return {"all": float(same.mean()) if n else 0.0, "chance": _chance(labels), "per_emotion": per}


def _chance(labels: np.ndarray) -> float:
    n = len(labels)
    if n < 2:
        return 0.0
    counts = np.bincount(labels)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def centroid_classifier(train_vectors, train_labels, test_vectors, test_labels) -> dict:
    """Nearest-centroid (cosine) classification of the test vectors, centroids from the train vectors:
    accuracy and the confusion matrix (rows: true emotion, columns: predicted)."""
    train_vectors, test_vectors = normalise(train_vectors), normalise(test_vectors)
    classes = sorted(set(train_labels.tolist()))
    cents = np.stack([train_vectors[train_labels == c].mean(axis=0) for c in classes])
    cents = normalise(cents)
    predicted = np.asarray(classes)[np.argmax(test_vectors @ cents.T, axis=1)]
    confusion = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=np.int64)
    np.add.at(confusion, (test_labels, predicted), 1)
    accuracy = float((predicted == test_labels).mean()) if len(test_labels) else 0.0
    return {"accuracy": accuracy, "confusion": confusion.tolist()}


def measure(embedder: Embedder, data: Dataset) -> dict:
    """Test-split figures of one model: 10-NN agreement (test images among themselves) and
    nearest-centroid accuracy (train centroids), with the confusion matrix."""
    started = time.monotonic()
    test_vectors = embedder.embed(data.test_pngs)
    train_vectors = embedder.embed(data.train_pngs)
    agreement = agreement_at_k(test_vectors, data.test_labels)
    finite = bool(np.isfinite(test_vectors).all() and np.isfinite(train_vectors).all())
    classifier = (
        centroid_classifier(train_vectors, data.train_labels, test_vectors, data.test_labels)
        if finite
        else {"accuracy": 0.0, "confusion": None}
    )
    return {
        "model": embedder.model_id,
        "agreement_at_10": agreement["all"],
        "agreement_by_emotion": agreement["per_emotion"],
        "centroid_accuracy": classifier["accuracy"],
        "confusion": classifier["confusion"],
        "finite": finite,
        "seconds": round(time.monotonic() - started, 2),
    }


def compare(tuned: dict, untuned: dict, data: Dataset) -> dict:
    """The metrics document of a model: tuned beside untuned, on the test split."""
    return {
        "split": "test",
        "k": K,
        "test_images": int(len(data.test_labels)),
        "leaked_test_images_excluded": int(data.leaked_test_images),
        "train_images": int(len(data.train_labels)),
        "chance": _chance(data.test_labels),
        "tuned": tuned,
        "untuned": untuned,
        "gain": {
            "agreement_at_10": tuned["agreement_at_10"] - untuned["agreement_at_10"],
            "centroid_accuracy": tuned["centroid_accuracy"] - untuned["centroid_accuracy"],
        },
    }


APPROVAL_MARGIN = 0.02  # the tuned model must beat the untuned one by this much on both test figures


def approval_problems(metrics: dict, margin: float = APPROVAL_MARGIN) -> list[str]:
    """Why a model must not be served (empty: it may): it has to beat the untuned weights on the
    test split, on 10-NN agreement and nearest-centroid accuracy, and make finite vectors."""
    tuned, untuned = metrics["tuned"], metrics["untuned"]
    problems = []
    if not tuned.get("finite", True):
        problems.append("the model makes non-finite vectors")
    for name, label in (
        ("agreement_at_10", "10-NN agreement"),
        ("centroid_accuracy", "nearest-centroid accuracy"),
    ):
        if tuned[name] < untuned[name] + margin:
            problems.append(
                f"test {label} {tuned[name]:.3f} does not beat the untuned {untuned[name]:.3f} by {margin}"
            )
    return problems


def training_summary(model: TrainedModel) -> dict:
    return {
        "config": asdict(model.config),
        "seconds": round(model.seconds, 2),
        "device": model.device,
        "history": [asdict(h) for h in model.history],
    }


def images_per_second(embedder: Embedder, pngs: Sequence[bytes]) -> float:
    started = time.perf_counter()
    embedder.embed(pngs)
    return len(pngs) / (time.perf_counter() - started)


# --------------------------------------------------------------------------- what training will cost
@dataclass(frozen=True)
class Rates:
    """Measured on this machine: images per second through one training step (forward, backward, update)
    and through the model alone (inference), at the training input size."""

    train: float
    embed: float
    device: str


def measure_rates(device: str = "auto", batch_size: int = 64, steps: int = 3) -> Rates:
    """Time a few training steps and one inference batch of random 48x48 inputs on untrained ResNet18
    (a second or two): the rates ``estimate_seconds`` scales up."""
    import torch  # deferred: heavy
    import torch.nn.functional as F  # deferred: heavy

    dev = resolve_device(device)
    backbone = build_backbone(Weights("random", "random-s0"), 0).to(dev)
    head = torch.nn.Linear(512, len(EMOTIONS), bias=False).to(dev)
    optimiser = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    size = replace_profile(EmbedderSpec(), TRAIN_PROFILE).input_size
    x = torch.randn(batch_size, 3, size, size, generator=gen).to(dev)
    y = torch.randint(0, len(EMOTIONS), (batch_size,), generator=gen).to(dev)

    def step() -> None:
        loss = F.cross_entropy(head(backbone(x)), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    backbone.train()
    step()  # warm-up: first-call allocations
    started = time.perf_counter()
    for _ in range(steps):
        step()
    train_rate = steps * batch_size / (time.perf_counter() - started)
    backbone.eval()
    with torch.inference_mode():
        backbone(x)
        started = time.perf_counter()
        backbone(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        embed_rate = batch_size / (time.perf_counter() - started)
    return Rates(train_rate, embed_rate, str(dev))


RUN_OVERHEAD_S = 10.0  # the job's own work beside the model: Dagster's run, two untuned models built, files


def estimate_seconds(train_images: int, test_images: int, epochs: int, rates: Rates) -> float:
    """Seconds the job train_emotion_model will take: ``epochs`` passes over the train split, the test
    agreement after each epoch, four measurements of both splits (tuned and untuned, by the asset and
    again by its check), and ``RUN_OVERHEAD_S``; PNG decoding is left out (~2,400 images/s)."""
    images = train_images + test_images
    model = train_images * epochs / rates.train + (epochs * test_images + 4 * images) / rates.embed
    return model + RUN_OVERHEAD_S


def describe_seconds(seconds: float) -> str:
    """``about 40 s``, ``about 12 min``, ``about 2.5 h``: an estimate for a person."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60):.0f} min"
    return f"about {seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- the asset's and the check's work
def build_model(
    bronze: pa.Table,
    base_spec: EmbedderSpec,
    config: TrainingConfig = TrainingConfig(),
    on_epoch: Callable[[EpochReport], None] | None = None,
    leaked: Collection[str] = (),
) -> dict:
    """Train on bronze's train split, measure tuned and untuned on its test split (without the ``leaked``
    test images, see ``Dataset.from_bronze``), package the files: ``{"model", "files", "metrics", "trained",
    "data"}``."""
    data = Dataset.from_bronze(bronze, leaked)
    trained = train(data, base_spec, config, on_epoch)
    tuned = measure(trained.embedder(), data)
    untuned = measure(untuned_embedder(base_spec), data)
    metrics = compare(tuned, untuned, data)
    model, files = models.package(trained, metrics, data.snapshot, training_summary(trained))
    return {"model": model, "files": files, "metrics": metrics, "trained": trained, "data": data}


def untuned_embedder(base_spec: EmbedderSpec) -> Embedder:
    """The base weights behind the same preprocessing as the tuned model (what training changed, alone)."""
    return Embedder.get(replace_profile(base_spec, TRAIN_PROFILE))


def verify_model(
    files: dict[str, bytes], bronze: pa.Table, device: str = "auto", leaked: Collection[str] = ()
) -> dict:
    """Re-measure a stored model from its files alone (weights digest, the bronze rows of its snapshot,
    its base weights as resolved here; without the ``leaked`` test images): ``{"model", "metrics",
    "problems"}``. Approval needs no problems."""
    unpacked = models.unpack(files)
    config, snapshot = unpacked["config"], unpacked["snapshot"]
    problems: list[str] = []
    wanted = pc.is_in(bronze["image_id"], snapshot["image_id"])
    rows = bronze.filter(wanted)
    missing = snapshot.num_rows - len(pc.unique(rows["image_id"]))
    if missing:
        problems.append(f"{missing} image(s) of the model's snapshot are no longer in bronze")
    data = Dataset.from_bronze(rows, leaked)
    base = EmbedderSpec(weights=config["base"]["weights"], seed=config["base"]["seed"], device=device)
    resolved = resolve_weights(base).tag
    if resolved != config["base"]["resolved"]:
        problems.append(
            f"the base weights resolve to {resolved} here, the model was trained from "
            f"{config['base']['resolved']}: the comparison would not be fair"
        )
    spec = replace_profile(base, config.get("profile", TRAIN_PROFILE))
    weights = Weights("tuned", f"tuned-{config['weights_digest']}", None, profile=spec.profile)
    tuned = Embedder(spec, weights, model=build_backbone(weights, state=unpacked["state_dict"]))
    if tuned.model_id != config["model"]:
        problems.append(f"the files make model {tuned.model_id}, their config names {config['model']}")
    metrics = compare(measure(tuned, data), measure(untuned_embedder(base), data), data)
    problems += approval_problems(metrics)
    return {"model": config["model"], "metrics": metrics, "problems": problems, "stored": unpacked["metrics"]}
