"""landing_sensor ticks with dg.build_sensor_context against a real PostgreSQL load log and a landing folder."""

import json
import os
import time

import dagster as dg
import pytest

from fer_platform.automation.sensors import landing_sensor
from fer_platform.core.ingest import ingest
from fer_platform.core.storage import Storage
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import AutoLoaderResource, LandingResource, PostgresResource
from fer_platform_tests.helpers import face, put

T0 = time.time() - 3600  # files written an hour ago: settled


def land(landing, key, data, at):
    os.utime(put(landing, key, data), (at, at))


def tick(landing, pg_dsn, cursor=None, instance=None, **settings):
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={
            "landing": LandingResource(url=str(landing)),
            "postgres": PostgresResource(dsn=pg_dsn),
            "auto_loader": AutoLoaderResource(settle_seconds=5, **settings),
        },
    ) as context:
        result = landing_sensor(context)
    skip = result.skip_reason.skip_message if result.skip_reason else None
    return result.run_requests or [], result.cursor, skip


def files_of(request):
    ops = request.run_config["ops"]
    return (ops.get("raw_images") or ops["quarantine_unroutable"])["config"]["files"]


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
    requests, cursor, _ = tick(landing, pg_dsn)
    by_key = {r.partition_key: r for r in requests}
    assert set(by_key) == {partition_key("happy", utc_today()), partition_key("sad", utc_today())}
    happy = by_key[partition_key("happy", utc_today())]
    assert happy.job_name == "ingest_images" and sorted(files_of(happy)) == ["test/happy/b.png", "train/happy/a.png"]
    assert happy.run_config["ops"]["raw_images"]["config"]["on_success"] == "keep"
    assert files_of(by_key[partition_key("sad", utc_today())]) == ["train/sad/c.png"]
    state = json.loads(cursor)
    assert state["us"] == int((T0 + 2) * 1e6) and state["keys"] == ["train/sad/c.png"]

    # the same files again (a repeated tick from the same state): the same run keys, deduplicated by Dagster
    again, _, _ = tick(landing, pg_dsn)
    assert {r.run_key for r in again} == {r.run_key for r in requests}
    # with the cursor, nothing new: no request, even though nothing was loaded yet (the runs are in flight)
    none, cursor2, skip = tick(landing, pg_dsn, cursor=cursor)
    assert none == [] and cursor2 == cursor and "no new files" in skip


def test_cap_takes_the_oldest_files_and_the_rest_next_tick(landing, pg_dsn):
    for i in range(5):
        land(landing, f"train/angry/{i}.png", face("angry", i), T0 + i)
    first, cursor, _ = tick(landing, pg_dsn, max_files_per_tick=3)
    assert [sorted(files_of(r)) for r in first] == [["train/angry/0.png", "train/angry/1.png", "train/angry/2.png"]]
    second, cursor, _ = tick(landing, pg_dsn, cursor=cursor, max_files_per_tick=3)
    assert [sorted(files_of(r)) for r in second] == [["train/angry/3.png", "train/angry/4.png"]]
    third, _, _ = tick(landing, pg_dsn, cursor=cursor, max_files_per_tick=3)
    assert third == []


def test_cap_inside_files_of_one_instant_loses_none(landing, pg_dsn):
    for i in range(4):  # one-second timestamps of an object store: four files at the same instant
        land(landing, f"train/fear/{i}.png", face("fear", i), T0)
    seen, cursor = [], None
    for _ in range(3):
        requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor, max_files_per_tick=3)
        seen += [f for r in requests for f in files_of(r)]
    assert sorted(seen) == [f"train/fear/{i}.png" for i in range(4)]


def test_a_file_still_being_written_waits(landing, pg_dsn):
    land(landing, "train/surprise/old.png", face("surprise", 1), T0)
    land(landing, "train/surprise/writing.png", face("surprise", 2), time.time())  # modified just now
    requests, cursor, _ = tick(landing, pg_dsn)
    assert [files_of(r) for r in requests] == [["train/surprise/old.png"]]
    assert json.loads(cursor)["us"] == int(T0 * 1e6)
    os.utime(landing / "train/surprise/writing.png", (T0 + 10, T0 + 10))  # done writing, settled
    requests, _, _ = tick(landing, pg_dsn, cursor=cursor)
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


def test_existing_files_can_be_left_out_at_the_first_tick(landing, pg_dsn):
    land(landing, "train/happy/before.png", face("happy", 1), T0)
    requests, cursor, skip = tick(landing, pg_dsn, include_existing_files=False)
    assert requests == [] and skip
    land(landing, "train/happy/after.png", face("happy", 2), T0 + 60)
    requests, _, _ = tick(landing, pg_dsn, cursor=cursor, include_existing_files=False)
    assert [files_of(r) for r in requests] == [["train/happy/after.png"]]


def test_an_overwritten_file_is_a_new_version_and_the_same_content_a_duplicate(landing, lake, pg_dsn):
    land(landing, "train/sad/x.png", face("sad", 1), T0)
    requests, cursor, _ = tick(landing, pg_dsn)
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/sad/x.png", face("sad", 2), T0 + 50)  # new content under the same name
    requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor)
    assert [files_of(r) for r in requests] == [["train/sad/x.png"]]
    load(landing, lake, pg_dsn, requests)
    land(landing, "train/sad/x.png", face("sad", 2), T0 + 80)  # the same content again, touched
    requests, cursor, _ = tick(landing, pg_dsn, cursor=cursor)
    assert len(requests) == 1
    load(landing, lake, pg_dsn, requests)
    from fer_platform.core.db import connect

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
    assert jobs["landing_triage"].run_config["ops"]["quarantine_unroutable"]["config"]["on_success"] == "archive"


def test_bad_settings_fail_with_one_line(landing, pg_dsn):
    with pytest.raises(Exception, match="on_success must be one of keep, delete, archive"):
        tick(landing, pg_dsn, on_success="shred")


def test_a_landing_folder_that_does_not_exist_is_one_clear_error(tmp_path, pg_dsn):
    with pytest.raises(Exception) as info:  # Dagster wraps a resource's set-up error: the cause is ours
        tick(tmp_path / "nowhere", pg_dsn)
    cause = info.value.__cause__
    assert "the landing zone" in str(cause) and "nowhere is not a folder" in str(cause)
    assert "\n" not in str(cause)
