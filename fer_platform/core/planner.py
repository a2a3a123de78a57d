"""Planning pickups: which landing files are new, and which partition run takes each.

Shared by the demo and the landing sensor, so both decide the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
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
