"""The landing sensor (auto-loader semantics) and the declarative automation of gold and the index.

landing_sensor, each tick: list the landing zone, take the settled files beyond the cursor's
watermark that the load log does not hold (oldest first, at most max_files_per_tick), and
request one ingest run per emotion for today's partition carrying exactly those files. The
load log is the checkpoint: a lost cursor reloads nothing. Logic in core/planner.py.
"""

import os
import time
import warnings

import dagster as dg

from fer_platform.automation.jobs import PUBLISH_ASSETS, ingest_job, landing_triage
from fer_platform.core import ledger
from fer_platform.core.db import connect
from fer_platform.core.planner import Watermark, plan_tick, run_key
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import AutoLoaderResource, LandingResource, PostgresResource
from fer_platform.resources.environments import automation_on_by_default


# AutomationConditionSensorDefinition passes Dagster's own beta `owners` parameter through.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*owners.*")


def default_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_on_by_default() else dg.DefaultSensorStatus.STOPPED


@dg.sensor(
    name="landing_sensor",
    jobs=[ingest_job, landing_triage],
    minimum_interval_seconds=int(os.environ.get("FER_SENSOR_INTERVAL", "30")),
    default_status=default_status(),
    description="Picks up new landing files exactly once (auto-loader semantics): one ingest run per emotion "
    "for today's partition with the exact file list; the load log is the checkpoint, the cursor a watermark.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingResource,
    postgres: PostgresResource,
    auto_loader: AutoLoaderResource,
) -> dg.SensorResult:
    storage, settings = landing.storage(), auto_loader.settings()
    dsn = postgres.get_dsn()

    def known(entries):
        with connect(dsn) as conn:
            return ledger.known_versions(conn, [storage.uri(e.key) for e in entries])

    tick = plan_tick(storage, storage.list_files(), known, Watermark.from_json(context.cursor), settings,
                     now_us=time.time_ns() // 1000)  # fmt: skip
    today = utc_today()
    requests = []
    for emotion, files in tick.batches:
        keys = [e.key for e in files]
        tags = {"fer/trigger": "landing_sensor", "fer/files": str(len(keys))}
        if emotion is None:
            requests.append(dg.RunRequest(
                run_key=run_key(files), job_name=landing_triage.name, tags=tags,
                run_config={"ops": {"quarantine_unroutable": {"config": {"files": keys, "on_success": settings.on_success}}}},
            ))  # fmt: skip
        else:
            requests.append(dg.RunRequest(
                run_key=run_key(files), job_name=ingest_job.name, partition_key=partition_key(emotion, today), tags=tags,
                run_config={"ops": {"raw_images": {"config": {"files": keys, "on_success": settings.on_success}}}},
            ))  # fmt: skip
    waiting = f"{tick.deferred} still being written, {tick.already_logged} already in the load log"
    if requests:
        context.log.info(f"{tick.files} file(s) in {len(requests)} run(s); {tick.capped} left for the next tick "
                         f"(max_files_per_tick {settings.max_files_per_tick}); {waiting}")  # fmt: skip
    return dg.SensorResult(
        run_requests=requests,
        cursor=tick.cursor.to_json(),
        skip_reason=None if requests else f"no new files ({waiting})",
    )


publish_automation = dg.AutomationConditionSensorDefinition(
    "publish_automation",
    target=dg.AssetSelection.assets(*PUBLISH_ASSETS),
    default_status=default_status(),
    minimum_interval_seconds=int(os.environ.get("FER_AUTOMATION_INTERVAL", "30")),
    description="Declarative automation of gold and the search index (they follow silver).",
)
