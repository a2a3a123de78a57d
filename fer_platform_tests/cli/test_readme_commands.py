"""The README's "Running any job or partition from the CLI" works as written: `fer-platform db start`
prepares the home's Dagster instance, then Dagster's own `dagster asset materialize --partition` loads that
partition's landing files on it (the run kept on the instance)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.partitions import utc_today

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Running any job or partition from the CLI"


def documented_commands() -> list[str]:
    """The shell commands of the section's code block, continuation lines joined, comments left out."""
    text = README.read_text().split(SECTION, 1)[1]
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+", " ", ln).strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_the_documented_partition_materialize_loads_the_partition(tmp_path, pg_server):
    commands = documented_commands()
    start = next(c for c in commands if c.startswith("fer-platform"))
    materialize = next(c for c in commands if c.startswith("dagster asset materialize"))
    day = re.search(r'--partition "\w+\|(\d{4}-\d\d-\d\d)"', materialize).group(1)
    emotion = re.search(r'--partition "(\w+)\|', materialize).group(1)
    landing = tmp_path / "landing"
    write_sample_landing(landing, per_class=2, test_per_class=1, seed=4)
    expected = sorted(p.relative_to(landing).as_posix() for p in landing.glob(f"*/{emotion}/*.png"))
    dsn = ensure_database(pg_server, f"readme{os.getpid()}")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FER_ENV", "DAGSTER_"))},
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "FER_LANDING": str(landing),
        "FER_PG_DSN": dsn,
    }
    # today's partition: the one whose run loads the emotion's pending files
    script = "\n".join(
        [
            "set -e",
            f"cd {tmp_path}",
            start,
            next(c for c in commands if c.startswith("export ")),
            materialize.replace(day, utc_today().isoformat()),
        ]
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stderr + out.stdout
    with connect(dsn) as conn:
        loaded = [
            r[0] for r in conn.execute("SELECT path FROM load_log WHERE status = 'loaded' ORDER BY path")
        ]
        vectors = conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0]
    assert loaded == expected and vectors == len(expected)
    assert (tmp_path / ".fer" / "dagster" / "dagster.yaml").exists()
