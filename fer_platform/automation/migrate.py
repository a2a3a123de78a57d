"""migrate_vectors: copy the vector table from one PostgreSQL to another (logic in core/migrate.py).

The classic step is local -> Azure: run it where the source is reachable, with the
target's DSN in an environment variable. DSNs never travel in run config (which the
UI shows and the run storage keeps): the config names the variables that hold them.
"""

import os
import time

import dagster as dg

from fer_platform.core.errors import DatabaseUnavailable
from fer_platform.core.migrate import RANGE_SIZE, MigrationError, Progress, migrate_vectors
from fer_platform.core.pg.auth import EntraToken, use_password_provider
from fer_platform.core.pg.connect import describe
from fer_platform.core.pg.schema import VECTORS_TABLE
from fer_platform.resources import PostgresResource

THIS_DATABASE = "postgres"


class MigrateVectorsConfig(dg.Config):
    source: str = THIS_DATABASE
    """'postgres': this environment's database (the postgres resource); else the name of an environment
    variable that holds the source DSN."""
    target: str = "FER_MIGRATE_TARGET_DSN"
    """The name of an environment variable that holds the target DSN (or 'postgres')."""
    target_entra_auth: bool = False
    """The target's password is a Microsoft Entra access token (DefaultAzureCredential), fetched at connect
    time."""
    range_size: int = RANGE_SIZE
    """Ids per range: the unit that is compared, copied in one transaction, and kept when a run is
    interrupted."""
    allow_deletes: bool = False
    """Remove target rows the source lacks (else the run stops before changing anything)."""


def _dsn(which: str, setting: str, postgres: PostgresResource) -> str:
    if setting == THIS_DATABASE:
        return postgres.get_dsn()
    value = os.environ.get(setting, "").strip()
    if not value:
        raise dg.Failure(
            description=f"{which}: environment variable {setting} is not set (it must hold a PostgreSQL DSN)"
        )
    return value


@dg.op(
    out=dg.Out(dg.Nothing),
    description="Copy the vector table by binary COPY, range by range, idempotently; verify row counts and a "
    "checksum of ids and vectors before reporting success.",
)
def copy_vector_table(
    context: dg.OpExecutionContext, config: MigrateVectorsConfig, postgres: PostgresResource
):
    source = _dsn("source", config.source, postgres)
    target = _dsn("target", config.target, postgres)
    if config.target_entra_auth:  # every connect of the migration to the target asks for a token
        use_password_provider(target, EntraToken(where=f"PostgreSQL at {describe(target)}"))
    context.log.info(f"migrating {VECTORS_TABLE}: {describe(source)} -> {describe(target)}")
    last_log = [time.monotonic()]

    def progress(p: Progress) -> None:  # every 10 s while streaming, and when the last range is in
        now = time.monotonic()
        if p.ranges_done == p.ranges_todo or now - last_log[0] >= 10:
            last_log[0] = now
            context.log.info(
                f"{p.ranges_done}/{p.ranges_todo} id ranges copied, {p.rows_copied} rows, "
                f"{p.bytes_streamed / 1e6:.1f} MB streamed"
            )

    try:
        report = migrate_vectors(
            source,
            target,
            range_size=config.range_size,
            allow_deletes=config.allow_deletes,
            progress=progress,
        )
    except (MigrationError, DatabaseUnavailable) as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"verified: {report.rows} rows, checksum {report.checksum[:16]}")
    yield dg.Output(
        None,
        metadata={
            "source": report.source,
            "target": report.target,
            "rows": report.rows,
            "rows_copied": report.rows_copied,
            "rows_removed": report.rows_removed,
            "ranges": report.ranges,
            "ranges_copied": report.ranges_copied,
            "checksum_sha256": report.checksum,
            "verified": True,
            "index_built": report.index_built,
            "foreign_rows_left_on_source": report.foreign_rows_left,
            "method": report.method,
            "seconds": report.seconds,
        },
    )


@dg.job(
    name="migrate_vectors",
    description="Copy the vector table (imagenes_fer) from a source PostgreSQL to a target, e.g. local -> "
    "Azure: extension and schema ensured, rows streamed by binary COPY, idempotent and resumable, verified "
    "by row counts and a checksum of ids and vectors.",
    tags={"fer/kind": "migration"},
)
def migrate_vectors_job():
    copy_vector_table()
