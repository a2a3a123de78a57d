"""`fer-platform demo --json` end to end: its own embedded PostgreSQL, a generated landing, twice."""

import json
import subprocess
import sys

import pytest

from fer_platform.core.sample_data import write_sample_landing

pytestmark = pytest.mark.slow


def _demo(home, landing):
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
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    yield home
    subprocess.run([sys.executable, "-m", "fer_platform.cli", "--home", str(home), "db", "stop"], check=False)


def test_demo_counts_reconcile_and_a_second_run_adds_nothing(home, tmp_path):
    landing = tmp_path / "landing"
    write_sample_landing(landing, per_class=3, test_per_class=1, seed=3, defects=True)
    n_files = sum(1 for p in landing.rglob("*") if p.is_file())

    first = _demo(home, landing)
    assert first["files_seen"] == n_files
    assert (
        first["files_seen"]
        == first["loaded"] + first["duplicates"] + len(first["quarantined"]) + first["ignored"]
    )
    assert first["not_logged"] == 0
    assert first["loaded"] == 7 * 4  # every generated face
    assert first["duplicates"] == 1  # the copied face
    reasons = {q["path"]: q["reason"] for q in first["quarantined"]}
    assert "unknown emotion folder 'contempt'" in reasons["train/contempt/x.png"]
    assert "JPEG content with a .png extension" in reasons["train/surprise/photo.png"]
    assert first["ignored"] == 2 and all(r["success"] for r in first["runs"])
    assert first["model"] == "resnet18-random-s0-fidelity"  # offline: FER_EMBED_WEIGHTS=random
    assert first["postgres_rows"] == first["silver_rows"] == first["index_size"] == first["loaded"]
    example = first["search_example"]
    assert example["query"]["split"] == "test" and len(example["hits"]) == 10
    assert example["same_emotion"] == sum(
        h["emotion"] == example["query"]["emotion"] for h in example["hits"]
    )
    assert example["query"]["image_id"] not in {h["image_id"] for h in example["hits"]}
    assert [r["job"] for r in first["runs"]].count("publish_gold_and_index") == 1

    second = _demo(home, landing)
    for key in (
        "files_seen",
        "loaded",
        "duplicates",
        "quarantined",
        "ignored",
        "load_log_totals",
        "postgres_rows",
        "silver_rows",
        "index_size",
        "search_example",
    ):
        assert second[key] == first[key], key
    assert second["new_files"] == 0 and second["runs"] == []

    # the runs are on the PostgreSQL-backed instance, for the UI to show
    code = (
        "import dagster as dg; i = dg.DagsterInstance.from_config(%r); "
        "print(type(i.run_storage).__name__, len(i.get_runs()))" % str(home / "dagster")
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    storage, n_runs = out.stdout.split()
    assert storage == "PostgresRunStorage" and int(n_runs) == len(first["runs"])
