"""`fer-platform dev`: the Dagster webserver and daemon on the PostgreSQL instance.

``dagster dev`` runs in its own session; Ctrl-C or SIGTERM here stops it and
every process it started (webserver, daemon, code servers), then returns.
"""

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import psutil

from fer_platform.cli.instance import current_dsn, prepare_dagster_home, write_workspace
from fer_platform.core.home import Home


def start(
    home: Home, host: str = "127.0.0.1", port: int = 3000, landing: Optional[str] = None
) -> subprocess.Popen:
    """Prepare the instance and start `dagster dev` in a new session (its own process group)."""
    prepare_dagster_home(home, current_dsn(home))
    env = dict(os.environ, FER_HOME=str(home.root), DAGSTER_HOME=str(home.dagster))
    if landing:
        env["FER_LANDING"] = landing
    for var in ("FER_LANDING", "FER_LAKE_URL"):  # dagster dev runs in the home: relative folders are ours
        if env.get(var) and "://" not in env[var]:
            env[var] = os.path.abspath(env[var])
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", write_workspace(home), "-h", host, "-p", str(port)]
    return subprocess.Popen(cmd, env=env, start_new_session=True, cwd=str(home.root))


def stop(proc: subprocess.Popen, grace: float = 30.0) -> list[int]:
    """Stop `dagster dev` and all its descendants; returns the pids that had to be killed."""
    try:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    _signal_group(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    killed = []
    deadline = time.monotonic() + 10
    for pid in family:
        try:
            p = psutil.Process(pid)
            p.wait(max(0.1, deadline - time.monotonic()))
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            p.kill()
            killed.append(pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return killed


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def run(home: Home, host: str, port: int, landing: Optional[str]) -> int:
    proc = start(home, host, port, landing)
    stopping = {"sig": None}

    def on_signal(signum, _frame):
        stopping["sig"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"Dagster UI on http://{host}:{port}  (instance {home.dagster}; Ctrl-C to stop)", flush=True)
    while proc.poll() is None and stopping["sig"] is None:
        time.sleep(0.2)
    code = proc.returncode if proc.returncode is not None else 0
    killed = stop(proc)
    if killed:
        print(f"stopped leftover processes {killed}", file=sys.stderr)
    return code if stopping["sig"] is None else 0
