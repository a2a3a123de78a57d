"""The daily refresh's requests for a tick time, and the reconcile job's report on a real ledger and lake."""

import datetime as dt
import os
import time

import dagster as dg

from fer_platform.assets.search import search_index
from fer_platform.automation.jobs import INGEST_ASSETS
from fer_platform.automation.reconcile import reconcile_job
from fer_platform.automation.schedules import daily_refresh, weekly_reconcile
from fer_platform.definitions import build_definitions
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import AutoLoaderResource
from fer_platform_tests.helpers import face, put


def _load(resources, landing, emotion, day, n):
    keys = [f"train/{emotion}/{i}.png" for i in range(n)]
    for i, key in enumerate(keys):
        put(landing, key, face(emotion, i))
    assert dg.materialize(
        INGEST_ASSETS,
        partition_key=partition_key(emotion, day),
        resources=resources,
        run_config={"ops": {"raw_images": {"config": {"files": keys}}}},
    ).success


def test_daily_refresh_skips_partitions_that_are_up_to_date_and_repairs_any_day(resources, landing, lake):
    today = utc_today()
    yesterday = today - dt.timedelta(days=1)
    _load(resources, landing, "happy", yesterday, 2)
    _load(resources, landing, "sad", yesterday, 1)

    def tick(at: dt.datetime):
        with (
            dg.instance_for_test() as instance,
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=at, resources=resources
            ) as context,
        ):
            return daily_refresh(context)

    # 02:00 UTC today (a tick just after midnight in another zone is judged in UTC): yesterday's two
    # partitions hold exactly the load log's images in every layer: re-deriving them changes nothing
    at = dt.datetime.combine(today, dt.time(3, 0), tzinfo=dt.timezone(dt.timedelta(hours=1)))
    skipped = tick(at)
    assert isinstance(skipped, dg.SkipReason), skipped
    assert skipped.skip_message == (
        f"{yesterday}: its 2 partition(s) are up to date, and every layer agrees with the load log"
    )
    # a day with nothing loaded and every layer in agreement: no run at all, and says so
    skipped = tick(at - dt.timedelta(days=1))
    assert isinstance(skipped, dg.SkipReason) and "nothing was loaded" in skipped.skip_message
    # a deleted silver partition of any day is repaired by the next tick, and only that partition
    for f in (lake / f"silver/embeddings/emotion=sad/load_date={yesterday}").iterdir():
        f.unlink()
    for when in (at, at - dt.timedelta(days=1)):
        (repair,) = tick(when)
        assert repair.partition_key == partition_key("sad", yesterday) and repair.tags["fer/repair"] == "true"
        assert repair.job_name == "ingest_images"
    assert daily_refresh.cron_schedule == "0 2 * * *" and daily_refresh.execution_timezone == "UTC"
    assert weekly_reconcile.cron_schedule == "0 3 * * 0" and weekly_reconcile.job_name == "reconcile"


def test_reconcile_reports_never_loaded_files_and_lake_files_gone(resources, landing, lake):
    hour_ago = time.time() - 3600
    for i in range(3):
        os.utime(put(landing, f"train/happy/{i}.png", face("happy", i)), (hour_ago, hour_ago))
    assert dg.materialize(
        INGEST_ASSETS, partition_key=partition_key("happy", utc_today()), resources=resources
    ).success
    assert dg.materialize([search_index], resources=resources).success
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
    assert (
        ev.metadata["never_loaded"].value == 1
        and "train/sad/moved.png" in ev.metadata["never_loaded_files"].value
    )
    assert ev.metadata["missing_in_lake"].value == 1
    assert "raw/images/fer2013/train/happy/1.png" in ev.metadata["missing_lake_files"].value
    assert ev.metadata["not_yet_settled"].value == 1
    assert "1 landing file(s) never loaded" in ev.description and reconcile_job.name == "reconcile"


def test_reconcile_judges_no_file_a_run_carries_reports_layers_and_removes_temp_files(
    resources, landing, lake
):
    """No false positives: a file carried by an unfinished (queued, running) run of the sensor is not "never
    loaded". A layer that disagrees with the load log is reported; a temporary file a killed write left is
    removed and reported (one of a live writer is left alone)."""
    from dagster._core.test_utils import create_run_for_test

    from fer_platform.automation.runs import TRIGGER

    hour_ago = time.time() - 3600
    os.utime(put(landing, "train/happy/0.png", face("happy", 0)), (hour_ago, hour_ago))
    assert dg.materialize(
        INGEST_ASSETS, partition_key=partition_key("happy", utc_today()), resources=resources
    ).success
    assert dg.materialize([search_index], resources=resources).success
    os.utime(put(landing, "train/sad/queued.png", face("sad", 1)), (hour_ago, hour_ago))
    silver = lake / f"silver/embeddings/emotion=happy/load_date={utc_today()}"
    dead = silver / ".part-0.parquet.999999-0badf00d.tmp"  # pid 999999: no such process
    dead.write_bytes(b"half a file")
    live = silver / f".part-0.parquet.{os.getpid()}-0000abcd.tmp"  # this process: a write in progress
    live.write_bytes(b"being written")
    (lake / f"bronze/images/emotion=happy/load_date={utc_today()}/part-0.parquet").unlink()
    defs = build_definitions({**resources, "auto_loader": AutoLoaderResource(settle_seconds=1)})
    with dg.instance_for_test() as instance:
        create_run_for_test(
            instance,
            job_name="ingest_images",
            status=dg.DagsterRunStatus.STARTED,
            tags=TRIGGER,
            run_config={"ops": {"raw_images": {"config": {"files": ["train/sad/queued.png"]}}}},
        )
        result = defs.resolve_job_def("reconcile").execute_in_process(instance=instance)
    (ev,) = result.get_asset_check_evaluations()
    assert ev.metadata["never_loaded"].value == 0 and ev.metadata["in_runs_not_finished"].value == 1
    assert not ev.passed and "bronze is missing" in ev.metadata["layer_disagreements"].value
    assert "1 layer(s) disagree" in ev.description
    assert dead.name in ev.metadata["temp_files_removed"].value and not dead.exists()
    assert live.exists() and ev.metadata["temp_files_in_use"].value == 1


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
    assert (
        bulk.success and bulk.asset_materializations_for_node("raw_images")[0].metadata["loaded"].value == 2
    )
    assert bulk.asset_materializations_for_node("silver_embeddings")[0].metadata["rows"].value == 2
