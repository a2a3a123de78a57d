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
    assert summary[("happy", "train")]["share_of_total"] == round(2 / 21, 4) == 0.0952  # rounded for people
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
    assert agree["happy"]["chance"] == round(19 / 139, 4)


def test_gold_figures_are_rounded_for_people():
    rng = np.random.default_rng(1)
    silver = _silver(rng.standard_normal((30, 512)), [EMOTIONS[i % 7] for i in range(30)])
    tables = [
        (gold.emotion_summary(silver), gold.DECIMALS),
        (gold.centroid_similarity(silver), gold.CENTROID_DECIMALS),
        (gold.neighbour_agreement(silver), gold.DECIMALS),
    ]
    floats = [
        (v, decimals)
        for t, decimals in tables
        for name in t.column_names
        if pa.types.is_floating(t.schema.field(name).type)
        for v in t[name].to_pylist()
        if v is not None
    ]
    assert floats and all(v == round(v, decimals) for v, decimals in floats)
    assert any(v != round(v, 2) for v, _ in floats), "four decimals, not fewer"


def test_split_agreement_is_what_a_search_for_each_test_image_returns():
    """Two tight clusters (happy, sad); one test image of each, and a sad test image placed in the happy
    cluster: its neighbours are happy. By hand: k=2 over 7 images, self excluded."""
    happy, sad = _axis(0), _axis(1)
    near = lambda v, j: (v + 0.01 * _axis(10 + j)) / np.linalg.norm(v + 0.01 * _axis(10 + j))  # noqa: E731
    vectors = [near(happy, 0), near(happy, 1), near(happy, 2), near(sad, 3), near(sad, 4), near(sad, 5)]
    vectors.append(near(happy, 6))  # a sad face the model puts among the happy ones
    emotions = ["happy", "happy", "happy", "sad", "sad", "sad", "sad"]
    splits = ["train", "train", "test", "train", "train", "test", "test"]
    got = gold.split_agreement(_silver(vectors, emotions, splits), "test", k=2)
    # happy test: 2/2; sad test in its cluster: 2/2; the misplaced sad test: 0/2 -> 4/6
    assert got["queries"] == 3 and got["k"] == 2
    assert got["agreement"] == round(4 / 6, 4)
    # chance for a query of emotion e: (n_e - 1) / (N - 1): happy 2/6, sad 3/6 (twice)
    assert got["chance"] == round((2 / 6 + 3 / 6 + 3 / 6) / 3, 4)
    assert gold.split_agreement(_silver(vectors, emotions), "test")["agreement"] is None  # no test images


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


# ---- issue 15: the agreement is estimated from a fixed-size sample, with its 95 % confidence interval ----
def _clustered(n: int, seed: int = 0, spread: float = 3.0):
    """``n`` silver rows clustered by emotion, overlapping enough that agreement is far from 0 and 1."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(EMOTIONS), 64))
    emotions = rng.choice(len(EMOTIONS), size=n, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17])
    basis = np.linalg.qr(rng.standard_normal((512, 64)))[0].T
    z = centres[emotions] + spread * rng.standard_normal((n, 64))
    vectors = z @ basis + 0.05 * rng.standard_normal((n, 512))
    splits = rng.choice(["train", "test"], size=n, p=[0.8, 0.2])
    return _silver(vectors, [EMOTIONS[i] for i in emotions], list(splits))


def test_sampled_agreement_is_within_its_error_bar_of_the_exact_one():
    silver = _clustered(3000)
    exact = {r["emotion"]: r for r in gold.exact_neighbour_agreement(silver).to_pylist()}
    got = {r["emotion"]: r for r in gold.neighbour_agreement(silver, sample=120).to_pylist()}
    assert exact["all"]["ci95"] == 0 and exact["all"]["queries"] == 3000  # every image: no error bar
    assert 0.2 < exact["all"]["agreement"] < 0.9  # a figure that sampling can get wrong
    all_ = got["all"]
    assert all_["queries"] == sum(min(120, r["images"]) for e, r in got.items() if e != "all") < 3000
    assert 0 < all_["ci95"] < 0.05
    assert abs(all_["agreement"] - exact["all"]["agreement"]) <= all_["ci95"]
    assert all_["chance"] == exact["all"]["chance"] and all_["images"] == 3000
    inside = [abs(got[e]["agreement"] - exact[e]["agreement"]) <= got[e]["ci95"] for e in got if e != "all"]
    assert sum(inside) >= len(inside) - 1  # 95 % intervals: one of seven may miss, not more
    small = next(e for e in got if e != "all" and got[e]["images"] <= 120)  # disgust: every image searched
    assert got[small]["ci95"] == 0 and got[small]["agreement"] == exact[small]["agreement"]


def test_sampled_split_agreement_is_within_its_error_bar_of_the_exact_one():
    silver = _clustered(3000, seed=1)
    exact = gold.split_agreement(silver, "test", sample=None)
    got = gold.split_agreement(silver, "test", sample=150)
    assert exact["ci95"] == 0 and exact["sampled"] == exact["queries"] > 150
    assert got["sampled"] == 150 and got["queries"] == exact["queries"] and 0 < got["ci95"] < 0.1
    assert abs(got["agreement"] - exact["agreement"]) <= got["ci95"]


def test_the_agreement_table_carries_its_sample_and_error_bar():
    table = gold.neighbour_agreement(_clustered(400), sample=30)
    assert table.schema == gold.AGREEMENT_SCHEMA
    assert {"queries", "ci95"} <= set(table.column_names)
    assert all(r["queries"] <= min(30, r["images"]) or r["emotion"] == "all" for r in table.to_pylist())
