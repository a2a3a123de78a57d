"""emotion_model, its blocking check, embedding_model and the re-embedding of stale partitions, through
dg.materialize on one Dagster instance, with the real PostgreSQL and a temporary lake."""

import os
import shutil

import dagster as dg
import pytest
from dagster._utils.test.data_versions import get_stale_status_resolver  # what the UI's "unsynced" uses

from fer_platform.assets.bronze import bronze_images
from fer_platform.assets.embeddings import image_embeddings, image_embeddings_complete
from fer_platform.assets.model import embedding_model, emotion_model, emotion_model_beats_untuned
from fer_platform.assets.raw import raw_images
from fer_platform.assets.search import search_index, search_index_recall
from fer_platform.assets.silver import silver_embeddings, silver_matches_postgres
from fer_platform.core import models
from fer_platform.core.embedding import WeightsUnavailable
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.core.search.index import load_index
from fer_platform.core.search.query import find_similar
from fer_platform.core.silver import read_silver
from fer_platform.core.storage import Storage
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import folder_resources

# one torch thread (conftest): two spin against other processes on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ASSETS = [
    raw_images,
    bronze_images,
    image_embeddings,
    silver_embeddings,
    search_index,
    emotion_model,
    embedding_model,
]
CHECKS = [
    image_embeddings_complete,
    silver_matches_postgres,
    search_index_recall,
    emotion_model_beats_untuned,
]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# enough to beat the untuned model on 112 faces (min_steps 0: exactly 8 epochs; the asset's default runs 22)
TINY = {"epochs": 8, "min_steps": 0, "batch_size": 16, "learning_rate": 2e-3}
RANDOM = "resnet18-random-s0-fidelity"


def _resources(dsn, lake, landing, weights="random"):
    return folder_resources(dsn, lake, landing, weights=weights, batch_size=32)


def _run(res, instance, select, partition=None, config=None, ok=True):
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=select,
        resources=res,
        instance=instance,
        raise_on_error=False,
        partition_key=partition_key(partition, utc_today()) if partition else None,
        run_config={**QUIET, **({"ops": config} if config else {})},
    )
    if ok:
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


@pytest.fixture(scope="module")
def loaded(pg_server, tmp_path_factory):
    """Bronze of 7 emotions x (16 train + 8 test) generated faces, on one instance."""
    root = tmp_path_factory.mktemp("model")
    dsn = ensure_database(pg_server, f"model_{os.getpid()}")
    ensure_schema(dsn)
    write_sample_landing(root / "landing", per_class=16, test_per_class=8, seed=4)
    instance = dg.DagsterInstance.ephemeral()
    res = _resources(dsn, root / "lake", root / "landing")
    for emotion in EMOTIONS:
        _run(res, instance, [raw_images, bronze_images], emotion)
    yield {"dsn": dsn, "root": root, "instance": instance, "res": res}
    with connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "model_{os.getpid()}" WITH (FORCE)')


def _status(instance, keys):
    resolver = get_stale_status_resolver(instance, ASSETS)
    return {
        (k.key.to_user_string(), p): resolver.get_status(
            k.key, partition_key(p, utc_today()) if p else None
        ).value
        for k, p in keys
    }


def _vectors(dsn):
    with connect(dsn) as conn:
        return conn.execute(
            "SELECT model, emotion, count(*), count(DISTINCT image_id), max(n) FROM "
            "(SELECT *, count(*) OVER (PARTITION BY image_id, model) AS n FROM imagenes_fer) t "
            "GROUP BY model, emotion ORDER BY model, emotion"
        ).fetchall()


def test_train_approve_serve_and_reembed(loaded):
    instance, dsn, root, res = loaded["instance"], loaded["dsn"], loaded["root"], loaded["res"]
    lake = res["lake"].storage()
    vector_layers = [image_embeddings, silver_embeddings]

    # vectors of the untuned model for two partitions, the served model recorded, an index built
    first = _run(res, instance, [embedding_model]).asset_materializations_for_node("embedding_model")
    assert first[0].metadata["model"].value == RANDOM
    for emotion in ("happy", "sad"):
        _run(res, instance, vector_layers, emotion)
    _run(res, instance, [search_index])

    # train: the blocking check passes, approves the model in the lake; the served model is unchanged
    trained = _run(
        res, instance, [emotion_model, embedding_model], config={"emotion_model": {"config": TINY}}
    )
    (check,) = trained.get_asset_check_evaluations()
    assert check.passed, check.description
    meta = trained.asset_materializations_for_node("emotion_model")[0].metadata
    model = meta["model"].value
    assert model.startswith("resnet18-tuned-") and meta["base_model"].value == "resnet18-random-s0-native48"
    assert meta["tuned_agreement_at_10"].value >= meta["untuned_agreement_at_10"].value + 0.05
    assert meta["tuned_centroid_accuracy"].value >= meta["untuned_centroid_accuracy"].value + 0.1
    assert meta["test_images"].value == 56 and meta["train_images"].value == 112
    assert meta["leaked_test_images_excluded"].value == 0  # no test image has a train copy here
    assert "data:image/png;base64," in meta["confusion_matrix"].value
    folder = root / "lake" / "models" / model
    assert sorted(p.name for p in folder.iterdir()) == [
        "APPROVAL.json",
        "config.json",
        "metrics.json",
        "snapshot.parquet",
        "weights.pt",
    ]
    assert (root / "lake/models/LATEST").read_text() == model
    assert models.approved_model(lake)["model"] == model
    assert trained.asset_materializations_for_node("embedding_model") == [], "still serving the untuned model"
    # weights auto (the default) follow the approval: the approved model serves, from its lake folder
    auto = _resources(dsn, root / "lake", root / "landing", weights="auto")["embedder"]
    assert auto.model_id() == model and auto.weights_note() is None
    assert auto.spec().weights == str(root / "lake" / "models" / model)
    keys = [
        (image_embeddings, "happy"),
        (silver_embeddings, "sad"),
        (search_index, None),
        (bronze_images, "happy"),
    ]
    assert set(_status(instance, keys).values()) == {"FRESH"}, "the same served model: nothing to redo"

    # serve the tuned model: every vector layer made by the untuned one is unsynced, bronze is not
    tuned = _resources(dsn, root / "lake", root / "landing", weights="tuned")
    assert tuned["embedder"].model_id() == model
    served = _run(tuned, instance, [embedding_model]).asset_materializations_for_node("embedding_model")
    assert served[0].metadata["model"].value == model
    assert _status(instance, keys) == {
        ("image_embeddings", "happy"): "STALE",
        ("silver_embeddings", "sad"): "STALE",
        ("search_index", None): "STALE",
        ("bronze_images", "happy"): "FRESH",
    }

    # the re-embedding backfill (twice: a retry must not duplicate), then the index
    for _ in range(2):
        for emotion in ("happy", "sad"):
            _run(tuned, instance, vector_layers, emotion)
    _run(tuned, instance, [search_index])
    assert set(_status(instance, keys).values()) == {"FRESH"}
    rows = _vectors(dsn)
    assert [(m, e, n) for m, e, n, _, _ in rows] == [
        (RANDOM, "happy", 24),
        (RANDOM, "sad", 24),
        (model, "happy", 24),
        (model, "sad", 24),
    ]
    assert all(n == distinct and most == 1 for _, _, n, distinct, most in rows), (
        "one vector per (image, model)"
    )
    silver = read_silver(lake, ["image_id", "model"])
    assert silver.num_rows == 48 and set(silver["model"].to_pylist()) == {model}, (
        "silver: the served model only"
    )
    assert load_index(lake, model).size == 48

    # a query embedded by the tuned model finds its neighbours in the tuned index
    query = (root / "landing/test/happy/test_happy_00000.png").read_bytes()
    found = find_similar(lake, tuned["embedder"].spec(), image=query, k=5)
    assert found["model"] == model and len(found["hits"]) == 5
    assert found["same_emotion"] >= 3


def test_a_model_that_does_not_beat_the_untuned_weights_is_not_approved(loaded, tmp_path, monkeypatch):
    instance, dsn, root = dg.DagsterInstance.ephemeral(), loaded["dsn"], loaded["root"]
    lake = tmp_path / "lake"
    shutil.copytree(root / "lake" / "bronze", lake / "bronze")
    res = _resources(dsn, lake, root / "landing")
    tuned = _resources(dsn, lake, root / "landing", weights="tuned")

    # weights auto before any approval: the untuned weights serve, and the run log says so (ImageNet cannot
    # be had: nothing cached, and its download goes to a closed port on 127.0.0.1)
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    auto = _resources(dsn, lake, root / "landing", weights="auto")["embedder"]
    assert auto.model_id() == RANDOM
    note = auto.weights_note()
    assert "no approved emotion model" in note and "random weights" in note and "\n" not in note

    # weights 'tuned' with no approved model: one clear line, in the process and in a run
    with pytest.raises(WeightsUnavailable) as err:
        tuned["embedder"].model_id()
    assert "no approved emotion model" in str(err.value) and "\n" not in str(err.value)
    failed = _run(tuned, instance, [embedding_model], ok=False)
    assert not failed.success
    (failure,) = [e.step_failure_data.user_failure_data for e in failed.get_step_failure_events()]
    assert "no approved emotion model" in failure.description and "\n" not in failure.description

    # a deliberately broken model: no training at all (the base weights, re-labelled as a model)
    result = _run(
        res,
        instance,
        [emotion_model, embedding_model],
        config={"emotion_model": {"config": {"epochs": 0}}},
        ok=False,
    )
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "does not beat the untuned" in check.description
    assert result.asset_materializations_for_node("embedding_model") == [], "blocked by the failed check"
    assert models.approved_model(Storage(str(lake))) is None

    # weights corrupted in the lake after training: the check catches it from the files alone
    model = (lake / "models/LATEST").read_text()
    (lake / "models" / model / "weights.pt").write_bytes(b"corrupt")
    rerun = _run(res, instance, dg.AssetSelection.checks(emotion_model_beats_untuned), ok=False)
    (check,) = rerun.get_asset_check_evaluations()
    assert not check.passed and "digest" in check.description
