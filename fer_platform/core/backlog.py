"""The landing zone's backlog, as Auto Loader reports it per trigger: files and bytes waiting to be loaded,
the age of the oldest waiting file, files in the landing zone.

Measured from what a sensor tick already has: the listing, and the answer of the load log (through the
landing memory) about the settled files the tick asked about (``Recorder`` wraps ``plan_tick``'s ``known``,
so measuring the backlog asks the load log nothing more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fer_platform.core.layout import route
from fer_platform.core.ledger import Version
from fer_platform.core.planner import Tick
from fer_platform.core.storage import FileEntry


class Recorder:
    """A ``known`` callable for ``plan_tick`` that keeps what it was asked and what the load log holds."""

    def __init__(self, known: Callable[[list[FileEntry]], set[Version]] | None = None):
        self._known = known
        self.asked: list[FileEntry] = []
        self.logged: set[Version] = set()

    def around(self, known: Callable[[list[FileEntry]], set[Version]]) -> Recorder:
        """This recorder, wrapping ``known`` (``planner.plan_landing``'s ``wrap_known``)."""
        self._known = known
        return self

    def __call__(self, entries: list[FileEntry]) -> set[Version]:
        assert self._known is not None, "a Recorder answers through the known it wraps"
        self.logged = self._known(entries)
        self.asked = list(entries)
        return self.logged


@dataclass(frozen=True)
class Backlog:
    files_total: int  # files in the landing zone that route somewhere (not the archive, not junk)
    files_waiting: int  # not in the load log yet: settled ones, and ones still being written
    bytes_waiting: int
    oldest_waiting_age_seconds: float  # 0 when nothing waits
    still_being_written: int

    def metadata(self) -> dict:
        return {
            "files_waiting": self.files_waiting,
            "bytes_waiting": self.bytes_waiting,
            "oldest_waiting_age_seconds": round(self.oldest_waiting_age_seconds, 1),
            "files_total": self.files_total,
            "still_being_written": self.still_being_written,
        }

    def figures(self) -> tuple[int, int, int]:
        """What changes when files arrive or load (the age changes on its own)."""
        return self.files_waiting, self.bytes_waiting, self.files_total


def measure(
    base_uri: str,
    listing: Sequence[FileEntry],
    recorder: Recorder,
    now_us: int,
    settle_seconds: float,
    tick: Tick,
) -> Backlog:
    """The backlog of one tick: files the tick asked the load log about and that it does not hold, plus the
    files too fresh to ask about (still being written). What the tick counted saves the scans: an idle tick
    (the load log holds every file asked about, none still being written) looks at no file again."""
    settle_after = now_us - int(settle_seconds * 1_000_000)
    base = base_uri + "/"
    fresh = (
        [e for e in listing if e.modified_us > settle_after and not route(e.key).ignored]
        if tick.deferred
        else []
    )
    settled = (
        []
        if tick.already_logged >= len(recorder.asked)
        else [e for e in recorder.asked if (base + e.key, e.size, e.modified_us) not in recorder.logged]
    )
    waiting: Sequence[FileEntry] = settled + fresh
    oldest = min((e.modified_us for e in waiting), default=now_us)
    return Backlog(
        files_total=len(listing) - tick.ignored,
        files_waiting=len(waiting),
        bytes_waiting=sum(e.size for e in waiting),
        oldest_waiting_age_seconds=max(0.0, (now_us - oldest) / 1e6),
        still_being_written=len(fresh),
    )
