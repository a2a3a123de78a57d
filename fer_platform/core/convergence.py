"""Convergence of the layers: what each layer actually holds, per partition, against the load log.

The load log is the checkpoint, but no layer is trusted because an earlier step logged it. For
each partition (emotion, load date) the truth is the load log's ``loaded`` files; the raw
manifest, bronze, the vectors of the served model in PostgreSQL and silver must each hold exactly
those images, and the search index exactly silver. ``audit`` reads every layer itself (the lake's
partition files, the table, the index's id mapping) and lists what disagrees; the entry points
(the landing sensor, ``demo``, the schedules) re-materialise those partitions, which is
idempotent, and rebuild the index.

``restore_load_log`` is the other direction: when the load log lost rows (deleted, or a database
restored from an old dump), the raw manifests in the lake, written only after the load log
committed, say what was loaded; the rows are put back, so a lost checkpoint loads nothing twice.

A layer's content is summarised as (rows, digest): the digest is an order-independent sum of a
hash of each image id, the same in SQL and in Python, so PostgreSQL aggregates in place and a
lake partition file is read one column at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import posixpath
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import psycopg
import pyarrow.parquet as pq

from fer_platform.core import ledger
from fer_platform.core.layout import BRONZE_IMAGES, RAW_MANIFEST, SILVER_EMBEDDINGS
from fer_platform.core.pg.schema import LOAD_LOG_TABLE, PLATFORM_ROWS, VECTORS_TABLE, ensure_vector_index
from fer_platform.core.search.index import IDS_FILE, INDEX_FILE, META_FILE, index_dir
from fer_platform.core.storage import FileEntry, Storage

log = logging.getLogger(__name__)
Partition = tuple[str, dt.date]
_MOD = 1 << 64
# md5 of the id, its first 15 hex digits (60 bits) as a bigint: summed as numeric in SQL
_SQL_DIGEST = "coalesce(sum(('x' || substr(md5({col}), 1, 15))::bit(60)::bigint), 0)"


@dataclass(frozen=True)
class LayerState:
    """How many images a layer holds for a partition, and a digest of which."""

    rows: int = 0
    digest: int = 0

    def __add__(self, other: "LayerState") -> "LayerState":
        return LayerState(self.rows + other.rows, (self.digest + other.digest) % _MOD)


EMPTY = LayerState()


def id_hash(image_id: str) -> int:
    return int(hashlib.md5(image_id.encode()).hexdigest()[:15], 16)


def state_of(image_ids: Iterable[str]) -> LayerState:
    ids = list(image_ids)
    return LayerState(len(ids), sum(id_hash(i) for i in ids) % _MOD)


def content_version(image_ids: Iterable[str], *facts: object) -> str:
    """A layer partition's data version: which images it holds (and ``facts`` that also change what the
    layers after it compute). A re-run that changes nothing (a load of duplicates only) gives the same
    version, so the automation that follows data versions rebuilds nothing downstream."""
    state = state_of(image_ids)
    return "-".join([str(state.rows), format(state.digest, "x"), *(str(f) for f in facts)])


# --------------------------------------------------------------------------- each layer, as it is
def ledger_state(conn: psycopg.Connection) -> dict[Partition, LayerState]:
    """The truth: the load log's loaded files per partition."""
    rows = conn.execute(
        f"""SELECT emotion, load_date, count(*), {_SQL_DIGEST.format(col="sha256")}
            FROM {LOAD_LOG_TABLE} WHERE status = 'loaded' AND emotion IS NOT NULL GROUP BY 1, 2"""
    ).fetchall()
    return {(e, d): LayerState(int(n), int(s) % _MOD) for e, d, n, s in rows}


def postgres_state(conn: psycopg.Connection, model: str) -> dict[Partition, LayerState] | None:
    """The platform's vectors of ``model`` per partition (rows other clients wrote are not the platform's to
    compare or repair); None when the table itself is gone."""
    if conn.execute("SELECT to_regclass(%s)", (VECTORS_TABLE,)).fetchone()[0] is None:
        return None
    rows = conn.execute(
        f"""SELECT emotion, load_date, count(*), {_SQL_DIGEST.format(col="image_id")}
            FROM {VECTORS_TABLE} WHERE {PLATFORM_ROWS} AND model = %s GROUP BY 1, 2""",
        (model,),
    ).fetchall()
    return {(e, d): LayerState(int(n), int(s) % _MOD) for e, d, n, s in rows}


_cache: dict[tuple[str, int, int, str | None], LayerState] = {}
_cache_lock = threading.Lock()


def _file_state(lake: Storage, entry: FileEntry, model: str | None) -> LayerState:
    """Image ids of one Parquet file (only rows of ``model``, when given), cached by file version: a
    sensor in a long-lived process reads each partition file once."""
    key = (lake.uri(entry.key), entry.size, entry.modified_us, model)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    columns = ["image_id"] + (["model"] if model else [])
    # only these columns' chunks are read (bronze's PNG bytes are not), from a folder or an object store
    table = pq.read_table(lake.path(entry.key), columns=columns, filesystem=lake.fs)
    ids = table["image_id"].to_pylist()
    if model:
        ids = [i for i, m in zip(ids, table["model"].to_pylist(), strict=True) if m == model]
    state = state_of(ids)
    with _cache_lock:
        if len(_cache) > 100_000:
            _cache.clear()
        _cache[key] = state
    return state


def partition_of_key(key: str) -> Partition | None:
    """(emotion, load_date) of ``.../emotion=<e>/load_date=<d>/part-0.parquet``."""
    values = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
    try:
        return values["emotion"], dt.date.fromisoformat(values["load_date"])
    except (KeyError, ValueError):
        return None


def lake_state(lake: Storage, prefix: str, model: str | None = None) -> dict[Partition, LayerState]:
    """Per partition, the images of a Hive-partitioned lake layer (its ``part-0.parquet`` files). A file
    that cannot be read (truncated, not Parquet) counts as missing: its partition is repaired, which rewrites
    it."""
    out: dict[Partition, LayerState] = {}
    for entry in lake.list_files(prefix):
        if posixpath.basename(entry.key) != "part-0.parquet":
            continue  # temporary files of a write in progress (or killed) are not the layer
        part = partition_of_key(entry.key)
        if part is None:
            continue
        try:
            out[part] = _file_state(lake, entry, model)
        except FileNotFoundError:
            continue  # replaced or removed while listing
        except Exception as exc:  # noqa: BLE001 - an unreadable file is one partition's problem, not the audit's
            log.warning(
                "%s cannot be read (%s: %s): its partition counts as missing",
                entry.key,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
    return out


def index_state(lake: Storage, model: str) -> LayerState | None:
    """The images the search index of ``model`` holds; None when there is no index."""
    folder = index_dir(model)
    entries, missing = lake.stat_many([f"{folder}/{name}" for name in (IDS_FILE, INDEX_FILE, META_FILE)])
    if missing:  # an index without all of its files is no index
        return None
    try:
        return _file_state(lake, entries[0], None)
    except Exception:  # noqa: BLE001 - an unreadable id mapping: rebuild the index
        return None


# --------------------------------------------------------------------------- the audit
@dataclass(frozen=True)
class Disagreement:
    partition: Partition | None  # None: the search index
    layer: str
    expected: int
    found: int | None  # None: the layer (or the whole table) is missing

    def line(self) -> str:
        where = f"{self.partition[0]}|{self.partition[1].isoformat()}" if self.partition else "search index"
        truth = "the load log" if self.partition else "silver"
        if self.found is None:
            return f"{where}: {self.layer} is missing ({truth} has {self.expected} images)"
        if self.found == self.expected:
            return f"{where}: {self.layer} holds {self.found} images but not the same ones as {truth}"
        return f"{where}: {self.layer} holds {self.found} images, {truth} {self.expected}"


@dataclass
class Audit:
    model: str
    disagreements: list[Disagreement] = field(default_factory=list)
    partitions_checked: int = 0
    silver: LayerState = EMPTY  # every silver image of the model
    # the vectors' HNSW index (issue 15): present, loading (a bulk load builds it when it ends), built (it
    # was missing and nobody was loading: a loader died between its COPY and the build) or busy
    vector_index: str = "present"

    @property
    def ok(self) -> bool:
        return not self.disagreements

    @property
    def partitions(self) -> list[Partition]:
        """Partitions to re-materialise (every layer of a partition is rebuilt from the load log)."""
        return sorted({d.partition for d in self.disagreements if d.partition is not None})

    @property
    def index_stale(self) -> bool:
        return any(d.partition is None for d in self.disagreements)

    def lines(self) -> list[str]:
        rebuilt = [f"the vectors' HNSW index was missing and nobody was loading: {self.vector_index}"]
        return [d.line() for d in self.disagreements] + (rebuilt if self.vector_index == "built" else [])


def audit(conn: psycopg.Connection, lake: Storage, model: str, skip: Iterable[Partition] = ()) -> Audit:
    """Every partition whose layers do not hold exactly the load log's loaded images, and whether the
    index holds exactly silver. ``skip``: partitions a run is writing now (their layers may
    legitimately differ until it ends)."""
    vector_index = "present"
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # never end a caller's transaction
        if conn.execute("SELECT to_regclass(%s)", (VECTORS_TABLE,)).fetchone()[0] is not None:
            vector_index = ensure_vector_index(conn, wait=False)
        conn.rollback()
    truth = ledger_state(conn)
    pg = postgres_state(conn, model)
    layers = {
        "raw manifest": lake_state(lake, RAW_MANIFEST),
        "bronze": lake_state(lake, BRONZE_IMAGES),
        "postgres": pg if pg is not None else {},
        "silver": lake_state(lake, SILVER_EMBEDDINGS, model),
    }
    out = Audit(model, vector_index=vector_index)
    busy = set(skip)
    every = set(truth).union(*layers.values())
    out.partitions_checked = len(every)
    for part in sorted(every):
        if part in busy:
            continue
        want = truth.get(part, EMPTY)
        for layer, states in layers.items():
            have = states.get(part)
            if have == want or (have is None and want == EMPTY):
                continue
            # a lake partition file that is not there is missing; a partition without rows in an existing
            # table holds 0
            missing = pg is None if layer == "postgres" else have is None
            out.disagreements.append(
                Disagreement(part, layer, want.rows, None if missing else (have or EMPTY).rows)
            )
    silver = layers["silver"]
    out.silver = whole = sum(silver.values(), EMPTY)
    if not busy.intersection(silver) and not busy.intersection(truth):
        indexed = index_state(lake, model)
        if (indexed or EMPTY) != whole or (indexed is None and silver):
            out.disagreements.append(
                Disagreement(None, "the search index", whole.rows, None if indexed is None else indexed.rows)
            )
    return out


# --------------------------------------------------------------------------- the audit's per-tick cost
# An audit reads every partition of every layer (two aggregates over the whole load log and the vectors
# table). A tick that sees nothing changed since the last audit that found everything in agreement skips it;
# a full audit still runs at least this often, whatever the marks say.
FULL_AUDIT_SECONDS = 600.0
AUDITS: dict[str, int] = {"full": 0, "skipped": 0}  # counted for the tests
_gates: dict[Hashable, tuple[Hashable, float]] = {}  # key -> (marks of the last audit in agreement, when)
_gates_lock = threading.Lock()


def layer_marks(conn: psycopg.Connection, lake: Storage, model: str) -> tuple:
    """What changes when any layer the audit reads changes, read without reading a layer: the listing of the
    lake layers' partition files and the index's files (one entry per partition, not per image), the load
    log's newest row id, and PostgreSQL's cumulative insert/update/delete counters of the load log and the
    vectors table (their table ids too: a dropped and recreated table is another). The counters are
    PostgreSQL's statistics, which a writer's backend publishes up to seconds after its commit: a change is
    seen by the first tick after that, and every FULL_AUDIT_SECONDS regardless."""
    files = tuple(
        (e.key, e.size, e.modified_us)
        for prefix in (RAW_MANIFEST, BRONZE_IMAGES, SILVER_EMBEDDINGS)
        for e in lake.list_files(prefix)
    )
    folder = index_dir(model)
    index, missing = lake.stat_many([f"{folder}/{name}" for name in (IDS_FILE, INDEX_FILE, META_FILE)])
    tables = conn.execute(
        """SELECT relname, relid::bigint, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables
           WHERE relname = ANY(%s) AND schemaname = current_schema() ORDER BY relname""",
        ([LOAD_LOG_TABLE, VECTORS_TABLE],),
    ).fetchall()
    (newest,) = conn.execute(f"SELECT max(id) FROM {LOAD_LOG_TABLE}").fetchone()
    conn.rollback()  # end the read-only transaction
    return (
        model,
        files,
        tuple((e.key, e.size, e.modified_us) for e in index),
        tuple(missing),
        tuple(tables),
        newest,
    )


def audit_due(key: Hashable, marks: Hashable, now: float | None = None) -> bool:
    """Whether a tick with these marks must audit: anything changed since the last audit in agreement, that
    audit is FULL_AUDIT_SECONDS old, or there was none (a new process audits at its first tick)."""
    now = time.time() if now is None else now
    with _gates_lock:
        last = _gates.get(key)
    due = last is None or last[0] != marks or now - last[1] >= FULL_AUDIT_SECONDS
    AUDITS["full" if due else "skipped"] += 1
    return due


def audited(key: Hashable, marks: Hashable, in_agreement: bool, now: float | None = None) -> None:
    """Record an audit: marks read before it, and whether it found everything in agreement (an audit that did
    not is run again at every tick, while the repairs it asked for run)."""
    with _gates_lock:
        if in_agreement:
            _gates[key] = (marks, time.time() if now is None else now)
        else:
            _gates.pop(key, None)


# --------------------------------------------------------------------------- a lost checkpoint
def restore_load_log(conn: psycopg.Connection, lake: Storage) -> int:
    """Put back the load log's ``loaded`` rows that the lake's raw manifests hold and the load log
    lost; returns how many. Content that the load log has loaded elsewhere is left alone (the
    content hash is the identity: that partition's stale layers are then repaired by the audit)."""
    manifests = lake_state(lake, RAW_MANIFEST)
    if not manifests:
        return 0
    truth = ledger_state(conn)

    def lost_rows(manifest: LayerState, logged: LayerState) -> bool:
        # a load log ahead of its manifest is a partition being loaded now (its manifest comes after the
        # load log's commit), not a lost checkpoint
        return manifest.rows > logged.rows or (manifest.rows == logged.rows and manifest != logged)

    short = [p for p, s in manifests.items() if s.rows > 0 and lost_rows(s, truth.get(p, EMPTY))]
    lost: dict[Partition, list[dict]] = {}
    for emotion, load_date in sorted(short):
        key = f"{RAW_MANIFEST}/emotion={emotion}/load_date={load_date.isoformat()}/part-0.parquet"
        try:
            rows = pq.read_table(lake.path(key), filesystem=lake.fs).to_pylist()
        except Exception as exc:  # noqa: BLE001 - unreadable: the audit repairs the partition from the load log
            log.warning("%s cannot be read to restore the load log: %s", key, type(exc).__name__)
            continue
        loaded = ledger.loaded_shas(conn, [r["image_id"] for r in rows])
        missing = [r for r in rows if r["image_id"] not in loaded]
        if missing:
            lost[(emotion, load_date)] = missing
    if not lost:
        conn.rollback()  # end the read-only transaction the look-ups opened
        return 0
    restored = 0
    conn.rollback()
    with conn.transaction():  # the ledger lock only when there is something to put back
        ledger.lock(conn)
        for (emotion, load_date), rows in lost.items():
            restored += ledger.restore(conn, emotion, load_date, rows)
    return restored
