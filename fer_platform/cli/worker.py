"""`fer-platform worker`: a Celery worker (dagster-celery) that runs the steps (FER_EXECUTOR=celery) and the
runs (FER_RUN_LAUNCHER=celery) of this platform on this machine.

It checks the settings first (the broker, a PostgreSQL every worker reaches: one line when one is
missing), points DAGSTER_HOME at the home's instance on that PostgreSQL, writes the worker's Celery config
(``<home>/dagster/celery.yaml``: broker and backend by environment variable, never by value) and runs
``dagster-celery worker start -A dagster_celery.app -y <home>/dagster/celery.yaml [-q QUEUE] -- -c N``.
Without ``-q`` it takes dagster-celery's default queue ``dagster`` (runs and CPU steps); a GPU machine takes
FER_GPU_QUEUE's (``gpu``: the embedding and training steps). A run handed to a worker by the Celery run
launcher executes its steps in the worker's process (dagster-celery cannot wait for step tasks from inside a
task), whatever FER_EXECUTOR says.
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fer_platform.cli.instance import current_dsn, prepare_dagster_home
from fer_platform.core.home import Home

CELERY_APP = "dagster_celery.app"


def command(config: Path, queues: list[str], concurrency: int, name: str | None) -> list[str]:
    """The dagster-celery command line of a worker (``config``: its celery.yaml)."""
    cmd = [str(Path(sys.executable).parent / "dagster-celery"), "worker", "start", "-A", CELERY_APP]
    cmd += ["-y", str(config)]
    for queue in queues:
        cmd += ["-q", queue]
    if name:
        cmd += ["-n", name]
    return cmd + ["--", "-c", str(concurrency)]


def run(home: Home, queues: list[str], concurrency: int, name: str | None) -> int:
    os.environ["FER_HOME"] = str(home.root)
    from fer_platform.resources import environments as envs  # deferred: loads dagster

    celery = envs.celery_settings("fer-platform worker")  # one line if the broker or a shared PG is missing
    if envs.executor_name() == "celery":
        # A run this worker executes (FER_RUN_LAUNCHER=celery) is itself a Celery task, and dagster-celery's
        # executor cannot wait for step tasks from inside one: such a run executes its steps here, in its
        # process. Step tasks from runs launched elsewhere do not use this setting.
        os.environ["FER_EXECUTOR"] = "in_process"
        print("runs executed on this worker execute their steps in its process (FER_EXECUTOR=in_process)")
    prepare_dagster_home(home, current_dsn(home))  # DAGSTER_HOME: the instance the run tasks open
    config = home.dagster / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": celery}}, sort_keys=False))
    bindir = str(Path(sys.executable).parent)  # dagster-celery starts `celery` by name
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    print(f"Celery worker on queue(s) {', '.join(queues) or 'dagster'} ({concurrency} at a time)", flush=True)
    return subprocess.call(command(config, queues, concurrency, name), env=env)
