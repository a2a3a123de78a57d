"""`fer-platform bulk-load` without `--wait`: the command returns at once, and the whole load is still
declared (one drop of the vector index, every run COPYs without it, one build at the end), by a detached
declarer that waits for the load's runs, as the daemon runs them."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from fer_platform.cli import bulk
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.embedded import embedded_status
from fer_platform.core.pg.schema import vector_index_present
from fer_platform_tests.helpers import face, put
from fer_platform_tests.servers import dev_server, free_port, wait_until

pytestmark = pytest.mark.slow

EMOTIONS = ("angry", "happy", "sad")
EMBEDDINGS = dg.AssetKey("image_embeddings")
PER_EMOTION = 24  # 72 images: over the bulk rule's floor (64 rows), so the load is a bulk one


def _alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie nobody has reaped yet (its parent, the command, has exited)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _daemon_beating(home) -> bool:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return any(time.time() - b.timestamp < 60 for b in instance.get_daemon_heartbeats().values())


@pytest.mark.timeout(900)
def test_bulk_load_without_wait_drops_the_index_once_and_builds_it_once_after_the_last_run(tmp_path):
    home, landing, port = tmp_path / "home", tmp_path / "landing", free_port()
    for emotion in EMOTIONS:
        for i in range(PER_EMOTION):
            put(landing, f"train/{emotion}/f{i}.png", face(emotion, i))
    env = dict(
        os.environ,
        FER_HOME=str(home),
        FER_LANDING=str(landing),
        FER_AUTOMATION="off",  # only the bulk load's runs: the landing sensor would take the files too
        FER_EMBED_WEIGHTS="random",
        FER_EMBED_PROFILE="native",
        PYTHONUNBUFFERED="1",
    )
    cli = [sys.executable, "-m", "fer_platform.cli", "--home", str(home)]
    declarer = None
    with dev_server(cli, port, env) as dev:
        try:
            wait_until("the daemon's heartbeat", lambda: _daemon_beating(home), 120, dev)
            dsn = embedded_status(home / "postgres")["dsn"]
            with connect(dsn) as conn:
                assert vector_index_present(conn)  # the schema's index, on the empty table

            command = [*cli, "bulk-load", "--port", str(port)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            found = re.search(r"declarer pid (\d+), log (\S+)", out.stdout)
            assert found, out.stdout + out.stderr
            declarer, log = psutil.Process(int(found.group(1))), Path(found.group(2))
            load_id = re.fullmatch(r"bulk-load-(\w+)\.log", log.name).group(1)
            with connect(dsn) as conn:  # dropped before the backfill was launched, for the whole load
                assert not vector_index_present(conn)
            assert _alive(declarer)  # the command returned; its declarer holds the load

            wait_until("the declarer to end with the load", lambda: not _alive(declarer), 600, dev)
            text = log.read_text()
            assert f"{len(EMOTIONS)}/{len(EMOTIONS)} runs succeeded" in text, text
            assert "vector index: built" in text, text
            with connect(dsn) as conn:
                assert vector_index_present(conn)
                rows = conn.execute("SELECT count(*), count(DISTINCT image_id) FROM imagenes_fer").fetchone()
            assert rows == (len(EMOTIONS) * PER_EMOTION,) * 2

            # every run of the load COPYed without the index and left the one build to the declarer (judged
            # alone, the first run would have built it and the later ones inserted into it, or built it again)
            with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                runs = instance.get_runs(dg.RunsFilter(tags={bulk.LOAD_TAG: load_id}))
                assert len(runs) == len(EMOTIONS) and all(r.is_success for r in runs)
                for run in runs:
                    events = instance.get_records_for_run(
                        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                    ).records
                    meta = next(
                        e.event_log_entry.asset_materialization.metadata
                        for e in events
                        if e.event_log_entry.asset_materialization.asset_key == EMBEDDINGS
                    )
                    assert meta["index_deferred"].value is True, run.tags
                    assert meta["vector_index"].value == "loading", run.tags
        finally:
            if declarer is not None and _alive(declarer):
                declarer.kill()
