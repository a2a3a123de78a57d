"""`fer-platform load-csv PATH`: a challenge CSV anywhere on disk, expanded into the environment's landing
zone, exactly once."""

import json
import os
import subprocess
import sys

from fer_platform.core.ingest import ingest, pending_files
from fer_platform.core.storage import Storage
from fer_platform.partitions import utc_today
from fer_platform_tests.core.test_challenge_csv import bad_rows, good_rows, write_csv


def _load_csv(tmp_path, dsn, landing, lake, *args):
    env = {**os.environ, "FER_PG_DSN": dsn, "FER_LANDING": str(landing), "FER_LAKE_URL": str(lake)}
    env.pop("FER_ENV", None)
    return subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(tmp_path / "home"), "load-csv", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_load_csv_stages_a_csv_from_anywhere_once(tmp_path, pg_dsn, landing, lake):
    csv = tmp_path / "downloads" / "fer2013.csv"
    write_csv(csv, good_rows()[:3] + [bad_rows()[3][0]])

    out = _load_csv(tmp_path, pg_dsn, landing, lake, str(csv))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 row(s) staged as images" in out.stdout and "1 quarantined" in out.stdout
    assert "quarantined row 4: unknown emotion code '7' (expected 0-6)" in out.stdout
    assert "fer-platform demo" in out.stdout  # what loads them next
    staging = landing / "_csv" / str(csv).strip("/").replace("/", "~")
    assert sorted(p.name for p in staging.rglob("*.png")) == [
        "PrivateTest_3.png",
        "PublicTest_2.png",
        "Training_1.png",
    ]

    again = _load_csv(tmp_path, pg_dsn, landing, lake, str(csv), "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    assert (summary["status"], summary["rows_staged"], summary["rows_skipped"]) == ("unchanged", 0, 4)

    ls = Storage(str(landing), confined=True)
    report = ingest(ls, Storage(str(lake)), pg_dsn, pending_files(ls, pg_dsn)[0], utc_today(), "run")
    assert report.counts == {"loaded": 3}

    missing = _load_csv(tmp_path, pg_dsn, landing, lake, str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope.csv: no such file")
