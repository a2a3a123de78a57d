"""What lives in PostgreSQL: the vectors table, the load log, their indexes, the pgvector extension.

Created idempotently by ``ensure_schema`` at the first use of a server (the ``postgres`` resource,
``fer-platform db start``, a migration's target); later calls only read the catalog.
"""

from __future__ import annotations

import psycopg

from fer_platform.core.errors import DatabaseUnavailable
from fer_platform.core.pg.connect import connect, describe

EMBEDDING_DIM = 512
VECTORS_TABLE = "imagenes_fer"
# Who wrote a row of the vectors table (column ``written_by``): the platform writes PLATFORM_WRITER; any other
# client (the seed loader's classic three-column INSERT) gets the column default, EXTERNAL_WRITER, unless it
# names itself. The platform reads, counts, changes and deletes only its own rows (PLATFORM_ROWS).
PLATFORM_WRITER = "fer-platform"
EXTERNAL_WRITER = "external"
PLATFORM_ROWS = f"written_by = '{PLATFORM_WRITER}'"
LOAD_LOG_TABLE = "load_log"
DAGSTER_DATABASE = "dagster"  # the Dagster instance's storage: a database of its own on the same server
_SCHEMA_LOCK = 7_210_001  # pg_advisory_xact_lock key while creating the schema

SCHEMA = [
    f"""
    CREATE TABLE IF NOT EXISTS {VECTORS_TABLE} (
        id          bigserial PRIMARY KEY,
        filepath    text NOT NULL,
        emotion     text NOT NULL,
        vector      vector({EMBEDDING_DIM}) NOT NULL,
        image_id    text,
        split       text,
        load_date   date NOT NULL DEFAULT current_date,
        model       text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        written_by  text NOT NULL DEFAULT '{EXTERNAL_WRITER}',
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
        status       text NOT NULL CONSTRAINT load_log_status_check
                     CHECK (status IN ('loaded', 'duplicate', 'conflict', 'quarantined')),
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
# ---- issue 14, duplicates: the load log's ``conflict`` status (a content filed under two emotions) ----
# A load log created before it allowed only loaded/duplicate/quarantined: its CHECK is replaced, once
# (``schema_present`` looks for the new definition, so a current database runs nothing). Every copy of a
# content is looked up by sha256 at each batch (not only the loaded one): an index of its own.
STATUS_CHECK = "load_log_status_check"
SHA256_INDEX = f"{LOAD_LOG_TABLE}_sha256"
STATUS_CHECK_MIGRATION = [
    f"ALTER TABLE {LOAD_LOG_TABLE} DROP CONSTRAINT IF EXISTS {STATUS_CHECK}",
    f"""ALTER TABLE {LOAD_LOG_TABLE} ADD CONSTRAINT {STATUS_CHECK}
        CHECK (status IN ('loaded', 'duplicate', 'conflict', 'quarantined'))""",
    f"CREATE INDEX IF NOT EXISTS {SHA256_INDEX} ON {LOAD_LOG_TABLE} (sha256)",
]
_STATUS_CHECK_PRESENT = f"""SELECT count(*) FROM pg_constraint
    WHERE conrelid = to_regclass('{LOAD_LOG_TABLE}') AND conname = '{STATUS_CHECK}'
      AND pg_get_constraintdef(oid) LIKE '%conflict%' AND to_regclass('{SHA256_INDEX}') IS NOT NULL"""
# ---- end of issue 14, duplicates ----
# ---- the challenge CSV's checkpoint (core/challenge.py): per CSV source, what its expansion consumed
CSV_CHECKPOINT_TABLE = "csv_checkpoint"
SCHEMA.append(
    f"""
    CREATE TABLE IF NOT EXISTS {CSV_CHECKPOINT_TABLE} (
        source         text PRIMARY KEY,
        bytes_consumed bigint NOT NULL,
        rows_consumed  bigint NOT NULL,
        prefix_sha256  text NOT NULL,
        size           bigint,
        modified_at    timestamptz,
        updated_at     timestamptz NOT NULL DEFAULT now()
    )"""
)
# ---- end of the challenge CSV's checkpoint

# ---- issue 15, the landing sensor's memory (core/planner.py LandingMemory): per landing root, the file
# versions previous ticks found in the load log, so an idle tick asks the load log about none of them. A
# row of the load log deleted (or the table truncated) forgets every root's memory in the same transaction:
# the next tick checks its whole listing against the load log again (correct, slower once).
LANDING_SEEN_TABLE = "landing_seen"
LANDING_SEEN_STATE_TABLE = "landing_seen_state"
SCHEMA += [
    f"""
    CREATE TABLE IF NOT EXISTS {LANDING_SEEN_TABLE} (
        root        text NOT NULL,
        key         text NOT NULL,
        size        bigint NOT NULL,
        modified_us bigint NOT NULL,
        PRIMARY KEY (root, key)
    )""",
    f"""
    CREATE TABLE IF NOT EXISTS {LANDING_SEEN_STATE_TABLE} (
        root        text PRIMARY KEY,
        token       text NOT NULL,
        verified_at timestamptz NOT NULL
    )""",
    f"""
    CREATE OR REPLACE FUNCTION {LANDING_SEEN_TABLE}_forget() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM {LANDING_SEEN_STATE_TABLE};
        DELETE FROM {LANDING_SEEN_TABLE};
        RETURN NULL;
    END $$""",
    f"DROP TRIGGER IF EXISTS {LOAD_LOG_TABLE}_forget_seen ON {LOAD_LOG_TABLE}",
    f"""CREATE TRIGGER {LOAD_LOG_TABLE}_forget_seen AFTER DELETE OR TRUNCATE ON {LOAD_LOG_TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION {LANDING_SEEN_TABLE}_forget()""",
]
# ---- end of the landing sensor's memory

VECTOR_INDEX = f"{VECTORS_TABLE}_vector_hnsw"
VECTOR_INDEX_DDL = (
    f"CREATE INDEX IF NOT EXISTS {VECTOR_INDEX} ON {VECTORS_TABLE} USING hnsw (vector vector_cosine_ops)"
)


SCHEMA_OBJECTS = (
    VECTORS_TABLE,
    f"{VECTORS_TABLE}_partition",
    LOAD_LOG_TABLE,
    f"{LOAD_LOG_TABLE}_loaded_sha256",
    f"{LOAD_LOG_TABLE}_partition",
    f"{LOAD_LOG_TABLE}_source",
    CSV_CHECKPOINT_TABLE,  # the challenge CSV's checkpoint
    LANDING_SEEN_TABLE,  # the landing sensor's memory (issue 15)
    LANDING_SEEN_STATE_TABLE,
)


# --------------------------------------------------------------------------- the classic contract (issue 14)
# A vectors table made before the ``written_by`` column: every row in it was written by the platform (the
# classic INSERT failed on its NOT NULL columns), with an absolute path or URI as filepath. One transaction
# marks them as the platform's, rewrites filepath to the lake-relative path, and lets the classic
# ``INSERT (filepath, emotion, vector)`` in. Idempotent; detected by a catalog read
# (``classic_contract_present``), so a run on a migrated database takes no lock.
CLASSIC_CONTRACT_MIGRATION = [
    f"ALTER TABLE {VECTORS_TABLE} ADD COLUMN IF NOT EXISTS written_by text",
    f"""UPDATE {VECTORS_TABLE} SET written_by = '{PLATFORM_WRITER}',
        filepath = regexp_replace(filepath, '^.*/(raw/images/fer2013/)', '\\1')
        WHERE written_by IS NULL""",
    f"""ALTER TABLE {VECTORS_TABLE}
        ALTER COLUMN written_by SET DEFAULT '{EXTERNAL_WRITER}', ALTER COLUMN written_by SET NOT NULL,
        ALTER COLUMN image_id DROP NOT NULL, ALTER COLUMN model DROP NOT NULL,
        ALTER COLUMN load_date SET DEFAULT current_date""",
]


def classic_contract_present(conn: psycopg.Connection) -> bool:
    """Whether the vectors table has its ``written_by`` column (catalog read only, no lock)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attname = 'written_by' AND NOT attisdropped)",
        (VECTORS_TABLE,),
    ).fetchone()[0]


# ---------------------------------------------------------------------------


def schema_present(conn: psycopg.Connection, vector_index: bool = True) -> bool:
    """Whether the extension and every table and index of the schema exist, and the vectors table keeps the
    classic contract (catalog reads only, no lock)."""
    names = [*SCHEMA_OBJECTS, *([VECTOR_INDEX] if vector_index else [])]
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'vector'), "
        "count(*) FILTER (WHERE to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) AS n",
        (names,),
    ).fetchone()
    if not (row[0] == 1 and row[1] == len(names)):
        return False
    return conn.execute(_STATUS_CHECK_PRESENT).fetchone()[0] == 1 and classic_contract_present(conn)


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
            if conn.execute(_STATUS_CHECK_PRESENT).fetchone()[0] != 1:  # ALTER TABLE locks: only when needed
                for stmt in STATUS_CHECK_MIGRATION:
                    conn.execute(stmt)
            if not classic_contract_present(conn):  # ALTER TABLE locks the table: only when needed
                for stmt in CLASSIC_CONTRACT_MIGRATION:
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
                f"the 'vector' extension is not allow-listed on {where}: add VECTOR to the server "
                "parameter azure.extensions, keeping the extensions already listed "
                "(az postgres flexible-server parameter set --name azure.extensions "
                "--value <current list>,VECTOR), then retry"
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
