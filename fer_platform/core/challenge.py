"""The FER2013 challenge CSV as a landing source: expanded, streamed, into images that load like any other.

``fer2013.csv`` (``emotion,pixels,Usage``; emotion 0-6 = angry, disgust, fear, happy, sad, surprise,
neutral; 2,304 space-separated pixels 0-255, a 48x48 grayscale image row by row; Usage Training,
PublicTest or PrivateTest) is read line by line, never whole. Each good row becomes a deterministic 48x48
'L' PNG (the same pixels give the same bytes, so content dedup works across CSVs and image files) written to
the landing zone's staging folder in the Kaggle layout::

    _csv/<csv>/<split>/<emotion>/<Usage>_<row>.png      (Training -> train, PublicTest/PrivateTest -> test)

where the usual pipeline (sensor, demo, bulk-load) loads it. Rows are numbered from 1 after the header:
row n is line n + 1 of the file. A malformed row goes to the load log as ``quarantined`` (source
``<csv uri>#row=<n>``, its reason) and its line to ``quarantine/<day>/_csv/<csv>/``; the good rows load.
A ``emotion,pixels`` CSV (no Usage column) is expanded without a split; a CSV of any other shape is
quarantined as a whole.

Exactly once: the checkpoint table holds, per CSV source, the bytes and rows consumed, the sha256 of that
prefix and the version (size, modification time) fully expanded. The same version expands nothing; a new
version whose prefix hashes the same (an appended CSV) resumes after it; any other starts again from the
first row (its rows that were loaded before are then ``duplicate``). Staged files are written before the
checkpoint moves (in the same transaction as the bad rows' load-log rows), so a crash at most rewrites
identical files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import psycopg
from PIL import Image

from fer_platform.core import faults, ledger
from fer_platform.core.layout import USAGES, csv_staging, is_csv_source, quarantine_path
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import CSV_CHECKPOINT_TABLE, LOAD_LOG_TABLE
from fer_platform.core.storage import FileEntry, Storage, to_us

log = logging.getLogger(__name__)

EMOTION_CODES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013's 0-6
USAGE_SPLIT = dict(zip(USAGES, ("train", "test", "test"), strict=True))
HEADER = ("emotion", "pixels", "usage")
HEADER_NO_USAGE = ("emotion", "pixels")
SIDE = 48
PIXELS = SIDE * SIDE
MAX_LINE = 64 * 1024  # a row is at most ~9.3 KB (2,304 three-digit values); a longer line is not a row
BATCH = 2000  # rows per checkpoint step
LOGGED_ROWS = 20  # bad rows told one line each; beyond, one summary line (every one is in the load log)
_CSV_LOCK = 7_210_014  # pg_advisory_lock(class, hashtext(source)): one expansion of a CSV at a time
_EMPTY_SHA = hashlib.sha256().hexdigest()


class BadRow(ValueError):
    """A malformed row; the message is the reason (without the row number)."""

    def __init__(self, reason: str, emotion: str | None = None, split: str | None = None):
        super().__init__(reason)
        self.emotion, self.split = emotion, split


@dataclass
class CsvReport:
    """What one expansion of a CSV did."""

    source: str
    staging: str
    status: str = "expanded"  # expanded | unchanged (this version was expanded before) | quarantined
    reason: str | None = None  # why the whole CSV is quarantined
    good: int = 0  # rows staged as images by this expansion
    quarantined: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    skipped: int = 0  # rows an earlier expansion consumed
    resumed: bool = False  # an appended CSV: only the rows after the consumed prefix were read
    pending_tail: bool = False  # an unterminated last line that does not parse: left for a later version
    rows_per_second: float | None = None

    def summary(self) -> dict:
        """What a command prints or returns as JSON."""
        return {
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "rows_staged": self.good,
            "rows_quarantined": [reason for _row, reason in self.quarantined],
            "rows_skipped": self.skipped,
            "line": self.line(),
        }

    def line(self) -> str:
        """One line for a person."""
        if self.status == "quarantined":
            return f"{self.source}: quarantined as a whole: {self.reason}"
        if self.status == "unchanged":
            return f"{self.source}: already expanded ({self.skipped} rows), nothing new"
        text = (
            f"{self.source}: {self.good} row(s) staged as images under {self.staging}/, "
            f"{len(self.quarantined)} quarantined, {self.skipped} skipped as already expanded"
        )
        if self.pending_tail:
            text += "; the unterminated last line does not parse and waits for the rest of the file"
        return text


# ------------------------------------------------------------------------------------------------ rows
def parse_row(line: bytes, with_usage: bool = True) -> tuple[str, str | None, str | None, np.ndarray]:
    """(emotion, Usage, split, pixels as uint8) of one data line; BadRow with the reason otherwise."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadRow("not ASCII text") from None
    fields = [f.strip().strip('"').strip() for f in text.split(",")]
    expected = 3 if with_usage else 2
    if len(fields) != expected:
        names = ",".join(("emotion", "pixels", "Usage")[:expected])
        raise BadRow(f"{len(fields)} field(s) (expected {expected}: {names})")
    code = fields[0]
    if not (len(code) == 1 and "0" <= code <= "6"):
        raise BadRow(f"unknown emotion code '{code[:20]}' (expected 0-6)")
    emotion = EMOTION_CODES[int(code)]
    usage = fields[2] if with_usage else None
    split = None
    if with_usage:
        split = USAGE_SPLIT.get(usage)
        if split is None:
            raise BadRow(f"unknown Usage '{usage[:20]}' (expected {', '.join(USAGE_SPLIT)})", emotion=emotion)
    values = _pixels(fields[1])
    if isinstance(values, int):
        raise BadRow(f"{values} pixels (expected {PIXELS})", emotion, split)
    if isinstance(values, str):
        raise BadRow(f"pixel value '{values[:20]}' is not an integer", emotion, split)
    out_of_range = (values < 0) | (values > 255)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise BadRow(f"pixel {i + 1} is {values[i]} (expected 0-255)", emotion, split)
    return emotion, usage, split, values.astype(np.uint8)


def _pixels(text: str) -> np.ndarray | int | str:
    """The pixel values (int64), or the count when it is not 2,304, or the first token that is not an
    integer. Digits and spaces only (every real row) are parsed by numpy in one call."""
    if not text.translate(_NOT_PIXEL_TEXT):
        values = np.fromstring(text, dtype=np.int64, sep=" ")  # safe: nothing but digits and spaces
        return values if len(values) == PIXELS else len(values)
    tokens = text.split()
    if len(tokens) != PIXELS:
        return len(tokens)
    bad = next((t for t in tokens if not _is_int(t)), None)
    return bad if bad is not None else np.array([int(t) for t in tokens], dtype=np.int64)


_NOT_PIXEL_TEXT = str.maketrans("", "", "0123456789 ")


def _is_int(token: str) -> bool:
    try:
        int(token)
        return True
    except ValueError:
        return False


def row_png(pixels: np.ndarray) -> bytes:
    """The 48x48 grayscale PNG of a row's pixels: the same pixels always give the same bytes."""
    buf = io.BytesIO()
    Image.frombytes("L", (SIDE, SIDE), pixels.tobytes()).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def staged_key(staging: str, split: str | None, emotion: str, usage: str | None, row: int) -> str:
    """Where a good row's image is staged: the Kaggle layout, named like Kaggle's JPEGs (Usage_row)."""
    return posixpath.join(staging, *([split] if split else []), emotion, f"{usage or 'row'}_{row}.png")


def _header(line: bytes) -> tuple[bool, str | None]:
    """(with Usage, None) for a challenge header, else (False, why the CSV is not one)."""
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return False, "not the FER2013 challenge CSV: its first line is not text"
    names = tuple(f.strip().strip('"').strip().lower() for f in text.split(","))
    if names == HEADER:
        return True, None
    if names == HEADER_NO_USAGE:
        return False, None
    shown = text if len(text) <= 80 else text[:80] + "..."
    return False, f"not the FER2013 challenge CSV: header '{shown}' (expected emotion,pixels,Usage)"


# ------------------------------------------------------------------------------------------- checkpoint
@dataclass(frozen=True)
class Checkpoint:
    bytes_consumed: int
    rows_consumed: int
    prefix_sha256: str
    size: int | None
    modified_us: int | None


def checkpoint(conn: psycopg.Connection, source: str) -> Checkpoint | None:
    row = conn.execute(
        f"SELECT bytes_consumed, rows_consumed, prefix_sha256, size, modified_at "
        f"FROM {CSV_CHECKPOINT_TABLE} WHERE source = %s",
        (source,),
    ).fetchone()
    if row is None:
        return None
    return Checkpoint(int(row[0]), int(row[1]), row[2], row[3], to_us(row[4]) if row[4] else None)


def expanded_versions(conn: psycopg.Connection, sources: list[str]) -> set[tuple[str, int, int]]:
    """The (source, size, modified) versions among ``sources`` that are fully expanded."""
    rows = conn.execute(
        f"SELECT source, size, modified_at FROM {CSV_CHECKPOINT_TABLE} "
        "WHERE source = ANY(%s) AND size IS NOT NULL",
        (sources,),
    ).fetchall()
    return {(s, int(n), to_us(m)) for s, n, m in rows}


def _save(conn, source: str, consumed: int, rows: int, sha: str, version: tuple[int, dt.datetime] | None):
    conn.execute(
        f"""INSERT INTO {CSV_CHECKPOINT_TABLE}
                (source, bytes_consumed, rows_consumed, prefix_sha256, size, modified_at)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (source) DO UPDATE SET bytes_consumed = EXCLUDED.bytes_consumed,
                rows_consumed = EXCLUDED.rows_consumed, prefix_sha256 = EXCLUDED.prefix_sha256,
                size = EXCLUDED.size, modified_at = EXCLUDED.modified_at, updated_at = now()""",
        (source, consumed, rows, sha, *(version or (None, None))),
    )


# -------------------------------------------------------------------------------------------- expansion
def landing_csvs(entries: list[FileEntry]) -> list[FileEntry]:
    """The landing entries that are CSVs to expand (a link or other special file named .csv too: its
    expansion quarantines it, never opening it)."""
    return [e for e in entries if is_csv_source(e.key)]


def unexpanded(landing: Storage, dsn: str, entries: list[FileEntry]) -> list[FileEntry]:
    """The landing CSVs whose current version is not fully expanded yet (what the sensor launches)."""
    csvs = landing_csvs(entries)
    if not csvs:
        return []
    with connect(dsn) as conn:
        done = expanded_versions(conn, [landing.uri(e.key) for e in csvs])
    return [e for e in csvs if (landing.uri(e.key), e.size, e.modified_us) not in done]


def expand_landing(
    landing: Storage, lake: Storage, dsn: str, load_date: dt.date, run_id: str | None = None
) -> list[CsvReport]:
    """Expand every landing CSV whose current version is not expanded yet (what demo and bulk-load do
    before they list the landing zone)."""
    return [
        expand_csv(landing, e.key, landing, lake, dsn, load_date, run_id)
        for e in unexpanded(landing, dsn, landing.list_files())
    ]


def expand_csv(
    source: Storage,
    key: str,
    landing: Storage,
    lake: Storage,
    dsn: str,
    load_date: dt.date,
    run_id: str | None = None,
    staging: str | None = None,
) -> CsvReport:
    """Expand the CSV ``key`` of ``source`` (the landing zone, or a folder on disk for `load-csv`) into
    ``landing``'s staging folder; see the module docstring for the rules."""
    uri = source.uri(key)
    report = CsvReport(uri, staging or csv_staging(key if source.url == landing.url else uri))
    entries, missing = source.stat_many([key])
    if missing:
        raise FileNotFoundError(f"{uri}: no such file")
    entry = entries[0]
    if entry.kind != "file":
        return _quarantine_whole(dsn, report, entry, load_date, run_id, f"not a regular file: {entry.kind}")
    version = (entry.size, entry.modified)
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_CSV_LOCK, uri))
        try:
            cp = checkpoint(conn, uri)  # read under the lock: an expansion that just ended is seen
            if cp and (cp.size, cp.modified_us) == (entry.size, entry.modified_us):
                report.status, report.skipped = "unchanged", cp.rows_consumed
                return report
            _expand(source, key, entry, version, cp, conn, landing, lake, load_date, run_id, report)
        finally:
            with contextlib.suppress(psycopg.Error):  # a lost connection releases it anyway
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_CSV_LOCK, uri))
    return report


class _Reader:
    """Lines of at most ``limit`` bytes over any binary file object (an fsspec file's readline takes no
    size), read in blocks: never more than a block and a line in memory."""

    def __init__(self, f: BinaryIO, block: int = 1 << 18):
        self._f, self._block, self._buf, self._pos = f, block, b"", 0

    def _fill(self) -> bool:
        more = self._f.read(self._block)
        self._buf, self._pos = self._buf[self._pos :] + more, 0
        return bool(more)

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._fill()
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def readline(self, limit: int) -> bytes:
        while True:
            end = self._buf.find(b"\n", self._pos, self._pos + limit)
            if end >= 0:
                return self.read(end + 1 - self._pos)
            if len(self._buf) - self._pos >= limit or not self._fill():
                return self.read(min(limit, len(self._buf) - self._pos))

    def seek0(self) -> None:
        self._f.seek(0)
        self._buf, self._pos = b"", 0


def _lines(f: _Reader, start: int, limit: int, digest) -> Iterator[tuple[bytes, bool, int]]:
    """(line, terminated, end offset) from ``start`` up to ``limit`` bytes. A terminated line is added to
    ``digest`` here (an unterminated last line only once the caller consumes it). A line longer than
    MAX_LINE comes back as its first MAX_LINE + 1 bytes, terminated (it can never become a row, so it is
    consumed whole); the rest is read past, never kept."""
    pos = start
    while pos < limit:
        line = f.readline(min(MAX_LINE + 1, limit - pos))
        if not line:
            return
        pos += len(line)
        if len(line) > MAX_LINE and not line.endswith(b"\n"):  # too long: read past the rest of it
            digest.update(line)  # consumed whatever follows: it can never become a row
            tail = line
            while pos < limit and not tail.endswith(b"\n"):
                tail = f.readline(min(MAX_LINE, limit - pos))
                if not tail:
                    break
                pos += len(tail)
                digest.update(tail)
            yield line, True, pos
            continue
        terminated = line.endswith(b"\n")
        if terminated:
            digest.update(line)
        yield line, terminated, pos


def _expand(source, key, entry, version, cp, conn, landing, lake, load_date, run_id, report) -> None:
    started = dt.datetime.now(dt.timezone.utc)
    uri = report.source
    day = load_date.isoformat()
    with source.open_read(key) as raw:
        f = _Reader(raw)
        digest = hashlib.sha256()
        start, row = 0, 0
        if cp and 0 < cp.bytes_consumed <= entry.size:
            prefix = hashlib.sha256()
            left = cp.bytes_consumed
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                prefix.update(chunk)
                left -= len(chunk)
            if not left and prefix.hexdigest() == cp.prefix_sha256:
                start, row, digest = cp.bytes_consumed, cp.rows_consumed, prefix
                report.skipped, report.resumed = cp.rows_consumed, True
            else:  # rewritten: from the first row again
                f.seek0()
        lines = _lines(f, start, entry.size, digest)
        with_usage = True
        if start == 0:
            first = next(lines, None)
            header = first[0] if first else b""
            with_usage, why = _header(header) if header else (False, "an empty file, not a CSV")
            if why:
                _quarantine_whole(None, report, entry, load_date, run_id, why, conn=conn, version=version)
                return
            if not first[1]:
                digest.update(header)
            start = first[2]
        consumed = start
        staged: list[tuple[str, bytes]] = []
        bad: list[ledger.LedgerRow] = []
        bad_lines: list[tuple[str, bytes]] = []
        for line, terminated, end in lines:
            row += 1
            if not line.strip():  # a blank line: numbered, nothing to load
                if not terminated:
                    digest.update(line)
                consumed = end
                continue
            try:
                emotion, usage, split, pixels = parse_row(line[:MAX_LINE], with_usage)
                if len(line) > MAX_LINE:
                    raise BadRow(f"line longer than {MAX_LINE} bytes")
            except BadRow as exc:
                if not terminated:  # the last line, maybe still being written: waits for a later version
                    report.pending_tail = True
                    row -= 1
                    break
                reason = f"row {row}: {exc}"
                report.quarantined.append((row, reason))
                if len(report.quarantined) <= LOGGED_ROWS:
                    log.warning("%s: quarantined %s", uri, reason)
                lake_path = quarantine_path(
                    day, f"{report.staging}/row_{row}.{hashlib.sha256(line).hexdigest()[:12]}.csv"
                )
                bad_lines.append((lake_path, line))
                bad.append(
                    ledger.LedgerRow(
                        source=f"{uri}#row={row}",
                        path=f"{key}#row={row}",
                        size=len(line),
                        modified_at=entry.modified,
                        sha256=hashlib.sha256(line).hexdigest(),
                        emotion=exc.emotion,
                        split=exc.split,
                        load_date=load_date,
                        status="quarantined",
                        reason=reason,
                        lake_path=lake_path,
                        run_id=run_id,
                    )
                )
            else:
                staged.append((staged_key(report.staging, split, emotion, usage, row), row_png(pixels)))
                report.good += 1
            if not terminated:  # the last line, complete as it is
                digest.update(line)
            consumed = end
            if len(staged) + len(bad) >= BATCH:
                _commit(conn, landing, lake, staged, bad, bad_lines, uri, consumed, row, digest, None)
                staged, bad, bad_lines = [], [], []
        done = None if report.pending_tail else version
        _commit(conn, landing, lake, staged, bad, bad_lines, uri, consumed, row, digest, done)
    if len(report.quarantined) > LOGGED_ROWS:
        log.warning(
            "%s: %d row(s) quarantined in all (the first %d above; every one is in the load log)",
            uri,
            len(report.quarantined),
            LOGGED_ROWS,
        )
    seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    rows = report.good + len(report.quarantined)
    report.rows_per_second = round(rows / seconds, 1) if seconds > 0 and rows else None


def _commit(conn, landing, lake, staged, bad, bad_lines, uri, consumed, rows, digest, version) -> None:
    """Staged images and quarantined lines first, then the bad rows' load-log rows and the checkpoint in one
    transaction: a crash in between rewrites the same files on the next expansion."""
    if staged:
        landing.write_many(staged)
    if bad_lines:
        lake.write_many(bad_lines)
    faults.point("csv.staged")
    with conn.transaction():
        ledger.insert(conn, bad)
        _save(conn, uri, consumed, rows, digest.copy().hexdigest(), version)


def _quarantine_whole(dsn, report, entry, load_date, run_id, reason, conn=None, version=None) -> CsvReport:
    """A CSV of another shape (or not a regular file): one quarantined load-log row with the reason; the
    file stays where it is. The checkpoint records the version, so it is told once."""
    report.status, report.reason = "quarantined", reason
    log.warning("%s: quarantined as a whole: %s", report.source, reason)
    row = ledger.LedgerRow(
        source=report.source,
        path=entry.key,
        size=entry.size,
        modified_at=entry.modified,
        sha256=None,
        emotion=None,
        split=None,
        load_date=load_date,
        status="quarantined",
        reason=reason,
        lake_path=None,
        run_id=run_id,
    )

    def record(c):
        with c.transaction():
            known = ledger.known_versions(c, [report.source])
            if (report.source, entry.size, entry.modified_us) not in known:
                ledger.insert(c, [row])
            _save(c, report.source, 0, 0, _EMPTY_SHA, version or (entry.size, entry.modified))

    if conn is not None:
        record(conn)
    else:
        with connect(dsn) as c:
            record(c)
    return report


def load_log_rows(conn: psycopg.Connection, source: str) -> list[dict]:
    """The load-log rows of a CSV's rows (``<source>#row=<n>``) and of the CSV itself."""
    cur = conn.execute(
        f"SELECT source, status, reason, lake_path, emotion, split FROM {LOAD_LOG_TABLE} "
        "WHERE source = %s OR starts_with(source, %s) ORDER BY id",
        (source, f"{source}#row="),
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
