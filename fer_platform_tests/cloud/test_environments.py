"""FER_ENV=azure and aws: the Definitions load in a fresh process with only environment variables
(pointed at the local servers) and run a job against them without a secret reaching Dagster's event
log; a missing or malformed variable fails at load with one line that names it."""

import json
import os
import subprocess
import sys

import pytest

from fer_platform.core.errors import ConfigError
from fer_platform.partitions import utc_today
from fer_platform.resources.environments import resources_for
from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.helpers import face

RUN_TRIAGE = """
import json, sys
import dagster as dg
from dagster._serdes import serialize_value
from fer_platform.definitions import defs

dg.Definitions.validate_loadable(defs)
with dg.DagsterInstance.ephemeral() as instance:
    result = defs.resolve_job_def("landing_triage").execute_in_process(
        run_config={"ops": {"quarantine_unroutable": {"config": {"files": ["train/unknown/x.png"]}}}},
        instance=instance,
    )
    records = instance.all_logs(result.run_id)
    run = instance.get_run_by_id(result.run_id)
with open(sys.argv[1], "w") as out:
    out.write(serialize_value(run))
    for record in records:
        out.write(serialize_value(record) + "\\n")
print(json.dumps({"success": result.success, "events": len(records), "resources": sorted(defs.resources),
                  "torch": "torch" in sys.modules}))
"""


def _python(code, env, *args):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FER_", "AZURE_", "AWS_", "DAGSTER_"))}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=240, env={**clean, **env}
    )


@pytest.mark.slow
@pytest.mark.parametrize("env", ["azure", "aws"])
def test_definitions_load_and_run_from_environment_variables_only(env, request, pg_cloud, tmp_path):
    store = request.getfixturevalue(f"{env}_store")
    dsn = pg_cloud.new_database(unique("app"))  # a password in the DSN, as in the cloud
    variables = {**store.variables, "FER_ENV": env, "FER_PG_DSN": dsn}
    secrets_ = [dsn.split(":")[2].split("@")[0]]
    if env == "azure":
        secrets_.append(
            store.variables["AZURE_STORAGE_CONNECTION_STRING"].split("AccountKey=")[1].split(";")[0]
        )
    else:
        variables["AWS_SECRET_ACCESS_KEY"] = secret = "s3cret-" + unique("k")  # moto takes any key
        secrets_.append(secret)
    store.put(store.landing_url.split("/", 3)[3] + "/train/unknown/x.png", face("happy", 3))

    events = tmp_path / "events.jsonl"
    out = _python(RUN_TRIAGE, variables, str(events))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["success"] and summary["events"] > 10 and not summary["torch"]
    assert {"lake", "landing", "lake_io_manager", "postgres", "object_store", "pgvector_io_manager"} <= set(
        summary["resources"]
    )
    # the job quarantined the file into the cloud lake and logged it in the cloud-like PostgreSQL
    lake_prefix = store.lake_url.split("/", 3)[3]
    assert f"{lake_prefix}/quarantine/{utc_today()}/train/unknown/x.png" in store.list_keys(lake_prefix + "/")
    import psycopg

    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT status, reason FROM load_log").fetchall() == [
            (
                "quarantined",
                "unknown emotion folder 'unknown' (expected one of angry, disgust, fear, happy, "
                "neutral, sad, surprise)",
            )
        ]
    # the run, its config and every event Dagster stored: no secret, only variable names
    logged = events.read_text()
    assert "quarantine_unroutable" in logged
    assert all(s not in logged for s in secrets_)


@pytest.mark.parametrize("env", ["azure", "aws"])
def test_a_missing_variable_fails_the_load_with_one_line_naming_it(env):
    out = _python("import fer_platform.definitions", {"FER_ENV": env})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    url = (
        "abfs://<container>@<account>.dfs.core.windows.net/<prefix>"
        if env == "azure"
        else "s3://<bucket>/<prefix>"
    )
    assert last == (
        f"fer_platform.core.errors.ConfigError: FER_ENV={env} needs FER_LAKE_URL "
        f"(the lake root, {url}); it is not set"
    )


AZURE = {
    "FER_LAKE_URL": "abfs://lake@acct.dfs.core.windows.net/fer",
    "FER_LANDING": "abfs://landing@acct.dfs.core.windows.net/in",
    "FER_PG_DSN": "postgresql://fer@srv.postgres.database.azure.com/fer",
}
AWS = {
    "FER_LAKE_URL": "s3://b/lake",
    "FER_LANDING": "s3://b/landing",
    "FER_PG_DSN": "postgresql://fer@db.eu-west-1.rds.amazonaws.com/fer",
}


@pytest.mark.parametrize(
    "env, base, change, message",
    [
        ("azure", AZURE, {"FER_LANDING": None}, "FER_ENV=azure needs FER_LANDING (the landing zone, abfs://"),
        (
            "azure",
            AZURE,
            {"FER_PG_DSN": None},
            "FER_ENV=azure needs FER_PG_DSN (the PostgreSQL + pgvector server",
        ),
        (
            "azure",
            AZURE,
            {"FER_LAKE_URL": "s3://b/lake"},
            "FER_ENV=azure: FER_LAKE_URL must look like abfs://",
        ),
        ("azure", AZURE, {"FER_LAKE_URL": "abfs://lake/fer"}, "FER_LAKE_URL names no storage account"),
        (
            "azure",
            AZURE,
            {"AZURE_STORAGE_ACCOUNT_KEY": "k", "AZURE_STORAGE_SAS_TOKEN": "s"},
            "set only one of AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN",
        ),
        (
            "azure",
            AZURE,
            {"FER_PG_ENTRA_AUTH": "maybe"},
            "FER_PG_ENTRA_AUTH must be true or false, not 'maybe'",
        ),
        ("aws", AWS, {"FER_LAKE_URL": None}, "FER_ENV=aws needs FER_LAKE_URL (the lake root, s3://"),
        (
            "aws",
            AWS,
            {"FER_LANDING": "/data/landing"},
            "FER_ENV=aws: FER_LANDING must look like s3://<bucket>/<prefix>",
        ),
        ("aws", AWS, {"FER_PG_DSN": ""}, "FER_ENV=aws needs FER_PG_DSN"),
    ],
)
def test_bad_settings_are_one_line(env, base, change, message, monkeypatch):
    for name, value in {**base, **change}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        resources_for(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_azure_authentication_choices(monkeypatch):
    """Which adlfs options each documented way of authenticating gives (values resolved by Dagster)."""
    import dagster as dg

    for name, value in AZURE.items():
        monkeypatch.setenv(name, value)

    def options():
        with dg.build_resources({"store": resources_for("azure")["object_store"]}) as built:
            return built.store.storage_options()

    assert options() == {"anon": False}  # DefaultAzureCredential: managed identity, workload identity, CLI
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=2024&sig=abc")
    assert options() == {"sas_token": "sv=2024&sig=abc"}
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    assert options() == {"account_name": "acct", "account_key": "a2V5"}


@pytest.mark.parametrize("env, base", [("azure", AZURE), ("aws", AWS)])
def test_cloud_environments_provide_every_local_resource(env, base, monkeypatch, tmp_path):
    """Same keys everywhere (only values differ): an asset, check, sensor or job that loads locally loads
    in the cloud. The cloud adds only the object store."""
    monkeypatch.setenv("FER_HOME", str(tmp_path))
    local = set(resources_for("local"))
    for name, value in base.items():
        monkeypatch.setenv(name, value)
    assert set(resources_for(env)) == local | {"object_store"}


@pytest.mark.parametrize(
    "var, value, accepts",
    [
        ("FER_SENSOR_INTERVAL", "abc", "is not a whole number >= 1 (default 30)"),
        ("FER_AUTOMATION_INTERVAL", "0", "is not a whole number >= 1 (default 30)"),
        ("FER_MAX_FILE_BYTES", "1e9", "is not a whole number >= 1 (default 65536)"),
        ("FER_SETTLE_SECONDS", "soon", "is not a number >= 0 (default 5)"),
        ("FER_EMBED_BATCH_SIZE", "-1", "is not a whole number >= 1 (default 64)"),
    ],
)
def test_every_setting_is_parsed_in_one_place_with_one_line_naming_it(var, value, accepts):
    out = _python("import fer_platform.definitions", {var: value})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"fer_platform.core.errors.ConfigError: {var}={value!r} {accepts}", last


@pytest.mark.parametrize(
    "var, value, accepts",
    [
        ("FER_EXECUTOR", "dask", "is not one of in_process, multiprocess, celery, k8s (default in_process)"),
        ("FER_RUN_LAUNCHER", "k8s", "is not one of local, celery (default local)"),
        ("FER_GPU_NODE_SELECTOR", "gpu", "is not label=value[,label=value]"),
    ],
)
def test_execution_settings_are_one_line_naming_them(var, value, accepts):
    out = _python("import fer_platform.definitions", {var: value})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"fer_platform.core.errors.ConfigError: {var}={value!r} {accepts}", last


SECRET = "s3cr3t-broker-password"
CELERY_JOB = f"""
from dagster._serdes import serialize_value
from fer_platform.definitions import defs
job = defs.resolve_job_def("ingest_images")
print(job.executor_def.name, {SECRET!r} in serialize_value(job.get_job_snapshot()))
"""


def test_the_celery_executor_is_a_setting_without_secrets_and_refuses_a_private_database():
    """FER_EXECUTOR=celery: every job's executor with the broker and backend by variable name (not in the
    job's snapshot, which the UI shows); locally without FER_PG_DSN, or without a broker, the code location,
    the worker and the commands stop at start with one line."""
    broker = {"FER_CELERY_BROKER": f"redis://:{SECRET}@127.0.0.1:1/0", "FER_EXECUTOR": "celery"}
    shared = {**broker, "FER_PG_DSN": "postgresql://u@127.0.0.1:1/db"}
    out = _python(CELERY_JOB, shared)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["celery", "False"]

    private = "set FER_PG_DSN to a PostgreSQL + pgvector server every worker reaches"
    out = _python("import fer_platform.definitions", broker)
    assert out.returncode != 0 and private in out.stderr.strip().splitlines()[-1]
    out = _python("import fer_platform.definitions", {"FER_EXECUTOR": "celery", "FER_PG_DSN": "x"})
    assert "FER_ENV=local needs FER_CELERY_BROKER" in out.stderr.strip().splitlines()[-1]
    cli = "import sys; from fer_platform.cli import main; sys.exit(main(sys.argv[1:]))"
    for env, args in (
        ({"FER_CELERY_BROKER": broker["FER_CELERY_BROKER"]}, ["worker"]),
        ({**broker, "FER_RUN_LAUNCHER": "celery", "FER_EXECUTOR": "in_process"}, ["bulk-load"]),
        (broker, ["dev"]),
    ):
        out = _python(cli, {**env, "FER_HOME": "/nonexistent/fer-home"}, *args)
        assert out.returncode == 2, out.stderr[-2000:]
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("error: ") and private in line and SECRET not in line, line
