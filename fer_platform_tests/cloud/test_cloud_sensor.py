"""The landing sensor over a container (Azurite) and a bucket (moto S3), with the same code as locally:
uploaded files are requested once, their runs load them, nothing is requested or loaded twice, and a
lost cursor reloads nothing."""

import dagster as dg
import pytest

from fer_platform.automation.jobs import INGEST_ASSETS, RUN_CHECKS
from fer_platform.automation.sensors import landing_sensor
from fer_platform.core.pg.connect import connect
from fer_platform.resources import AutoLoaderResource
from fer_platform.resources.environments import resources_for
from fer_platform_tests.helpers import face


def _tick(resources, cursor=None):
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={k: resources[k] for k in ("landing", "postgres", "auto_loader", "lake", "embedder")},
    ) as context:
        result = landing_sensor(context)
    # file pickups only: the search index these runs never build is the sensor's to repair, not this test's
    return [r for r in result.run_requests or [] if "fer/repair" not in r.tags], result.cursor


def _run(resources, requests):
    for r in requests:
        assert dg.materialize(
            [*INGEST_ASSETS, *RUN_CHECKS],
            resources=resources,
            partition_key=r.partition_key,
            run_config=r.run_config,
            selection=dg.AssetSelection.assets(*INGEST_ASSETS),
        ).success


@pytest.mark.slow
def test_the_sensor_picks_up_uploads_exactly_once(cloud_store, pg_dsn, monkeypatch):
    monkeypatch.setenv("FER_PG_DSN", pg_dsn)
    resources = {**resources_for(cloud_store.env), "auto_loader": AutoLoaderResource(settle_seconds=0)}
    landing_prefix = cloud_store.landing_url.split("/", 3)[3]
    for key, data in {
        "train/angry/a.png": face("angry", 1),
        "train/fear/f.png": face("fear", 1),
        "test/fear/g.png": face("fear", 2),
    }.items():
        cloud_store.put(f"{landing_prefix}/{key}", data)  # uploaded by the cloud's own SDK

    requests, cursor = _tick(resources)
    assert sorted(sorted(r.run_config["ops"]["raw_images"]["config"]["files"]) for r in requests) == [
        ["test/fear/g.png", "train/fear/f.png"],
        ["train/angry/a.png"],
    ]
    _run(resources, requests)
    assert _tick(resources, cursor)[0] == []  # nothing new
    assert _tick(resources, None)[0] == []  # a lost cursor: the load log says all is loaded

    cloud_store.put(f"{landing_prefix}/train/angry/b.png", face("angry", 2))
    requests, cursor = _tick(resources, cursor)
    assert [r.run_config["ops"]["raw_images"]["config"]["files"] for r in requests] == [["train/angry/b.png"]]
    _run(resources, requests)
    with connect(pg_dsn) as conn:
        rows = conn.execute("SELECT path, status FROM load_log ORDER BY path").fetchall()
        vectors = conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0]
    assert (
        rows
        == [
            ("test/fear/g.png", "loaded"),
            ("train/angry/a.png", "loaded"),
            ("train/angry/b.png", "loaded"),
            ("train/fear/f.png", "loaded"),
        ]
        and vectors == 4
    )
