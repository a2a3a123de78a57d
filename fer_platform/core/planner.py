"""Planning pickups: which landing files are due, and which partition run takes each.

The landing sensor's tick; the demo plans with it too, so both decide the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fer_platform.core import ledger
from fer_platform.core.layout import EMOTIONS, route
from fer_platform.core.ledger import Seen, Version
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import FileEntry, Storage

# what the load log holds of some files (``plan_tick``'s ``known``)
KnownFn = Callable[[list[FileEntry]], set[Version]]


def versions(landing: Storage, entries: Sequence[FileEntry]) -> list[Version]:
    return [(landing.uri(e.key), e.size, e.modified_us) for e in entries]


# --------------------------------------------------------------------------- the landing sensor's tick
@dataclass(frozen=True)
class AutoLoaderSettings:
    max_files_per_tick: int = 1000  # like the auto-loader's maxFilesPerTrigger
    include_existing_files: bool = True  # files already there at the first tick load too
    settle_seconds: float = 5.0  # files modified more recently than this may still be written: they wait
    on_success: str = "keep"  # keep | delete | archive the source once its load is committed
    retry_after_seconds: float = 300.0  # a file whose run failed is asked for again this long after
    max_attempts: int = 3  # runs that may fail on a file before the sensor leaves it to a person


@dataclass(frozen=True)
class Watermark:
    """The sensor cursor: the newest modification time handed to a run, the keys at that instant, and
    (``include_existing_files=false``) the instant before which files are not the sensor's.

    It orders the work (new files first come beyond the watermark) and marks where the sensor
    started; it never decides alone what is loaded: the load log and the runs in flight do.
    """

    us: int = -1
    keys: frozenset[str] = frozenset()
    started: bool = False
    since_us: int = -1

    def covers(self, e: FileEntry) -> bool:
        return e.modified_us < self.us or (e.modified_us == self.us and e.key in self.keys)

    def to_json(self) -> str:
        return json.dumps({"v": 2, "us": self.us, "keys": sorted(self.keys), "since": self.since_us})

    @classmethod
    def from_json(cls, text: str | None) -> "Watermark":
        """The cursor's watermark; a missing or unreadable cursor is a lost one (the load log decides)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(int(data["us"]), frozenset(data["keys"]), True, int(data.get("since", -1)))
        except (ValueError, KeyError, TypeError):
            return cls()

    def advanced(self, covered: Sequence[FileEntry]) -> "Watermark":
        """The watermark that also covers ``covered``: files sorted by (mtime, key) that
        follow this watermark without a gap."""
        if not covered:
            return Watermark(self.us, self.keys, True, self.since_us)
        top = max(e.modified_us for e in covered)
        at_top = {e.key for e in covered if e.modified_us == top}
        if top == self.us:
            at_top |= self.keys
        return Watermark(top, frozenset(at_top), True, self.since_us)


@dataclass(frozen=True)
class Attempts:
    """Earlier runs of the sensor that failed on a file: how many, and when the last one ended."""

    failed: int = 0
    last_end_us: int = 0


@dataclass
class Tick:
    batches: list[tuple[str | None, list[FileEntry], int]]  # (emotion or None for triage, files, attempt)
    cursor: Watermark
    new: int = 0  # files not in the load log, beyond the watermark
    retried: int = (
        0  # files not in the load log below it: a failed run's, or one that came in with an old mtime
    )
    deferred: int = 0  # still being written
    capped: int = 0  # left for the next tick by max_files_per_tick
    in_flight: int = 0  # carried by a run of the sensor that has not finished
    waiting_retry: int = 0  # a run failed on them less than retry_after_seconds ago
    given_up: list[str] = field(default_factory=list)  # runs failed on them max_attempts times
    already_logged: int = 0
    ignored: int = 0
    reused: bool = False  # the previous idle tick's plan, nothing it read having changed (plan_landing)

    @property
    def files(self) -> int:
        return sum(len(f) for _, f, _ in self.batches)


def plan_tick(
    landing: Storage,
    listing: Iterable[FileEntry],
    known: Callable[[list[FileEntry]], set[Version]],
    cursor: Watermark,
    settings: AutoLoaderSettings,
    now_us: int,
    in_flight: set[str] | frozenset[str] = frozenset(),
    attempts: dict[str, Attempts] | None = None,
    oldest_logged_us: int | None = None,
) -> Tick:
    """What one sensor tick hands to runs.

    Every settled file whose version the load log does not hold and that no unfinished run of the
    sensor carries is due: first the ones below the watermark (a failed run's files, ``retry_after``
    apart and at most ``max_attempts`` times; files that came in with an old modification time),
    then the new ones beyond it, oldest first, at most ``max_files_per_tick``, grouped by emotion.
    ``oldest_logged_us`` (the oldest file version in the load log, None if it has none) rebuilds
    ``include_existing_files=false``'s starting point when the cursor is lost.
    """
    attempts = attempts or {}
    entries, ignored = [], 0
    for e in listing:
        if route(e.key).ignored:
            ignored += 1
        else:
            entries.append(e)
    if not cursor.started and not settings.include_existing_files:
        if oldest_logged_us is None:  # the very first start: what is there now is not the sensor's
            start = Watermark().advanced(entries)
            return Tick([], Watermark(start.us, start.keys, True, max(start.us, now_us)), ignored=ignored)
        cursor = Watermark(since_us=oldest_logged_us - 1)  # a lost cursor: the load log says where it began
    elif not cursor.started:
        cursor = Watermark(since_us=-1)
    settle_us = int(settings.settle_seconds * 1_000_000)
    mine = [e for e in entries if e.modified_us > cursor.since_us]
    settled = [e for e in mine if e.modified_us <= now_us - settle_us]
    logged = known(settled) if settled else set()
    tick = Tick([], cursor, deferred=len(mine) - len(settled), ignored=ignored)
    due_old, due_new, given_up = [], [], []
    base = landing.uri() + "/"  # landing.uri(key) of a listed key (listed keys have no outer slashes)
    for e in settled:  # unsorted: an idle tick sorts nothing; what is due is sorted below
        if (base + e.key, e.size, e.modified_us) in logged:
            tick.already_logged += 1
        elif e.key in in_flight:
            tick.in_flight += 1
        elif not cursor.covers(e):
            due_new.append(e)
        else:
            a = attempts.get(e.key, Attempts())
            if a.failed >= settings.max_attempts:
                given_up.append(e)
            elif a.failed and now_us - a.last_end_us < settings.retry_after_seconds * 1_000_000:
                tick.waiting_retry += 1
            else:
                due_old.append(e)
    oldest_first = lambda e: (e.modified_us, e.key)  # noqa: E731
    due_old.sort(key=oldest_first)
    due_new.sort(key=oldest_first)
    tick.given_up = [e.key for e in sorted(given_up, key=oldest_first)]
    taken = (due_old + due_new)[: settings.max_files_per_tick]
    tick.retried = min(len(due_old), len(taken))
    tick.new = len(due_new)
    tick.capped = len(due_old) + len(due_new) - len(taken)
    groups: dict[str | None, list[FileEntry]] = defaultdict(list)
    for e in taken:
        groups[route(e.key).emotion].append(e)
    for emo in (*EMOTIONS, None):
        if groups.get(emo):
            attempt = 1 + max(attempts.get(e.key, Attempts()).failed for e in groups[emo])
            tick.batches.append((emo, groups[emo], attempt))
    # The watermark advances over the longest run, oldest first, of new files that were taken, are in
    # the load log or are in flight; never past a file left for later (capped, or still being written).
    taken_keys = {e.key for e in taken}

    def done(e: FileEntry) -> bool:
        return e.key in taken_keys or e.key in in_flight or (base + e.key, e.size, e.modified_us) in logged

    top, at_top = cursor.us, cursor.keys  # not cursor.covers(e), inline: it runs over every listed file
    beyond = [e for e in mine if e.modified_us > top or (e.modified_us == top and e.key not in at_top)]
    prefix = []
    for e in sorted(beyond, key=oldest_first):
        if not done(e):
            break
        prefix.append(e)
    tick.cursor = cursor.advanced(prefix)
    return tick


# --------------------------------------------------------------------------- the sensor's memory
# Once in this long the memory is not trusted: the tick checks every settled file against the load log and
# writes the memory anew (the cost of a tick without memory, once an hour).
FULL_CHECK_SECONDS = 3600.0
_memory: dict[tuple[str, str], tuple[str, Seen]] = {}  # (dsn, landing root) -> (token, memory)
_memory_lock = threading.Lock()


@dataclass
class LandingMemory:
    """The landing file versions earlier ticks found in the load log, per landing root: a tick asks the load
    log (one query for the batch) only about settled files whose (key, size, mtime) the memory does not hold,
    so an idle tick costs the listing and a set lookup per file, whatever the load log's size.

    The memory lives in PostgreSQL next to the load log (``landing_seen``: it survives a restart, and a
    database restored from a dump restores both together); a long-lived process keeps a copy and reads the
    table again only when its token changed. Nothing is lost by it: only versions the load log holds are
    remembered, a version changed in any of key, size or mtime is asked about (so a file copied in with an
    old mtime is), a file gone from the listing leaves the memory, deleting load-log rows forgets the whole
    memory (a trigger), and every ``full_check_seconds`` the memory is rebuilt from the load log.
    """

    dsn: str
    landing: Storage
    full_check_seconds: float = FULL_CHECK_SECONDS
    remembered: int = 0  # this tick: settled files the memory answered for
    asked: int = 0  # settled files asked about in the load log
    full: bool = False  # whether this tick checked everything against the load log
    token: str | None = None  # the memory's token after this tick

    def trusted_token(self) -> str | None:
        """The memory's token when it is there and not due for its full check, else None (one query)."""
        with connect(self.dsn) as conn:
            state = ledger.seen_token(conn, self.landing.uri())
        if state is None:
            return None
        age = (dt.datetime.now(dt.timezone.utc) - state[1]).total_seconds()
        return None if age > self.full_check_seconds else state[0]

    def known(self, listing: Sequence[FileEntry]) -> Callable[[list[FileEntry]], set[Version]]:
        """``plan_tick``'s ``known`` for a tick whose whole listing is ``listing``."""
        present = {e.key for e in listing}
        return lambda entries: self._known(present, entries)

    def _known(self, present: set[str], entries: Sequence[FileEntry]) -> set[Version]:
        root = self.landing.uri()
        base = root + "/"  # landing.uri(key) of a listed key
        with connect(self.dsn) as conn:
            state = ledger.seen_token(conn, root)
            age = None if state is None else (dt.datetime.now(dt.timezone.utc) - state[1]).total_seconds()
            self.full = state is None or age is None or age > self.full_check_seconds
            seen: Seen = {}
            if not self.full:
                with _memory_lock:
                    cached = _memory.get((self.dsn, root))
                seen = cached[1] if cached and cached[0] == state[0] else ledger.seen_versions(conn, root)
            ask, known = [], set()
            for e in entries:
                if seen.get(e.key) == (e.size, e.modified_us):
                    known.add((base + e.key, e.size, e.modified_us))
                else:
                    ask.append(e)
            logged = ledger.known_versions(conn, [base + e.key for e in ask]) if ask else set()
            known |= logged
            self.remembered, self.asked = len(entries) - len(ask), len(ask)
            found = [
                (e.key, e.size, e.modified_us) for e in ask if (base + e.key, e.size, e.modified_us) in logged
            ]
            drop = [k for k in seen if k not in present]
            if self.full or found or drop:
                token = uuid.uuid4().hex
                ledger.remember_seen(conn, root, token, found, drop, replace=self.full, verified=self.full)
                seen = {} if self.full else seen  # changed in place: the write above succeeded
                for k in drop:
                    seen.pop(k, None)
                seen.update((k, (n, us)) for k, n, us in found)
                with _memory_lock:
                    _memory[(self.dsn, root)] = (token, seen)
                self.token = token
            elif state is not None:
                with _memory_lock:
                    _memory[(self.dsn, root)] = (state[0], seen)
                self.token = state[0]
        return known


# --------------------------------------------------------------------------- an idle tick, again
# (landing root) -> what the last idle tick read: the listing's generation (core/listing.py), the memory's
# token, the settings, the cursor it left; and its counts
_idle: dict[tuple[str, str], tuple[int, str, AutoLoaderSettings, Watermark, int, int]] = {}


def plan_landing(
    landing: Storage,
    listing: Sequence[FileEntry],
    generation: int | None,
    memory: LandingMemory,
    cursor: Watermark,
    settings: AutoLoaderSettings,
    now_us: int,
    in_flight: set[str] | frozenset[str] = frozenset(),
    attempts: dict[str, Attempts] | None = None,
    oldest_logged_us: int | None = None,
    wrap_known: Callable[[KnownFn], KnownFn] | None = None,
) -> Tick:
    """The sensor's tick: ``plan_tick`` with the memory's ``known`` (through ``wrap_known`` when given: the
    backlog's recorder), or, when the previous tick of this
    process was idle and nothing it read has changed, its result again without a pass over the files.

    Idle: every listed file was ignored or already in the load log (so runs in flight, failed attempts
    and the watermark concern none of them), nothing was being written, nothing was due. Unchanged: the
    listing's ``generation`` (``listing.ListingMemory``: no folder re-read, no file changed, none gone), the
    memory's token (a file logged, a load-log row deleted, or its hourly full check due, each changes or
    clears it), the settings and the cursor that tick left. ``generation`` None (a store listed in full)
    never reuses."""
    key = (memory.dsn, landing.uri())
    last = _idle.get(key)
    if (
        last is not None
        and generation is not None
        and (last[0], last[2], last[3]) == (generation, settings, cursor)
    ):
        token = memory.trusted_token()
        if token is not None and token == last[1]:
            memory.remembered, memory.asked, memory.token = last[4], 0, token
            return Tick([], cursor, already_logged=last[4], ignored=last[5], reused=True)
    _idle.pop(key, None)
    known = memory.known(listing)
    tick = plan_tick(
        landing,
        listing,
        wrap_known(known) if wrap_known else known,
        cursor,
        settings,
        now_us,
        in_flight=in_flight,
        attempts=attempts,
        oldest_logged_us=oldest_logged_us,
    )
    idle = not tick.batches and not (tick.deferred or tick.in_flight or tick.waiting_retry or tick.capped)
    if (
        idle
        and not tick.given_up
        and generation is not None
        and memory.token is not None
        and tick.cursor.started
        and tick.already_logged + tick.ignored == len(listing)
    ):
        _idle[key] = (generation, memory.token, settings, tick.cursor, tick.already_logged, tick.ignored)
    return tick


def run_key(files: Sequence[FileEntry], attempt: int = 1) -> str:
    """The same file versions always give the same key (so a repeated request is dropped); a retry
    after failed runs carries its attempt number (a new key, which Dagster does not drop)."""
    text = "\n".join(f"{e.key}\t{e.size}\t{e.modified_us}" for e in sorted(files, key=lambda e: e.key))
    key = "landing-" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return key if attempt <= 1 else f"{key}-attempt{attempt}"
