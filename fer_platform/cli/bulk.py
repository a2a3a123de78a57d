"""`fer-platform bulk-load`: the first load of a large landing folder as one Dagster backfill.

It backfills the ``bulk_load`` job over today's partitions of the emotions that have pending files, with
Dagster's own public command for it, ``dagster job backfill``, on the home's instance (the one
`fer-platform dev` serves): that command creates one run per partition, tagged with the backfill's id,
and hands them to the run queue, which bounds how many run at once (dagster.yaml: max_concurrent_runs
and the fer/bulk tag limit); the daemon starts them. Each run loads every pending file of its emotion, in
batches, with progress in its logs; the backfill shows on the webserver's Backfills page.

``dagster job backfill`` records the backfill as complete once its runs are queued, and Dagster retries
no run of a complete backfill: a failed bulk run is not retried. Its files stay pending (the load log
decides, not the run): the landing sensor takes them (unless FER_INCLUDE_EXISTING_FILES=false left
them out), or the next bulk load.
"""

import json
import re
import subprocess
import sys
import time

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


def launch(home: Home, dsn: str, keys: list[str]) -> str:
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
        json.dumps(BULK_TAGS),
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


def wait_for(backfill: str, runs_expected: int, timeout: float) -> int:
    """Wait until the backfill's runs have finished; 1 if any of them did not succeed (or time ran out)."""
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            records = instance.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: backfill}))
            runs = [r.dagster_run for r in records]
            if len(runs) >= runs_expected and all(r.status in FINISHED for r in runs):
                failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
                print(
                    f"backfill {backfill}: {len(runs) - len(failed)}/{len(runs)} runs succeeded"
                    + (f"; failed: {', '.join(failed)}" if failed else "")
                )
                return 1 if failed else 0
            time.sleep(2)
    print(f"backfill {backfill} still running after {timeout:.0f} s", file=sys.stderr)
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
    with DeclaredLoad(dsn) as load:
        # waiting, the command declares the whole load (pg.schema.DeclaredLoad): its runs COPY without the
        # vector index and it is built once, at the end; without --wait each run decides for itself
        if wait:
            load.begin(files)
        return _launch_and_wait(home, dsn, keys, files, host, port, wait, timeout)


def _launch_and_wait(
    home: Home, dsn: str, keys: list[str], files: int, host: str, port: int, wait: bool, timeout: float
) -> int:
    backfill = launch(home, dsn, keys)
    print(
        f"bulk load of {files} pending files: backfill {backfill} over {len(keys)} partitions "
        f"({', '.join(keys)}); progress: http://{host}:{port}/overview/backfills/{backfill}",
        flush=True,
    )
    if not daemon_alive():
        print(
            "no dagster-daemon is running on this instance: the runs wait in the queue until "
            "`fer-platform dev` starts one",
            file=sys.stderr,
            flush=True,
        )
    return wait_for(backfill, len(keys), timeout) if wait else 0
