"""raw_images: landing files of one emotion and day, validated and copied into the lake."""

from collections.abc import Sequence
from typing import Optional

import dagster as dg
import pyarrow as pa

from fer_platform.catalog import table_metadata
from fer_platform.core import ledger
from fer_platform.core.bronze import manifest_table
from fer_platform.core.convergence import content_version, restore_load_log
from fer_platform.core.ingest import ingest, select_files
from fer_platform.core.layout import RAW_MANIFEST
from fer_platform.core.report import human_bytes, markdown_table, progress_every
from fer_platform.io_managers.parquet import LAKE_PATH
from fer_platform.partitions import image_partitions, partition_of, utc_today
from fer_platform.resources import LakeResource, LandingResource, PostgresResource

# Where the data starts: the landing zone (a folder, S3 or Azure), outside Dagster's control. The landing
# sensor observes it every tick it changes, with its backlog (core/backlog.py).
landing_zone = dg.AssetSpec(
    "landing_zone",
    group_name="ingest",
    kinds={"files"},
    description="The landing zone (`FER_LANDING`: a folder, `s3://...` or `abfs://...`), laid out as "
    "Kaggle's FER2013: `{split}/{emotion}/{name}.png`. Not materialised by the platform: the landing "
    "sensor observes it, with Auto Loader's backlog figures: `files_waiting` and `bytes_waiting` (not in "
    "the load log yet), `oldest_waiting_age_seconds`, `files_total`.",
)


class RawImagesConfig(dg.Config):
    files: Optional[list[str]] = None
    """Landing keys to load (the sensor's file list). Unset: the pending files of this
    emotion, for today's partition only."""
    on_success: str = "keep"
    """What to do with a source file once its load is committed: keep, delete or archive."""
    take_pending: bool = False
    """Take every pending file of this emotion whatever the partition's date (the bulk load's runs, which
    may start after midnight UTC); files then load into this partition."""


def ingest_run_config(
    files: Optional[Sequence[str]] = None, on_success: str = "keep", take_pending: bool = False
) -> dg.RunConfig:
    """The one builder of an ingest run's config (the landing sensor, the bulk load job, the repairs, the
    daily refresh and the demo all use it).

    ``files`` None: the emotion's pending files (what a run launched from the UI takes); a list: exactly those
    landing keys (the sensor's and the demo's runs); an empty list: no new file, every layer of the partition
    re-derived from the load log (the repairs, the daily refresh)."""
    files = None if files is None else list(files)
    return dg.RunConfig(
        ops={"raw_images": RawImagesConfig(files=files, on_success=on_success, take_pending=take_pending)}
    )


@dg.asset(
    partitions_def=image_partitions,
    deps=[landing_zone],
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: RAW_MANIFEST, **table_metadata("raw_images")},
    group_name="ingest",
    kinds={"python", "parquet"},
    description="Landing files of one emotion and load date, validated and copied to "
    "`raw/images/fer2013/{split}/{emotion}/{name}`; bad files to `quarantine/` with a reason; "
    "every file in the load log (loaded, duplicate, conflict or quarantined). The output is the partition's "
    "manifest of loaded images (`raw/manifest/emotion={emotion}/load_date={day}/part-0.parquet`).",
)
def raw_images(
    context: dg.AssetExecutionContext,
    config: RawImagesConfig,
    landing: LandingResource,
    lake: LakeResource,
    postgres: PostgresResource,
) -> dg.Output[pa.Table]:
    emotion, load_date = partition_of(context)
    dsn = postgres.get_dsn()
    with postgres.connect() as conn:  # a lost checkpoint is put back before anything is decided
        restored = restore_load_log(conn, lake.storage())
    if restored:
        context.log.warning(
            f"put back {restored} load-log row(s) that the raw manifests hold (a lost checkpoint)"
        )
    files, missing, ignored = select_files(
        landing.storage(),
        dsn,
        emotion,
        load_date,
        utc_today(),
        config.files,
        take_pending=config.take_pending,
    )
    report = ingest(
        landing.storage(),
        lake.storage(),
        dsn,
        files,
        load_date,
        context.run.run_id,
        config.on_success,
        # every 10 s and at the end: a line per batch of 500 files was an event-log write each (500 at 7x FER)
        progress=progress_every(context.log.info, done_what=("ingested", "files", "files/s")),
        max_bytes=landing.max_file_bytes,
    )
    for o in report.quarantined:
        context.log.warning(f"quarantined {o.key}: {o.reason}")
    for key in report.missing + missing:
        context.log.warning(f"{key} is no longer in the landing zone; nothing to load")
    for c in report.demoted:
        context.log.warning(
            f"{c.path} ({c.emotion}|{c.load_date}) is no longer loaded, now {c.status}: {c.reason}"
        )
    demoted = [f"{e}|{d.isoformat()}" for e, d in report.demoted_partitions]
    if demoted:  # this partition is re-derived below; the others by the convergence audit's repair runs
        context.log.warning(f"partitions that lost an image to a duplicate rule: {', '.join(demoted)}")
    with postgres.connect() as conn:
        manifest = manifest_table(ledger.partition_rows(conn, emotion, load_date))
        logged = ledger.status_counts(conn, emotion, load_date)
    counts = report.counts
    # the data version: the loaded images and the partition's load-log counts (gold_daily_loads and
    # gold_duplicates count duplicates too); a run that saw nothing new leaves it as it was
    version = content_version(manifest["image_id"].to_pylist(), *(f"{s}{logged[s]}" for s in sorted(logged)))
    return dg.Output(
        manifest,
        data_version=dg.DataVersion(version),
        metadata={
            "files_seen": len(files),
            "loaded": counts["loaded"],
            "duplicates": counts["duplicate"],
            "conflicts": counts["conflict"],
            "demoted": len(report.demoted),
            "demoted_partitions": dg.MetadataValue.json(demoted),
            "quarantined": counts["quarantined"],
            "already_logged": len(report.already_logged),
            "missing": len(report.missing) + len(missing),
            "ignored": len(ignored),
            "bytes_loaded": dg.MetadataValue.text(human_bytes(report.bytes_loaded)),
            "partition_images": manifest.num_rows,
            "quarantined_files": dg.MetadataValue.md(
                markdown_table([o.__dict__ for o in report.quarantined], ["key", "reason"])
            ),
            "preview": dg.MetadataValue.md(
                markdown_table(manifest.slice(0, 10).to_pylist(), ["filepath", "split", "size", "image_id"])
            ),
        },
    )
