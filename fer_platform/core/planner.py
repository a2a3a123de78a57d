"""Planning pickups: which landing files are new, and which partition run takes each.

Shared by the demo and the landing sensor, so both decide the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fer_platform.core.layout import EMOTIONS, route
from fer_platform.core.ledger import Version
from fer_platform.core.storage import FileEntry, Storage


@dataclass
class Plan:
    by_emotion: dict[str, list[FileEntry]] = field(default_factory=dict)
    unroutable: list[FileEntry] = field(default_factory=list)  # no emotion partition can take them
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why): not part of the data set
    already_logged: int = 0

    @property
    def new_files(self) -> int:
        return sum(len(v) for v in self.by_emotion.values()) + len(self.unroutable)


def plan(landing: Storage, listing: Iterable[FileEntry], known: set[Version]) -> Plan:
    """Group the landing files whose version the ledger does not hold by emotion."""
    out = Plan()
    groups: dict[str, list[FileEntry]] = defaultdict(list)
    for e in listing:
        r = route(e.key)
        if r.ignored:
            out.ignored.append((e.key, r.ignored))
        elif (landing.uri(e.key), e.size, e.modified_us) in known:
            out.already_logged += 1
        elif r.emotion is None:
            out.unroutable.append(e)
        else:
            groups[r.emotion].append(e)
    out.by_emotion = {emo: groups[emo] for emo in EMOTIONS if groups.get(emo)}
    return out


def versions(landing: Storage, entries: Sequence[FileEntry]) -> list[Version]:
    return [(landing.uri(e.key), e.size, e.modified_us) for e in entries]


# --------------------------------------------------------------------------- the landing sensor's tick
@dataclass(frozen=True)
class AutoLoaderSettings:
    max_files_per_tick: int = 1000  # like the auto-loader's maxFilesPerTrigger
    include_existing_files: bool = True  # files already there at the first tick load too
    settle_seconds: float = 5.0  # files modified more recently than this may still be written: they wait
    on_success: str = "keep"  # keep | delete | archive the source once its load is committed


@dataclass(frozen=True)
class Watermark:
    """The sensor cursor: the newest modification time handed to a run, and the keys at that instant.

    It only stops a tick from asking again for files an earlier tick already handed to a run
    that may still be going; what was *loaded* is the load log's to say.
    """

    us: int = -1
    keys: frozenset[str] = frozenset()
    started: bool = False

    def covers(self, e: FileEntry) -> bool:
        return e.modified_us < self.us or (e.modified_us == self.us and e.key in self.keys)

    def to_json(self) -> str:
        import json

        return json.dumps({"v": 1, "us": self.us, "keys": sorted(self.keys)})

    @classmethod
    def from_json(cls, text: str | None) -> "Watermark":
        import json

        if not text:
            return cls()
        data = json.loads(text)
        return cls(int(data["us"]), frozenset(data["keys"]), True)

    def advanced(self, covered: Sequence[FileEntry]) -> "Watermark":
        """The watermark that also covers ``covered``: files sorted by (mtime, key) that
        follow this watermark without a gap."""
        if not covered:
            return Watermark(self.us, self.keys, True)
        top = max(e.modified_us for e in covered)
        at_top = {e.key for e in covered if e.modified_us == top}
        if top == self.us:
            at_top |= self.keys
        return Watermark(top, frozenset(at_top), True)


@dataclass
class Tick:
    batches: list[tuple[str | None, list[FileEntry]]]  # (emotion, files); None: no emotion partition can take them
    cursor: Watermark
    new: int = 0  # files beyond the watermark and not in the load log
    deferred: int = 0  # still being written
    capped: int = 0  # left for the next tick by max_files_per_tick
    already_logged: int = 0  # beyond the watermark but in the load log (e.g. after a lost cursor)
    ignored: int = 0

    @property
    def files(self) -> int:
        return sum(len(f) for _, f in self.batches)


def plan_tick(
    landing: Storage,
    listing: Iterable[FileEntry],
    known: Callable[[list[FileEntry]], set[Version]],
    cursor: Watermark,
    settings: AutoLoaderSettings,
    now_us: int,
) -> Tick:
    """What one sensor tick hands to runs: the settled files beyond the watermark that the load log
    does not hold, oldest first, at most ``max_files_per_tick``, grouped by emotion."""
    entries, ignored = [], 0
    for e in listing:
        if route(e.key).ignored:
            ignored += 1
        else:
            entries.append(e)
    if not cursor.started and not settings.include_existing_files:
        # start from what is there now: nothing present at the first tick is loaded
        return Tick([], Watermark().advanced(entries), ignored=ignored)
    settle_us = int(settings.settle_seconds * 1_000_000)
    beyond = [e for e in entries if not cursor.covers(e)]
    settled = [e for e in beyond if e.modified_us <= now_us - settle_us]
    logged = known(settled) if settled else set()
    fresh = sorted(
        (e for e in settled if (landing.uri(e.key), e.size, e.modified_us) not in logged),
        key=lambda e: (e.modified_us, e.key),
    )
    taken = fresh[: settings.max_files_per_tick]
    groups: dict[str | None, list[FileEntry]] = defaultdict(list)
    for e in taken:
        groups[route(e.key).emotion].append(e)
    batches = [(emo, groups[emo]) for emo in (*EMOTIONS, None) if groups.get(emo)]
    # The watermark advances over the longest run, oldest first, of files that were taken or that
    # the load log holds; never past a file left for later (capped, or still being written).
    done = {e.key for e in taken} | {e.key for e in settled if (landing.uri(e.key), e.size, e.modified_us) in logged}
    prefix = []
    for e in sorted(beyond, key=lambda e: (e.modified_us, e.key)):
        if e.key not in done:
            break
        prefix.append(e)
    return Tick(
        batches=batches,
        cursor=cursor.advanced(prefix),
        new=len(fresh),
        deferred=len(beyond) - len(settled),
        capped=len(fresh) - len(taken),
        already_logged=len(settled) - len(fresh),
        ignored=ignored,
    )


def run_key(files: Sequence[FileEntry]) -> str:
    """The same file versions always give the same key (so a repeated request is dropped)."""
    import hashlib

    text = "\n".join(f"{e.key}\t{e.size}\t{e.modified_us}" for e in sorted(files, key=lambda e: e.key))
    return "landing-" + hashlib.sha256(text.encode()).hexdigest()[:32]
