"""The local Dagster instance the commands run on: ``<home>/dagster`` (DAGSTER_HOME) with its
``dagster.yaml`` (storage in a ``dagster`` database on the PostgreSQL of the home or of ``FER_PG_DSN``,
the run queue, run monitoring) and the ``workspace.yaml`` that loads the code location.

This is instance configuration, not platform logic: ``demo``, ``dev`` and ``bulk-load`` write it
before they talk to Dagster. Deployments bring their own (``deploy/dagster/*.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict

from fer_platform.core.home import Home
from fer_platform.core.pg.connect import ensure_database, is_local_host
from fer_platform.core.pg.schema import DAGSTER_DATABASE

LOCATION = "fer_platform"  # the code location's name: runs launched from the CLI must name the daemon's
WORKSPACE = f"""load_from:
  - python_module:
      module_name: fer_platform.definitions
      location_name: {LOCATION}
"""


def dagster_yaml(
    storage_url: str | None,
    max_concurrent_runs: int = 2,
    bulk_concurrency: int = 1,
    monitor_seconds: int = 30,
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
    (and is retried), not STARTED for ever.
    """
    url = f'"{storage_url}"' if storage_url else "\n        env: FER_DAGSTER_PG_URL"
    return f"""# Written by fer-platform. Instance storage on PostgreSQL (dagster-postgres).
storage:
  postgres:
    postgres_url: {url}
run_launcher:
  module: fer_platform.automation.runs
  class: MonitoredRunLauncher
run_coordinator:
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
    from fer_platform.resources.environments import resolved_resources  # deferred: loads dagster

    return resolved_resources(keys)


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
    home.create()
    url, secret = sqlalchemy_url(ensure_database(dsn, DAGSTER_DATABASE))
    if secret:
        os.environ["FER_DAGSTER_PG_URL"] = url
    text = dagster_yaml(None if secret else url)
    target = home.dagster / "dagster.yaml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    return home.dagster


def write_workspace(home: Home) -> str:
    """``<home>/dagster/workspace.yaml``: the code location, loaded from this Python environment."""
    path = home.dagster / "workspace.yaml"
    path.write_text(WORKSPACE)
    return str(path)
