"""The emotion model: training improves test-split figures, is seeded, and serves from its model folder."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from fer_platform.core import models, training
from fer_platform.core.embedding import Embedder, EmbedderSpec, WeightsUnavailable, model_id, resolve_weights
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.sample_data import render_face
from fer_platform.core.storage import Storage

# one torch thread (conftest): two spin against other processes on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = EmbedderSpec(weights="random", seed=0)


def bronze_like(train_per_class: int, test_per_class: int, seed: int = 7) -> pa.Table:
    """Rows shaped like bronze (image_id, emotion, split, png) of generated faces."""
    rows = []
    for s, (split, n) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for e, emotion in enumerate(EMOTIONS):
            for i in range(n):
                png = render_face(emotion, np.random.default_rng([seed, s, e, i]))
                rows.append(
                    {
                        "image_id": hashlib.sha256(png).hexdigest(),
                        "emotion": emotion,
                        "split": split,
                        "png": png,
                    }
                )
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def tiny():
    return bronze_like(16, 8)


@pytest.fixture(scope="module")
def built(tiny):
    reports = []
    config = training.TrainingConfig(epochs=8, batch_size=16, learning_rate=2e-3, seed=0)
    out = training.build_model(tiny, BASE, config, on_epoch=reports.append)
    return out, reports


def test_training_on_a_tiny_set_beats_the_untuned_model_on_the_test_split(built):
    out, reports = built
    m = out["metrics"]
    assert m["test_images"] == 56 and m["train_images"] == 112 and m["split"] == "test"
    assert m["untuned"]["model"] == "resnet18-random-s0-native48"
    assert out["model"].startswith("resnet18-tuned-") and out["model"].endswith("-native48")
    assert m["tuned"]["agreement_at_10"] >= m["untuned"]["agreement_at_10"] + 0.05
    assert m["tuned"]["centroid_accuracy"] >= m["untuned"]["centroid_accuracy"] + 0.1
    assert not training.approval_problems(m)
    # progress: one report per epoch, the loss going down
    assert [r.epoch for r in reports] == list(range(1, 9))
    assert reports[-1].loss < reports[0].loss
    assert np.asarray(m["tuned"]["confusion"]).sum() == 56


def test_training_is_deterministic_for_a_seed():
    data = bronze_like(3, 2, seed=3)
    config = training.TrainingConfig(epochs=1, batch_size=8, seed=5)
    first = training.build_model(data, BASE, config)["model"]
    assert training.build_model(data, BASE, config)["model"] == first
    other = training.TrainingConfig(epochs=1, batch_size=8, seed=6)
    assert training.build_model(data, BASE, other)["model"] != first


def test_the_check_re_measures_the_files_and_rejects_an_untrained_model(built, tiny):
    out, _ = built
    verified = training.verify_model(out["files"], tiny)
    assert verified["problems"] == [] and verified["model"] == out["model"]
    assert verified["metrics"]["tuned"]["agreement_at_10"] == pytest.approx(
        out["metrics"]["tuned"]["agreement_at_10"]
    )

    untrained = training.build_model(tiny, BASE, training.TrainingConfig(epochs=0))
    problems = training.verify_model(untrained["files"], tiny)["problems"]
    assert any("does not beat the untuned" in p for p in problems)

    broken = dict(out["files"])
    broken["weights.pt"] = broken["weights.pt"][:-10] + b"0" * 10
    with pytest.raises(WeightsUnavailable, match="digest"):
        training.verify_model(broken, tiny)


def test_a_model_folder_serves_with_its_own_profile(built, tmp_path):
    out, _ = built
    lake = Storage(tmp_path / "lake")
    for name, data in out["files"].items():
        lake.write_bytes(f"models/{out['model']}/{name}", data)
    folder = models.local_model_folder(lake, out["model"])
    spec = models.serving_spec(EmbedderSpec(profile="fidelity"), folder)
    assert model_id(spec) == out["model"]  # the folder's profile (native48) wins over the setting
    e = Embedder.get(spec)
    assert e.spec.input_size == 48
    pngs = [render_face("happy", np.random.default_rng(i)) for i in range(3)]
    in_memory = out["trained"].embedder().embed(pngs)
    np.testing.assert_allclose(e.embed(pngs), in_memory, rtol=1e-4, atol=1e-5)

    (folder / "weights.pt").write_bytes(b"not the weights")
    with pytest.raises(WeightsUnavailable, match="corrupt or half-copied"):
        resolve_weights(EmbedderSpec(weights=str(folder), seed=99))


def test_tuned_models_resolve_through_the_approval_records(built, tmp_path):
    out, _ = built
    lake = Storage(tmp_path / "lake")
    with pytest.raises(WeightsUnavailable) as err:
        models.resolve_tuned(lake, "tuned")
    assert "no approved emotion model" in str(err.value) and "\n" not in str(err.value)
    for name, data in out["files"].items():
        lake.write_bytes(f"models/{out['model']}/{name}", data)
    with pytest.raises(WeightsUnavailable, match="not an approved emotion model"):
        models.resolve_tuned(lake, f"tuned:{out['model']}")
    models.approve(lake, out["model"], {"agreement_at_10": 0.5})
    assert models.resolve_tuned(lake, "tuned")["model"] == out["model"]
    assert models.resolve_tuned(lake, f"tuned:{out['model']}")["agreement_at_10"] == 0.5


def test_figures_on_hand_checkable_vectors():
    # two tight clusters: every neighbour agrees, the centroid classifier is right
    v = np.array([[1, 0], [0.99, 0.1], [0.98, -0.1], [0, 1], [0.1, 0.99], [-0.1, 0.98]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 1])
    got = training.agreement_at_k(v, y, k=2)
    assert got["all"] == 1.0 and got["chance"] == pytest.approx(12 / 30)
    clf = training.centroid_classifier(v, y, v[[0, 3]], y[[0, 3]])
    assert clf["accuracy"] == 1.0 and np.asarray(clf["confusion"])[0, 0] == 1
    swapped = training.centroid_classifier(v, y, v[[0, 3]], y[[3, 0]])
    assert swapped["accuracy"] == 0.0


def test_a_model_is_trained_again_only_when_the_train_split_grew(built, tmp_path):
    out, _ = built
    lake = Storage(tmp_path / "lake")
    seen = {
        i
        for i, s in zip(
            out["data"].snapshot["image_id"].to_pylist(),
            out["data"].snapshot["split"].to_pylist(),
            strict=True,
        )
        if s == "train"
    }
    assert len(seen) == 112
    assert models.training_due(lake, set()) is None  # nothing to train on
    assert models.training_due(lake, seen) == "no approved emotion model yet"
    for name, data in out["files"].items():
        lake.write_bytes(f"models/{out['model']}/{name}", data)
    models.approve(lake, out["model"], {"agreement_at_10": 0.9})
    assert models.snapshot_train_ids(lake, out["model"]) == seen
    assert models.training_due(lake, seen) is None  # the same train split: the same model
    assert models.training_due(lake, set(list(seen)[:50])) is None  # images removed: kept
    few = seen | {f"new{i}" for i in range(5)}  # 5 new of 112: under 5 %
    assert models.training_due(lake, few) is None
    grown = seen | {f"new{i}" for i in range(6)}  # 6 new: over 5 %
    reason = models.training_due(lake, grown)
    assert reason and "6 image(s)" in reason and out["model"] in reason and "\n" not in reason


def test_the_training_estimate_scales_a_measured_rate():
    rates = training.measure_rates(device="cpu", batch_size=8, steps=1)
    assert rates.train > 0 and rates.embed > 0 and rates.device == "cpu"  # measured, not judged here
    fixed = training.Rates(train=100.0, embed=1000.0, device="cpu")
    # 10 epochs x 1,000 train images at 100/s, plus 10 x 200 test + 4 x 1,200 images at 1,000/s
    overhead = training.RUN_OVERHEAD_S
    assert training.estimate_seconds(1000, 200, 10, fixed) == pytest.approx(100 + 6.8 + overhead)
    assert training.estimate_seconds(28709, 7178, 10, fixed) > 2870  # FER2013: most of an hour at 100/s
    assert training.describe_seconds(42) == "about 40 s"
    assert training.describe_seconds(1500) == "about 25 min"
    assert training.describe_seconds(3 * 3600) == "about 3.0 h"


def test_a_small_train_split_gets_enough_epochs_for_min_steps():
    config = training.TrainingConfig(epochs=10, batch_size=64, min_steps=training.MIN_STEPS)
    assert config.steps_per_epoch(280) == 5 and config.epochs_for(280) == 30  # the demo's landing
    assert config.steps_per_epoch(28709) == 449 and config.epochs_for(28709) == 10  # FER2013: as asked
    assert config.steps_per_epoch(65) == 1  # a last batch of one is dropped (BatchNorm)
    assert training.TrainingConfig(epochs=10).epochs_for(280) == 10  # min_steps 0: exactly epochs
    assert training.TrainingConfig(epochs=0, min_steps=150).epochs_for(280) == 0  # an untrained model
