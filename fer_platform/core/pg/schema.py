"""What lives in PostgreSQL: the vectors table, the load log, their indexes, the pgvector extension.

Created idempotently by ``ensure_schema`` at the first use of a server (the ``postgres`` resource,
``fer-platform db start``, a migration's target); later calls only read the catalog.
"""

from __future__ import annotations

import contextlib
import logging
import os

import psycopg

from fer_platform.core.errors import DatabaseUnavailable, one_line
from fer_platform.core.pg.connect import connect, describe

log = logging.getLogger(__name__)

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
    # which content a lake path holds (ingest: a new file's path taken by another content gets a versioned
    # name): without it every batch of 500 files scanned the whole load log, quadratic over a big load
    f"CREATE INDEX IF NOT EXISTS {LOAD_LOG_TABLE}_lake_path ON {LOAD_LOG_TABLE} (lake_path)",
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

# ---- issue 15: the vectors inline in their rows ----
# pgvector's type is stored EXTERNAL: a 512-d vector (2,052 bytes) takes its row past PostgreSQL's TOAST
# threshold (2,032 bytes), so every vector went out of line into the TOAST table (two chunks, two entries in
# its index), and every read of one (the HNSW build, an exact search while a bulk load defers the index,
# silver's export) fetched it back from there. Inline instead: the column PLAIN, and the table's
# toast_tuple_target at PostgreSQL's maximum, without which the toaster, unable to bring the row under 2 KB,
# moves its small text columns (filepath, image_id, model) out of line one after the other. Measured at
# FER2013's size (bench/bench_vector_storage.py, vectors clustered like silver's): image_embeddings' write
# path 1.4x, an exact search 3.9x, reading a partition back 1.1x, the HNSW build 1.9x faster (the build's
# gain grows with the comparisons its graph needs: 1.0x on the demo's vectors from random weights, an easy
# graph); the table with its indexes 5 % smaller. A row is ~2.3 KB, three per 8 KB page; a PLAIN value must
# fit in a page (a vector of up to ~2,000 dimensions; EMBEDDING_DIM is 512). Rows written before keep their
# out-of-line vectors until they are rewritten. Only the table's owner may change it: on a server where the
# platform's role does not own the table (a DBA's), nothing is attempted and the table works as before.
TOAST_TUPLE_TARGET = 8160  # PostgreSQL's maximum for the setting
VECTOR_INLINE_MIGRATION = [
    f"ALTER TABLE {VECTORS_TABLE} ALTER COLUMN vector SET STORAGE PLAIN",
    f"ALTER TABLE {VECTORS_TABLE} SET (toast_tuple_target = {TOAST_TUPLE_TARGET})",
]
# a table made like the vectors table, its vectors inline too (a staging table: COPY into it, then INSERT)
VECTORS_LIKE = (
    f"(LIKE {VECTORS_TABLE} INCLUDING DEFAULTS INCLUDING STORAGE) "
    f"WITH (toast_tuple_target = {TOAST_TUPLE_TARGET})"
)
_VECTOR_INLINE_PRESENT = f"""SELECT coalesce(a.attstorage = 'p'
        AND c.reloptions @> ARRAY['toast_tuple_target={TOAST_TUPLE_TARGET}'], false)
        OR NOT pg_has_role(c.relowner, 'USAGE')
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'vector' AND NOT a.attisdropped
    WHERE c.oid = to_regclass('{VECTORS_TABLE}')"""


def vectors_inline(conn: psycopg.Connection) -> bool:
    """Whether the vectors table stores its vectors inline, or cannot be changed by this role (catalog read
    only, no lock)."""
    row = conn.execute(_VECTOR_INLINE_PRESENT).fetchone()
    return bool(row and row[0])


def make_vectors_inline(conn: psycopg.Connection) -> bool:
    """Apply VECTOR_INLINE_MIGRATION in a transaction of its own (none may be open), waiting at most
    DROP_LOCK_TIMEOUT for the table: its ACCESS EXCLUSIVE lock would queue every search behind a run that
    is writing vectors, and a speed-up must not fail the schema. Whether it applied; if not (the table busy,
    a server that refuses the setting) the next ``ensure_schema`` tries again."""
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (DROP_LOCK_TIMEOUT,))
            for stmt in VECTOR_INLINE_MIGRATION:
                conn.execute(stmt)
        return True
    except psycopg.Error as exc:
        log.warning(
            f"{VECTORS_TABLE}: vectors left out of line for now, retried at the next run: {one_line(exc)}"
        )
        return False


# ---- end of the vectors inline

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
# A vectors table made before the ``written_by`` column: the platform's rows in it have an absolute path or
# URI under ``raw/images/fer2013/`` as filepath; a row another client wrote with every column (the classic
# INSERT failed on the NOT NULL ones) has its own path, and stays the other client's. One transaction
# marks the platform's rows, rewrites their filepath to the lake-relative path, and lets the classic
# ``INSERT (filepath, emotion, vector)`` in. Idempotent; detected by a catalog read
# (``classic_contract_present``), so a run on a migrated database takes no lock. The HNSW index is dropped
# first: rewriting every row would re-insert each into the graph (a few hundred rows/s) while the table is
# locked; ``ensure_schema`` builds it again right after, in one pass.
_PLATFORM_PATH = "(^|/)raw/images/fer2013/"
CLASSIC_CONTRACT_MIGRATION = [
    f"ALTER TABLE {VECTORS_TABLE} ADD COLUMN IF NOT EXISTS written_by text",
    f"DROP INDEX IF EXISTS {VECTOR_INDEX}",
    f"""UPDATE {VECTORS_TABLE} SET written_by = '{PLATFORM_WRITER}',
        filepath = regexp_replace(filepath, '^.*/(raw/images/fer2013/)', '\\1')
        WHERE written_by IS NULL AND filepath ~ '{_PLATFORM_PATH}'""",
    f"UPDATE {VECTORS_TABLE} SET written_by = '{EXTERNAL_WRITER}' WHERE written_by IS NULL",
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


def schema_present(conn: psycopg.Connection, vector_index: bool = True, inline: bool = True) -> bool:
    """Whether the extension and every table and index of the schema exist, and the vectors table keeps the
    classic contract and (``inline``) its vectors inline (catalog reads only, no lock)."""
    names = [*SCHEMA_OBJECTS, *([VECTOR_INDEX] if vector_index else [])]
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'vector'), "
        "count(*) FILTER (WHERE to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) AS n",
        (names,),
    ).fetchone()
    if not (row[0] == 1 and row[1] == len(names)):
        return False
    return (
        conn.execute(_STATUS_CHECK_PRESENT).fetchone()[0] == 1
        and classic_contract_present(conn)
        and (not inline or vectors_inline(conn))
    )


def ensure_schema(dsn: str, vector_index: bool = True) -> None:
    """Create the vector extension, the vectors table and the load log, idempotently; with ``vector_index``
    the HNSW index too, unless a bulk load is writing without it (``ensure_vector_index``: it builds the
    index when it is missing and nobody is loading, e.g. after a loader was killed between its COPY and
    the build). ``vector_index=False``: a migration, which builds it after its copy.

    When everything exists (every run and sensor tick after the first) nothing is executed but a
    catalog read: ``CREATE INDEX IF NOT EXISTS`` would take a SHARE lock on the table and wait
    behind a run that is writing a partition's vectors."""
    with connect(dsn) as conn:
        if schema_present(conn, vector_index):
            return
        conn.rollback()
        if not schema_present(conn, vector_index=False, inline=False):
            conn.rollback()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                ensure_vector_extension(conn, dsn)
                for stmt in SCHEMA:
                    conn.execute(stmt)
                # ALTER TABLE locks the table: only when needed
                if conn.execute(_STATUS_CHECK_PRESENT).fetchone()[0] != 1:
                    for stmt in STATUS_CHECK_MIGRATION:
                        conn.execute(stmt)
                if not classic_contract_present(conn):  # ALTER TABLE locks the table: only when needed
                    for stmt in CLASSIC_CONTRACT_MIGRATION:
                        conn.execute(stmt)
        conn.rollback()
        if not vectors_inline(conn):  # on its own: the statements above wait behind a writer, reads go on
            conn.rollback()
            make_vectors_inline(conn)
        conn.rollback()
        if vector_index:
            ensure_vector_index(conn, wait=False)


# ---- issue 15: the vector index, deferred for bulk loads ----
# Maintaining pgvector's HNSW graph row by row costs 200-800 rows/s; a COPY without it runs at ~35,000
# rows/s and a build from scratch at a few thousand. A load that adds many rows relative to the table
# (the first load, a bulk load, a re-embedding with a new model) therefore drops the index, COPYs, and
# builds it afterwards; a small load inserts into the live index. Rule: defer when the rows to add are at
# least max(BULK_MIN_ROWS, BULK_FRACTION x the table's rows): inserting k rows costs ~k/400 s, rebuilding
# the whole table ~(N+k)/2000 s, so the rebuild wins from k ~ 0.25 N. The floor is low on purpose: the
# partitions of one load date arrive together, one run each, and a partition that stays on the live index
# holds the table while it embeds, so the others' DROP INDEX gives up (DROP_LOCK_TIMEOUT) and they
# maintain the index too; on a small table a rebuild costs about a second anyway. On a big table the
# fraction decides, and a sensor tick's images go into the live index (searches keep using it).
#
# Concurrent loaders (one run per partition, in parallel) coordinate through one session-level advisory
# lock, BULK_LOAD_LOCK: a deferring loader holds it shared from before it drops the index until after
# its COPY commits; then whoever finishes tries it exclusive without waiting and, when it gets it and the
# index is missing, builds it (holding it, so a new deferring loader waits for the build). Nobody holds
# it when nobody is loading: a loader killed mid-COPY loses its session and its lock, and the next
# ``ensure_vector_index`` (every run's and tick's ``ensure_schema``, every loader's end, the convergence
# audit) rebuilds the index. Searches go on throughout: without the index pgvector answers by an exact
# scan; the build is a plain CREATE INDEX, whose SHARE lock lets reads through (writers wait), and which
# leaves nothing behind if it is killed (CREATE INDEX CONCURRENTLY would leave an INVALID index that
# ``IF NOT EXISTS`` then takes for a valid one, and scans the table twice).
BULK_LOAD_LOCK = 7_210_015
BULK_MIN_ROWS = 64
BULK_FRACTION = 0.25
DROP_LOCK_TIMEOUT = "2s"  # how long a loader's DROP INDEX may queue (and hold searches) behind a writer
BUILD_MEMORY_PER_ROW = 4096  # bytes of maintenance_work_mem per row: the 2 KiB vector, its neighbour lists
BUILD_MEMORY_MIN = 64 << 20
BUILD_MEMORY_MAX = 1 << 30  # also on a user's server: a session SET must not exhaust a small instance
BUILD_WORKERS_MAX = 8


def vector_index_present(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VECTOR_INDEX,)).fetchone()[0]


def table_rows(conn: psycopg.Connection) -> int:
    """The vectors table's rows, from the planner's statistics (no scan): the larger of the last ANALYZE's
    estimate and the live-tuple counter, which counts a COPY committed since."""
    row = conn.execute(
        "SELECT GREATEST(c.reltuples, 0, coalesce(s.n_live_tup, 0))::bigint FROM pg_class c "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(%s)",
        (VECTORS_TABLE,),
    ).fetchone()
    return int(row[0]) if row else 0


def is_bulk(rows_to_add: int, rows_in_table: int) -> bool:
    return rows_to_add >= max(BULK_MIN_ROWS, BULK_FRACTION * rows_in_table)


def build_settings(rows: int) -> dict[str, str]:
    """Session settings for the index build: the graph of ``rows`` vectors in memory (pgvector's build
    slows several-fold once it no longer fits), and parallel workers (pgvector >= 0.6 builds in parallel;
    the server caps them at its max_parallel_workers)."""
    memory = min(BUILD_MEMORY_MAX, max(BUILD_MEMORY_MIN, rows * BUILD_MEMORY_PER_ROW))
    workers = max(1, min(BUILD_WORKERS_MAX, (os.cpu_count() or 2) - 1))
    return {"maintenance_work_mem": f"{memory >> 20}MB", "max_parallel_maintenance_workers": str(workers)}


def build_vector_index(conn: psycopg.Connection, lock_timeout: str | None = None) -> None:
    """CREATE INDEX (plain: see above) with the build settings, set for this transaction only; with
    ``lock_timeout`` it gives up (LockNotAvailable) rather than queue that long behind a writer."""
    rows = table_rows(conn)
    conn.rollback()
    with conn.transaction():
        settings = build_settings(rows) | ({"lock_timeout": lock_timeout} if lock_timeout else {})
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        conn.execute(VECTOR_INDEX_DDL)


def ensure_vector_index(conn: psycopg.Connection, wait: bool = True) -> str:
    """Build the HNSW index if it is missing and nobody is loading without it. Returns ``present``,
    ``built``, ``loading`` (a loader holds BULK_LOAD_LOCK: it builds when it ends) or ``busy`` (with
    ``wait=False``: a writer holds the table, and it ensures the index when it ends). A sensor tick or a
    run's schema check passes ``wait=False``: it never queues behind a writing run."""
    present = vector_index_present(conn)
    conn.rollback()
    if present:
        return "present"
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (BULK_LOAD_LOCK,)).fetchone()[0]
    conn.commit()
    if not got:
        return "loading"
    try:
        if vector_index_present(conn):
            return "present"
        try:
            build_vector_index(conn, lock_timeout=None if wait else DROP_LOCK_TIMEOUT)
        except psycopg.errors.LockNotAvailable:
            return "busy"
        return "built"
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (BULK_LOAD_LOCK,))
        conn.commit()


def begin_bulk_load(conn: psycopg.Connection, rows_to_add: int, defer: bool | None = None) -> bool:
    """Before a load of ``rows_to_add`` rows: True when it is to COPY without the index (then it holds
    BULK_LOAD_LOCK shared and must call ``end_bulk_load``), False when it inserts into the live index.
    ``defer`` overrides the rule (True: defer; False: keep a present index live; the benchmark)."""
    present = vector_index_present(conn)
    rows = table_rows(conn)
    conn.rollback()
    bulk = is_bulk(rows_to_add, rows) if defer is None else defer
    if present and not bulk:
        return False
    conn.execute("SELECT pg_advisory_lock_shared(%s)", (BULK_LOAD_LOCK,))  # waits for a build under way
    conn.commit()
    try:
        if vector_index_present(conn):
            if not (is_bulk(rows_to_add, table_rows(conn)) if defer is None else defer):  # after a build
                raise _LiveIndex
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (DROP_LOCK_TIMEOUT,))
            conn.execute(f"DROP INDEX IF EXISTS {VECTOR_INDEX}")
        conn.commit()
    except (_LiveIndex, psycopg.errors.LockNotAvailable):
        # a run writing into the live index holds the table: this load maintains the index too
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock_shared(%s)", (BULK_LOAD_LOCK,))
        conn.commit()
        return False
    return True


def end_bulk_load(conn: psycopg.Connection) -> str:
    """After a deferred load's COPY committed (or failed): leave the loaders, build the index if the last."""
    conn.rollback()
    conn.execute("SELECT pg_advisory_unlock_shared(%s)", (BULK_LOAD_LOCK,))
    conn.commit()
    return ensure_vector_index(conn)


class DeclaredLoad:
    """A load made of many runs, declared up front by whoever launches them (``fer-platform demo``: one
    ingest run per emotion partition, one after another; ``bulk-load``: its backfill's runs, declared by
    the command with ``--wait``, else by a detached declarer of its own). Each partition alone is judged
    by ``is_bulk`` against a table that grows as the load goes on, so after the first partitions the later
    ones fell below the rule and inserted into a live index row by row, and the index was rebuilt after
    several of them. Declared: ``begin(rows)`` applies the rule once to the whole
    load's rows; when they are a bulk load it drops the index now and holds BULK_LOAD_LOCK shared (a
    session lock on its own connection) until ``end``: every run of the load finds the index absent, COPYs
    without it, and does not build it (``end_bulk_load`` gets ``loading``: a loader is still there); ``end``
    builds it once. A declarer killed in between loses its session and its lock: the next
    ``ensure_vector_index`` (every run's and tick's ``ensure_schema``, the convergence audit) builds it.
    Searches go on throughout (exact scan). A load below the rule declares nothing: its runs decide each
    for itself, as a sensor's small loads do."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn: psycopg.Connection | None = None
        self.deferred = False
        self.rows = 0  # the rows declared (the larger of its begin() calls)
        self.declared = False  # whether any begin() deferred the index
        self.index: str | None = None  # what end() found or did: present, built, loading, busy

    def __enter__(self) -> DeclaredLoad:
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    def begin(self, rows_to_add: int) -> bool:
        """Declare the load's rows (the images it is about to add across all its partitions); True when
        its runs are to COPY without the index."""
        if self.deferred or rows_to_add <= 0:
            return self.deferred
        self.rows = max(self.rows, rows_to_add)
        conn = connect(self.dsn)
        try:
            self.deferred = begin_bulk_load(conn, rows_to_add)
        finally:
            if not self.deferred:  # not a bulk load, or it failed: no lock held, nothing for end()
                conn.close()
        if self.deferred:
            self.conn = conn  # holds BULK_LOAD_LOCK until end()
        self.declared = self.declared or self.deferred
        return self.deferred

    def end(self) -> str | None:
        """Leave the load and build the index once (unless another loader is still writing: it builds)."""
        if self.conn is None:
            return self.index
        conn, self.conn, self.deferred = self.conn, None, False
        try:
            self.index = end_bulk_load(conn)
        except psycopg.Error:  # a lost server: the next run, tick or audit builds the index
            self.index = None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        return self.index

    def summary(self) -> dict:
        return {"rows": self.rows, "index_deferred": self.declared, "index": self.index}


class _LiveIndex(Exception):
    pass


# ---- end of issue 15, the vector index ----


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
