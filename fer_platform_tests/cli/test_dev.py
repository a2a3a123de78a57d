"""`fer-platform dev`: the UI and daemon on the PostgreSQL instance, stopped cleanly by SIGTERM; opened
as `demo`'s closing line says, it shows the demo's runs as runs of its code location."""

import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest

from fer_platform_tests.servers import free_port, graphql

pytestmark = pytest.mark.slow


RUNS = """{ runsOrError { ... on Runs { results { runId pipelineName pipelineSnapshotId
  parentPipelineSnapshotId
  repositoryOrigin { repositoryLocationName repositoryName } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
  pipelines { name pipelineSnapshotId } } } } }"""


def _demo_hint(home) -> list[str]:
    """A small demo on ``home``; its closing line's command, as argv (``fer-platform`` run as this Python)."""
    out = subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "demo", "--per-class", "2"]
        + ["--test-per-class", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert "see them in the UI: " in last, last
    argv = shlex.split(last.split("see them in the UI: ", 1)[1])
    assert argv[0] == "fer-platform" and argv[-1] == "dev", argv
    assert argv[argv.index("--home") + 1] == str(home), argv  # the same home, not the default one
    return [sys.executable, "-m", "fer_platform.cli", *argv[1:]]


@pytest.mark.timeout(1200)  # a demo, then `dev`: ~1 min on a quiet machine, far more on a loaded one
def test_dev_serves_the_code_location_and_stops_without_orphans(tmp_path):
    """Opened as the demo's closing line says: the demo's runs carry the code location's origin (the UI's
    timeline lists them) and the snapshot of the job it serves (re-executing one warns of no version)."""
    home, port = tmp_path / "home", free_port()
    command = _demo_hint(home)
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    family: set[int] = set()
    try:
        deadline, nodes = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            family |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            try:
                data = graphql(f"http://127.0.0.1:{port}", "{ assetNodes { assetKey { path } } }")
                nodes = {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}
                if nodes:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert nodes and {"raw_images", "bronze_images"} <= nodes, (
            proc.stdout.read() if proc.poll() else nodes
        )
        family |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        names = " ".join(" ".join(psutil.Process(p).cmdline()) for p in family if psutil.pid_exists(p))
        assert "dagster-daemon" in names or "daemon" in names
        data = graphql(f"http://127.0.0.1:{port}", RUNS)["data"]
        repos = data["repositoriesOrError"]["nodes"]
        served = {
            (r["location"]["name"], r["name"]): {p["pipelineSnapshotId"] for p in r["pipelines"]}
            for r in repos
        }
        runs = data["runsOrError"]["results"]
        assert len(runs) >= 3, runs  # triage, an ingest per emotion, publish
        for run in runs:
            origin = run["repositoryOrigin"]
            assert origin, run
            where = (origin["repositoryLocationName"], origin["repositoryName"])
            assert where in served, (run, list(served))
            snapshot = run["parentPipelineSnapshotId"] or run["pipelineSnapshotId"]
            assert snapshot in served[where], run  # what the UI compares before "Re-execute"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        subprocess.run(
            [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "db", "stop"], check=False
        )
    time.sleep(1)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {alive}"
    assert proc.returncode == 0
