"""DSNs and connections: one-line errors that name the host and never the password.

A DSN is anything libpq reads (``postgresql://...`` or ``host=... dbname=...``): ``FER_PG_DSN``,
or the embedded server's (``embedded.embedded_start``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fer_platform.core.errors import DatabaseUnavailable, one_line
from fer_platform.core.pg.auth import provided_password

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def describe(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparseable DSN"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def masked(dsn: str) -> str:
    """The DSN with its password replaced by ``***``."""
    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)


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
    registered for the DSN's server and user (``auth.use_password_provider``), asked
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
        password = provided_password(params)
    if password is not None:
        params["password"] = password
    params.setdefault("connect_timeout", "10")
    try:
        return psycopg.connect(make_conninfo(**params), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        secret = params.get("password")
        reason = one_line(exc)
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
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # created meanwhile by another process (two first starts at once)
    return with_database(dsn, dbname)
