"""Fault injection: real SIGKILLs at four points of a load, the database stopped in the middle of the vectors
COPY, layers deleted (the vectors table, silver, the index), the load log lost on a later day, and two demos
started at once. After each, the ordinary entry point (`fer-platform demo`) runs, and every layer must hold
exactly the expected images once: the load log's loaded files, the raw manifest, bronze, the vectors of the
served model, silver and the index. No run may stay STARTED, no temporary file may stay in the lake.

The kills are real (the process sends itself SIGKILL at a named point: core/faults.py), so nothing in the
process gets to clean up. The tests of one home run in order and each leaves it converged.
"""

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

import fer_platform.assets.raw as raw_asset
import fer_platform.partitions as partitions
from fer_platform.cli.demo import run_demo
from fer_platform.core.home import Home
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.embedded import embedded_status
from fer_platform.core.sample_data import write_sample_landing

pytestmark = pytest.mark.slow
MODEL = "resnet18-random-s0-fidelity"
DATA = re.compile(r"^(train|test)/(\w+)/(train|test|new)_[^/]*\.png$")  # the valid faces the tests write


def demo(home, landing, faults=None, check=True, timeout=300):
    env = dict(os.environ)
    env.pop("FER_FAULTS", None)
    if faults:
        env["FER_FAULTS"] = faults
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_platform.cli",
            "--home",
            str(home),
            "demo",
            "--json",
            "--landing",
            str(landing),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)
    return out


def cli(home, *args):
    return subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def add_faces(landing, emotion, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = (rng.random((48, 48)) * 255).astype("uint8")
        Image.fromarray(pixels, "L").save(landing / "train" / emotion / f"new_{seed}_{i}.png")


def expected(landing) -> dict[str, str]:
    """image_id -> emotion of every valid face in the landing zone."""
    out = {}
    for p in sorted(landing.rglob("*.png")):
        key = p.relative_to(landing).as_posix()
        m = DATA.match(key)
        if m:
            out[hashlib.sha256(p.read_bytes()).hexdigest()] = m.group(2)
    return out


def _ids(root: Path, columns=("image_id",), **flt) -> list[str]:
    if not root.exists():
        return []
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=list(columns))
    return table["image_id"].to_pylist()


def assert_converged(home, landing):
    """Every layer holds exactly the landing zone's valid faces, once; nothing stays STARTED or
    half-written."""
    want = expected(landing)
    dsn = embedded_status(home / "postgres")["dsn"]
    with connect(dsn) as conn:
        logged = [r[0] for r in conn.execute("SELECT sha256 FROM load_log WHERE status = 'loaded'")]
        vectors = conn.execute(
            "SELECT image_id, emotion FROM imagenes_fer WHERE model = %s", (MODEL,)
        ).fetchall()
    lake = home / "lake"
    index_ids = pq.read_table(lake / "index" / MODEL / "ids.parquet", columns=["image_id"])[
        "image_id"
    ].to_pylist()
    layers = {
        "load log": logged,
        "raw manifest": _ids(lake / "raw/manifest"),
        "bronze": _ids(lake / "bronze/images"),
        "postgres": [i for i, _ in vectors],
        "silver": _ids(lake / "silver/embeddings"),
        "index": index_ids,
    }
    for name, ids in layers.items():
        assert len(ids) == len(set(ids)), f"{name} holds {len(ids) - len(set(ids))} image(s) twice"
        assert set(ids) == set(want), (
            f"{name}: {len(set(want) - set(ids))} missing, {len(set(ids) - set(want))} extra"
        )
    assert {i: e for i, e in vectors} == want  # each vector in its emotion's partition
    assert not [p for p in lake.rglob("*.tmp")], "temporary files of killed writes stayed in the lake"
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        stuck = instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
        assert not stuck, [r.run_id for r in stuck]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A home with the sample landing loaded by one demo (stopped at the end)."""
    root = tmp_path_factory.mktemp("faults")
    home, landing = root / "home", root / "landing"
    write_sample_landing(landing, per_class=3, test_per_class=1, seed=5, defects=True)
    first = demo(home, landing)
    assert first["loaded"] == 28 and not first["disagreements"]
    yield home, landing
    cli(home, "db", "stop")


@pytest.mark.parametrize(
    "point, emotion",
    [
        ("lake.file_written=kill@3", "happy"),  # during the raw copy (3 of 6 files written)
        ("ingest.committed=kill", "sad"),  # the load log committed, nothing after it
        ("vectors.batch_copied=kill", "fear"),  # in the middle of the vectors COPY
        ("lake.write:silver=kill", "angry"),  # silver written to its temporary name, not yet renamed
    ],
)
def test_a_sigkill_at_any_point_converges_on_the_next_demo(loaded, point, emotion):
    home, landing = loaded
    add_faces(landing, emotion, 6, seed=len(point))
    killed = demo(home, landing, faults=point, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = demo(home, landing)
    assert again["failed_dead_runs"], "the killed run must end as failed, not STARTED"
    assert not again["disagreements"] and all(r["success"] for r in again["runs"])
    assert again["postgres_rows"] == again["silver_rows"] == again["index_size"] == len(expected(landing))
    assert_converged(home, landing)


def test_the_database_stopped_mid_copy_is_one_line_then_the_next_demo_repairs(loaded, tmp_path):
    home, landing = loaded
    add_faces(landing, "surprise", 5, seed=77)
    env = dict(os.environ, FER_FAULTS=f"vectors.batch_copied=pause:{tmp_path}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "demo", "--landing", str(landing)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (tmp_path / "vectors.batch_copied.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    assert cli(home, "db", "stop").stdout.strip() == "stopped"  # the outage, in the middle of the COPY
    (tmp_path / "vectors.batch_copied.go").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = [
        ln
        for ln in err.splitlines()
        if ln.strip() and " - dagster - WARNING - " not in ln and "ImageNet weights not available" not in ln
    ]
    assert len(lines) == 1 and lines[0].startswith("error: lost the PostgreSQL database at "), err[-3000:]
    assert "fer-platform db start" in lines[0] and "Traceback" not in err
    assert cli(home, "db", "start").returncode == 0
    again = demo(home, landing)
    assert again["failed_dead_runs"] and not again["disagreements"]
    assert_converged(home, landing)


def test_deleted_layers_are_rebuilt_by_the_next_demo(loaded):
    home, landing = loaded
    dsn = embedded_status(home / "postgres")["dsn"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE imagenes_fer")
    shutil.rmtree(home / "lake/silver")
    shutil.rmtree(home / "lake/index")
    again = demo(home, landing)
    assert sorted(again["repaired"]) and not again["disagreements"]
    assert again["postgres_rows"] == again["silver_rows"] == again["index_size"] == len(expected(landing))
    assert_converged(home, landing)
    found = cli(home, "search", "--backend", "pgvector", "--id", next(iter(expected(landing))), "--json")
    assert found.returncode == 0 and len(json.loads(found.stdout)["hits"]) == 10


def test_a_load_log_lost_on_a_later_day_loads_nothing_twice(tmp_path, monkeypatch):
    """First load on day D (yesterday: the clock is pinned for the demo's runs), the load log deleted, then
    the demo on day D+1 (today): the raw manifests put the load log back, and nothing is loaded twice."""
    home, landing = tmp_path / "home", tmp_path / "landing"
    write_sample_landing(landing, per_class=3, test_per_class=1, seed=9, defects=True)
    for var in ("FER_HOME", "FER_LANDING", "DAGSTER_HOME", "FER_DAGSTER_PG_URL"):
        monkeypatch.setenv(var, "")  # run_demo sets them: restored after the test
    day_d = partitions.utc_today() - dt.timedelta(days=1)
    try:
        with monkeypatch.context() as m:
            m.setattr(partitions, "utc_today", lambda: day_d)
            m.setattr(raw_asset, "utc_today", lambda: day_d)
            first = run_demo(Home(home), str(landing))
        assert first["loaded"] == 28 and {
            r["partition"].split("|")[1] for r in first["runs"] if r["partition"]
        } == {day_d.isoformat()}
        dsn = embedded_status(home / "postgres")["dsn"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM load_log")
        second = run_demo(Home(home), str(landing))
        assert second["restored_load_log_rows"] == 28 and not second["disagreements"]
        assert second["loaded"] == 28 and second["postgres_rows"] == second["silver_rows"] == 28
        assert_converged(home, landing)
        with connect(dsn) as conn:  # and every image is still in its day-D partition
            days = {r[0] for r in conn.execute("SELECT DISTINCT load_date FROM imagenes_fer")}
        assert days == {day_d}
    finally:
        cli(home, "db", "stop")


def test_two_demos_started_together_on_a_fresh_home_both_succeed(tmp_path):
    home, landing = tmp_path / "home", tmp_path / "landing"
    write_sample_landing(landing, per_class=2, test_per_class=1, seed=11, defects=True)
    cmd = [
        sys.executable,
        "-m",
        "fer_platform.cli",
        "--home",
        str(home),
        "demo",
        "--json",
        "--landing",
        str(landing),
    ]
    try:
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
        ]
        outs = [p.communicate(timeout=400) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
        first, second = sorted((json.loads(o) for o, _ in outs), key=lambda s: -len(s["runs"]))
        assert (
            first["loaded"] == second["loaded"] == 21 and second["runs"] == []
        )  # the second waited, then found it done
        assert any("waiting for another demo" in err for _, err in outs)
        assert_converged(home, landing)
    finally:
        cli(home, "db", "stop")


def test_what_the_demo_cannot_repair_is_told_one_line_per_layer_and_exit_1(loaded):
    """A partition whose repair fails (its vectors deleted and a raw lake copy lost, so bronze cannot be
    rebuilt): the demo says which layer disagrees, one line each, and exits 1. (Last: it leaves the home
    broken.)"""
    home, landing = loaded
    dsn = embedded_status(home / "postgres")["dsn"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM imagenes_fer WHERE emotion = 'disgust'")
    victim = next((home / "lake/raw/images/fer2013/train/disgust").glob("*.png"))
    victim.unlink()
    out = demo(home, landing, check=False)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("disagreement: ")]
    assert lines and all(ln.startswith("disagreement: disgust|") for ln in lines), out.stderr[-3000:]
    assert any("postgres holds 0 images, the load log" in ln for ln in lines), lines
    summary = json.loads(out.stdout)
    assert summary["disagreements"] == [ln.removeprefix("disagreement: ") for ln in lines]
    assert [r["partition"].split("|")[0] for r in summary["failed_runs"]] == ["disgust"]
