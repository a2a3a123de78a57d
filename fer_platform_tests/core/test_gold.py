"""Gold tables on small sets whose answers can be worked out by hand."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from fer_platform.core import gold
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.vectors import vectors_to_arrow

DAY = dt.date(2026, 11, 20)


def _silver(vectors, emotions, splits=None):
    n = len(vectors)
    return pa.table(
        {
            "image_id": [f"i{j}" for j in range(n)],
            "emotion": list(emotions),
            "split": list(splits or ["train"] * n),
            "vector": vectors_to_arrow(np.asarray(vectors, dtype=np.float32)),
        }
    )


def _axis(i, dim=512):
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def test_three_orthogonal_images_per_emotion():
    """Emotion e's images are unit vectors mixing axis e and a private axis: by hand, cos within an
    emotion = 0.5, centroids are orthogonal, and each image's 2 same-emotion neighbours are its nearest."""
    vectors, emotions = [], []
    for e_i, e in enumerate(EMOTIONS):
        for j in range(3):
            v = _axis(e_i) + _axis(100 + 3 * e_i + j)
            vectors.append(v / np.linalg.norm(v))
            emotions.append(e)
    silver = _silver(vectors, emotions, ["train", "train", "test"] * 7)

    summary = {(r["emotion"], r["split"]): r for r in gold.emotion_summary(silver).to_pylist()}
    assert len(summary) == 14
    assert summary[("happy", "train")]["images"] == 2 and summary[("happy", "test")]["images"] == 1
    assert summary[("happy", "train")]["share_of_total"] == pytest.approx(2 / 21)
    assert summary[("happy", "train")]["mean_intra_cosine"] == pytest.approx(0.5)
    assert summary[("happy", "test")]["mean_intra_cosine"] is None  # one image: no pairs

    matrix = gold.similarity_matrix(gold.centroid_similarity(silver))
    np.testing.assert_allclose(matrix, np.eye(7), atol=1e-6)

    agree = {r["emotion"]: r for r in gold.neighbour_agreement(silver, k=10).to_pylist()}
    # 2 of each image's 10 neighbours share its emotion (the other 8 are at cosine 0, tied)
    assert agree["sad"]["agreement"] == pytest.approx(0.2)
    assert agree["sad"]["chance"] == pytest.approx(2 / 20)
    assert agree["all"]["agreement"] == pytest.approx(0.2) and agree["all"]["images"] == 21
    assert agree["all"]["lift"] == pytest.approx(2.0)


def test_nearest_emotion_and_agreement_follow_the_geometry():
    rng = np.random.default_rng(0)
    base = {e: rng.standard_normal(512) for e in EMOTIONS}
    base["disgust"] = base["angry"] + 0.02 * rng.standard_normal(512)  # disgust overlaps angry
    vectors, emotions = [], []
    for e in EMOTIONS:
        for _ in range(20):
            vectors.append(base[e] + 0.2 * rng.standard_normal(512))
            emotions.append(e)
    silver = _silver(vectors, emotions)
    summary = {r["emotion"]: r for r in gold.emotion_summary(silver).to_pylist()}
    assert (
        summary["angry"]["nearest_emotion"] == "disgust" and summary["disgust"]["nearest_emotion"] == "angry"
    )
    agree = {r["emotion"]: r for r in gold.neighbour_agreement(silver).to_pylist()}
    assert agree["happy"]["agreement"] == pytest.approx(1.0)  # well separated cluster
    assert agree["angry"]["agreement"] < 1.0  # mixes with disgust
    assert agree["happy"]["chance"] == pytest.approx(19 / 139)


def test_daily_loads_counts_statuses_reasons_and_bytes():
    rows = [
        {"load_date": DAY, "status": "loaded", "reason": None, "size": 100},
        {"load_date": DAY, "status": "loaded", "reason": None, "size": 50},
        {"load_date": DAY, "status": "duplicate", "reason": "same content as x", "size": 100},
        {"load_date": DAY, "status": "quarantined", "reason": "wrong size 64x64 (expected 48x48)", "size": 7},
        {"load_date": DAY, "status": "quarantined", "reason": "wrong size 32x32 (expected 48x48)", "size": 7},
        {"load_date": DAY, "status": "quarantined", "reason": "empty file (0 bytes)", "size": 0},
        {"load_date": DAY + dt.timedelta(days=1), "status": "loaded", "reason": None, "size": 10},
    ]
    table = gold.daily_loads(rows).to_pylist()
    assert [r["load_date"] for r in table] == [DAY, DAY + dt.timedelta(days=1)]
    first = table[0]
    assert (first["files_seen"], first["loaded"], first["duplicates"], first["quarantined"]) == (6, 2, 1, 3)
    assert (first["bytes_seen"], first["bytes_loaded"]) == (264, 150)
    assert first["quarantined_by_reason"] == [
        {"reason": "empty file", "files": 1},
        {"reason": "wrong size", "files": 2},
    ]


@pytest.mark.parametrize(
    "reason, category",
    [
        ("unknown emotion folder 'contempt' (expected one of angry, ...)", "unknown emotion folder"),
        ("not a PNG or JPEG: content starts with text b'this is '", "not a PNG or JPEG"),
        ("JPEG content with a .png extension", "JPEG content with a .png extension"),
        ("truncated or corrupt PNG: image file is truncated", "truncated or corrupt PNG"),
    ],
)
def test_reason_categories(reason, category):
    assert gold.reason_category(reason) == category


def test_projection_keeps_at_most_the_cap():
    v = np.random.default_rng(2).standard_normal((50, 512)).astype(np.float32)
    keep, pts = gold.projection_2d(v, max_points=20)
    assert len(keep) == 20 and pts.shape == (20, 2) and len(set(keep.tolist())) == 20
