"""Every command in every environment: `demo`, `search` (by id and by image) and `bulk-load` with
FER_ENV=azure on Azurite and FER_ENV=aws on moto give what they give locally on the same landing: the
same counts per layer, the same agreement, the same neighbours, the same pending partitions. The local
run is made once per module; each cloud run uploads the same files with the cloud's own SDK."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fer_platform.core.pg.connect import ensure_database
from fer_platform.core.sample_data import write_sample_landing
from fer_platform_tests import servers
from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.helpers import face

pytestmark = pytest.mark.slow

# what a bulk load launched with no daemon running prints: the files, the backfill, its partitions
BULK = re.compile(r"bulk load of (\d+) pending files: backfill (\S+) over (\d+) partitions \(([^)]*)\)")
# files added after the demo: what bulk-load finds pending
EXTRA = {"train/happy/extra_0.png": face("happy", 901), "test/sad/extra_1.png": face("sad", 902)}
# the figures of a demo that depend on the data, not on where it lives
FIGURES = (
    "files_seen",
    "new_files",
    "loaded",
    "duplicates",
    "quarantined",
    "ignored",
    "not_logged",
    "load_log_totals",
    "model",
    "postgres_rows",
    "silver_rows",
    "index_size",
    "agreement",
    "disagreements",
)


def _cli(home: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """``fer-platform --home home ...`` with only ``env``'s settings (none of this process's FER_, AZURE_,
    AWS_ or DAGSTER_ variables beside the tests' own embedding settings)."""
    keep = ("FER_EMBED_WEIGHTS", "FER_DEMO_TRAIN")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FER_", "AZURE_", "AWS_", "DAGSTER_")) or k in keep
    }
    return subprocess.run(
        [sys.executable, "-m", "fer_platform.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**clean, **env},
    )


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _hits(result: dict) -> list[tuple]:
    """A search's neighbours by what they are (the image, its label and split), their distances rounded."""
    return [(h["image_id"], h["emotion"], h["split"], round(h["distance"], 4)) for h in result["hits"]]


def _commands(home: Path, env: dict, landing: Path, put) -> dict:
    """demo, search --id, search --image, then bulk-load of two files added afterwards (``put``: how a file
    reaches this environment's landing zone); what each gave, parsed."""
    demo = json.loads(_ok(_cli(home, env, "demo", "--json")).stdout)
    query = demo["search_example"]["query"]
    by_id = json.loads(_ok(_cli(home, env, "search", "--id", query["image_id"], "--json")).stdout)
    by_image = json.loads(
        _ok(
            _cli(home, env, "search", "--image", str(landing / "test/fear/test_fear_00000.png"), "--json")
        ).stdout
    )
    for key, data in EXTRA.items():
        put(key, data)
    bulk = _ok(_cli(home, env, "bulk-load"))
    launched = BULK.search(bulk.stdout)
    assert launched, bulk.stdout + bulk.stderr
    return {
        "demo": {k: demo[k] for k in FIGURES},
        "runs": sorted((r["job"], r["partition"], r["files"], r["success"]) for r in demo["runs"]),
        "example": (query["image_id"], query["emotion"], _hits(demo["search_example"])),
        "by_id": (by_id["query"]["image_id"], by_id["model"], _hits(by_id)),
        "by_image": (by_image["model"], _hits(by_image)),
        "bulk": (int(launched.group(1)), int(launched.group(3)), launched.group(4)),
        "stderr": bulk.stderr,
    }


def _landing(root: Path) -> Path:
    landing = root / "landing"
    write_sample_landing(landing, per_class=2, test_per_class=1, seed=11, defects=True)
    return landing


def _local(root: Path, pg_server: str):
    """The commands on a local landing folder and lake (FER_ENV=local), on the session's PostgreSQL."""
    landing = _landing(root)
    env = {"FER_PG_DSN": ensure_database(pg_server, unique("cmdlocal"))}

    def put(key, data):
        (landing / key).write_bytes(data)

    return lambda: _commands(root / "home", {**env, "FER_LANDING": str(landing)}, landing, put)


def _cloud(env: str, store, pg_cloud, root: Path):
    """The same commands with FER_ENV=azure or aws: the landing uploaded with the cloud's own SDK, a
    password-protected server as in the cloud (the Dagster instance's database beside the app's)."""
    landing = _landing(root)
    prefix = store.landing_url.split("/", 3)[3]
    for path in sorted(p for p in landing.rglob("*") if p.is_file()):
        store.put(f"{prefix}/{path.relative_to(landing).as_posix()}", path.read_bytes())
    name = unique("cmd")
    pg_cloud.execute(f'CREATE DATABASE "{name}"')
    pg_cloud.execute("CREATE EXTENSION IF NOT EXISTS vector", dbname=name)
    variables = {
        **store.variables,
        "FER_ENV": env,
        "FER_PG_DSN": pg_cloud.dsn(name, "postgres", pg_cloud.password),
    }
    return lambda: _commands(
        root / "home", variables, landing, lambda key, data: store.put(f"{prefix}/{key}", data)
    )


def test_demo_search_and_bulk_load_give_the_local_figures(
    pg_server, pg_cloud, azure_store, aws_store, tmp_path
):
    # the three environments run side by side (each its own home, database and store): the commands are
    # separate processes, so the test costs about the slowest of them, not their sum
    jobs = {
        "local": _local(tmp_path / "local", pg_server),
        "azure": _cloud("azure", azure_store, pg_cloud, tmp_path / "azure"),
        "aws": _cloud("aws", aws_store, pg_cloud, tmp_path / "aws"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {env: pool.submit(job) for env, job in jobs.items()}
        results = {env: f.result() for env, f in futures.items()}
    local_run = results.pop("local")
    for env, cloud in results.items():
        assert cloud["demo"] == local_run["demo"], env
        assert cloud["demo"]["loaded"] > 0 and cloud["demo"]["index_size"] == cloud["demo"]["silver_rows"] > 0
        assert cloud["demo"]["agreement"]["agreement"] is not None and cloud["demo"]["disagreements"] == []
        assert cloud["runs"] == local_run["runs"] and all(r[3] for r in cloud["runs"]), env
        assert cloud["example"] == local_run["example"], env
        assert cloud["by_id"] == local_run["by_id"] and len(cloud["by_id"][2]) == 10, env
        assert cloud["by_image"] == local_run["by_image"] and len(cloud["by_image"][1]) == 10, env
        assert cloud["bulk"] == local_run["bulk"] and cloud["bulk"][:2] == (len(EXTRA), 2), env
        assert "Traceback" not in cloud["stderr"], env


def test_a_store_that_cannot_be_reached_is_one_line_for_every_command(moto_s3, tmp_path):
    """FER_ENV=aws on a bucket that does not exist: each command stops at start with one line naming the
    URL, no traceback, nothing half done."""
    variables = {
        "FER_ENV": "aws",
        "FER_LAKE_URL": "s3://no-such-bucket/lake",
        "FER_LANDING": "s3://no-such-bucket/landing",
        "FER_S3_ENDPOINT_URL": moto_s3.endpoint,
        "FER_PG_DSN": "postgresql://fer:pw@127.0.0.1:9/fer",
        **servers.MOTO_CREDENTIALS,
    }
    image = tmp_path / "q.png"
    image.write_bytes(face("happy", 1))
    for args in (["demo"], ["search", "--image", str(image)], ["bulk-load"]):
        out = _cli(tmp_path / "home", variables, *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (args, out.stderr[-3000:])
        assert lines[0].startswith("error: s3://no-such-bucket/") and lines[0].endswith(
            "there is no container or bucket named 'no-such-bucket'"
        ), (args, lines[0])
