"""landing_sensor ticks with dg.build_sensor_context against a real PostgreSQL load log and a landing
folder."""

import json
import os
import shutil
import time

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test  # runs as the daemon would create them

from fer_platform.assets.search import search_index
from fer_platform.automation import runs
from fer_platform.automation.jobs import INGEST_ASSETS, expand_csv_job
from fer_platform.automation.sensors import landing_sensor
from fer_platform.core import convergence, ledger, planner
from fer_platform.core.ingest import ingest
from fer_platform.core.listing import RESTAT_ROTATION
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import (
    AutoLoaderResource,
    EmbedderResource,
    LakeResource,
    LandingResource,
    PostgresResource,
)
from fer_platform_tests.core.test_challenge_csv import bad_rows, good_rows
from fer_platform_tests.helpers import face, put

T0 = float(int(time.time()) - 3600)  # files written an hour ago (whole seconds: exact in ns and us): settled


def land(landing, key, data, at):
    os.utime(put(landing, key, data), (at, at))


def tick(landing, pg_dsn, cursor=None, instance=None, lake=None, repairs=False, **settings):
    """One tick's (file requests, cursor, skip reason). The runs these tests simulate write only the load
    log (``load``), so every layer after it disagrees: the repair requests that follows are left out here
    unless ``repairs`` (the tests of repairs below run the real runs)."""
    settings.setdefault("settle_seconds", 5)
    lake_res = LakeResource(url=str(lake or landing.parent / "lake"))
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={
            "landing": LandingResource(url=str(landing)),
            "postgres": PostgresResource(dsn=pg_dsn),
            "auto_loader": AutoLoaderResource(**settings),
            "lake": lake_res,
            "embedder": EmbedderResource(weights="random", lake=lake_res),
        },
    ) as context:
        result = landing_sensor(context)
    skip = result.skip_reason.skip_message if result.skip_reason else None
    requests = [r for r in result.run_requests or [] if repairs or "fer/repair" not in r.tags]
    return requests, result.cursor, skip


def files_of(request):
    return runs.files_of(request.run_config)


def submit(instance, requests):
    """What the daemon does with the tick's requests: runs, in flight until they end."""
    return [
        create_run_for_test(
            instance,
            job_name=r.job_name,
            run_config=r.run_config,
            tags=r.tags,
            status=dg.DagsterRunStatus.STARTED,
        )
        for r in requests
    ]


def load(landing, lake, dsn, requests):
    """What the requested runs do to the load log (the raw_images step, without the rest of the run)."""
    ls = Storage(str(landing))
    for r in requests:
        ingest(ls, Storage(str(lake)), dsn, ls.stat_many(files_of(r))[0], utc_today(), "run")


def test_new_files_become_one_run_per_emotion_with_their_exact_files(landing, pg_dsn):
    land(landing, "train/happy/a.png", face("happy", 1), T0)
    land(landing, "test/happy/b.png", face("happy", 2), T0 + 1)
    land(landing, "train/sad/c.png", face("sad", 1), T0 + 2)
    land(landing, ".DS_Store", b"junk", T0 + 3)
    instance = dg.DagsterInstance.ephemeral()
    requests, cursor, _ = tick(landing, pg_dsn, instance=instance)
    by_key = {r.partition_key: r for r in requests}
    assert set(by_key) == {partition_key("happy", utc_today()), partition_key("sad", utc_today())}
    happy = by_key[partition_key("happy", utc_today())]
    assert happy.job_name == "ingest_images" and sorted(files_of(happy)) == [
        "test/happy/b.png",
        "train/happy/a.png",
    ]
    assert happy.run_config["ops"]["raw_images"]["config"]["on_success"] == "keep"
    assert files_of(by_key[partition_key("sad", utc_today())]) == ["train/sad/c.png"]
    state = json.loads(cursor)
    assert state["us"] == int((T0 + 2) * 1e6) and state["keys"] == ["train/sad/c.png"]

    # the same state again: the same run keys, which Dagster drops
    again, _, _ = tick(landing, pg_dsn, instance=instance)
    assert {r.run_key for r in again} == {r.run_key for r in requests}
    # once the runs exist and are going, nothing is asked for again, though nothing is loaded yet
    submit(instance, requests)
    none, cursor2, skip = tick(landing, pg_dsn, cursor=cursor, instance=instance)
    assert none == [] and cursor2 == cursor and "3 in runs not finished" in skip


def test_cap_takes_the_oldest_files_and_the_rest_next_tick(landing, pg_dsn):
    instance = dg.DagsterInstance.ephemeral()
    for i in range(5):
        land(landing, f"train/angry/{i}.png", face("angry", i), T0 + i)
    first, cursor, _ = tick(landing, pg_dsn, instance=instance, max_files_per_tick=3)
    assert [sorted(files_of(r)) for r in first] == [
        ["train/angry/0.png", "train/angry/1.png", "train/angry/2.png"]
    ]
    submit(instance, first)
    second, cursor, _ = tick(landing, pg_dsn, cursor=cursor, instance=instance, max_files_per_tick=3)
    assert [sorted(files_of(r)) for r in second] == [["train/angry/3.png", "train/angry/4.png"]]
    submit(instance, second)
    third, _, _ = tick(landing, pg_dsn, cursor=cursor, instance=instance, max_files_per_tick=3)
    assert third == []


def test_cap_inside_files_of_one_instant_loses_none(landing, pg_dsn):
    instance = dg.DagsterInstance.ephemeral()
    for i in range(4):  # one-second timestamps of an object store: four files at the same instant
        land(landing, f"train/fear/{i}.png", face("fear", i), T0)
    seen, cursor = [], None
    for _ in range(3):
        requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor, instance=instance, max_files_per_tick=3)
        submit(instance, requests)
        seen += [f for r in requests for f in files_of(r)]
    assert sorted(seen) == [f"train/fear/{i}.png" for i in range(4)]


def test_a_file_still_being_written_waits(landing, pg_dsn):
    instance = dg.DagsterInstance.ephemeral()
    land(landing, "train/surprise/old.png", face("surprise", 1), T0)
    land(landing, "train/surprise/writing.png", face("surprise", 2), time.time())  # modified just now
    requests, cursor, _ = tick(landing, pg_dsn, instance=instance)
    assert [files_of(r) for r in requests] == [["train/surprise/old.png"]]
    assert json.loads(cursor)["us"] == int(T0 * 1e6)
    submit(instance, requests)
    os.utime(landing / "train/surprise/writing.png", (T0 + 10, T0 + 10))  # done writing, settled
    requests, _, _ = tick(landing, pg_dsn, cursor=cursor, instance=instance)
    assert [files_of(r) for r in requests] == [["train/surprise/writing.png"]]


def test_a_lost_cursor_reloads_nothing(landing, lake, pg_dsn):
    for i in range(3):
        land(landing, f"train/neutral/{i}.png", face("neutral", i), T0 + i)
    requests, _, _ = tick(landing, pg_dsn)
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/neutral/new.png", face("neutral", 9), T0 + 100)
    requests, cursor, _ = tick(landing, pg_dsn, cursor=None)  # the cursor was deleted
    assert [files_of(r) for r in requests] == [["train/neutral/new.png"]]  # only the file the ledger lacks
    assert json.loads(cursor)["us"] == int((T0 + 100) * 1e6)
    # an unreadable cursor is a lost one
    requests, _, _ = tick(landing, pg_dsn, cursor="{not json")
    assert [files_of(r) for r in requests] == [["train/neutral/new.png"]]


def test_a_file_that_comes_in_with_an_old_modification_time_is_not_lost(landing, lake, pg_dsn):
    """mv, unzip, tar and rsync -a keep a file's modification time: it can come in below the watermark."""
    land(landing, "train/happy/a.png", face("happy", 1), T0)
    requests, cursor, _ = tick(landing, pg_dsn)
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/happy/moved.png", face("happy", 2), T0 - 86400)  # a day older than the watermark
    requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor)
    assert [files_of(r) for r in requests] == [["train/happy/moved.png"]]


def remembered(pg_dsn):
    with connect(pg_dsn) as conn:
        return {k: (n, us) for k, n, us in conn.execute("SELECT key, size, modified_us FROM landing_seen")}


def asked(landing, pg_dsn, cursor):
    """One tick's requests, cursor, and how many landing files it asked the load log about."""
    before = ledger.LOOKUPS["sources"]
    requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor)
    return requests, cursor, ledger.LOOKUPS["sources"] - before


def test_an_idle_tick_asks_the_load_log_about_no_file_and_an_old_mtime_file_still_comes_in(
    landing, lake, pg_dsn
):
    """The sensor's memory: files found in the load log are not asked about again (not even after a lost
    in-process copy: the memory is in PostgreSQL); one copied in later with an old mtime is."""
    for i in range(12):
        land(landing, f"train/happy/{i}.png", face("happy", i), T0 + i)
    requests, cursor, n = asked(landing, pg_dsn, None)
    assert n == 12 and len(files_of(requests[0])) == 12
    load(landing, lake, pg_dsn, requests)
    requests, cursor, n = asked(landing, pg_dsn, cursor)  # the load log has them now: remembered
    assert requests == [] and n == 12 and len(remembered(pg_dsn)) == 12
    for _ in range(3):
        requests, cursor, n = asked(landing, pg_dsn, cursor)
        assert requests == [] and n == 0  # idle: no file asked about
    planner._memory.clear()  # a restarted process: the memory is read back from PostgreSQL
    requests, cursor, n = asked(landing, pg_dsn, cursor)
    assert requests == [] and n == 0
    land(landing, "train/happy/copied.png", face("happy", 99), T0 - 86400)  # cp -p: a day before the rest
    requests, cursor, n = asked(landing, pg_dsn, cursor)
    assert [files_of(r) for r in requests] == [["train/happy/copied.png"]] and n == 1


def test_a_lost_or_stale_memory_loses_no_file_and_a_vanished_file_leaves_it(landing, lake, pg_dsn):
    for i in range(4):
        land(landing, f"train/sad/{i}.png", face("sad", i), T0 + i)
    requests, cursor, _ = asked(landing, pg_dsn, None)
    load(landing, lake, pg_dsn, requests)
    requests, cursor, _ = asked(landing, pg_dsn, cursor)
    assert requests == [] and len(remembered(pg_dsn)) == 4
    with connect(pg_dsn) as conn:  # the memory deleted: the tick checks every file against the load log
        conn.execute("DELETE FROM landing_seen_state")
        conn.execute("DELETE FROM landing_seen")
    requests, cursor, n = asked(landing, pg_dsn, cursor)
    assert requests == [] and n == 4 and len(remembered(pg_dsn)) == 4
    with connect(pg_dsn) as conn:  # the load log lost a row: the memory of it must not hide the file
        conn.execute("DELETE FROM load_log WHERE path = 'train/sad/2.png'")
    requests, cursor, n = asked(landing, pg_dsn, cursor)
    assert [files_of(r) for r in requests] == [["train/sad/2.png"]] and n == 4
    (landing / "train/sad/0.png").unlink()
    requests, cursor, _ = asked(landing, pg_dsn, cursor)
    assert "train/sad/0.png" not in remembered(pg_dsn) and set(remembered(pg_dsn)) == {
        "train/sad/1.png",
        "train/sad/3.png",
    }


def test_a_failed_runs_files_are_asked_for_again_then_left_to_a_person(landing, pg_dsn):
    instance = dg.DagsterInstance.ephemeral()
    land(landing, "train/sad/a.png", face("sad", 1), T0)
    first, cursor, _ = tick(landing, pg_dsn, instance=instance, retry_after_seconds=3600, max_attempts=2)
    (run,) = submit(instance, first)
    instance.report_run_failed(run)  # e.g. the database went away mid-run
    waiting, cursor, skip = tick(
        landing, pg_dsn, cursor=cursor, instance=instance, retry_after_seconds=3600, max_attempts=2
    )
    assert waiting == [] and "1 waiting to be retried" in skip
    again, cursor, _ = tick(
        landing, pg_dsn, cursor=cursor, instance=instance, retry_after_seconds=0, max_attempts=2
    )
    assert [files_of(r) for r in again] == [["train/sad/a.png"]]
    assert again[0].run_key == f"{first[0].run_key}-attempt2" and again[0].tags["fer/attempt"] == "2"
    (run,) = submit(instance, again)
    instance.report_run_failed(run)
    last, _, skip = tick(
        landing, pg_dsn, cursor=cursor, instance=instance, retry_after_seconds=0, max_attempts=2
    )
    assert last == [] and "no new files" in skip  # failed twice: the sensor leaves it (and says so)


def test_existing_files_can_be_left_out_at_the_first_tick(landing, lake, pg_dsn):
    land(landing, "train/happy/before.png", face("happy", 1), T0)
    requests, cursor, skip = tick(landing, pg_dsn, include_existing_files=False, settle_seconds=0)
    assert requests == [] and skip
    time.sleep(0.01)
    land(landing, "train/happy/after.png", face("happy", 2), time.time())
    requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor, include_existing_files=False, settle_seconds=0)
    assert [files_of(r) for r in requests] == [["train/happy/after.png"]]
    load(landing, lake, pg_dsn, requests)
    time.sleep(0.01)
    land(landing, "train/happy/later.png", face("happy", 3), time.time())
    # a lost cursor: the load log says where the sensor began; before.png stays out, later.png comes in
    requests, _, _ = tick(landing, pg_dsn, cursor=None, include_existing_files=False, settle_seconds=0)
    assert [files_of(r) for r in requests] == [["train/happy/later.png"]]


def tick_until_requested(landing, pg_dsn, cursor):
    """A file written in place (its folder unchanged) is stat'ed again within RESTAT_ROTATION ticks
    (core/listing.py): the ticks until one requests a run, at most that many."""
    for _ in range(RESTAT_ROTATION):
        requests, cursor, _skip = tick(landing, pg_dsn, cursor=cursor)
        if requests:
            break
    return requests, cursor


def test_an_overwritten_file_is_a_new_version_and_the_same_content_a_duplicate(landing, lake, pg_dsn):
    land(landing, "train/sad/x.png", face("sad", 1), T0)
    requests, cursor, _ = tick(landing, pg_dsn)
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/sad/x.png", face("sad", 2), T0 + 50)  # new content under the same name, in place
    requests, cursor = tick_until_requested(landing, pg_dsn, cursor)
    assert [files_of(r) for r in requests] == [["train/sad/x.png"]]
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/sad/x.png", face("sad", 2), T0 + 80)  # the same content again, touched
    requests, cursor = tick_until_requested(landing, pg_dsn, cursor)
    assert len(requests) == 1
    load(landing, lake, pg_dsn, requests)
    with connect(pg_dsn) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM load_log ORDER BY modified_at")]
    assert statuses == ["loaded", "loaded", "duplicate"]


def test_files_no_partition_can_take_go_to_triage(landing, pg_dsn):
    land(landing, "train/contempt/x.png", face("happy", 1), T0)
    land(landing, "train/happy/y.png", face("happy", 2), T0)
    requests, _, _ = tick(landing, pg_dsn, on_success="archive")
    jobs = {r.job_name: r for r in requests}
    assert set(jobs) == {"ingest_images", "landing_triage"}
    assert files_of(jobs["landing_triage"]) == ["train/contempt/x.png"]
    assert (
        jobs["landing_triage"].run_config["ops"]["quarantine_unroutable"]["config"]["on_success"] == "archive"
    )


def test_bad_settings_fail_with_one_line(landing, pg_dsn):
    with pytest.raises(Exception, match="on_success must be one of keep, delete, archive"):
        tick(landing, pg_dsn, on_success="shred")


def test_a_landing_folder_that_does_not_exist_is_one_clear_error(tmp_path, pg_dsn):
    with pytest.raises(Exception) as info:  # Dagster wraps a resource's set-up error: the cause is ours
        tick(tmp_path / "nowhere", pg_dsn)
    cause = info.value.__cause__
    assert "the landing zone" in str(cause) and "nowhere is not a folder" in str(cause)
    assert "\n" not in str(cause)


def test_the_tick_repairs_partitions_whose_layers_disagree_and_a_lost_index(resources, landing, lake, pg_dsn):
    """A deleted silver partition is asked for again (an empty file list: re-derived from the load log), not
    while a run writes it, again after a failed repair, and again next time it disagrees (a new run key); a
    deleted index with every partition in agreement gets a publish run."""
    land(landing, "train/happy/a.png", face("happy", 1), T0)
    key = partition_key("happy", utc_today())
    assert dg.materialize(
        INGEST_ASSETS,
        partition_key=key,
        resources=resources,
        run_config={"ops": {"raw_images": {"config": {"files": ["train/happy/a.png"]}}}},
    ).success
    assert dg.materialize([search_index], resources=resources).success
    silver = lake / f"silver/embeddings/emotion=happy/load_date={utc_today()}/part-0.parquet"
    with dg.instance_for_test() as instance:
        cursor = tick(landing, pg_dsn, instance=instance, lake=lake, repairs=True)[1]
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []  # everything agrees
        skipped = convergence.AUDITS["skipped"]
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        assert convergence.AUDITS["skipped"] == skipped + 1  # nothing changed: the audit is not read again
        silver.unlink()
        (first,) = tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0]
        assert first.partition_key == key and first.tags["fer/repair"] == "true" and files_of(first) == []
        run = create_run_for_test(
            instance,
            job_name="ingest_images",
            run_config=first.run_config,
            tags={**first.tags, "dagster/partition": key},  # as the daemon launches it
            status=dg.DagsterRunStatus.STARTED,
        )  # busy: its partition is not audited
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        instance.report_run_failed(run)
        assert (
            tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        )  # retry_after_seconds (300)
        (second,) = tick(landing, pg_dsn, cursor, instance, lake, repairs=True, retry_after_seconds=0)[0]
        assert second.run_key != first.run_key and second.tags["fer/attempt"] == "2"
        repaired = dg.materialize(
            INGEST_ASSETS, partition_key=key, resources=resources, run_config=second.run_config
        )
        assert repaired.success and silver.exists()
        create_run_for_test(
            instance,
            job_name="ingest_images",
            tags={**second.tags, "dagster/partition": key},
            status=dg.DagsterRunStatus.SUCCESS,
        )
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        silver.unlink()  # the same disagreement, a week later: repaired again, under a new key
        (third,) = tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0]
        assert third.run_key not in (first.run_key, second.run_key) and third.tags["fer/attempt"] == "1"
        assert dg.materialize(
            INGEST_ASSETS, partition_key=key, resources=resources, run_config=third.run_config
        ).success
        shutil.rmtree(lake / "index")
        (publish,) = tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0]
        assert publish.job_name == "publish_gold_and_index" and publish.partition_key is None


def test_a_challenge_csv_gets_one_expansion_run_then_its_images_load_once(landing, lake, pg_dsn):
    land(
        landing,
        "fer2013/fer2013.csv",
        ("emotion,pixels,Usage\n" + "".join(good_rows()[:4]) + bad_rows()[0][0]).encode(),
        T0,
    )
    instance = dg.DagsterInstance.ephemeral()
    requests, cursor, _ = tick(landing, pg_dsn, instance=instance, lake=lake)
    assert [r.job_name for r in requests] == ["expand_challenge_csv"]  # the CSV itself is no file to ingest
    (expand,) = requests
    again, _, _ = tick(landing, pg_dsn, instance=instance, lake=lake, cursor=cursor)
    assert [r.run_key for r in again] == [
        expand.run_key
    ]  # the same version: the same run, which Dagster drops

    result = expand_csv_job.execute_in_process(
        run_config=expand.run_config,
        instance=instance,
        resources={
            "landing": LandingResource(url=str(landing)),
            "lake": LakeResource(url=str(lake)),
            "postgres": PostgresResource(dsn=pg_dsn),
        },
    )
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert (metadata["rows_staged"], metadata["rows_quarantined"], metadata["status"]) == (4, 1, "expanded")

    # the next tick: the staged images, one ingest run per emotion; the CSV is not expanded again
    requests, cursor, _ = tick(landing, pg_dsn, instance=instance, lake=lake, cursor=cursor, settle_seconds=0)
    assert {r.job_name for r in requests} == {"ingest_images"}
    assert sorted(k for r in requests for k in files_of(r)) == [
        "_csv/fer2013~fer2013.csv/test/happy/PublicTest_2.png",
        "_csv/fer2013~fer2013.csv/test/sad/PrivateTest_3.png",
        "_csv/fer2013~fer2013.csv/train/angry/Training_4.png",
        "_csv/fer2013~fer2013.csv/train/happy/Training_1.png",
    ]
    load(landing, lake, pg_dsn, requests)
    with connect(pg_dsn) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM load_log GROUP BY status").fetchall()
    assert dict(statuses) == {"loaded": 4, "quarantined": 1}  # the bad row 5, logged by the expansion
    none, _, _ = tick(landing, pg_dsn, instance=instance, lake=lake, cursor=cursor, settle_seconds=0)
    assert none == []  # nothing to load or expand (only the repairs of the layers this test leaves out)


def test_a_failed_expansion_is_asked_for_again_then_left_to_a_person(landing, lake, pg_dsn):
    land(landing, "fer2013.csv", ("emotion,pixels,Usage\n" + good_rows()[0]).encode(), T0)
    instance = dg.DagsterInstance.ephemeral()
    keys = []
    for attempt in range(1, 4):
        (request,) = tick(landing, pg_dsn, instance=instance, lake=lake, retry_after_seconds=0)[0]
        assert request.job_name == "expand_challenge_csv" and request.tags["fer/attempt"] == str(attempt)
        keys.append(request.run_key)
        (run,) = submit(instance, [request])
        instance.report_run_failed(run)
    assert len(set(keys)) == 3  # each attempt a run of its own
    assert tick(landing, pg_dsn, instance=instance, lake=lake, retry_after_seconds=0)[0] == []  # 3 failed


def test_a_lost_checkpoint_is_put_back_on_the_next_tick_even_when_the_audit_is_not_due(
    resources, landing, lake, pg_dsn
):
    """Load-log rows deleted between two ticks while their files stay in the landing zone: the very next
    tick puts them back from the raw manifest before it plans (the layer marks that gate the audit may not
    show the deletion yet), so nothing is asked for again."""
    for i in range(2):
        land(landing, f"train/happy/{i}.png", face("happy", 10 + i), T0)
    key = partition_key("happy", utc_today())
    files = ["train/happy/0.png", "train/happy/1.png"]
    assert dg.materialize(
        INGEST_ASSETS,
        partition_key=key,
        resources=resources,
        run_config={"ops": {"raw_images": {"config": {"files": files}}}},
    ).success
    assert dg.materialize([search_index], resources=resources).success
    with dg.instance_for_test() as instance:
        cursor = tick(landing, pg_dsn, instance=instance, lake=lake, repairs=True)[1]
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        skipped = convergence.AUDITS["skipped"]
        assert tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0] == []
        assert convergence.AUDITS["skipped"] == skipped + 1  # idle: the audit (and its restore) not due
        with connect(pg_dsn) as conn:  # the checkpoint lost (an operator's DELETE, a bad restore)
            conn.execute("DELETE FROM load_log WHERE path = ANY(%s)", (files,))
        requests = tick(landing, pg_dsn, cursor, instance, lake, repairs=True)[0]
        assert [files_of(r) for r in requests if files_of(r)] == []  # nothing loaded twice
        with connect(pg_dsn) as conn:
            back = conn.execute(
                "SELECT count(*) FROM load_log WHERE path = ANY(%s) AND status = 'loaded'", (files,)
            ).fetchone()[0]
        assert back == 2


def _observation(landing, pg_dsn, instance, cursor=None):
    """A tick's observation of the landing zone (None when it reports none), recorded as the daemon does."""
    lake_res = LakeResource(url=str(landing.parent / "lake"))
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "landing": LandingResource(url=str(landing)),
            "postgres": PostgresResource(dsn=pg_dsn),
            "auto_loader": AutoLoaderResource(settle_seconds=5),
            "lake": lake_res,
            "embedder": EmbedderResource(weights="random", lake=lake_res),
        },
    ) as context:
        result = landing_sensor(context)
    events = result.asset_events or []
    for event in events:
        instance.report_runless_asset_event(event)
    assert len(events) <= 1 and all(e.asset_key == dg.AssetKey("landing_zone") for e in events)
    return ({k: v.value for k, v in events[0].metadata.items()} if events else None), result


def test_the_landing_zone_is_observed_with_its_backlog(landing, lake, pg_dsn):
    """Auto Loader's backlog figures, measured on a real landing folder: files and bytes not in the load log
    (the ones still being written too), the age of the oldest, the files in the landing zone."""
    instance = dg.DagsterInstance.ephemeral()
    old, new, writing = face("angry", 1), face("angry", 2), face("angry", 3)
    land(landing, "train/angry/old.png", old, T0)
    land(landing, "train/angry/new.png", new, T0 + 600)
    land(landing, "train/angry/writing.png", writing, time.time())  # modified just now: still being written
    land(landing, ".DS_Store", b"junk", T0 - 600)  # not part of the data set
    before = time.time()
    meta, result = _observation(landing, pg_dsn, instance)
    assert meta["files_waiting"] == 3 and meta["files_total"] == 3 and meta["still_being_written"] == 1
    assert meta["bytes_waiting"] == len(old) + len(new) + len(writing)
    assert before - T0 - 1 <= meta["oldest_waiting_age_seconds"] <= time.time() - T0 + 1
    assert meta["landing"] == str(landing)
    # the first two load: what waits is the file still being written
    load(landing, lake, pg_dsn, result.run_requests)
    meta, _ = _observation(landing, pg_dsn, instance, result.cursor)
    assert (meta["files_waiting"], meta["bytes_waiting"], meta["files_total"]) == (1, len(writing), 3)
    assert meta["oldest_waiting_age_seconds"] < 60
    # it settles and loads: nothing waits, told once; an idle landing zone adds no event per tick
    os.utime(landing / "train/angry/writing.png", (T0 + 900, T0 + 900))
    meta, result = _observation(landing, pg_dsn, instance, result.cursor)
    load(landing, lake, pg_dsn, result.run_requests)
    meta, result = _observation(landing, pg_dsn, instance, result.cursor)
    assert meta == {
        "files_waiting": 0,
        "bytes_waiting": 0,
        "oldest_waiting_age_seconds": 0.0,
        "files_total": 3,
        "still_being_written": 0,
        "landing": str(landing),
    }
    assert _observation(landing, pg_dsn, instance, result.cursor)[0] is None
    land(landing, "test/angry/another.png", face("angry", 4), T0 + 1000)  # a new file is told at once
    assert _observation(landing, pg_dsn, instance, result.cursor)[0]["files_waiting"] == 1
