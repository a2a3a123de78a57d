"""Resources per environment, chosen once at load time by ``FER_ENV`` (local | azure | aws).

Only resources differ between environments; no asset body branches on them.
Cloud settings are environment variables: their presence and shape are checked
here at load time (a missing one fails with one line naming it), and the
resources receive them as ``dg.EnvVar``, resolved at run time and shown in the
UI by name only. Every variable is listed, per environment, in the README.

The executor of every job (FER_EXECUTOR) and the run launcher the CLI writes (FER_RUN_LAUNCHER) are
settings here too, with the Celery broker and backend by variable name and the GPU steps' tags.
"""

import os
from typing import Optional

import dagster as dg

from fer_platform.core import cloud
from fer_platform.core.errors import ConfigError, FerError
from fer_platform.core.home import Home
from fer_platform.io_managers.parquet import LakeIOManager
from fer_platform.io_managers.pgvector import PgVectorIOManager
from fer_platform.resources.auto_loader import AutoLoaderResource
from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.lake import (
    DEFAULT_MAX_FILE_BYTES,
    AzureBlobStore,
    LakeResource,
    LandingResource,
    ObjectStore,
    S3Store,
)
from fer_platform.resources.postgres import PostgresResource

ENVIRONMENTS = ("local", "azure", "aws")


def environment() -> str:
    env = os.environ.get("FER_ENV", "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"FER_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


def _env_number(name: str, default, minimum, parse, what: str):
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = parse(value.strip())
    except ValueError:
        number = None
    if number is None or not minimum <= number < float("inf"):
        raise ConfigError(f"{name}={value!r} is not {what} >= {minimum:g} (default {default:g})")
    return number


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """An integer setting; a wrong value fails with one line naming the variable and what it accepts."""
    return _env_number(name, default, minimum, int, "a whole number")


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """A number setting (seconds, ...); a wrong value fails with one line naming the variable."""
    return _env_number(name, default, minimum, float, "a number")


def sensor_interval() -> int:
    """Seconds between landing sensor ticks (FER_SENSOR_INTERVAL)."""
    return env_int("FER_SENSOR_INTERVAL", 30, minimum=1)


def automation_interval() -> int:
    """Seconds between evaluations of the declarative automation (FER_AUTOMATION_INTERVAL)."""
    return env_int("FER_AUTOMATION_INTERVAL", 30, minimum=1)


def max_file_bytes() -> int:
    """Landing files larger than this are quarantined by their size, unread (FER_MAX_FILE_BYTES)."""
    return env_int("FER_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, minimum=1)


def embedder_from_env(lake: LakeResource | None = None) -> EmbedderResource:
    """The embedding model's settings (the same in every environment); ``lake`` holds the emotion
    models that ``FER_EMBED_WEIGHTS=tuned`` serves."""
    return EmbedderResource(
        weights=os.environ.get("FER_EMBED_WEIGHTS", "auto"),
        profile=os.environ.get("FER_EMBED_PROFILE", "fidelity"),
        device=os.environ.get("FER_EMBED_DEVICE", "auto"),
        batch_size=env_int("FER_EMBED_BATCH_SIZE", 64, minimum=1),
        num_threads=env_int("FER_EMBED_THREADS", 0),
        lake=lake,
        model_cache=os.environ.get("FER_MODEL_CACHE", ""),
    )


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (true/false)")


def auto_loader_from_env() -> AutoLoaderResource:
    """The landing sensor's settings (the same in every environment)."""
    return AutoLoaderResource(
        max_files_per_tick=env_int("FER_MAX_FILES_PER_TICK", 1000, minimum=1),
        include_existing_files=_flag("FER_INCLUDE_EXISTING_FILES", True),
        settle_seconds=env_float("FER_SETTLE_SECONDS", 5.0),
        on_success=os.environ.get("FER_ON_SUCCESS", "keep"),
        retry_after_seconds=env_float("FER_RETRY_AFTER_SECONDS", 300.0),
        max_attempts=env_int("FER_MAX_ATTEMPTS", 3, minimum=1),
    )


def automation_on_by_default() -> bool:
    """Sensors and schedules start RUNNING locally, STOPPED in the cloud (FER_AUTOMATION=on|off overrides)."""
    return _flag("FER_AUTOMATION", environment() == "local")


def vector_resources(
    postgres: PostgresResource, embedder: EmbedderResource | None = None, lake: LakeResource | None = None
) -> dict:
    """The embedder (from the environment unless given; its emotion models in ``lake``) and the pgvector
    IO manager on ``postgres``."""
    embedder = embedder or embedder_from_env(lake)
    return {
        "embedder": embedder,
        "pgvector_io_manager": PgVectorIOManager(postgres=postgres, embedder=embedder),
    }


def environment_resources(
    lake_url: str, landing_url: str, postgres: PostgresResource, store: Optional[ObjectStore] = None
) -> dict:
    """What every environment provides, by the same keys: the lake, the landing zone and the lake IO
    manager (on ``store`` when they are in an object store), PostgreSQL, the embedder and the pgvector
    IO manager. Only the values differ between environments."""
    lake = LakeResource(url=lake_url, store=store)
    resources = {
        "lake": lake,
        "landing": LandingResource(url=landing_url, store=store, max_file_bytes=max_file_bytes()),
        "lake_io_manager": LakeIOManager(base_url=lake_url, store=store),
        "postgres": postgres,
        "auto_loader": auto_loader_from_env(),
        **vector_resources(postgres, lake=lake),
    }
    if store is not None:
        resources["object_store"] = store
    return resources


def _env(name: str) -> Optional[dg.EnvVar]:
    """``dg.EnvVar(name)`` if the variable is set now (an optional setting), else None."""
    return dg.EnvVar(name) if cloud.is_set(name) else None


def local_resources(home: Home | None = None) -> dict:
    """A folder lake and landing zone under the home, the embedded PostgreSQL (or FER_PG_DSN)."""
    home = home or Home.resolve()
    lake_url = os.environ.get("FER_LAKE_URL") or str(home.lake)
    landing_url = os.environ.get("FER_LANDING") or str(home.landing)
    # By EnvVar, not by value: a DSN may hold a password, and resource config shows in the UI.
    external = bool(os.environ.get("FER_PG_DSN"))
    postgres = PostgresResource(
        dsn=dg.EnvVar("FER_PG_DSN") if external else None,
        embedded_dir=None if external else str(home.postgres),
    )
    return environment_resources(lake_url, landing_url, postgres)


def cloud_postgres(env: str, entra_auth: bool = False) -> PostgresResource:
    """A PostgreSQL server by DSN (Azure Flexible Server, RDS/Aurora); optionally an Entra token as
    password."""
    cloud.require(env, "FER_PG_DSN", "the PostgreSQL + pgvector server, postgresql://user@host:5432/db")
    return PostgresResource(dsn=dg.EnvVar("FER_PG_DSN"), entra_auth=entra_auth)


def azure_resources() -> dict:
    """Lake and landing zone on ADLS Gen2 / Blob Storage (adlfs), Azure Database for PostgreSQL."""
    env, example = "azure", "abfs://<container>@<account>.dfs.core.windows.net/<prefix>"
    for name, meaning in (("FER_LAKE_URL", "the lake root"), ("FER_LANDING", "the landing zone")):
        value = cloud.require(env, name, f"{meaning}, {example}")
        url = cloud.check_url(env, name, value, cloud.AZURE_SCHEMES, example)
        if not cloud.azure_account(url) and not cloud.is_set("AZURE_STORAGE_ACCOUNT_NAME"):
            raise ConfigError(
                f"FER_ENV=azure: {name} names no storage account ({example}); "
                "name it there or set AZURE_STORAGE_ACCOUNT_NAME"
            )
    credential = cloud.azure_credential_var(env)
    store = AzureBlobStore(
        account_name=_env("AZURE_STORAGE_ACCOUNT_NAME"),
        connection_string=dg.EnvVar(credential) if credential == "AZURE_STORAGE_CONNECTION_STRING" else None,
        account_key=dg.EnvVar(credential) if credential == "AZURE_STORAGE_ACCOUNT_KEY" else None,
        sas_token=dg.EnvVar(credential) if credential == "AZURE_STORAGE_SAS_TOKEN" else None,
    )
    postgres = cloud_postgres(env, entra_auth=cloud.flag("FER_PG_ENTRA_AUTH"))
    return environment_resources(dg.EnvVar("FER_LAKE_URL"), dg.EnvVar("FER_LANDING"), postgres, store)


def aws_resources() -> dict:
    """Lake and landing zone on S3 (s3fs, the standard AWS credential chain), RDS/Aurora PostgreSQL."""
    env, example = "aws", "s3://<bucket>/<prefix>"
    for name, meaning in (("FER_LAKE_URL", "the lake root"), ("FER_LANDING", "the landing zone")):
        cloud.check_url(
            env, name, cloud.require(env, name, f"{meaning}, {example}"), cloud.S3_SCHEMES, example
        )
    store = S3Store(endpoint_url=_env("FER_S3_ENDPOINT_URL"), region_name=_env("AWS_REGION"))
    return environment_resources(
        dg.EnvVar("FER_LAKE_URL"), dg.EnvVar("FER_LANDING"), cloud_postgres(env), store
    )


RESOURCES_BY_ENV = {"local": local_resources, "azure": azure_resources, "aws": aws_resources}


def resources_for(env: str | None = None) -> dict:
    return RESOURCES_BY_ENV[env or environment()]()


# ------------------------------------------------------------------ execution: where a run's steps run
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")
# Steps on other machines: each must reach the same PostgreSQL, never a private embedded one.
DISTRIBUTED = ("celery", "k8s")
RUN_LAUNCHERS = ("local", "celery")
CELERY_QUEUE_TAG = "dagster-celery/queue"  # dagster-celery's step (and run) queue tag
K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster-k8s's per-step pod settings
# The Celery settings, read from the environment where a run executes (never written into run config).
CELERY_BROKER, CELERY_BACKEND = "FER_CELERY_BROKER", "FER_CELERY_BACKEND"


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower().replace("-", "_") or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)} (default {default})")
    return value


def executor_name() -> str:
    """Where a run's steps execute (FER_EXECUTOR): in the run's process (default), one process per step,
    on Celery workers (dagster-celery) or one Kubernetes job per step (dagster-k8s)."""
    return _choice("FER_EXECUTOR", "in_process", EXECUTORS)


def run_launcher_name() -> str:
    """Where the instance the CLI writes launches runs (FER_RUN_LAUNCHER): a local process (default) or a
    Celery task on a worker (dagster-celery's CeleryRunLauncher)."""
    return _choice("FER_RUN_LAUNCHER", "local", RUN_LAUNCHERS)


def gpu_queue() -> str:
    """The Celery queue of the embedding and training steps (FER_GPU_QUEUE): the GPU workers' queue."""
    return os.environ.get("FER_GPU_QUEUE", "").strip() or "gpu"


def _node_selector(value: str) -> dict:
    pairs = [p.strip() for p in value.split(",") if p.strip()]
    if not pairs or not all("=" in p and p.split("=", 1)[0].strip() for p in pairs):
        raise ConfigError(f"FER_GPU_NODE_SELECTOR={value!r} is not label=value[,label=value]")
    return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}


def gpu_step_tags() -> dict:
    """The tags of the steps that want a GPU (embedding, training): the Celery queue of the GPU workers,
    and, when FER_GPU_NODE_SELECTOR is set (Kubernetes), a pod on a GPU node with FER_GPU_LIMIT GPUs."""
    tags: dict = {CELERY_QUEUE_TAG: gpu_queue()}
    selector = os.environ.get("FER_GPU_NODE_SELECTOR", "").strip()
    if selector:
        limit = env_int("FER_GPU_LIMIT", 1, minimum=1)
        tags[K8S_CONFIG_TAG] = {
            "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(limit)}}},
            "pod_spec_config": {
                "node_selector": _node_selector(selector),
                # GPU pools are usually tainted so that only GPU pods land there
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        }
    return tags


def require_shared_postgres(what: str) -> None:
    """A run whose steps (or runs) execute on other machines needs a PostgreSQL they all reach: locally
    that is FER_PG_DSN; the embedded server would give each worker a private database nobody reads."""
    if environment() == "local" and not cloud.is_set("FER_PG_DSN"):
        raise ConfigError(
            f"{what}: steps run on other machines, which cannot reach this machine's embedded PostgreSQL; "
            "set FER_PG_DSN to a PostgreSQL + pgvector server every worker reaches"
        )


def celery_settings(what: str) -> dict:
    """The Celery executor's (and run launcher's, and workers') config: broker and backend by environment
    variable, resolved where the run executes, so a URL with a password never lands in run config or the
    UI. The backend defaults to the broker (Redis holds both)."""
    cloud.require(environment(), CELERY_BROKER, f"{what}: the Celery broker, redis://host:6379/0")
    require_shared_postgres(what)
    backend = CELERY_BACKEND if cloud.is_set(CELERY_BACKEND) else CELERY_BROKER
    return {"broker": {"env": CELERY_BROKER}, "backend": {"env": backend}}


def check_execution() -> None:
    """The executor and run launcher settings checked at start (the CLI, a worker), one line on the first
    wrong one: a distributed one needs its broker and a PostgreSQL every worker reaches."""
    executor = executor_name()
    if executor == "celery":
        celery_settings("FER_EXECUTOR=celery")
    elif executor in DISTRIBUTED:
        require_shared_postgres(f"FER_EXECUTOR={executor}")
    if run_launcher_name() == "celery":
        celery_settings("FER_RUN_LAUNCHER=celery")


def executor_for(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor of every job (FER_EXECUTOR), configured from the environment: runs started by sensors,
    schedules, backfills and the UI need no run config. From the settings, the run launcher's are checked
    too: the code location does not load (one line) where a run could not execute."""
    if name is None:
        check_execution()
    name = name or executor_name()
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor  # deferred: the optional celery extra

        return celery_executor.configured(celery_settings("FER_EXECUTOR=celery"), name="celery")
    require_shared_postgres("FER_EXECUTOR=k8s")
    from dagster_k8s import k8s_job_executor  # deferred: the optional kubernetes extra

    return k8s_job_executor


def resolved_resources(keys: tuple[str, ...], env: str | None = None) -> dict:
    """Some of the environment's resources with their ``dg.EnvVar`` settings resolved, for code that
    runs outside a Dagster run (the CLI). These resources hold no open handles to tear down."""
    resources = resources_for(env)
    try:
        with dg.build_resources({k: resources[k] for k in keys}) as built:
            return {k: getattr(built, k) for k in keys}
    except dg.DagsterUserCodeExecutionError as exc:
        # a store that cannot be reached (checked at setup) is its own one line, as in a run, not Dagster's
        # wrapping of it (once per nesting: the embedder holds the lake)
        error: BaseException = exc
        while isinstance(error, dg.DagsterUserCodeExecutionError):
            error = error.user_exception
        if isinstance(error, FerError):
            raise error from None
        raise
