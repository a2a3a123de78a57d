"""`fer-platform bulk-load`: the first load of a large landing folder as one Dagster backfill.

It backfills the ``bulk_load`` job over today's partitions of the emotions that have pending files, with
Dagster's own public command for it, ``dagster job backfill``, on the home's instance (the one
`fer-platform dev` serves): that command creates one run per partition, tagged with the backfill's id,
and hands them to the run queue, which bounds how many run at once (dagster.yaml: max_concurrent_runs
and the fer/bulk tag limit); the daemon starts them. Each run loads every pending file of its emotion, in
batches, with progress in its logs; the backfill shows on the webserver's Backfills page.

The whole load is declared (``pg.schema.DeclaredLoad``: the vector index dropped once, every run COPYs
without it, one build at the end) by whoever waits for its runs: the command itself with ``--wait``;
without it, a detached process of its own (``declare``: one line in the command's output names its pid
and log), started and ready before the backfill is launched, which ends the declaration (and builds the
index) once every run of the load has finished, failed or been cancelled, or after ``DECLARE_HOURS``. A
declarer that dies takes its session lock with it: the next run, tick or audit builds the index (the
self-healing rules), and the load's remaining runs decide for themselves. With no daemon running, no
declarer is started (the runs may wait for hours): each run then decides for itself.

``dagster job backfill`` records the backfill as complete once its runs are queued, and Dagster retries
no run of a complete backfill: a failed bulk run is not retried. Its files stay pending (the load log
decides, not the run): the landing sensor takes them (unless FER_INCLUDE_EXISTING_FILES=false left
them out), or the next bulk load.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg

from fer_platform.cli.instance import (
    LOCATION,
    current_resources,
    prepare_dagster_home,
    write_workspace,
)
from fer_platform.core.challenge import expand_landing
from fer_platform.core.errors import FerError
from fer_platform.core.home import Home
from fer_platform.core.ingest import pending_files
from fer_platform.core.layout import route
from fer_platform.core.pg.schema import DeclaredLoad
from fer_platform.core.storage import Storage
from fer_platform.partitions import partition_key, utc_today

JOB = "bulk_load"
BULK_TAGS = {"fer/bulk": "true"}  # the run queue's limit on bulk runs (dagster.yaml); the job carries it too
BACKFILL_TAG = "dagster/backfill"  # Dagster's tag of a backfill's runs
LOAD_TAG = "fer/bulk_load"  # every run of one bulk-load command: its declarer waits for them
DECLARE_HOURS = 6.0  # a detached declarer gives up (builds the index) after this long
READY = "declared:"  # the declarer's first line: "declared: deferred" or "declared: live"
READY_TIMEOUT_S = 120.0
LAUNCHED = re.compile(r"Launched backfill job `([^`]+)`")  # what `dagster job backfill` prints at the end
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def expand_challenge_csvs(landing: Storage, lake: Storage, dsn: str) -> None:
    """Landing challenge CSVs not expanded yet become staged images first (one line per CSV)."""
    for report in expand_landing(landing, lake, dsn, utc_today()):
        print(f"challenge CSV {report.line()}", flush=True)


def pending_partitions(landing: Storage, dsn: str) -> tuple[list[str], int]:
    """Today's partition keys of the emotions that have landing files not in the load log yet."""
    pending, _ = pending_files(landing, dsn)
    emotions = sorted({route(e.key).emotion for e in pending} - {None})
    today = utc_today()
    return [str(partition_key(e, today)) for e in emotions], len(pending)


def launch(home: Home, dsn: str, keys: list[str], load_id: str) -> str:
    """Backfill ``bulk_load`` over ``keys`` with ``dagster job backfill`` on the home's instance (its storage
    on ``dsn``'s server); the backfill's id."""
    prepare_dagster_home(home, dsn)  # DAGSTER_HOME (and FER_DAGSTER_PG_URL) for the command
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "backfill",
        "-w",
        write_workspace(home),
        "-l",
        LOCATION,
        "-j",
        JOB,
        "--partitions",
        ",".join(keys),
        "--tags",
        json.dumps({**BULK_TAGS, LOAD_TAG: load_id}),
        "--noprompt",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    launched = LAUNCHED.search(out.stdout)
    if out.returncode != 0 or not launched:
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise FerError(
            f"the backfill was not launched: `dagster job backfill` exited {out.returncode}: "
            f"{lines[-1] if lines else 'no output'}"
        )
    return launched.group(1)


def daemon_alive(within_s: float = 120) -> bool:
    """Whether a dagster-daemon has beaten on the home's instance lately (it starts the queued runs)."""
    with dg.DagsterInstance.get() as instance:
        beats = instance.get_daemon_heartbeats().values()
    return any(time.time() - beat.timestamp < within_s for beat in beats)


def wait_for(load_id: str, runs_expected: int, timeout: float) -> int:
    """Wait until the load's runs have finished; 1 if any of them did not succeed (or time ran out)."""
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            records = instance.get_run_records(dg.RunsFilter(tags={LOAD_TAG: load_id}))
            runs = [r.dagster_run for r in records]
            if len(runs) >= runs_expected and all(r.status in FINISHED for r in runs):
                failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
                backfill = runs[0].tags.get(BACKFILL_TAG, load_id) if runs else load_id
                print(
                    f"backfill {backfill}: {len(runs) - len(failed)}/{len(runs)} runs succeeded"
                    + (f"; failed: {', '.join(failed)}" if failed else ""),
                    flush=True,
                )
                return 1 if failed else 0
            time.sleep(2)
    print(f"bulk load {load_id} still running after {timeout:.0f} s", file=sys.stderr, flush=True)
    return 1


def run(home: Home, host: str, port: int, wait: bool, timeout: float = 3600) -> int:
    """``host`` and ``port``: where the UI of `fer-platform dev` listens, for the progress link."""
    res = current_resources(home, ("landing", "lake", "postgres"))  # the environment's, as runs see them
    dsn = res["postgres"].get_dsn()
    expand_challenge_csvs(res["landing"].storage(), res["lake"].storage(), dsn)
    keys, files = pending_partitions(res["landing"].storage(), dsn)
    if not keys:
        print("nothing to load: every landing file is in the load log")
        return 0
    load_id = uuid.uuid4().hex[:16]
    prepare_dagster_home(home, dsn)  # DAGSTER_HOME: the daemon's heartbeat, and the declarer inherits it
    if wait:  # the command declares the whole load itself (pg.schema.DeclaredLoad) and waits for its runs
        with DeclaredLoad(dsn) as load:
            load.begin(files)
            _launch(home, dsn, keys, files, host, port, load_id, declared=True)
            return wait_for(load_id, len(keys), timeout)
    declarer = start_declarer(home, files, load_id, len(keys)) if daemon_alive() else None
    try:
        _launch(home, dsn, keys, files, host, port, load_id, declared=declarer is not None)
    except BaseException:
        if declarer is not None:  # no runs will come: the declarer ends the declaration (builds the index)
            declarer.terminate()
        raise
    return 0


def _launch(
    home: Home, dsn: str, keys: list[str], files: int, host: str, port: int, load_id: str, declared: bool
) -> None:
    backfill = launch(home, dsn, keys, load_id)
    print(
        f"bulk load of {files} pending files: backfill {backfill} over {len(keys)} partitions "
        f"({', '.join(keys)}); progress: http://{host}:{port}/overview/backfills/{backfill}",
        flush=True,
    )
    if not daemon_alive():
        print(
            "no dagster-daemon is running on this instance: the runs wait in the queue until "
            "`fer-platform dev` starts one"
            + ("" if declared else "; each run then decides about the vector index itself"),
            file=sys.stderr,
            flush=True,
        )


def start_declarer(home: Home, files: int, load_id: str, runs: int) -> subprocess.Popen | None:
    """The detached process that declares the load and ends the declaration once its runs have finished;
    returned once it has declared (the index dropped when the load is a bulk one), before any run can
    start. None (with one line) when it did not get ready: the runs then decide for themselves."""
    log = home.root / "logs" / f"bulk-load-{load_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fer_platform.cli.bulk", "--rows", str(files), "--load-id", load_id]
    cmd += ["--runs", str(runs), "--hours", str(DECLARE_HOURS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the command and its terminal
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        first = log.read_text(errors="replace").partition("\n")
        if first[1] and first[0].startswith(READY):
            if first[0].endswith("live"):  # not a bulk load against this table: nothing to hold
                return None
            print(
                f"the vector index is dropped for the whole load and built once, when its {runs} runs have "
                f"ended: declarer pid {proc.pid}, log {log}",
                flush=True,
            )
            return proc
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
    print(
        f"the load could not be declared (see {log}): each run decides about the vector index itself",
        file=sys.stderr,
        flush=True,
    )
    return None


def declare(dsn: str, rows: int, load_id: str, runs: int, hours: float) -> int:
    """The declarer: declare ``rows`` new vectors, say so on the first line, then hold the declaration
    until the load's ``runs`` runs have finished (or ``hours`` passed) and build the index once."""
    with DeclaredLoad(dsn) as load:
        deferred = load.begin(rows)
        print(f"{READY} {'deferred' if deferred else 'live'}", flush=True)
        if not deferred:
            return 0
        code = wait_for(load_id, runs, hours * 3600)
    print(f"vector index: {load.index}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_platform.cli.bulk", description=declare.__doc__)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--load-id", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--hours", type=float, default=DECLARE_HOURS)
    args = ap.parse_args(argv)
    # SIGTERM (the command's launch failed, or someone stops it) leaves through DeclaredLoad's exit: the
    # index is built now, not left to the next run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    home = Home.resolve()  # FER_HOME and DAGSTER_HOME, as the command that started it set them
    dsn = current_resources(home, ("postgres",))["postgres"].get_dsn()
    return declare(dsn, args.rows, args.load_id, args.runs, args.hours)


if __name__ == "__main__":
    sys.exit(main())
