"""Ingestion of landing files into the lake: validate, copy, quarantine, log, then clean the source.

Order of operations per batch (nothing lost, nothing twice):

1. read and hash each file, validate layout and content;
2. under the ledger lock: drop versions another run already logged, decide
   ``loaded`` / ``duplicate`` / ``conflict`` / ``quarantined`` (copies of one content:
   ``core/duplicates.py``), copy loaded files to ``raw/images/fer2013/...`` and bad ones to
   ``quarantine/<load_date>/...``, demote a copy another run loaded when a rule says so (a
   label conflict, or the train side of a train/test duplicate), append the ledger rows, commit;
3. only then keep, delete or archive the source files.

A crash before the commit leaves at most lake copies that the retry rewrites;
a crash after it leaves logged files that every later listing skips.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from fer_platform.core import faults, images, ledger
from fer_platform.core.duplicates import Copy, Relabel, decide
from fer_platform.core.errors import one_line
from fer_platform.core.layout import (
    LANDING_ARCHIVE,
    Route,
    quarantine_path,
    raw_image_path,
    route,
    versioned_name,
)
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import FileEntry, FileTooLarge, NotARegularFile, Storage, StorageUnavailable

log = logging.getLogger(__name__)

ON_SUCCESS = ("keep", "delete", "archive")
BATCH = 500


@dataclass(frozen=True)
class Outcome:
    key: str
    status: str  # loaded | duplicate | conflict | quarantined
    reason: str | None
    sha256: str | None
    lake_path: str | None
    size: int


@dataclass
class IngestReport:
    outcomes: list[Outcome] = field(default_factory=list)
    already_logged: list[str] = field(default_factory=list)  # versions a previous run logged
    missing: list[str] = field(default_factory=list)  # asked for, but gone from the landing zone
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    source_errors: list[tuple[str, str]] = field(default_factory=list)  # on_success failures
    demoted: list[Relabel] = field(default_factory=list)  # loaded copies of other runs no longer loaded

    @property
    def demoted_partitions(self) -> list[tuple[str, dt.date]]:
        """(emotion, load_date) of the partitions that lost a loaded copy: their layers are re-derived by the
        convergence audit (the run's own partition by the run itself)."""
        return sorted({(c.emotion, c.load_date) for c in self.demoted})

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def bytes_loaded(self) -> int:
        return sum(o.size for o in self.outcomes if o.status == "loaded")

    @property
    def quarantined(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "quarantined"]


def pending_files(
    landing: Storage, dsn: str, emotion: str | None = None
) -> tuple[list[FileEntry], list[tuple[str, str]]]:
    """Landing files (of ``emotion``, if given) whose current version is not in the ledger yet.

    Returns (pending, ignored) where ignored holds (key, why) for keys that are
    not part of the data set.
    """
    entries = landing.list_files()
    ignored, candidates = [], []
    for e in entries:
        r = route(e.key)
        if r.ignored:
            ignored.append((e.key, r.ignored))
        elif emotion is None or r.emotion == emotion:
            candidates.append(e)
    with connect(dsn) as conn:
        known = ledger.known_versions(conn, [landing.uri(e.key) for e in candidates])
    return [e for e in candidates if (landing.uri(e.key), e.size, e.modified_us) not in known], ignored


def select_files(
    landing: Storage,
    dsn: str,
    emotion: str | None,
    load_date: dt.date,
    today: dt.date,
    keys: Sequence[str] | None = None,
    take_pending: bool = False,
) -> tuple[list[FileEntry], list[str], list[tuple[str, str]]]:
    """The landing files one run loads: (entries, missing keys, ignored (key, why)).

    With ``keys`` (the sensor's file list), exactly those files. Without, the
    pending files of ``emotion``, but only for today's partition (or with
    ``take_pending``, for any): files are picked up on the day they load, and a
    past partition re-derives from the ledger without taking new files.
    """
    if keys is not None:
        wrong = [k for k in keys if route(k).emotion not in (None, emotion)] if emotion else []
        if wrong:
            raise ValueError(
                f"{len(wrong)} file(s) belong to another emotion than '{emotion}', e.g. {wrong[0]}"
            )
        entries, missing = landing.stat_many(keys)
        return entries, missing, []
    if load_date != today and not take_pending:
        return [], [], []
    pending, ignored = pending_files(landing, dsn, emotion)
    return pending, [], ignored


@dataclass
class _Read:
    entry: FileEntry
    route: Route
    data: bytes | None
    sha256: str | None
    problem: str | None
    png: bool = True


def ingest(
    landing: Storage,
    lake: Storage,
    dsn: str,
    files: Sequence[FileEntry],
    load_date: dt.date,
    run_id: str | None,
    on_success: str = "keep",
    progress: Callable[[int, int], None] | None = None,
    max_bytes: int | None = None,
) -> IngestReport:
    """Load ``files`` (landing entries) for ``load_date``; see the module docstring for the order. Files
    larger than ``max_bytes`` are quarantined by their size without being read."""
    if on_success not in ON_SUCCESS:
        raise ValueError(f"on_success must be one of {', '.join(ON_SUCCESS)}, not {on_success!r}")
    report = IngestReport()
    todo = []
    for e in files:
        r = route(e.key)
        if r.ignored:
            report.ignored.append((e.key, r.ignored))
        else:
            todo.append((e, r))
    todo.sort(key=lambda t: t[0].key)  # batches by landing path, never by listing order (duplicates.py)
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        done = _ingest_batch(landing, lake, dsn, batch, load_date, run_id, report, max_bytes)
        faults.point("ingest.committed")
        _clean_sources(landing, done, on_success, load_date, report)
        if progress:
            progress(min(start + BATCH, len(todo)), len(todo))
    return report


def _read(landing: Storage, batch: Sequence[tuple[FileEntry, Route]], max_bytes: int | None) -> list[_Read]:
    """Read and validate a batch. A file's own problem (not a regular file, too large, unreadable, not a
    valid image) becomes its quarantine reason; a store that cannot be reached fails the run
    (StorageUnavailable): its files are not at fault and are retried later."""
    out: list[_Read | None] = [None] * len(batch)
    todo = []
    for i, (entry, r) in enumerate(batch):
        if entry.kind != "file":  # never opened: a link's target may be anything outside the landing zone
            out[i] = _Read(
                entry, r, None, None, f"not a regular file: {entry.kind} (not followed, never read)"
            )
        elif max_bytes is not None and entry.size > max_bytes:
            out[i] = _Read(
                entry,
                r,
                None,
                None,
                f"too large: {entry.size} bytes (the cap is {max_bytes} bytes, FER_MAX_FILE_BYTES); not read",
            )
        else:
            todo.append(i)
    keys = [batch[i][0].key for i in todo]
    try:
        blobs: list[bytes | Exception] = list(landing.read_many(keys, max_bytes=max_bytes))
    except Exception:  # noqa: BLE001 - fall back to one at a time to find the bad one
        blobs = []
        for key in keys:
            try:
                blobs.append(landing.read_bytes(key, max_bytes))
            except Exception as exc:  # noqa: BLE001
                blobs.append(exc)
    store_checked = False
    for i, data in zip(todo, blobs, strict=True):
        entry, r = batch[i]
        if isinstance(data, (FileNotFoundError, NotADirectoryError)):
            if not store_checked:  # one file removed meanwhile, or the whole landing zone gone (unmounted)?
                _check_store(landing, "landing zone", data)
                store_checked = True
            out[i] = _Read(entry, r, None, None, "gone")
            continue
        if isinstance(data, NotARegularFile):
            out[i] = _Read(entry, r, None, None, f"not a regular file: {data} (not followed, never read)")
            continue
        if isinstance(data, FileTooLarge):
            out[i] = _Read(
                entry,
                r,
                None,
                None,
                f"too large: {data} (the cap is {max_bytes} bytes, FER_MAX_FILE_BYTES); not read",
            )
            continue
        if isinstance(data, Exception):
            if not store_checked:  # the store's fault or the file's?
                _check_store(landing, "landing zone", data)
                store_checked = True
            out[i] = _Read(entry, r, None, None, f"unreadable: {type(data).__name__}: {one_line(data)}")
            continue
        problem = r.problem
        if problem is None:
            try:
                images.validate(data, r.name)
            except images.InvalidImage as exc:
                problem = str(exc)
        out[i] = _Read(entry, r, data, images.sha256(data), problem)
    return [o for o in out if o is not None]


def _check_store(store: Storage, what: str, cause: BaseException) -> None:
    """Raise StorageUnavailable (one line) when ``store`` itself cannot be listed: then a file error is the
    store's, not the file's."""
    try:
        if store.local:
            os.listdir(store.root)
        else:
            store.fs.invalidate_cache(store.root)
            store.fs.ls(store.root)
    except FileNotFoundError:
        if store.local:
            raise StorageUnavailable(
                f"the {what} {store.url} is gone ({type(cause).__name__}: "
                f"{one_line(cause)}): nothing was quarantined; its files are retried"
            ) from None
    except Exception as exc:  # noqa: BLE001
        raise StorageUnavailable(
            f"cannot reach the {what} {store.url}: {type(exc).__name__}: {one_line(exc)}; "
            "nothing was quarantined, its files are retried"
        ) from None


def _copy(lake: Storage, copies: list[tuple[str, bytes]]) -> dict[str, str]:
    """Write the lake copies; {lake path: reason} of those that could not be written while the lake itself
    answers (the file's fault, e.g. a name the store refuses). A lake that cannot be reached raises."""
    try:
        lake.write_many(copies)
        return {}
    except Exception as first:  # noqa: BLE001 - find which, one at a time
        _check_store(lake, "lake", first)
    failed = {}
    for path, data in copies:
        try:
            lake.write_bytes(path, data)
        except Exception as exc:  # noqa: BLE001
            _check_store(lake, "lake", exc)
            if not _names_the_file(exc):  # full, read-only, no permission: the lake's state, not the file's
                raise StorageUnavailable(
                    f"cannot write to the lake {lake.url}: {type(exc).__name__}: "
                    f"{one_line(exc)}; nothing was quarantined, its files are retried"
                ) from None
            failed[path] = f"cannot be copied to the lake: {type(exc).__name__}: {one_line(exc)}"
    return failed


def _names_the_file(exc: BaseException) -> bool:
    """Whether a write error is about the file's own name (too long, characters the store refuses)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ)


def _ingest_batch(landing, lake, dsn, batch, load_date, run_id, report, max_bytes=None) -> list[FileEntry]:
    """Log one batch in one transaction; returns the file versions now in the ledger (this run's and
    those an earlier run logged), whose sources may be cleaned."""
    reads = _read(landing, batch, max_bytes)
    for r in reads:
        if r.problem == "gone":
            report.missing.append(r.entry.key)
    reads = [r for r in reads if r.problem != "gone"]
    day = load_date.isoformat()
    with connect(dsn) as conn:
        ledger.keep_statistics(conn)  # before the lookups: the planner sizes the load log by them
        conn.commit()
        with conn.transaction():
            ledger.lock(conn)
            known = ledger.known_versions(conn, [landing.uri(r.entry.key) for r in reads])
            fresh = []
            for r in reads:
                if (landing.uri(r.entry.key), r.entry.size, r.entry.modified_us) in known:
                    report.already_logged.append(r.entry.key)
                else:
                    fresh.append(r)
            good = [r for r in fresh if r.problem is None]
            new_copies = {
                r.entry.key: Copy(r.sha256, r.entry.key, r.route.emotion, r.route.split) for r in good
            }
            logged = {
                sha: [Copy(**row) for row in rows]
                for sha, rows in ledger.copies_of(conn, [r.sha256 for r in good]).items()
            }
            decision = decide(logged, list(new_copies.values()))
            wanted_paths = {}
            for r in fresh:
                if r.problem is None:
                    wanted_paths[r.entry.key] = raw_image_path(r.route.split, r.route.emotion, r.route.name)
                else:
                    wanted_paths[r.entry.key] = quarantine_path(day, r.entry.key)
            owners = ledger.lake_path_owners(conn, wanted_paths.values())

            lake_paths: dict[str, str | None] = {}  # landing key -> its lake copy (loaded or quarantined)
            copies = []
            for r in fresh:
                key = r.entry.key
                path = wanted_paths[key]
                if r.problem is None and decision.status(new_copies[key]) != "loaded":
                    path = None  # a duplicate or a conflicted copy is not copied
                if path is not None and r.data is not None:
                    if path in owners and owners[path] != r.sha256:
                        path = versioned_name(path, r.sha256 or "unreadable")
                    owners[path] = r.sha256
                    copies.append((path, r.data))
                else:
                    path = None
                lake_paths[key] = path
            decided, changes = decision.resolve(lake_paths)
            rows, outcomes = [], []
            for r in fresh:
                key = r.entry.key
                status, reason = decided[key] if r.problem is None else ("quarantined", r.problem)
                path = lake_paths[key]
                rows.append(
                    ledger.LedgerRow(
                        source=landing.uri(key),
                        path=key,
                        size=r.entry.size,
                        modified_at=r.entry.modified,
                        sha256=r.sha256,
                        emotion=r.route.emotion,
                        split=r.route.split,
                        load_date=load_date,
                        status=status,
                        reason=reason,
                        lake_path=path,
                        run_id=run_id,
                    )
                )
                outcomes.append(Outcome(key, status, reason, r.sha256, path, r.entry.size))
            failed = _copy(lake, copies)
            if failed:  # the file's fault (the lake answers): quarantined with the reason, not loaded
                rows = [
                    replace(row, status="quarantined", reason=failed[row.lake_path], lake_path=None)
                    if row.lake_path in failed
                    else row
                    for row in rows
                ]
                outcomes = [
                    replace(o, status="quarantined", reason=failed[o.lake_path], lake_path=None)
                    if o.lake_path in failed
                    else o
                    for o in outcomes
                ]
            # a loaded copy is demoted only when the copy that replaces it is loaded now (not when its lake
            # copy failed): a content never loses its one loaded copy to a write error
            kept = {row.sha256 for row in rows if row.status == "loaded"}
            changes = [c for c in changes if c.sha256 in kept or c.status == "conflict"]
            ledger.relabel(conn, [(c.id, c.status, c.reason) for c in changes])
            ledger.insert(conn, rows)
    report.demoted.extend(c for c in changes if c.was_loaded)
    report.outcomes.extend(outcomes)
    return [r.entry for r in reads]  # every read version is in the ledger now (logged here or before)


def _clean_sources(
    landing: Storage, logged: Sequence[FileEntry], on_success: str, load_date: dt.date, report
) -> None:
    """After the commit: delete or archive the sources of logged file versions (all statuses). A key
    whose file changed since it was read (overwritten meanwhile) holds a version the ledger does not
    have: it stays for a later load."""
    if on_success == "keep" or not logged:
        return
    current = {e.key: e for e in landing.stat_many([e.key for e in logged])[0]}
    for e in logged:
        now = current.get(e.key)
        if now is None:
            continue
        if now.kind != "file":  # a link (or a path through one) is quarantined and left where it is: never
            continue  # deleted or moved, which would act on what lies outside the landing zone
        if (now.size, now.modified_us) != (e.size, e.modified_us):
            log.warning("%s changed since it was loaded: left in place for the next load", e.key)
            continue
        try:
            if on_success == "delete":
                landing.delete(e.key)
            else:
                landing.move(e.key, f"{LANDING_ARCHIVE}/{load_date.isoformat()}/{e.key}")
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - the load is committed; report and go on
            report.source_errors.append((e.key, f"{type(exc).__name__}: {exc}"))
            log.warning("could not %s %s after loading it: %s", on_success, e.key, exc)
