"""Scale out on Celery with Redis, with real processes only: Redis (Debian's redis-server), moto S3 and a
TCP PostgreSQL (FER_ENV=aws), a dagster-daemon on the launching machine's instance, and two Celery workers
(`fer-platform worker`, the README's commands) that cannot see the launching machine's home: each has its
own working folder, HOME and TMPDIR, and (where `unshare --mount` works) a private empty tmpfs over the
launcher's folder. One takes the default queue, one the GPU queue.

A 7-partition bulk load (the backfill the UI launches from Jobs -> bulk_load -> Partitions), with
FER_EXECUTOR=celery and no run config: every image once in the load log, PostgreSQL and silver; vectors
identical to an in-process run of the same landing; both workers did work and the embedding steps ran only
on the GPU worker. Then the run-launcher path once: FER_RUN_LAUNCHER=celery in the dagster.yaml the CLI
writes, the daemon hands the run to a worker as a Celery task.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow.parquet as pq
import pytest

from fer_platform.cli.instance import USER_YAML, WORKSPACE, sqlalchemy_url
from fer_platform.core.layout import EMOTIONS, SILVER_EMBEDDINGS
from fer_platform.core.pg.connect import ensure_database
from fer_platform.core.pg.schema import DAGSTER_DATABASE
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.definitions import build_definitions
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources.environments import resources_for
from fer_platform_tests import servers
from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.helpers import face

# a 7-run backfill on two workers: over the suite's 600 s per test on a busy 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent
PER_EMOTION = 10  # 8 train + 2 test images per emotion: 7 partitions x 10 images
WORKERS = {"cpu": ([], 2), "gpu": (["gpu"], 1)}  # name: (queues, concurrency)
EMBED_STEP = "image_embeddings"
CELERY_TASK_TAG = "dagster-celery/task_id"  # what CeleryRunLauncher tags its runs with


def _unshare_works() -> bool:
    probe = ["unshare", "--mount", "--propagation", "private", "true"]
    return shutil.which("unshare") is not None and subprocess.run(probe, capture_output=True).returncode == 0


def _clean_env(variables: dict) -> dict:
    """This process's environment without any FER_, AWS_, AZURE_ or DAGSTER_ setting, plus ``variables``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("FER_", "AZURE_", "AWS_", "DAGSTER_"))}
    return {**keep, "FER_EMBED_WEIGHTS": "random", **variables}


def _start(name: str, cmd: list, cwd: Path, env: dict, ready: str | None = None, timeout=180):
    log = cwd / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while ready and ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise AssertionError(f"{name} did not start: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    """The process and its group (the celery worker's pool, the daemon's children)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _cli(home: Path, env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _pg(dsn: str, sql: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _vectors(dsn: str) -> list:
    return _pg(dsn, "SELECT image_id, model, vector::text FROM imagenes_fer ORDER BY image_id, model")


def _silver_ids(store, lake_prefix: str) -> list[str]:
    ids = []
    for key in store.list_keys(f"{lake_prefix}/{SILVER_EMBEDDINGS}/"):
        if key.endswith(".parquet"):
            body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
            ids += pq.read_table(io.BytesIO(body), columns=["image_id"]).column("image_id").to_pylist()
    return ids


@pytest.fixture(scope="module")
def cluster(moto_s3, pg_cloud, redis, tmp_path_factory):
    """A bucket with a 7 x 10 landing, a database, the launching machine's settings and folder, and the two
    workers (started once for the module, stopped by process group)."""
    bucket = unique("fer-celery-")
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    landing = tmp_path_factory.mktemp("celery-landing")
    write_sample_landing(landing, per_class=PER_EMOTION - 2, test_per_class=2, seed=5)
    files = sorted(p for p in landing.rglob("*") if p.is_file())
    for path in files:
        client.put_object(
            Bucket=bucket, Key=f"landing/{path.relative_to(landing).as_posix()}", Body=path.read_bytes()
        )
    name = unique("celery")
    pg_cloud.execute(f'CREATE DATABASE "{name}"')
    pg_cloud.execute("CREATE EXTENSION IF NOT EXISTS vector", dbname=name)
    dsn = pg_cloud.dsn(name, "postgres", pg_cloud.password)
    settings = {
        "FER_ENV": "aws",
        "FER_LAKE_URL": f"s3://{bucket}/lake",
        "FER_LANDING": f"s3://{bucket}/landing",
        "FER_S3_ENDPOINT_URL": moto_s3.endpoint,
        **servers.MOTO_CREDENTIALS,
        "FER_PG_DSN": dsn,
        "FER_EXECUTOR": "celery",
        "FER_CELERY_BROKER": redis.url(0),
        "FER_CELERY_BACKEND": redis.url(1),
        "FER_COMPUTE_LOGS": f"s3://{bucket}/compute-logs",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    launcher = tmp_path_factory.mktemp("celery-launcher")
    mask = _unshare_works()
    workers, logs = [], {}
    try:
        for worker, (queues, concurrency) in WORKERS.items():
            folder = tmp_path_factory.mktemp(f"celery-worker-{worker}")
            (folder / "tmp").mkdir()
            env = _clean_env({**settings, "HOME": str(folder), "TMPDIR": str(folder / "tmp")})
            cmd = [sys.executable, "-m", "fer_platform.cli", "--home", str(folder / "home"), "worker"]
            cmd += [a for q in queues for a in ("-q", q)] + ["-c", str(concurrency), "-n", worker]
            if mask:  # the launcher's folder is an empty private tmpfs in the worker's mount namespace
                shell = 'mount -t tmpfs none "$0" && exec "$@"'
                cmd = [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    shell,
                    str(launcher),
                    *cmd,
                ]
            proc, log = _start(f"worker-{worker}", cmd, folder, env, ready=" ready.")
            workers.append(proc)
            logs[worker] = log
        yield {
            "settings": settings,
            "launcher": launcher,
            "landing": landing,
            "files": len(files),
            "dsn": dsn,
            "bucket": bucket,
            "client": client,
            "logs": logs,
            "masked": mask,
            "pg_cloud": pg_cloud,
        }
    finally:
        for proc in workers:
            _stop(proc)


def _instance_env(cluster, home: Path, extra: dict) -> dict:
    url, _ = sqlalchemy_url(ensure_database(cluster["dsn"], DAGSTER_DATABASE))
    return _clean_env(
        {**cluster["settings"], **extra, "DAGSTER_HOME": str(home / "dagster"), "FER_DAGSTER_PG_URL": url}
    )


def _daemon(cluster, home: Path, env: dict):
    """`fer-platform db start` writes the instance (dagster.yaml from the settings); a daemon on it."""
    _cli(home, env, "db", "start")
    workspace = home / "dagster" / "workspace.yaml"
    workspace.write_text(WORKSPACE)
    cmd = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    proc, _ = _start("daemon", cmd, home, env)
    return proc


def _steps_by_worker(run_ids: list[str], env: dict) -> dict[str, set[str]]:
    """Worker name -> the step keys it executed, from dagster-celery's engine events of the runs."""
    seen: dict[str, set[str]] = {}
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for run_id in run_ids:
            for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                # "[CeleryExecutor] Executing steps ... in celery worker", with the worker's host name
                meta = record.dagster_event.engine_event_data.metadata
                if "Celery worker" in meta:
                    host = meta["Celery worker"].value.split("@")[0]
                    seen.setdefault(host, set()).add(record.step_key)
    return seen


def _backfill_runs(env: dict, tag: dict) -> list:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(tags=tag))]


def _in_process(cluster, env: dict, tmp_path) -> list:
    """The same landing loaded in this process, in-process executor, into another lake and database (the
    resources read their settings from this process's environment, set here by the test's monkeypatch)."""
    name = unique("celeryref")
    pg = cluster["pg_cloud"]
    pg.execute(f'CREATE DATABASE "{name}"')
    pg.execute("CREATE EXTENSION IF NOT EXISTS vector", dbname=name)
    dsn = pg.dsn(name, "postgres", pg.password)
    env.update(FER_EXECUTOR="in_process", FER_LAKE_URL=f"s3://{cluster['bucket']}/reference", FER_PG_DSN=dsn)
    for k in (*cluster["settings"], "FER_EMBED_WEIGHTS"):
        os.environ[k] = env[k]
    defs = build_definitions(resources_for("aws"))
    job = defs.resolve_job_def("bulk_load")
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        for emotion in EMOTIONS:
            key = str(partition_key(emotion, utc_today()))
            assert job.execute_in_process(partition_key=key, instance=instance).success
    return _vectors(dsn)


def test_a_backfill_on_two_celery_workers_equals_an_in_process_run(cluster, monkeypatch, tmp_path):
    home = cluster["launcher"] / "home"
    home.mkdir()
    env = _instance_env(cluster, home, {"HOME": str(cluster["launcher"]), "FER_HOME": str(home)})
    # the user's own instance settings survive the CLI's rewrite: two bulk runs at once here
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / USER_YAML).write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 2\n"
    )
    # the in-process reference run of the same landing, side by side with the backfill (it waits on workers)
    for k in (*cluster["settings"], "FER_EMBED_WEIGHTS"):
        monkeypatch.setenv(k, env[k])  # restored after the test; the reference run changes some
    pool = ThreadPoolExecutor(1)
    reference = pool.submit(_in_process, cluster, dict(env), tmp_path)
    daemon = _daemon(cluster, home, env)
    try:
        written = (home / "dagster" / "dagster.yaml").read_text()
        assert "max_concurrent_runs: 2" in written and "fer/bulk" not in written, written
        assert "MonitoredRunLauncher" in written and "S3ComputeLogManager" in written
        out = _cli(home, env, "bulk-load", "--wait")
        assert "7/7 runs succeeded" in out.stdout, out.stdout + out.stderr
    finally:
        _stop(daemon)
    for k in ("FER_DAGSTER_PG_URL", "FER_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, env[k])  # what the instance's dagster.yaml reads
    runs = _backfill_runs(env, {"fer/bulk": "true"})
    runs = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    assert len(runs) == len(EMOTIONS)
    # no run config carries the broker: the executor reads it from the environment where it runs
    assert not [r.run_id for r in runs if "redis://" in json.dumps(r.run_config)]

    dsn, n = cluster["dsn"], cluster["files"]
    loaded = _pg(dsn, "SELECT count(*), count(DISTINCT sha256) FROM load_log WHERE status = 'loaded'")
    assert loaded == [(n, n)]
    assert _pg(dsn, "SELECT count(*), count(DISTINCT image_id) FROM imagenes_fer") == [(n, n)]
    silver = _silver_ids(_S3(cluster), "lake")
    assert len(silver) == len(set(silver)) == n

    steps = _steps_by_worker([r.run_id for r in runs], env)
    assert set(steps) == {"cpu", "gpu"}, steps
    assert steps["gpu"] == {EMBED_STEP}
    assert (
        EMBED_STEP not in steps["cpu"]
        and {"raw_images", "bronze_images", "silver_embeddings"} <= steps["cpu"]
    )
    for worker, log in cluster["logs"].items():
        assert "succeeded" in log.read_text(errors="replace"), worker
    # the steps' stdout/stderr went to S3 (FER_COMPUTE_LOGS), the launcher's machine holds none of them
    assert _S3(cluster).list_keys("compute-logs/")

    assert _vectors(dsn) == reference.result()
    pool.shutdown()


def test_the_celery_run_launcher_runs_a_backfill_run_on_a_worker(cluster, monkeypatch):
    """FER_RUN_LAUNCHER=celery: the daemon hands the run to the default queue's worker, which executes it
    (after the first test's load: one more image, one partition)."""
    home = cluster["launcher"] / "home-launcher"
    home.mkdir()
    env = _instance_env(
        cluster, home, {"HOME": str(cluster["launcher"]), "FER_HOME": str(home), "FER_RUN_LAUNCHER": "celery"}
    )
    cluster["client"].put_object(
        Bucket=cluster["bucket"], Key="landing/train/happy/late_0.png", Body=face("happy", 4242)
    )
    daemon = _daemon(cluster, home, env)
    try:
        assert "CeleryRunLauncher" in (home / "dagster" / "dagster.yaml").read_text()
        out = _cli(home, env, "bulk-load", "--wait")
        logs = "".join(log.read_text(errors="replace")[-4000:] for log in cluster["logs"].values())
        assert "1/1 runs succeeded" in out.stdout, out.stdout + out.stderr + logs
    finally:
        _stop(daemon)
    for k in ("FER_DAGSTER_PG_URL", "FER_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, env[k])  # what the instance's dagster.yaml reads
    (run,) = [r for r in _backfill_runs(env, {"fer/bulk": "true"}) if CELERY_TASK_TAG in r.tags]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    rows = _pg(cluster["dsn"], "SELECT count(*) FROM load_log WHERE path LIKE '%late_0.png'")
    assert rows == [(1,)]
    # the whole run on the default queue's worker, in its process (a Celery task cannot wait for step tasks)
    assert _steps_by_worker([run.run_id], env) == {}
    log = cluster["logs"]["cpu"].read_text(errors="replace")
    assert re.search(rf"Task execute_job\[{run.tags[CELERY_TASK_TAG]}\] succeeded", log)


class _S3:
    def __init__(self, cluster):
        self.client, self.bucket = cluster["client"], cluster["bucket"]

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
