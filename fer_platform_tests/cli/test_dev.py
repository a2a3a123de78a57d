"""`fer-platform dev`: the UI and daemon on the PostgreSQL instance, stopped cleanly by SIGTERM."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_dev_serves_the_code_location_and_stops_without_orphans(tmp_path):
    home, port = tmp_path / "home", _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "dev", "--port", str(port)],
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
                data = _graphql(port, "{ assetNodes { assetKey { path } } }")
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
