"""Schedules: the daily refresh of yesterday's partitions and the weekly reconciliation."""

import datetime as dt

import dagster as dg

from fer_platform.automation.jobs import ingest_job, reconcile_job
from fer_platform.automation.sensors import default_status
from fer_platform.core.layout import EMOTIONS
from fer_platform.partitions import partition_key


def _status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus(default_status().value)


@dg.schedule(
    name="daily_refresh",
    job=ingest_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=_status(),
    description="02:00 UTC: refreshes the previous day's partitions (one run per emotion) from the load log: "
    "bronze, vectors and silver re-derived; nothing is re-embedded or loaded twice.",
)
def daily_refresh(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
    for emotion in EMOTIONS:
        key = partition_key(emotion, day)
        yield dg.RunRequest(run_key=f"daily_refresh|{key}", partition_key=key, tags={"fer/trigger": "daily_refresh"})


weekly_reconcile = dg.ScheduleDefinition(
    name="weekly_reconcile",
    job=reconcile_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=_status(),
    description="Sundays 03:00 UTC: re-list the landing zone against the load log and the lake.",
)
