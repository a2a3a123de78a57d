"""The daily refresh's requests for a tick time, and the reconcile job's report on a real ledger and lake."""

import datetime as dt
import os
import time

import dagster as dg

from fer_platform.automation.jobs import INGEST_ASSETS, reconcile_job
from fer_platform.automation.schedules import daily_refresh, weekly_reconcile
from fer_platform.checks import ALL_CHECKS
from fer_platform.core.layout import EMOTIONS
from fer_platform.definitions import build_definitions
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import AutoLoaderResource
from fer_platform_tests.helpers import face, put


def test_daily_refresh_requests_yesterdays_partitions_one_per_emotion():
    tick = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.timezone.utc)
    requests = list(daily_refresh(dg.build_schedule_context(scheduled_execution_time=tick)))
    assert [r.partition_key for r in requests] == [partition_key(e, "2026-11-27") for e in EMOTIONS]
    assert len({r.run_key for r in requests}) == 7
    # a tick just after midnight in another zone is still judged in UTC
    late = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert {r.partition_key.keys_by_dimension["load_date"] for r in daily_refresh(
        dg.build_schedule_context(scheduled_execution_time=late))} == {"2026-11-30"}  # fmt: skip
    assert daily_refresh.cron_schedule == "0 2 * * *" and daily_refresh.execution_timezone == "UTC"
    assert weekly_reconcile.cron_schedule == "0 3 * * 0" and weekly_reconcile.job_name == "reconcile"


def test_reconcile_reports_never_loaded_files_and_lake_files_gone(resources, landing, lake):
    hour_ago = time.time() - 3600
    for i in range(3):
        os.utime(put(landing, f"train/happy/{i}.png", face("happy", i)), (hour_ago, hour_ago))
    assert dg.materialize([*INGEST_ASSETS, *ALL_CHECKS], partition_key=partition_key("happy", utc_today()),
                          resources=resources, selection=dg.AssetSelection.assets("raw_images")).success  # fmt: skip
    res = {**resources, "auto_loader": AutoLoaderResource(settle_seconds=1)}
    defs = build_definitions(res)
    ok = defs.resolve_job_def("reconcile").execute_in_process()
    (ev,) = ok.get_asset_check_evaluations()
    assert ev.passed and ev.metadata["landing_files"].value == 3

    # a file that slipped past the sensor (moved in with an old modification time), a lake file deleted,
    # and a file still being written (not judged yet)
    old = put(landing, "train/sad/moved.png", face("sad", 1))
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    (lake / "raw/images/fer2013/train/happy/1.png").unlink()
    put(landing, "train/sad/writing.png", face("sad", 2))
    bad = defs.resolve_job_def("reconcile").execute_in_process()
    (ev,) = bad.get_asset_check_evaluations()
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    assert ev.metadata["never_loaded"].value == 1 and "train/sad/moved.png" in ev.metadata["never_loaded_files"].value
    assert ev.metadata["missing_in_lake"].value == 1
    assert "raw/images/fer2013/train/happy/1.png" in ev.metadata["missing_lake_files"].value
    assert ev.metadata["not_yet_settled"].value == 1
    assert "1 landing file(s) never loaded" in ev.description and reconcile_job.name == "reconcile"


def test_a_bulk_run_that_starts_after_midnight_still_takes_its_pending_files(resources, landing, pg_dsn):
    """The bulk load's runs queue one at a time: a run launched yesterday may start today. It takes
    its emotion's pending files whatever its partition's date (an ordinary run of a past partition
    takes none)."""
    for i in range(2):
        put(landing, f"train/fear/{i}.png", face("fear", i))
    yesterday = partition_key("fear", utc_today() - dt.timedelta(days=1))
    defs = build_definitions(resources)
    plain = defs.resolve_job_def("ingest_images").execute_in_process(partition_key=yesterday)
    assert plain.asset_materializations_for_node("raw_images")[0].metadata["loaded"].value == 0
    bulk = defs.resolve_job_def("bulk_load").execute_in_process(partition_key=yesterday)
    assert bulk.success and bulk.asset_materializations_for_node("raw_images")[0].metadata["loaded"].value == 2
    assert bulk.asset_materializations_for_node("silver_embeddings")[0].metadata["rows"].value == 2
