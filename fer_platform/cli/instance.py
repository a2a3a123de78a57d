"""The local Dagster instance the commands run on: ``<home>/dagster`` (DAGSTER_HOME) with its
``dagster.yaml`` (storage in a ``dagster`` database on the PostgreSQL of the home or of ``FER_PG_DSN``,
the run queue, run monitoring) and the ``workspace.yaml`` that loads the code location.

This is instance configuration, not platform logic: ``demo``, ``dev`` and ``bulk-load`` write it
before they talk to Dagster. Deployments bring their own (``deploy/dagster/*.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import yaml
from psycopg.conninfo import conninfo_to_dict

from fer_platform.core.errors import FerError
from fer_platform.core.home import Home
from fer_platform.core.pg.connect import ensure_database, is_local_host
from fer_platform.core.pg.schema import DAGSTER_DATABASE

LOCATION = "fer_platform"  # the code location's name: runs launched from the CLI must name the daemon's
WORKSPACE = f"""load_from:
  - python_module:
      module_name: fer_platform.definitions
      location_name: {LOCATION}
"""


LOCAL_LAUNCHER = """run_launcher:
  module: fer_platform.automation.runs
  class: MonitoredRunLauncher
"""
CELERY_RUN_QUEUE = "dagster"  # dagster-celery's default queue: the workers started without -q take it
# The user's own instance settings, merged over what the CLI writes (the CLI never writes this file).
USER_YAML = "dagster.local.yaml"


def _env_ref(name: str) -> str:
    return f"\n      env: {name}"


def celery_launcher(broker_var: str, backend_var: str) -> str:
    """dagster-celery's CeleryRunLauncher: each run a Celery task on a worker of the default queue; broker
    and backend read from the environment where the launcher runs (never written here)."""
    return f"""run_launcher:
  module: dagster_celery.launcher
  class: CeleryRunLauncher
  config:
    default_queue: {CELERY_RUN_QUEUE}
    broker:{_env_ref(broker_var)}
    backend:{_env_ref(backend_var)}
"""


def compute_logs_yaml(url: str | None, endpoint_var: str | None = None) -> str:
    """Step stdout/stderr in S3 (FER_COMPUTE_LOGS=s3://bucket/prefix, dagster-aws's S3ComputeLogManager)
    so that logs of steps run on other machines show in the UI; empty (Dagster's local files) without it."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("s3", "s3a") or not parts.netloc:
        raise FerError(f"FER_COMPUTE_LOGS={url!r} is not s3://bucket/prefix")
    endpoint = f"\n    endpoint_url:{_env_ref(endpoint_var)}" if endpoint_var else ""
    return f"""compute_logs:
  module: dagster_aws.s3.compute_log_manager
  class: S3ComputeLogManager
  config:
    bucket: "{parts.netloc}"
    prefix: "{parts.path.strip("/") or "dagster"}"{endpoint}
    upload_interval: 5
"""


# the top-level keys of dagster.yaml that the CLI writes (``dagster_yaml``), some only under a setting
CLI_KEYS = frozenset(
    {
        "storage",
        "run_launcher",
        "compute_logs",
        "run_coordinator",
        "run_retries",
        "run_monitoring",
        "telemetry",
        "nux",
    }
)


def dagster_yaml(
    storage_url: str | None,
    max_concurrent_runs: int = 2,
    bulk_concurrency: int = 1,
    monitor_seconds: int = 30,
    launcher: str = LOCAL_LAUNCHER,
    compute_logs: str = "",
) -> str:
    """dagster.yaml for the local instance: storage on PostgreSQL through dagster-postgres.

    ``storage_url`` is written in only when it carries no password (the
    embedded server over its socket); otherwise the file reads it from
    ``FER_DAGSTER_PG_URL`` at start. The run queue runs at most ``max_concurrent_runs`` runs
    at once (on 2 cores, more only contend for them), and at most ``bulk_concurrency`` of a bulk
    load's runs, so the sensor's small runs still get through, and one run per partition at a
    time (two would race on its bronze and silver files); a failed run is retried once (loads
    are idempotent: the load log decides). Run monitoring asks fer-platform's launcher, every
    ``monitor_seconds``, whether each run's worker process is still alive: a killed run ends as failed
    (and is retried), not STARTED for ever. ``launcher``: the run_launcher block (fer-platform's local
    one, or ``celery_launcher``); ``compute_logs``: a compute_logs block (``compute_logs_yaml``) or none.
    """
    url = f'"{storage_url}"' if storage_url else "\n        env: FER_DAGSTER_PG_URL"
    return f"""# Written by fer-platform. Instance storage on PostgreSQL (dagster-postgres).
storage:
  postgres:
    postgres_url: {url}
{launcher}{compute_logs}run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_concurrent_runs}
    tag_concurrency_limits:
      - key: fer/bulk
        limit: {bulk_concurrency}
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_retries:
  enabled: true
  max_retries: 1
run_monitoring:
  enabled: true
  poll_interval_seconds: {monitor_seconds}
telemetry:
  enabled: false
nux:
  enabled: false
"""


def current_resources(home: Home, keys: tuple[str, ...]) -> dict:
    """The resources ``keys`` (lake, landing, postgres, embedder, ...) of the current environment (FER_ENV,
    its lake and landing on the home's folders locally), resolved as a run resolves them: the store's
    settings (endpoint, credentials) and every ``dg.EnvVar`` applied, the stores checked (one line if one
    cannot be reached). The one way every command reaches the data of its environment outside a run."""
    os.environ["FER_HOME"] = str(home.root)  # the local environment's folders, here and in child processes
    from fer_platform.resources import environments  # deferred: loads dagster

    environments.check_execution()  # before any server starts: a distributed setup without its settings
    return environments.resolved_resources(keys)


def current_dsn(home: Home) -> str:
    """The current environment's PostgreSQL (FER_PG_DSN, else the embedded server under the home, started
    if needed), as its runs reach it (an Entra token as password with FER_PG_ENTRA_AUTH), with the
    fer-platform schema."""
    return current_resources(home, ("postgres",))["postgres"].get_dsn()


def sqlalchemy_url(dsn: str) -> tuple[str, bool]:
    """A dagster-postgres URL (psycopg2 driver) for a libpq DSN; and whether it holds a password."""
    p = conninfo_to_dict(dsn)
    user = quote(p.get("user") or "postgres", safe="")
    password = p.get("password")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = p.get("host") or ""
    query = {k: p[k] for k in ("sslmode",) if p.get(k)}
    if not is_local_host(dsn):
        query.setdefault("sslmode", "require")  # as the application's own connections (core.pg.connect)
    if host.startswith("/"):
        query["host"] = host
        netloc = f"{auth}@"
    else:
        netloc = f"{auth}@{host or 'localhost'}" + (f":{p['port']}" if p.get("port") else "")
    url = f"postgresql+psycopg2://{netloc}/{p.get('dbname') or 'postgres'}"
    return (url + ("?" + urlencode(query) if query else "")), bool(password)


def prepare_dagster_home(home: Home, dsn: str) -> Path:
    """Point DAGSTER_HOME at ``<home>/dagster`` with its storage in a ``dagster`` database on ``dsn``.

    A URL with a password never lands in the file: it goes to FER_DAGSTER_PG_URL in this
    process's environment (inherited by the processes it starts).
    """
    from fer_platform.resources import environments as envs  # deferred: loads dagster

    envs.check_execution()  # a distributed executor or launcher without its settings: one line, now
    home.create()
    url, secret = sqlalchemy_url(ensure_database(dsn, DAGSTER_DATABASE))
    if secret:
        os.environ["FER_DAGSTER_PG_URL"] = url
    launcher = LOCAL_LAUNCHER
    if envs.run_launcher_name() == "celery":
        celery = envs.celery_settings("FER_RUN_LAUNCHER=celery")
        launcher = celery_launcher(celery["broker"]["env"], celery["backend"]["env"])
    endpoint = "FER_S3_ENDPOINT_URL" if os.environ.get("FER_S3_ENDPOINT_URL") else None
    text = dagster_yaml(
        None if secret else url,
        launcher=launcher,
        compute_logs=compute_logs_yaml(os.environ.get("FER_COMPUTE_LOGS", "").strip(), endpoint),
    )
    target = home.dagster / "dagster.yaml"
    text = merged_instance_yaml(text, target, home.dagster / USER_YAML)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    return home.dagster


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FerError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FerError(f"{path} is not a mapping of dagster.yaml settings")
    return data


def merged_instance_yaml(text: str, current: Path, user: Path) -> str:
    """The dagster.yaml to write: the CLI's ``text`` owns only the top-level keys it writes; any other key
    already in ``current`` (added by hand) is kept, and every key of ``user`` (dagster.local.yaml, the
    user's own file) is laid over both. Unchanged when there is nothing to add."""
    ours = yaml.safe_load(text)
    # a key the CLI owns but did not write this time (compute_logs once FER_COMPUTE_LOGS is unset) goes
    kept = {k: v for k, v in _read_yaml(current).items() if k not in ours and k not in CLI_KEYS}
    extra = {**kept, **_read_yaml(user)}
    if not extra:
        return text
    note = f"# Written by fer-platform, with the user's keys (kept from this file and from {USER_YAML}).\n"
    return note + yaml.safe_dump({**ours, **extra}, sort_keys=False)


def write_workspace(home: Home) -> str:
    """``<home>/dagster/workspace.yaml``: the code location, loaded from this Python environment."""
    path = home.dagster / "workspace.yaml"
    path.write_text(WORKSPACE)
    return str(path)
