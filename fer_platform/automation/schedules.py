"""Schedules: the daily refresh of yesterday's partitions and the weekly reconciliation."""

import datetime as dt

import dagster as dg

from fer_platform.automation.convergence import audit_layers, repair_requests
from fer_platform.automation.jobs import ingest_job
from fer_platform.automation.reconcile import reconcile_job
from fer_platform.automation.sensors import default_status
from fer_platform.core import convergence
from fer_platform.resources import AutoLoaderResource, EmbedderResource, LakeResource, PostgresResource


def _status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus(default_status().value)


@dg.schedule(
    name="daily_refresh",
    job_name=ingest_job.name,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=_status(),
    description="02:00 UTC: re-derives from the load log every partition, of the previous day or any other, "
    "whose layers disagree with the load log (one run per partition; nothing is re-embedded or loaded "
    "twice). Partitions whose layers all hold the load log's images get no run: a day with nothing new is "
    "skipped, with the reason.",
)
def daily_refresh(
    context: dg.ScheduleEvaluationContext,
    postgres: PostgresResource,
    lake: LakeResource,
    embedder: EmbedderResource,
    auto_loader: AutoLoaderResource,
):
    day = context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
    with postgres.connect() as conn:
        restored = convergence.restore_load_log(conn, lake.storage())
        if restored:
            context.log.warning(
                f"put back {restored} load-log row(s) that the raw manifests hold (a lost checkpoint)"
            )
        audit = audit_layers(context.instance, conn, lake.storage(), embedder.model_id())
        loaded = convergence.ledger_state(conn)
    settings = auto_loader.settings()
    requests, given_up = repair_requests(
        context.instance,
        audit,
        settings.max_attempts,
        "daily_refresh",
        settings.retry_after_seconds,
        limit=len(audit.partitions),
    )
    # a schedule targets one job: the index follows silver (publish_automation), the landing sensor rebuilds
    # a lost one
    requests = [r for r in requests if r.job_name == ingest_job.name]
    for line in audit.lines()[:20]:
        context.log.warning(f"layers disagree: {line}")
    if given_up:
        context.log.warning(f"repairs failed too often, left to a person: {', '.join(given_up)}")
    # the previous day's partitions whose every layer already holds the load log's images would be re-derived
    # into what they are: no run (the audit above requested the ones that disagree)
    current = sorted(e for e, d in loaded if d == day)
    if not requests:
        held = f"its {len(current)} partition(s) are up to date" if current else "nothing was loaded"
        return dg.SkipReason(f"{day.isoformat()}: {held}, and every layer agrees with the load log")
    return requests


weekly_reconcile = dg.ScheduleDefinition(
    name="weekly_reconcile",
    job=reconcile_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=_status(),
    description="Sundays 03:00 UTC: re-list the landing zone against the load log and the lake.",
)
