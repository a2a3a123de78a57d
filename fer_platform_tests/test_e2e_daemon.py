"""End to end with the real Dagster daemon and webserver (`fer-platform dev`) on the embedded PostgreSQL:
a bulk load of an initial folder, then files dropped into the landing zone in three bursts (one while
a run is in progress); every file must be loaded exactly once into PostgreSQL and silver, gold and the
index must follow by declarative automation, and the webserver must see the same. Then a fourth burst's
run worker is SIGKILLed while the landing sensor drives: the run must end as failed (run monitoring), and
every layer must converge again without anyone clicking. Every process started is stopped.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import psutil
import pyarrow.dataset as ds
import pytest

from fer_platform.core import convergence
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.embedded import embedded_status
from fer_platform.core.storage import Storage
from fer_platform.partitions import utc_today
from fer_platform_tests.helpers import encoded, face, put
from fer_platform_tests.servers import serves_code_location, wait_until

pytestmark = pytest.mark.slow
MODEL = "resnet18-random-s0-fidelity"
IN_FLIGHT = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port, query, variables=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        body = json.loads(r.read())
    assert not body.get("errors"), body["errors"]
    return body["data"]


RUNS = """query($statuses: [RunStatus!]) { runsOrError(filter: {statuses: $statuses}) {
  ... on Runs { results { runId status jobName startTime endTime tags { key value } } } } }"""


def _runs(port, statuses=None):
    return _graphql(port, RUNS, {"statuses": statuses})["runsOrError"]["results"]


def _max_overlap(runs):
    events = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


def test_bulk_load_then_bursts_load_every_file_exactly_once(tmp_path):
    home, landing, port = tmp_path / "home", tmp_path / "landing", _free_port()
    env = dict(
        os.environ,
        FER_HOME=str(home),
        FER_LANDING=str(landing),
        FER_SENSOR_INTERVAL="2",
        FER_AUTOMATION_INTERVAL="5",
        FER_SETTLE_SECONDS="1",
        FER_EMBED_WEIGHTS="random",
        PYTHONUNBUFFERED="1",
        FER_RETRY_AFTER_SECONDS="5",
    )
    cli = [sys.executable, "-m", "fer_platform.cli", "--home", str(home)]
    written = {}  # landing key -> bytes of its latest version

    def drop(key, data):
        put(landing, key, data)
        written[key] = data

    for e in EMOTIONS[:3]:  # the initial folder, before anything runs
        for i in range(3):
            drop(f"train/{e}/init{i}.png", face(e, 100 + i))
    proc = subprocess.Popen(
        [*cli, "dev", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: set[int] = set()
    try:
        wait_until("the webserver and the code location", lambda: serves_code_location(port), 180, proc)
        bulk = subprocess.run(
            [*cli, "bulk-load", "--port", str(port), "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert bulk.returncode == 0, bulk.stdout + bulk.stderr
        assert "backfill" in bulk.stdout

        # burst 1; burst 2 while one of its runs is in progress; burst 3 once everything is quiet
        for e in ("happy", "sad"):
            drop(f"train/{e}/b1.png", face(e, 201))
        wait_until("a run in progress", lambda: _runs(port, ["STARTED"]), 120, proc)
        drop("test/happy/b2.png", face("happy", 202))
        drop("test/fear/b2.png", face("fear", 202))
        drop("train/angry/b2 copy.png", face("angry", 100))  # the same content as an initial file
        drop("train/neutral/b2.png", face("neutral", 203))  # a partition that only this burst brings
        drop("train/surprise/b2-broken.png", encoded("RGB"))
        wait_until(
            "a quiet instance",
            lambda: not _runs(port, IN_FLIGHT) and _ledger_rows(home) == len(written),
            300,
            proc,
        )
        drop("train/happy/b1.png", face("happy", 203))  # overwritten with new content: a new version
        drop("test/sad/b3.png", face("sad", 204))
        versions = len(written) + 1  # b1.png twice

        def settled():
            if _runs(port, IN_FLIGHT) or _ledger_rows(home) != versions:
                return False
            meta = home / "lake/index" / MODEL / "meta.json"
            return meta.exists() and json.loads(meta.read_text())["size"] == _loaded(home)

        wait_until("every file loaded and the index rebuilt", settled, 300, proc)
        family |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}

        dsn = embedded_status(home / "postgres")["dsn"]
        with connect(dsn) as conn:
            statuses = dict(conn.execute("SELECT status, count(*) FROM load_log GROUP BY status").fetchall())
            per_file = conn.execute(
                "SELECT count(*), count(DISTINCT (source, size, modified_at)) FROM load_log"
            ).fetchone()
            vectors = conn.execute(
                "SELECT count(*), count(DISTINCT image_id) FROM imagenes_fer WHERE model = %s", (MODEL,)
            ).fetchone()
        loaded = len(written) - 2 + 1  # every version but the duplicate and the broken file
        assert statuses == {"loaded": loaded, "duplicate": 1, "quarantined": 1}
        assert per_file[0] == per_file[1] == versions  # one load-log row per file version
        assert vectors == (loaded, loaded)
        silver = ds.dataset(home / "lake/silver/embeddings", partitioning="hive").to_table(
            columns=["image_id"]
        )
        assert silver.num_rows == loaded and len(set(silver["image_id"].to_pylist())) == loaded

        # burst 4: its run's worker is killed (SIGKILL) while it runs; nobody clicks anything afterwards
        for i in range(4):
            drop(f"train/angry/b4_{i}.png", face("angry", 300 + i))
        versions += 4
        killed_run, pid = wait_until(
            "the burst's run worker", lambda: _worker_of_started_run(home, port), 120, proc
        )
        os.kill(pid, signal.SIGKILL)
        wait_until(
            "the killed run marked failed by run monitoring",
            lambda: _run_status(port, killed_run) == "FAILURE",
            180,
            proc,
        )
        wait_until("every layer converged after the kill", settled, 300, proc)
        wait_until("the layers agree", lambda: _layers_agree(home), 120, proc)
        family |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        with connect(dsn) as conn:
            after = conn.execute(
                "SELECT count(*), count(DISTINCT image_id) FROM imagenes_fer WHERE model = %s", (MODEL,)
            ).fetchone()
        assert after == (loaded + 4, loaded + 4)
        silver = ds.dataset(home / "lake/silver/embeddings", partitioning="hive").to_table(
            columns=["image_id"]
        )
        assert silver.num_rows == loaded + 4 and len(set(silver["image_id"].to_pylist())) == loaded + 4

        runs = [r for r in _runs(port) if r["endTime"] and r["runId"] != killed_run]
        bulk_runs = [r for r in runs if {"key": "fer/bulk", "value": "true"} in r["tags"]]
        assert bulk_runs and _max_overlap(bulk_runs) <= 1  # the bulk load's runs queue one at a time
        assert _max_overlap(runs) <= 2  # the run queue's limit
        assert all(r["status"] == "SUCCESS" for r in runs), [
            (r["jobName"], r["status"], r["runId"]) for r in runs if r["status"] != "SUCCESS"
        ]
        assert any(r["jobName"] == "ingest_images" for r in runs)  # the sensor's runs

        # the UI sees the same: the latest materialisations of silver's partitions and of the index
        nodes = _graphql(
            port,
            """{ assetNodes { assetKey { path } assetMaterializations(limit: 50) { partition runId } } }""",
        )
        by_asset = {"/".join(n["assetKey"]["path"]): n["assetMaterializations"] for n in nodes["assetNodes"]}
        today = utc_today().isoformat()
        assert {m["partition"] for m in by_asset["silver_embeddings"]} >= {
            f"{e}|{today}" for e in EMOTIONS if e != "disgust"
        }
        assert by_asset["search_index"] and by_asset["gold_neighbour_agreement"]
    finally:
        if proc.poll() is None:
            family |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        subprocess.run([*cli, "db", "stop"], env=env, check=False, capture_output=True)
    time.sleep(1)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {alive}"


def _worker_of_started_run(home, port):
    """(run id, worker pid) of a STARTED ingest run, from its "Started process for run (pid: N)" event."""
    started = [r for r in _runs(port, ["STARTED"]) if r["jobName"] == "ingest_images"]
    if not started:
        return None
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for entry in instance.all_logs(started[0]["runId"]):
            m = re.match(r"Started process for run \(pid: (\d+)\)", entry.message or "")
            if m:
                return started[0]["runId"], int(m.group(1))
    return None


def _run_status(port, run_id):
    return next((r["status"] for r in _runs(port) if r["runId"] == run_id), None)


def _layers_agree(home) -> bool:
    dsn = embedded_status(home / "postgres")["dsn"]
    with connect(dsn) as conn:
        return convergence.audit(conn, Storage(str(home / "lake")), MODEL).ok


def _ledger_rows(home) -> int:
    dsn = embedded_status(home / "postgres")["dsn"]
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM load_log").fetchone()[0]


def _loaded(home) -> int:
    dsn = embedded_status(home / "postgres")["dsn"]
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM load_log WHERE status = 'loaded'").fetchone()[0]
