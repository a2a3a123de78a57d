"""Asset checks that guard each layer. Checks that protect downstream data are blocking."""


import time
import warnings

import dagster as dg
import pyarrow as pa

from fer_platform.assets.bronze import bronze_images
from fer_platform.assets.embeddings import image_embeddings
from fer_platform.assets.gold import current_silver, gold_emotion_summary
from fer_platform.assets.raw import raw_images
from fer_platform.assets.model import BRONZE_COLUMNS, emotion_model
from fer_platform.assets.search import search_index
from fer_platform.assets.silver import silver_embeddings
from fer_platform.core import convergence, ledger, vectors
from fer_platform.core import models, training
from fer_platform.core.bronze import read_bronze
from fer_platform.core.errors import FerError
from fer_platform.core.checks import bronze_problems
from fer_platform.core.reconcile import reconcile
from fer_platform.core.report import markdown_table
from fer_platform.core.search.build import RECALL_TARGET, index_recall
from fer_platform.core.search.index import IndexUnavailable, SearchIndex
from fer_platform.core.silver import silver_problems
from fer_platform.core.storage import LakeFiles
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import (
    AutoLoaderResource, EmbedderResource, LakeResource, LandingResource, PostgresResource,
)  # fmt: skip


# Partitioned asset checks are a Dagster preview feature; they are what lets a check
# run for exactly the partition a run materialised.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


@dg.asset_check(
    asset=bronze_images,
    partitions_def=image_partitions,
    blocking=True,
    description="Every image is 48x48 grayscale with bytes, image_ids are unique, and the row count "
    "equals the load log's loaded files for the partition.",
)
def bronze_images_valid(
    context: dg.AssetCheckExecutionContext, bronze_images: pa.Table, postgres: PostgresResource
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        expected = ledger.status_counts(conn, emotion, load_date)["loaded"]
    problems = bronze_problems(bronze_images, expected_rows=expected)
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"rows": bronze_images.num_rows, "loaded_in_load_log": expected},
    )


@dg.asset_check(
    asset=image_embeddings,
    partitions_def=image_partitions,
    blocking=True,
    additional_ins={"bronze_images": dg.AssetIn()},
    description="Every bronze image of the partition has exactly one vector for the current model, "
    "no other rows exist, every vector has 512 dims and no NaN/inf.",
)
def image_embeddings_complete(
    context: dg.AssetCheckExecutionContext,
    bronze_images: pa.Table,
    postgres: PostgresResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        facts = vectors.partition_check(conn, emotion, load_date, embedder.model_id(), bronze_images["image_id"].to_pylist())
    problems = [f"{len(facts[k])} {k.replace('_', ' ')} image(s), e.g. {facts[k][0][:12]}"
                for k in ("missing", "extra", "duplicated", "wrong_dims") if facts[k]]  # fmt: skip
    if facts["nonfinite"]:
        problems.append(f"{facts['nonfinite']} vector(s) with NaN/inf")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"vectors": facts["rows"], "bronze_images": bronze_images.num_rows},
    )


@dg.asset_check(
    asset=silver_embeddings,
    partitions_def=image_partitions,
    blocking=True,
    description="Row-count parity with PostgreSQL for the partition and model (the classic migration's "
    "'verify the row count' step), exactly the load log's loaded images of the partition, plus dims, finiteness, "
    "norm 1 and unique image ids.",
)
def silver_matches_postgres(
    context: dg.AssetCheckExecutionContext,
    silver_embeddings: pa.Table,
    postgres: PostgresResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        in_postgres = vectors.count_partition(conn, emotion, load_date, embedder.model_id())
        logged = [r["image_id"] for r in ledger.partition_rows(conn, emotion, load_date)]
    problems = silver_problems(silver_embeddings)
    if silver_embeddings.num_rows != in_postgres:
        problems.append(f"silver has {silver_embeddings.num_rows} rows, PostgreSQL {in_postgres}")
    # not only the layer before it: the load log's images (a materialisation over lost vectors fails here)
    if convergence.state_of(silver_embeddings["image_id"].to_pylist()) != convergence.state_of(logged):
        problems.append(f"silver does not hold the load log's {len(logged)} loaded images of the partition")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"silver_rows": silver_embeddings.num_rows, "postgres_rows": in_postgres, "loaded_in_load_log": len(logged)},
    )


@dg.asset_check(
    asset=search_index,
    blocking=True,
    description=f"recall@10 of the index against exact search over silver, on a sample of queries, is at "
    f"least {RECALL_TARGET}; the index holds exactly the current model's silver vectors.",
)
def search_index_recall(
    search_index: LakeFiles, lake: LakeResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    try:
        index = SearchIndex.from_files(search_index.files)
    except IndexUnavailable as exc:
        return dg.AssetCheckResult(passed=False, description=f"the index cannot be read: {exc}")
    silver = current_silver(lake, embedder)
    measured = index_recall(index, silver)
    problems = []
    if measured["recall"] < RECALL_TARGET:
        problems.append(f"recall@{measured['k']} is {measured['recall']:.3f} < {RECALL_TARGET}")
    if index.size != silver.num_rows:
        problems.append(f"the index holds {index.size} vectors, silver {silver.num_rows}")
    if index.model != embedder.model_id():
        problems.append(f"the index is of model {index.model}, the embedder makes {embedder.model_id()}")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"recall_at_10": measured["recall"], "queries": measured["queries"], "vectors": index.size,
                  "kind": index.kind},  # fmt: skip
    )


@dg.asset_check(
    asset=gold_emotion_summary,
    description="The summary counts every silver image of the current model exactly once.",
)
def gold_summary_counts_silver(
    gold_emotion_summary: pa.Table, lake: LakeResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    counted = sum(gold_emotion_summary["images"].to_pylist())
    in_silver = current_silver(lake, embedder).num_rows
    return dg.AssetCheckResult(
        passed=counted == in_silver,
        description=None if counted == in_silver else f"summary counts {counted} images, silver has {in_silver}",
        metadata={"summary_images": counted, "silver_rows": in_silver},
    )


@dg.asset_check(
    asset=raw_images,
    name="landing_reconciled",
    description="A full re-listing of the landing zone against the load log and the lake (the auto-loader's "
    "periodic backfill, made visible): every landing file is in the load log (files still settling or carried by "
    "an unfinished run are not judged), every loaded file is in the lake, every partition's layers hold exactly "
    "the load log's images; temporary files of killed writes are removed and reported. Run weekly by the "
    "reconcile job (weekly_reconcile), or on demand; never inside ingest runs.",
)
def landing_reconciled(
    context: dg.AssetCheckExecutionContext,
    landing: LandingResource,
    lake: LakeResource,
    postgres: PostgresResource,
    auto_loader: AutoLoaderResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    from fer_platform.automation.convergence import busy_partitions
    from fer_platform.automation.sensors import runs_state

    settle_us = int(auto_loader.settings().settle_seconds * 1e6)
    in_flight, _ = runs_state(context.instance, unfinished_only=True)
    r = reconcile(landing.storage(), lake.storage(), postgres.get_dsn(), time.time_ns() // 1000 - settle_us,
                  in_flight=in_flight, model=embedder.model_id(), busy=busy_partitions(context.instance))  # fmt: skip
    problems = []
    if r.never_loaded:
        problems.append(f"{len(r.never_loaded)} landing file(s) never loaded, e.g. {r.never_loaded[0]} (the "
                        "landing_sensor asks for them again after a failed run, up to FER_MAX_ATTEMPTS runs: see its "
                        "failed runs and re-execute one once the cause is fixed)")  # fmt: skip
    if r.missing_in_lake:
        problems.append(f"{len(r.missing_in_lake)} loaded file(s) missing from the lake, e.g. {r.missing_in_lake[0]}")
    if r.disagreements:
        problems.append(f"{len(r.disagreements)} layer(s) disagree with the load log, e.g. {r.disagreements[0]} (the "
                        "landing_sensor re-materialises them, or run the demo)")  # fmt: skip
    if r.temp_files_removed:
        context.log.warning(f"removed {len(r.temp_files_removed)} temporary file(s) of killed writes, e.g. "
                            f"{r.temp_files_removed[0]}")  # fmt: skip
    return dg.AssetCheckResult(
        passed=r.ok,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or None,
        metadata={
            "landing_files": r.landing_files,
            "load_log_versions": r.ledger_versions,
            "never_loaded": len(r.never_loaded),
            "missing_in_lake": len(r.missing_in_lake),
            "not_yet_settled": r.recent,
            "in_runs_not_finished": r.in_flight,
            "layer_disagreements": dg.MetadataValue.md(
                markdown_table([{"disagreement": d} for d in r.disagreements], ["disagreement"])
            ),
            "temp_files_removed": dg.MetadataValue.md(
                markdown_table([{"path": p} for p in r.temp_files_removed], ["path"])
            ),
            "temp_files_in_use": len(r.temp_files_in_use),
            "never_loaded_files": dg.MetadataValue.md(markdown_table([{"key": k} for k in r.never_loaded], ["key"])),
            "missing_lake_files": dg.MetadataValue.md(
                markdown_table([{"lake_path": p} for p in r.missing_in_lake], ["lake_path"])
            ),
        },
    )


@dg.asset_check(
    asset=emotion_model,
    blocking=True,
    description=f"Re-measures the stored model from its lake files alone (weights digest, the bronze rows of its "
    f"snapshot): on the test split it must beat the untuned base weights (same input size) by "
    f"{training.APPROVAL_MARGIN} in 10-NN emotion agreement and in nearest-centroid accuracy, with finite vectors. "
    "When it passes, the model is approved in the lake (models/<id>/APPROVAL.json, then the models/APPROVED "
    "pointer) and becomes what embedder weights 'tuned' serve.",
)
def emotion_model_beats_untuned(
    emotion_model: LakeFiles, lake: LakeResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    bronze = read_bronze(lake.storage(), BRONZE_COLUMNS + ["emotion", "load_date"], splits=["train", "test"])
    try:
        result = training.verify_model(emotion_model.files, bronze, device=embedder.device)
    except FerError as exc:
        return dg.AssetCheckResult(passed=False, description=f"model {emotion_model.folder}: {exc}")
    metrics, problems = result["metrics"], result["problems"]
    figures = {
        "tuned_agreement_at_10": metrics["tuned"]["agreement_at_10"],
        "untuned_agreement_at_10": metrics["untuned"]["agreement_at_10"],
        "tuned_centroid_accuracy": metrics["tuned"]["centroid_accuracy"],
        "untuned_centroid_accuracy": metrics["untuned"]["centroid_accuracy"],
    }
    meta = {"model": result["model"], **figures, "test_images": metrics["test_images"]}
    if not problems:
        models.approve(lake.storage(), result["model"], {
            "agreement_at_10": figures["tuned_agreement_at_10"],
            "centroid_accuracy": figures["tuned_centroid_accuracy"],
            "untuned_agreement_at_10": figures["untuned_agreement_at_10"],
            "untuned_centroid_accuracy": figures["untuned_centroid_accuracy"],
        })  # fmt: skip
        meta["approved"] = dg.MetadataValue.path(lake.storage().uri(f"{models.MODELS}/{models.APPROVED}"))
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None, metadata=meta)


ALL_CHECKS = [
    bronze_images_valid, image_embeddings_complete, silver_matches_postgres, search_index_recall,
    gold_summary_counts_silver, landing_reconciled, emotion_model_beats_untuned,
]  # fmt: skip
# The checks that run in the runs that write their assets; landing_reconciled judges the whole landing zone and
# every layer, so it runs in the reconcile job only (inside an ingest run, the layers after raw are not written yet).
RUN_CHECKS = [c for c in ALL_CHECKS if c is not landing_reconciled]
