"""Jobs: the partitioned ingest job, the gold + index refresh, and the triage of landing files no
partition can take."""

import dagster as dg

from fer_platform.assets.bronze import bronze_images, bronze_images_valid
from fer_platform.assets.embeddings import (
    image_embeddings,
    image_embeddings_complete,
    imagenes_fer_foreign_rows,
)
from fer_platform.assets.gold import GOLD_ASSETS, gold_duplicates_clean, gold_summary_counts_silver
from fer_platform.assets.model import MODEL_ASSETS, emotion_model_beats_untuned
from fer_platform.assets.raw import ingest_run_config, raw_images
from fer_platform.assets.search import search_index, search_index_recall
from fer_platform.assets.silver import silver_embeddings, silver_matches_postgres
from fer_platform.automation.reconcile import landing_reconciled
from fer_platform.core.challenge import LOGGED_ROWS, expand_csv
from fer_platform.core.ingest import ingest
from fer_platform.partitions import image_partitions, utc_today
from fer_platform.resources import LakeResource, LandingResource, PostgresResource

INGEST_ASSETS = [raw_images, bronze_images, image_embeddings, silver_embeddings]
# The checks that run in the runs that write the assets they guard (each lives beside its asset).
RUN_CHECKS = [
    bronze_images_valid,
    image_embeddings_complete,
    imagenes_fer_foreign_rows,
    silver_matches_postgres,
    search_index_recall,
    gold_summary_counts_silver,
    gold_duplicates_clean,
    emotion_model_beats_untuned,
]
# The layers of a partition with the checks that guard them, but not the full re-listing of the landing zone
# (landing_reconciled): that one is the reconcile job's.
INGEST_SELECTION = dg.AssetSelection.assets(*INGEST_ASSETS) - dg.AssetSelection.checks(landing_reconciled)

# Every job runs its steps in one process (the Definitions' executor): the chain is sequential anyway, and
# the embedding step then pays for importing torch once per run, not once per step.
ingest_job = dg.define_asset_job(
    "ingest_images",
    selection=INGEST_SELECTION,
    partitions_def=image_partitions,
    description="One partition (emotion x load date) from the landing zone to searchable vectors: "
    "raw -> bronze -> embeddings (pgvector) -> silver.",
)


bulk_load_job = dg.define_asset_job(
    "bulk_load",
    selection=INGEST_SELECTION,
    partitions_def=image_partitions,
    tags={"fer/bulk": "true"},
    # a run that starts after midnight UTC still takes its emotion's pending files, into the launch day's
    # partition
    config=ingest_run_config(take_pending=True),
    description="The first load of a large landing folder (FER2013's 35,887 images): launched as a backfill "
    "of today's 7 emotion partitions (`fer-platform bulk-load`, or Jobs -> bulk_load -> Partitions in the "
    "UI); each run takes every pending file of its emotion, in batches with progress in its logs. The run "
    "queue bounds how many run at once (tag fer/bulk, see dagster.yaml).",
)

PUBLISH_ASSETS = [*GOLD_ASSETS, search_index]

publish_job = dg.define_asset_job(
    "publish_gold_and_index",
    selection=dg.AssetSelection.assets(*PUBLISH_ASSETS),
    description="The unpartitioned layers over every silver partition: gold summaries and the search index.",
)


class TriageConfig(dg.Config):
    files: list[str]
    """Landing keys that no emotion partition can take (e.g. an unknown emotion folder)."""
    on_success: str = "keep"


def triage_run_config(files: list[str], on_success: str = "keep") -> dg.RunConfig:
    """A landing_triage run's config: the landing keys to quarantine."""
    return dg.RunConfig(ops={"quarantine_unroutable": TriageConfig(files=files, on_success=on_success)})


@dg.op(description="Quarantine landing files outside the FER layout, with the reason, in the load log.")
def quarantine_unroutable(
    context: dg.OpExecutionContext,
    config: TriageConfig,
    landing: LandingResource,
    lake: LakeResource,
    postgres: PostgresResource,
) -> None:
    storage = landing.storage()
    entries, missing = storage.stat_many(config.files)
    report = ingest(
        storage,
        lake.storage(),
        postgres.get_dsn(),
        entries,
        utc_today(),
        context.run.run_id,
        config.on_success,
        max_bytes=landing.max_file_bytes,
    )
    for o in report.outcomes:
        context.log.warning(f"{o.status} {o.key}: {o.reason}")
    for key in missing:
        context.log.warning(f"{key} is no longer in the landing zone")


@dg.job(
    description="Quarantine landing files that belong to no emotion partition.", tags={"fer/kind": "triage"}
)
def landing_triage():
    quarantine_unroutable()


class ExpandCsvConfig(dg.Config):
    csv: str
    """The landing key of a FER2013 challenge CSV to expand into staged images."""


def expand_run_config(key: str) -> dg.RunConfig:
    """An expand_challenge_csv run's config: the landing key of the CSV."""
    return dg.RunConfig(ops={"expand_csv_rows": ExpandCsvConfig(csv=key)})


@dg.op(
    description="Expand a FER2013 challenge CSV (emotion,pixels,Usage) into 48x48 images in the landing "
    "zone's _csv/ staging folder, from where the landing sensor loads them; malformed rows are quarantined "
    "with their row number in the load log."
)
def expand_csv_rows(
    context: dg.OpExecutionContext,
    config: ExpandCsvConfig,
    landing: LandingResource,
    lake: LakeResource,
    postgres: PostgresResource,
) -> dg.Output[None]:
    storage = landing.storage()
    report = expand_csv(
        storage, config.csv, storage, lake.storage(), postgres.get_dsn(), utc_today(), context.run.run_id
    )
    for _row, reason in report.quarantined[:LOGGED_ROWS]:
        context.log.warning(f"{config.csv}: quarantined {reason}")
    (context.log.warning if report.status == "quarantined" or report.quarantined else context.log.info)(
        report.line()
    )
    return dg.Output(
        None,
        metadata={
            "rows_staged": report.good,
            "rows_quarantined": len(report.quarantined),
            "rows_skipped": report.skipped,
            "status": report.status,
            "rows_per_second": report.rows_per_second or 0.0,
        },
    )


@dg.job(
    name="expand_challenge_csv",
    description="Expand a landing challenge CSV into staged images (launched by the landing sensor, one run "
    "per CSV version); the sensor's next ticks load them.",
    tags={"fer/kind": "csv"},
)
def expand_csv_job():
    expand_csv_rows()


# The emotion model: train, check (blocking: a model that does not beat the untuned weights is never
# approved, and embedding_model does not run), then record the served model.
train_model_job = dg.define_asset_job(
    "train_emotion_model",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Fine-tune the emotion model on bronze, check it against the untuned weights on the test "
    "split (approved in the lake when it passes), then record the model the embedder serves.",
)

reembed_job = dg.define_asset_job(
    "reembed_images",
    selection=dg.AssetSelection.assets(image_embeddings, silver_embeddings),
    partitions_def=image_partitions,
    description="Re-embed partitions with the served model: after a new model is served, launch it as a "
    "backfill over the unsynced partitions. Vectors are keyed by (image, model): the new model's rows are "
    "added once, the old model's stay until removed; silver is replaced by the new model's vectors.",
)
