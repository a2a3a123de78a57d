"""Copy the vector table from one PostgreSQL to another: the classic "local -> Azure" step.

1. The target gets the extension and the schema (``pg.schema.ensure_schema``); an advisory
   lock lets one migration at a time write it.
2. The source is read in one ``REPEATABLE READ, READ ONLY`` transaction: every read of
   the run, verification included, sees the same snapshot while the platform goes on
   writing.
3. Both sides are summarised per range of ids (``id / range_size``): row count and a
   sha256 over each row's id, vector bytes (``vector_send``) and other columns, in id
   order. Only ranges that differ are copied, so a re-run copies nothing twice.
4. A range is copied in one target transaction: the source's rows stream by binary
   ``COPY ... TO STDOUT`` straight into ``COPY ... FROM STDIN`` on the target (the bytes
   pass through undecoded) into a staging table, then replace the target's rows of that
   range. A range commits whole or not at all: an interrupted run leaves complete
   ranges, and the next run copies the ranges that still differ. Ids are kept; the
   target's id sequence is moved past the largest id.
5. Before success, the range summaries are computed again on both sides and must be
   equal (row counts, and the checksum of ids and vectors), else ``MigrationMismatch``.

When the target's table starts empty (or without its HNSW index: an interrupted first
load), the index is dropped during the copy and built once at the end: faster than
maintaining it row by row.

Rows the target has and the source lacks are removed only with ``allow_deletes``:
without it the run stops before changing anything (the target may have moved on).

Only the platform's rows are migrated (``written_by``, see ``pg.schema``): rows other clients
inserted on the source stay there (counted in the report), and those on the target are never
deleted or replaced; one holding an id the source's rows need stops the run in one line.
The target, and a source whose table predates ``written_by``, are brought to the current
schema first (``ensure_schema``: an older table has its rows marked as the platform's and its
file paths made lake-relative), so the paths copied are ``raw/images/fer2013/...`` and stay
valid on any server.

Why not pg_dump/pg_restore: ``pg_dump`` refuses servers newer than itself (Debian's 15
client here, the embedded server is 18), ``pg_restore`` of a newer dump into an older
server (Azure offers 13-17) is not supported, and a data-only restore is neither
idempotent nor resumable. Binary COPY works across these versions for the same column
types, and the range summaries make it idempotent and verifiable.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from fer_platform.core.errors import FerError, one_line
from fer_platform.core.pg.connect import connect, describe
from fer_platform.core.pg.schema import (
    BULK_LOAD_LOCK,
    PLATFORM_ROWS,
    PLATFORM_WRITER,
    VECTOR_INDEX,
    VECTOR_INDEX_DDL,
    VECTORS_LIKE,
    VECTORS_TABLE,
    classic_contract_present,
    ensure_schema,
)

TABLE = VECTORS_TABLE
COLUMNS = ("id", "filepath", "emotion", "vector", "image_id", "split", "load_date", "model", "created_at")
STAGE = "fer_migrate_stage"
_MIGRATE_LOCK = 7_210_003  # pg_try_advisory_lock key on the target
RANGE_SIZE = 10_000

# count and sha256 of each range of ids; rows in id order, every column but created_at
_SUMMARY = sql.SQL(
    """SELECT id / %(w)s AS r, count(*),
              encode(sha256(string_agg(int8send(id) || vector_send(vector)
                  || convert_to(format('%%L|%%L|%%L|%%L|%%L|%%L', filepath, emotion, image_id, split, """
    """load_date, model),
                                'UTF8'), ''::bytea ORDER BY id)), 'hex')
       FROM {table} WHERE """ + PLATFORM_ROWS + """ GROUP BY 1 ORDER BY 1"""
)
_PLATFORM = sql.SQL(PLATFORM_ROWS)


class MigrationError(FerError):
    """The migration cannot start or cannot go on (one line)."""


class MigrationMismatch(MigrationError):
    """After copying, the target does not equal the source."""


class ForeignRowsInTheWay(MigrationError):
    """Rows another client wrote on the target hold ids the source's rows keep."""


@dataclass(frozen=True)
class Progress:
    range_no: int  # the id range being copied (ids range_no * range_size ...)
    ranges_done: int
    ranges_todo: int
    rows_copied: int  # in this run so far
    bytes_streamed: int  # in this run so far


@dataclass
class MigrationReport:
    source: str  # host:port/db, never a password
    target: str
    rows: int  # in the source (and now the target)
    ranges: int
    ranges_copied: int
    rows_copied: int
    rows_removed: int  # target rows replaced or deleted in the copied ranges
    checksum: str  # sha256 over every range's (count, sha256) on both sides
    index_built: bool
    seconds: float
    foreign_rows_left: int = 0  # source rows other clients wrote: not the platform's to migrate
    method: str = "binary COPY"


Summary = dict[int, tuple[int, str]]


def summarise(conn: psycopg.Connection, range_size: int) -> Summary:
    """{range: (rows, sha256)} of the vector table on ``conn``."""
    rows = conn.execute(_SUMMARY.format(table=sql.Identifier(TABLE)), {"w": range_size}).fetchall()
    return {int(r): (int(n), h) for r, n, h in rows}


def checksum(summary: Summary) -> str:
    text = "\n".join(f"{r}:{n}:{h}" for r, (n, h) in sorted(summary.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def migrate_vectors(
    source_dsn: str,
    target_dsn: str,
    *,
    range_size: int = RANGE_SIZE,
    allow_deletes: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> MigrationReport:
    """Make the target's vector table equal to the source's; see the module docstring."""
    if range_size < 1:
        raise MigrationError(f"range_size must be at least 1, not {range_size}")
    started = time.monotonic()
    where = f"{describe(source_dsn)} -> {describe(target_dsn)}"
    if describe(source_dsn) == describe(target_dsn):
        raise MigrationError(f"source and target are the same database ({describe(source_dsn)})")
    _upgrade_source(source_dsn)
    ensure_schema(target_dsn, vector_index=False)
    with connect(source_dsn, autocommit=True) as source, connect(target_dsn, autocommit=True) as target:
        for conn in (source, target):
            conn.execute("SET datestyle = 'ISO, YMD'")
        if not target.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATE_LOCK,)).fetchone()[0]:
            raise MigrationError(
                f"another migration is writing {describe(target_dsn)}; try again when it ends"
            )
        # a bulk loader while it may drop and later build the HNSW index: nobody else builds it meanwhile
        # (pg.schema.BULK_LOAD_LOCK; released with the session)
        target.execute("SELECT pg_advisory_lock_shared(%s)", (BULK_LOAD_LOCK,))
        source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for the whole run
        source.read_only = True
        with source.transaction():
            _check_source(source, source_dsn)
            src = summarise(source, range_size)
            tgt = summarise(target, range_size)
            foreign = source.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE NOT ({})").format(sql.Identifier(TABLE), _PLATFORM)
            ).fetchone()[0]
            todo = sorted(r for r in set(src) | set(tgt) if src.get(r) != tgt.get(r))
            _check_deletes(source, target, [r for r in todo if r in tgt], range_size, allow_deletes, where)

            target_rows = sum(n for n, _ in tgt.values())
            bulk = target_rows == 0 or not _has_index(target)
            if bulk:
                target.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(VECTOR_INDEX)))
            target.execute(
                sql.SQL(f"CREATE TEMP TABLE IF NOT EXISTS {{}} {VECTORS_LIKE} ON COMMIT DELETE ROWS").format(
                    sql.Identifier(STAGE)
                )
            )
            copied = removed = streamed = 0
            for done, r in enumerate(todo):
                try:
                    rows, gone, sent = _copy_range(
                        source, target, r, range_size, progress, done, len(todo), copied, streamed
                    )
                except (psycopg.Error, ForeignRowsInTheWay) as exc:
                    raise MigrationError(
                        f"{where}: stopped in id range {r} ({done} of {len(todo)} ranges copied): "
                        f"{one_line(exc)}; "
                        "the ranges copied are kept, run it again to finish"
                    ) from None
                copied, removed, streamed = copied + rows, removed + gone, streamed + sent
                if progress:
                    progress(Progress(r, done + 1, len(todo), copied, streamed))
            _advance_sequence(target)

            final_src, final_tgt = summarise(source, range_size), summarise(target, range_size)
        index_built = False
        if bulk or not _has_index(target):
            target.execute(VECTOR_INDEX_DDL)  # built once, over every row
            index_built = True
        _verify(final_src, final_tgt, where)
    return MigrationReport(
        source=describe(source_dsn),
        target=describe(target_dsn),
        rows=sum(n for n, _ in final_src.values()),
        ranges=len(final_src),
        ranges_copied=len(todo),
        rows_copied=copied,
        rows_removed=removed,
        checksum=checksum(final_src),
        index_built=index_built,
        seconds=round(time.monotonic() - started, 3),
        foreign_rows_left=int(foreign),
    )


def _upgrade_source(dsn: str) -> None:
    """A source whose vectors table predates the ``written_by`` column gets the current schema first (its
    rows marked as the platform's, their paths made lake-relative); a source without the table is left as
    it is, for ``_check_source`` to refuse."""
    with connect(dsn) as conn:
        older = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0] and not (
            classic_contract_present(conn)
        )
    if older:
        ensure_schema(dsn)


def _check_source(source: psycopg.Connection, dsn: str) -> None:
    found = {
        r[0]
        for r in source.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = current_schema()",
            (TABLE,),
        )
    }
    if not found:
        raise MigrationError(f"there is no {TABLE} table on the source {describe(dsn)}")
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise MigrationError(
            f"the source's {TABLE} lacks the column(s) {', '.join(missing)} ({describe(dsn)})"
        )


def _ids(conn: psycopg.Connection, lo: int, hi: int) -> set[int]:
    query = sql.SQL("SELECT id FROM {} WHERE {} AND id >= %s AND id < %s").format(
        sql.Identifier(TABLE), _PLATFORM
    )
    return {r[0] for r in conn.execute(query, (lo, hi))}


def _check_deletes(source, target, todo, range_size, allow_deletes, where) -> None:
    if allow_deletes:
        return
    extra: list[int] = []
    for r in todo:
        lo, hi = r * range_size, (r + 1) * range_size
        extra += sorted(_ids(target, lo, hi) - _ids(source, lo, hi))
    if extra:
        raise MigrationError(
            f"{where}: the target has {len(extra)} row(s) the source lacks (e.g. id {extra[0]}): it has "
            "moved on, or the source deleted them; nothing was changed. Re-run with allow_deletes to make "
            "the target a copy"
        )


def _has_index(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VECTOR_INDEX,)).fetchone()[0]


def _copy_range(
    source, target, r, range_size, progress, done, todo, copied, streamed
) -> tuple[int, int, int]:
    """Replace the target's rows of range ``r`` by the source's; (rows copied, rows removed, bytes)."""
    lo, hi = r * range_size, (r + 1) * range_size
    cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    out_sql = sql.SQL(
        "COPY (SELECT {cols} FROM {t} WHERE {platform} AND id >= {lo} AND id < {hi} ORDER BY id) "
        "TO STDOUT (FORMAT BINARY)"
    )
    in_sql = sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)")
    sent = 0
    with target.transaction():
        out_query = out_sql.format(cols=cols, t=sql.Identifier(TABLE), platform=_PLATFORM, lo=lo, hi=hi)
        with source.cursor().copy(out_query) as out:
            with target.cursor().copy(in_sql.format(stage=sql.Identifier(STAGE), cols=cols)) as into:
                for block in out:
                    into.write(block)
                    sent += len(block)
                    if progress:
                        progress(Progress(r, done, todo, copied, streamed + sent))
        # the target's own rows of this range, and its rows elsewhere holding an incoming (image_id, model):
        # the source has them under another id now, and will bring that id's range too. Rows other clients
        # wrote on the target are never removed: one holding an incoming id stops the run.
        removed = target.execute(
            sql.SQL(
                """DELETE FROM {t} WHERE {platform} AND ((id >= %s AND id < %s)
                   OR (image_id, model) IN (SELECT image_id, model FROM {stage}))"""
            ).format(t=sql.Identifier(TABLE), stage=sql.Identifier(STAGE), platform=_PLATFORM),
            (lo, hi),
        ).rowcount
        taken = target.execute(
            sql.SQL("SELECT min(t.id), count(*) FROM {t} t JOIN {stage} s USING (id)").format(
                t=sql.Identifier(TABLE), stage=sql.Identifier(STAGE)
            )
        ).fetchone()
        if taken[1]:
            raise ForeignRowsInTheWay(
                f"{taken[1]} row(s) another client wrote on the target hold id(s) the source's rows keep "
                f"(e.g. id {taken[0]}); the platform does not change rows it did not write: move them to "
                "other ids, then run it again"
            )
        rows = target.execute(
            sql.SQL("INSERT INTO {t} ({cols}, written_by) SELECT {cols}, %s FROM {stage}").format(
                t=sql.Identifier(TABLE), cols=cols, stage=sql.Identifier(STAGE)
            ),
            (PLATFORM_WRITER,),
        ).rowcount
    return rows, removed, sent


def _advance_sequence(target: psycopg.Connection) -> None:
    """New rows on the target must not reuse a migrated id."""
    target.execute(
        sql.SQL(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST((SELECT max(id) FROM {t}), 1), "
            "(SELECT max(id) FROM {t}) IS NOT NULL)"
        ).format(t=sql.Identifier(TABLE)),
        (TABLE,),
    )


def _verify(src: Summary, tgt: Summary, where: str) -> None:
    src_rows, tgt_rows = sum(n for n, _ in src.values()), sum(n for n, _ in tgt.values())
    if src_rows != tgt_rows:
        raise MigrationMismatch(f"{where}: the source has {src_rows} rows, the target {tgt_rows}")
    differ = sorted(r for r in set(src) | set(tgt) if src.get(r) != tgt.get(r))
    if differ:
        raise MigrationMismatch(
            f"{where}: {len(differ)} id range(s) differ after copying, e.g. range {differ[0]}"
        )
