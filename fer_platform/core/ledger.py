"""The load log: the durable ledger of every landing file version seen and what became of it.

A file version is (source URI, size, modification time). Each version gets
exactly one row (UNIQUE), and each content (sha256) is ``loaded`` at most once
(a partial unique index); everything else is ``duplicate``, ``conflict`` (the same
content filed under two emotions: every copy, none loaded) or ``quarantined``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg

from fer_platform.core.pg.schema import LANDING_SEEN_STATE_TABLE, LANDING_SEEN_TABLE, LOAD_LOG_TABLE
from fer_platform.core.storage import to_us

INGEST_LOCK = 7_210_002  # pg_advisory_xact_lock key: one ledger decision at a time
STATUSES = ("loaded", "duplicate", "conflict", "quarantined")
_CHUNK = 5000


@dataclass(frozen=True)
class LedgerRow:
    source: str
    path: str
    size: int
    modified_at: dt.datetime
    sha256: str | None
    emotion: str | None
    split: str | None
    load_date: dt.date
    status: str
    reason: str | None
    lake_path: str | None
    run_id: str | None


Version = tuple[str, int, int]  # (source, size, modified microseconds)


def lock(conn: psycopg.Connection) -> None:
    """Serialise ledger decisions across runs (released at commit)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (INGEST_LOCK,))


# the load log's statistics are refreshed once as many rows are new as it held when they were taken (it
# doubled), and at least ANALYZE_MIN_ROWS: a unique column's statistics scale with the table once taken
ANALYZE_GROWTH = 1.0
ANALYZE_MIN_ROWS = 2000


def keep_statistics(conn: psycopg.Connection) -> bool:
    """ANALYZE the load log when many of its rows are newer than its statistics; whether it did. A big
    load grows it faster than autovacuum's analyze follows (a minute apart at best): a table never
    analyzed looks small to the planner, which then scanned all of it for each batch's lookups (by
    source, content, lake path: 500 each) instead of using their indexes, and a 250,000-file load's
    batches grew with the table."""
    row = conn.execute(
        "SELECT n_mod_since_analyze, greatest(c.reltuples, 0) FROM pg_stat_user_tables s "
        "JOIN pg_class c ON c.oid = s.relid WHERE s.relid = %s::regclass",
        (LOAD_LOG_TABLE,),
    ).fetchone()
    if row is None or row[0] < max(ANALYZE_MIN_ROWS, ANALYZE_GROWTH * row[1]):
        return False
    conn.execute(f"ANALYZE {LOAD_LOG_TABLE}")
    return True


# What known_versions was asked (calls, sources): the landing sensor's tests read it to show that an idle
# tick asks the load log about no file.
LOOKUPS: Counter = Counter()


def known_versions(conn: psycopg.Connection, sources: Sequence[str]) -> set[Version]:
    """The (source, size, modified) versions of ``sources`` already in the ledger."""
    found: set[Version] = set()
    LOOKUPS["calls"] += 1
    LOOKUPS["sources"] += len(sources)
    for i in range(0, len(sources), _CHUNK):
        rows = conn.execute(
            f"SELECT source, size, modified_at FROM {LOAD_LOG_TABLE} WHERE source = ANY(%s)",
            (list(sources[i : i + _CHUNK]),),
        ).fetchall()
        found.update((s, int(n), to_us(m)) for s, n, m in rows)
    return found


def versions_under(conn: psycopg.Connection, source_prefix: str) -> set[Version]:
    """Every version in the ledger whose source starts with ``source_prefix``."""
    rows = conn.execute(
        f"SELECT source, size, modified_at FROM {LOAD_LOG_TABLE} WHERE starts_with(source, %s)",
        (source_prefix,),
    ).fetchall()
    return {(s, int(n), to_us(m)) for s, n, m in rows}


def loaded_shas(conn: psycopg.Connection, shas: Iterable[str]) -> dict[str, str]:
    """sha256 -> lake path of the contents among ``shas`` that are already loaded."""
    rows = conn.execute(
        f"SELECT sha256, lake_path FROM {LOAD_LOG_TABLE} WHERE status = 'loaded' AND sha256 = ANY(%s)",
        (list(set(shas)),),
    ).fetchall()
    return dict(rows)


def copies_of(conn: psycopg.Connection, shas: Iterable[str]) -> dict[str, list[dict]]:
    """sha256 -> the load log's valid copies (loaded, duplicate or conflict) of the contents among ``shas``:
    id, path, emotion, split, load_date, status, reason, lake_path."""
    cur = conn.execute(
        f"""SELECT id, sha256, path, emotion, split, load_date, status, reason, lake_path
            FROM {LOAD_LOG_TABLE}
            WHERE sha256 = ANY(%s) AND status IN ('loaded', 'duplicate', 'conflict')
            ORDER BY id""",
        (list(set(shas)),),
    )
    names = [d.name for d in cur.description]
    out: dict[str, list[dict]] = {}
    for row in cur.fetchall():
        r = dict(zip(names, row, strict=True))
        out.setdefault(r["sha256"], []).append(r)
    return out


def relabel(conn: psycopg.Connection, changes: Sequence[tuple[int, str, str]]) -> None:
    """Set (status, reason) of existing rows by id: a loaded copy demoted (to ``duplicate`` or ``conflict``)
    or another copy's reason brought up to date. Run before the batch's rows are inserted (a demoted
    copy frees its content's loaded slot)."""
    if not changes:
        return
    conn.execute(
        f"""UPDATE {LOAD_LOG_TABLE} l SET status = c.status, reason = c.reason
            FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS c(id, status, reason)
            WHERE l.id = c.id""",
        ([c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes]),
    )


def lake_path_owners(conn: psycopg.Connection, lake_paths: Iterable[str]) -> dict[str, str | None]:
    """lake path -> sha256 of the ledger rows that already use one of ``lake_paths``."""
    rows = conn.execute(
        f"SELECT lake_path, sha256 FROM {LOAD_LOG_TABLE} WHERE lake_path = ANY(%s)",
        (list(set(lake_paths)),),
    ).fetchall()
    return dict(rows)


_COLUMNS = (
    "source",
    "path",
    "size",
    "modified_at",
    "sha256",
    "emotion",
    "split",
    "load_date",
    "status",
    "reason",
    "lake_path",
    "run_id",
)


def insert(conn: psycopg.Connection, rows: Sequence[LedgerRow]) -> None:
    """Append rows with COPY (one round trip for the whole batch)."""
    if not rows:
        return
    with conn.cursor().copy(f"COPY {LOAD_LOG_TABLE} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(tuple(getattr(r, c) for c in _COLUMNS))


def partition_rows(
    conn: psycopg.Connection, emotion: str, load_date: dt.date, status: str = "loaded"
) -> list[dict]:
    cur = conn.execute(
        f"""SELECT sha256 AS image_id, lake_path AS filepath, split, path AS landing_path, size, source,
                   logged_at AS ingested_at, run_id, modified_at
            FROM {LOAD_LOG_TABLE}
            WHERE emotion = %s AND load_date = %s AND status = %s
            ORDER BY lake_path""",
        (emotion, load_date, status),
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def restore(conn: psycopg.Connection, emotion: str, load_date: dt.date, manifest_rows: Sequence[dict]) -> int:
    """Put back ``loaded`` rows of a partition from its raw manifest's rows (a lost load log); a version
    or a content the load log holds already is skipped, and so is a copy it demoted (a conflicted content,
    or a source logged as a duplicate: a manifest not yet re-derived still lists it). Returns the rows
    inserted."""
    if not manifest_rows:
        return 0
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    cols = {
        "source": [r["source"] for r in manifest_rows],
        "path": [r.get("landing_path") or r["filepath"] for r in manifest_rows],
        "size": [r["size"] for r in manifest_rows],
        # a manifest written before it carried modification times: the version is unknown, so the
        # landing file is seen again and logged as a duplicate of its own restored content
        "modified_at": [r.get("modified_at") or epoch for r in manifest_rows],
        "sha256": [r["image_id"] for r in manifest_rows],
        "split": [r["split"] for r in manifest_rows],
        "lake_path": [r["filepath"] for r in manifest_rows],
        "run_id": [r.get("run_id") for r in manifest_rows],
    }
    cur = conn.execute(
        f"""INSERT INTO {LOAD_LOG_TABLE}
                (source, path, size, modified_at, sha256, emotion, split, load_date, status, reason, """
        f"""lake_path, run_id)
            SELECT source, path, size, modified_at, sha256, %s, split, %s, 'loaded',
                   'restored from the raw manifest (the load log had lost it)', lake_path, run_id
            FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::text[], %s::text[],
                        %s::text[], %s::text[])
                 AS r(source, path, size, modified_at, sha256, split, lake_path, run_id)
            -- a copy the load log demoted (a label conflict, or the train side of a train/test leak) stays so
            WHERE NOT EXISTS (
                SELECT 1 FROM {LOAD_LOG_TABLE} l
                WHERE l.sha256 = r.sha256
                  AND (l.status = 'conflict' OR (l.source = r.source AND l.status = 'duplicate')))
            ON CONFLICT DO NOTHING""",
        (
            emotion,
            load_date,
            cols["source"],
            cols["path"],
            cols["size"],
            cols["modified_at"],
            cols["sha256"],
            cols["split"],
            cols["lake_path"],
            cols["run_id"],
        ),
    )
    return cur.rowcount


def status_counts(
    conn: psycopg.Connection, emotion: str | None = None, load_date: dt.date | None = None
) -> Counter:
    where, params = ["TRUE"], []
    if emotion is not None:
        where.append("emotion = %s")
        params.append(emotion)
    if load_date is not None:
        where.append("load_date = %s")
        params.append(load_date)
    rows = conn.execute(
        f"SELECT status, count(*) FROM {LOAD_LOG_TABLE} WHERE {' AND '.join(where)} GROUP BY status", params
    ).fetchall()
    return Counter({s: int(n) for s, n in rows})


def rows_for_versions(conn: psycopg.Connection, versions: Iterable[Version]) -> list[dict]:
    """Ledger rows of exactly these file versions."""
    versions = list(versions)
    out: list[dict] = []
    for i in range(0, len(versions), _CHUNK):
        chunk = versions[i : i + _CHUNK]
        cur = conn.execute(
            f"""SELECT l.path, l.status, l.reason, l.lake_path, l.sha256, l.emotion, l.load_date, l.size
                FROM {LOAD_LOG_TABLE} l
                JOIN unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v(source, size, us)
                  ON l.source = v.source AND l.size = v.size
                 AND l.modified_at = to_timestamp(0) + v.us * interval '1 microsecond'""",
            ([v[0] for v in chunk], [v[1] for v in chunk], [v[2] for v in chunk]),
        )
        names = [d.name for d in cur.description]
        out.extend(dict(zip(names, row, strict=True)) for row in cur.fetchall())
    return out


def daily_rows(conn: psycopg.Connection) -> list[dict]:
    """(load_date, status, reason, size) of every ledger row: what the daily-loads summary counts."""
    cur = conn.execute(f"SELECT load_date, status, reason, size FROM {LOAD_LOG_TABLE} ORDER BY load_date")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def duplicated_copies(conn: psycopg.Connection) -> list[dict]:
    """The valid copies (loaded, duplicate, conflict) of every content the load log holds more than once:
    sha256, path, emotion, split, status, lake_path (what the duplicates report groups)."""
    cur = conn.execute(
        f"""SELECT sha256, path, emotion, split, status, lake_path FROM {LOAD_LOG_TABLE}
            WHERE status IN ('loaded', 'duplicate', 'conflict') AND sha256 IN (
                SELECT sha256 FROM {LOAD_LOG_TABLE}
                WHERE status IN ('loaded', 'duplicate', 'conflict') AND sha256 IS NOT NULL
                GROUP BY sha256 HAVING count(*) > 1)
            ORDER BY sha256, path"""
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def leaked_test_ids(conn: psycopg.Connection) -> set[str]:
    """Contents (sha256) the load log holds both as a test copy and as a train copy (train/test leakage:
    the test copy is loaded, the train copy a duplicate): test figures leave them out."""
    rows = conn.execute(
        f"""SELECT sha256 FROM {LOAD_LOG_TABLE}
            WHERE status IN ('loaded', 'duplicate', 'conflict') AND split IN ('train', 'test')
            GROUP BY sha256 HAVING count(DISTINCT split) = 2"""
    ).fetchall()
    return {r[0] for r in rows}


def oldest_version_us(conn: psycopg.Connection, source_prefix: str) -> int | None:
    """Modification time (microseconds) of the oldest file version logged under ``source_prefix``."""
    (oldest,) = conn.execute(
        f"SELECT min(modified_at) FROM {LOAD_LOG_TABLE} WHERE starts_with(source, %s)", (source_prefix,)
    ).fetchone()
    return to_us(oldest) if oldest is not None else None


# --------------------------------------------------------------------------- the landing sensor's memory
Seen = dict[str, tuple[int, int]]  # landing key -> (size, modified microseconds) of a version logged


def seen_token(conn: psycopg.Connection, root: str) -> tuple[str, dt.datetime] | None:
    """(token, verified_at) of ``root``'s memory; None when there is none (never written, or forgotten
    because load-log rows were deleted)."""
    return conn.execute(
        f"SELECT token, verified_at FROM {LANDING_SEEN_STATE_TABLE} WHERE root = %s", (root,)
    ).fetchone()


def seen_versions(conn: psycopg.Connection, root: str) -> Seen:
    rows = conn.execute(
        f"SELECT key, size, modified_us FROM {LANDING_SEEN_TABLE} WHERE root = %s", (root,)
    ).fetchall()
    return {k: (int(n), int(us)) for k, n, us in rows}


def remember_seen(
    conn: psycopg.Connection,
    root: str,
    token: str,
    add: Sequence[tuple[str, int, int]],
    drop: Sequence[str],
    replace: bool = False,
    verified: bool = False,
) -> None:
    """Change ``root``'s memory by the delta (``replace``: the whole memory is ``add``) and give it a new
    ``token``, in one transaction. Only versions found in the load log are ever added."""
    with conn.transaction():
        if replace:
            conn.execute(f"DELETE FROM {LANDING_SEEN_TABLE} WHERE root = %s", (root,))
        elif drop:
            conn.execute(
                f"DELETE FROM {LANDING_SEEN_TABLE} WHERE root = %s AND key = ANY(%s)", (root, list(drop))
            )
        if add:
            conn.execute(
                f"""INSERT INTO {LANDING_SEEN_TABLE} (root, key, size, modified_us)
                    SELECT %s, k, n, us FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS a(k, n, us)
                    ON CONFLICT (root, key) DO UPDATE SET size = EXCLUDED.size,
                                                          modified_us = EXCLUDED.modified_us""",
                (root, [a[0] for a in add], [a[1] for a in add], [a[2] for a in add]),
            )
        conn.execute(
            f"""INSERT INTO {LANDING_SEEN_STATE_TABLE} (root, token, verified_at) VALUES (%s, %s, now())
                ON CONFLICT (root) DO UPDATE SET token = EXCLUDED.token,
                    verified_at = CASE WHEN %s THEN now() ELSE {LANDING_SEEN_STATE_TABLE}.verified_at END""",
            (root, token, verified),
        )
