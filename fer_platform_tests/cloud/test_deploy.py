"""deploy/: the dagster.yaml templates load as Dagster instances on a real PostgreSQL (and the AWS one
runs a job whose compute logs land in S3 on moto); the compose file and the Dockerfile hang together.
Nothing here builds an image or starts a container: this machine has no Docker engine."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster_k8s.job import get_user_defined_k8s_config

from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.servers import REPO

DEPLOY = REPO / "deploy"
TEMPLATES = ["aws", "azure", "compose"]


def _instance_dir(tmp_path, name, sslmode=None) -> Path:
    home = tmp_path / f"home-{name}"
    home.mkdir()
    text = (DEPLOY / "dagster" / f"{name}.yaml").read_text()
    if sslmode:  # the test server has no TLS: the only change made to a template here
        text, n = re.subn(r"sslmode: \w+", f"sslmode: {sslmode}", text)
        assert n == 1
    (home / "dagster.yaml").write_text(text)
    return home


@pytest.fixture
def dagster_pg(pg_cloud, monkeypatch):
    """DAGSTER_PG_* pointing at a fresh database of the password-protected server."""
    dsn = pg_cloud.new_database(unique("dagster"), vector=False)
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    for var, key in (
        ("DAGSTER_PG_HOST", "host"),
        ("DAGSTER_PG_PORT", "port"),
        ("DAGSTER_PG_USER", "user"),
        ("DAGSTER_PG_PASSWORD", "password"),
        ("DAGSTER_PG_DB", "dbname"),
    ):
        monkeypatch.setenv(var, str(params[key]))
    return dsn


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_are_valid_instance_config(name, tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    home = _instance_dir(tmp_path, name)
    config, _ = dagster_instance_config(str(home))
    assert set(config["storage"]["postgres"]["postgres_db"]) >= {
        "hostname",
        "username",
        "password",
        "db_name",
    }
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    expected = {
        "aws": "S3ComputeLogManager",
        "azure": "AzureBlobComputeLogManager",
        "compose": "LocalComputeLogManager",
    }
    assert config["compute_logs"]["class"] == expected[name]
    assert "sslmode: require" in (home / "dagster.yaml").read_text() or name == "compose"


@pytest.mark.parametrize("name", ["aws", "azure"])
def test_cloud_templates_require_ssl_of_the_instance_database(name, tmp_path, dagster_pg):
    """The URL dagster-postgres builds from the template: psycopg2, sslmode=require (refused by a server
    without TLS: the requirement is real)."""
    import sqlalchemy
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config
    from dagster_postgres.utils import pg_url_from_config

    config, _ = dagster_instance_config(str(_instance_dir(tmp_path, name)))
    resolved = process_config(
        pg_config(), config["storage"]["postgres"]
    )  # {env: ...} -> values, as Dagster does
    assert resolved.success, resolved.errors
    url = pg_url_from_config(resolved.value)
    assert url.startswith("postgresql+psycopg2://") and url.endswith("?sslmode=require")
    engine = sqlalchemy.create_engine(url)
    with pytest.raises(
        sqlalchemy.exc.OperationalError, match="server does not support SSL, but SSL was required"
    ):
        engine.connect()
    engine.dispose()


@dg.op
def say_hello():
    print("hello from a step of fer-platform")


@dg.job
def hello():
    say_hello()


def test_aws_template_runs_with_storage_in_postgres_and_compute_logs_in_s3(
    tmp_path, dagster_pg, moto_s3, monkeypatch
):
    bucket = unique("logs-")
    moto_s3.client().create_bucket(Bucket=bucket)
    for k, v in {
        "DAGSTER_LOGS_BUCKET": bucket,
        "AWS_ENDPOINT_URL_S3": moto_s3.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    with dg.DagsterInstance.from_config(str(_instance_dir(tmp_path, "aws", sslmode="disable"))) as instance:
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        result = hello.execute_in_process(instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success
    with psycopg.connect(dagster_pg) as conn:  # runs and events are in PostgreSQL
        assert conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", (result.run_id,)).fetchone() == (
            1,
        )
        assert (
            conn.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,)).fetchone()[0]
            > 5
        )
    client = moto_s3.client()
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix="dagster/compute-logs/").get("Contents", [])
    ]
    assert keys, "compute logs uploaded"
    logged = b"".join(client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)
    assert b"hello from a step of fer-platform" in logged


def test_azure_and_compose_templates_build_instances_on_postgres(tmp_path, dagster_pg, monkeypatch):
    """Azure's blob compute log manager only speaks https://<account>.blob.core.windows.net: built, not
    used."""
    monkeypatch.setenv("DAGSTER_LOGS_STORAGE_ACCOUNT", "ferlogs")
    monkeypatch.setenv("DAGSTER_LOGS_CONTAINER", "dagster-logs")
    with dg.DagsterInstance.from_config(str(_instance_dir(tmp_path, "azure", sslmode="disable"))) as instance:
        manager = instance.compute_log_manager
        assert type(manager).__name__ == "AzureBlobComputeLogManager"
        assert manager._container_client.url == "https://ferlogs.blob.core.windows.net/dagster-logs"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    home = _instance_dir(tmp_path, "compose")
    text = (home / "dagster.yaml").read_text().replace("/opt/dagster/storage", str(tmp_path / "storage"))
    (home / "dagster.yaml").write_text(text)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert hello.execute_in_process(instance=instance).success
    assert list((tmp_path / "storage" / "compute-logs").rglob("*.out"))


def test_compose_file_hangs_together():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "code", "webserver", "daemon"}
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    build = services["code"]["build"]
    assert (DEPLOY / build["context"]).resolve() == REPO and (REPO / build["dockerfile"]).exists()
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"
        for env_file in service.get("env_file", []):
            assert not env_file.get("required", True) or (DEPLOY / env_file["path"]).exists()
    # the code location's port is where the workspace of the webserver and the daemon looks
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    code_cmd = services["code"]["command"]
    assert workspace["host"] == "code" and str(workspace["port"]) == code_cmd[code_cmd.index("--port") + 1]
    for name in ("webserver", "daemon"):
        assert services[name]["image"] == services["code"]["image"]
        assert any(
            v.endswith(":/opt/fer-platform/deploy/workspace.yaml:ro") for v in services[name]["volumes"]
        )
    # local.env holds only settings FER_ENV=local understands, no password
    lines = (DEPLOY / "local.env").read_text().splitlines()
    local = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert local["FER_ENV"] == "local" and ":" not in local["FER_PG_DSN"].split("@")[0].removeprefix(
        "postgresql://"
    )
    assert "DAGSTER_PG_PASSWORD" in services["code"]["environment"]
    assert (DEPLOY / "postgres-init" / "10-dagster-database.sql").read_text().count(
        "CREATE DATABASE dagster"
    ) == 1


def test_dockerfile_copies_what_exists_and_serves_the_code_location():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), source
    assert f'"{pyproject["tool"]["dagster"]["module_name"]}"' in dockerfile
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M).group(1)
    assert pyproject["project"]["requires-python"] == f">={python}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "node_modules", ".fer"} <= set(ignored)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def test_helm_values_match_the_instance_templates_and_put_the_embedding_steps_on_gpu_nodes():
    """deploy/kubernetes/values.yaml as Dagster's chart reads it: psycopg2, the run queue limits, retries and
    monitoring of deploy/dagster/aws.yaml, dagster-k8s in the image, FER_EXECUTOR=k8s with the GPU settings
    that the embedding and training steps turn into a dagster-k8s/config dagster-k8s itself accepts, and
    every placeholder named in the header."""
    text = (DEPLOY / "kubernetes" / "values.yaml").read_text()
    values = yaml.safe_load(text)
    aws = yaml.safe_load((DEPLOY / "dagster" / "aws.yaml").read_text())
    assert values["postgresql"]["postgresqlScheme"] == aws["storage"]["postgres"]["postgres_db"]["scheme"]
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    config = aws["run_coordinator"]["config"]
    assert queue["maxConcurrentRuns"] == config["max_concurrent_runs"]
    limits = [{_camel(k): v for k, v in limit.items()} for limit in config["tag_concurrency_limits"]]
    for limit in limits:
        if isinstance(limit.get("value"), dict):
            limit["value"] = {_camel(k): v for k, v in limit["value"].items()}
    assert queue["tagConcurrencyLimits"] == limits
    retries = values["dagsterDaemon"]["runRetries"]
    assert retries == {
        "enabled": aws["run_retries"]["enabled"],
        "maxRetries": aws["run_retries"]["max_retries"],
    }
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] == aws["run_monitoring"]["enabled"]

    # dagster-k8s: the run launcher's and executor's library in the image and the pinned dependencies
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert '".[celery,kubernetes]"' in (DEPLOY / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["kubernetes"] == ["dagster-k8s"]
    assert "dagster-k8s==0.29.27" in (REPO / "constraints.txt").read_text().split()

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["FER_EXECUTOR"] == "k8s"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    placeholders = set(re.findall(r"<[^>]+>", body))
    assert placeholders and all(f"#   {p}" in header for p in placeholders), placeholders

    # the GPU settings as the code location reads them at load (a placeholder filled in): the step tags
    settings = {k: v.replace("<gpu-node-label>", "agentpool=gpu") for k, v in env.items()}
    settings["FER_PG_DSN"] = "postgresql://u@127.0.0.1:1/db"  # steps on other pods: a shared server
    out = subprocess.run(
        [sys.executable, "-c", STEP_TAGS], capture_output=True, text=True, env={**os.environ, **settings}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tagged = json.loads(out.stdout.splitlines()[-1])
    for step in ("image_embeddings", "emotion_model"):
        k8s = get_user_defined_k8s_config(tagged[step])
        assert k8s.pod_spec_config["node_selector"] == {"agentpool": "gpu"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            k8s.pod_spec_config["tolerations"]
        )
        assert k8s.container_config == {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
        assert tagged[step]["dagster-celery/queue"] == "gpu"
    assert "dagster-k8s/config" not in tagged["bronze_images"]


STEP_TAGS = """
import json
from fer_platform.definitions import defs
tags = {}
for job in ("ingest_images", "train_emotion_model"):
    for node in defs.resolve_job_def(job).graph.node_defs:
        tags[node.name] = dict(node.tags)
print(json.dumps(tags))
"""
