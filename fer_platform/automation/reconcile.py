"""The auto-loader's periodic full re-listing: the landing_reconciled check on raw_images and the job that
runs it.

It judges the whole landing zone and every layer against the load log, so it runs in the reconcile job only
(weekly_reconcile, or on demand), never inside an ingest run, whose later layers are not written yet.
"""

import time

import dagster as dg

from fer_platform.assets.raw import raw_images
from fer_platform.automation.convergence import busy_partitions
from fer_platform.automation.runs import runs_state
from fer_platform.core.reconcile import reconcile
from fer_platform.core.report import markdown_table
from fer_platform.resources import (
    AutoLoaderResource,
    EmbedderResource,
    LakeResource,
    LandingResource,
    PostgresResource,
)


@dg.asset_check(
    asset=raw_images,
    name="landing_reconciled",
    description="A full re-listing of the landing zone against the load log and the lake (the auto-loader's "
    "periodic backfill, made visible): every landing file is in the load log (files still settling or "
    "carried by an unfinished run are not judged), every loaded file is in the lake, every partition's "
    "layers hold exactly the load log's images; temporary files of killed writes are removed and reported. "
    "Run weekly by the reconcile job (weekly_reconcile), or on demand; never inside ingest runs.",
)
def landing_reconciled(
    context: dg.AssetCheckExecutionContext,
    landing: LandingResource,
    lake: LakeResource,
    postgres: PostgresResource,
    auto_loader: AutoLoaderResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    settle_us = int(auto_loader.settings().settle_seconds * 1e6)
    in_flight, _ = runs_state(context.instance, unfinished_only=True)
    r = reconcile(
        landing.storage(),
        lake.storage(),
        postgres.get_dsn(),
        time.time_ns() // 1000 - settle_us,
        in_flight=in_flight,
        model=embedder.model_id(),
        busy=busy_partitions(context.instance),
    )
    problems = []
    if r.never_loaded:
        problems.append(
            f"{len(r.never_loaded)} landing file(s) never loaded, e.g. {r.never_loaded[0]} (the "
            "landing_sensor asks for them again after a failed run, up to FER_MAX_ATTEMPTS runs: see its "
            "failed runs and re-execute one once the cause is fixed)"
        )
    if r.missing_in_lake:
        problems.append(
            f"{len(r.missing_in_lake)} loaded file(s) missing from the lake, e.g. {r.missing_in_lake[0]}"
        )
    if r.disagreements:
        problems.append(
            f"{len(r.disagreements)} layer(s) disagree with the load log, e.g. {r.disagreements[0]} (the "
            "landing_sensor re-materialises them, or run the demo)"
        )
    if r.temp_files_removed:
        context.log.warning(
            f"removed {len(r.temp_files_removed)} temporary file(s) of killed writes, e.g. "
            f"{r.temp_files_removed[0]}"
        )
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
            "never_loaded_files": dg.MetadataValue.md(
                markdown_table([{"key": k} for k in r.never_loaded], ["key"])
            ),
            "missing_lake_files": dg.MetadataValue.md(
                markdown_table([{"lake_path": p} for p in r.missing_in_lake], ["lake_path"])
            ),
        },
    )


reconcile_job = dg.define_asset_job(
    "reconcile",
    selection=dg.AssetSelection.checks(landing_reconciled),
    description="Re-lists the whole landing zone and reports, as the landing_reconciled check on raw_images, "
    "any file never loaded and any load-log entry whose lake file is missing.",
)
