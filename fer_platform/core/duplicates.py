"""Copies of one content (sha256): which one is loaded, and why the others are not.

FER2013 holds the same pixels more than once. The rules, the same whatever the listing order, the batch
or the timestamps:

- **label conflict**: copies filed under different emotions. The label is contradictory, so every copy
  is ``conflict`` (none loaded: the image is held out of silver, search and training), including a copy
  that was loaded before the conflicting one arrived (demoted in the same transaction) and any later copy.
- **train/test leakage**: one emotion, a copy in ``train`` and one in ``test``. The test copy is kept (a
  test image that is also a training image would measure the model on what it learnt), the train copy is
  a ``duplicate`` with the reason ``train/test leakage: same content as <test lake path>``; a train copy
  loaded earlier is demoted when the test copy arrives.
- **plain duplicate**: one emotion, one split. The copy loaded first stays; within a batch, the first by
  landing path. The others are ``duplicate`` ("same content as <lake path>").

Pure logic: ``ingest`` gives the load log's copies and the batch's new ones, and writes what comes back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TEST_SPLIT = "test"
TRAIN_SPLIT = "train"
LEAKAGE = "train/test leakage"
CONFLICT = "label conflict"
_NAMED = 5  # copies named in a conflict's reason; the rest are counted


@dataclass(frozen=True)
class Copy:
    """A valid copy of a content: a load-log row (``id`` set) or a file of the batch being logged."""

    sha256: str
    path: str  # landing path
    emotion: str
    split: str | None
    id: int | None = None
    status: str | None = None
    reason: str | None = None
    lake_path: str | None = None
    load_date: dt.date | None = None


@dataclass(frozen=True)
class Relabel:
    """A change to a load-log row already there."""

    id: int
    sha256: str
    path: str
    emotion: str
    load_date: dt.date
    status: str
    reason: str
    was_loaded: bool  # its partition lost an image: that partition's layers must converge


@dataclass
class Group:
    sha256: str
    logged: list[Copy]
    new: list[Copy]
    keeper: Copy | None = None  # None: a label conflict

    @property
    def copies(self) -> list[Copy]:
        return [*self.logged, *self.new]

    @property
    def conflict(self) -> bool:
        return self.keeper is None


@dataclass
class Decision:
    groups: dict[str, Group] = field(default_factory=dict)

    def status(self, copy: Copy) -> str:
        group = self.groups[copy.sha256]
        if group.conflict:
            return "conflict"
        return "loaded" if group.keeper is copy else "duplicate"

    def resolve(
        self, lake_paths: Mapping[str, str | None]
    ) -> tuple[dict[str, tuple[str, str | None]], list[Relabel]]:
        """(landing path -> (status, reason)) of the new copies and the relabels of logged rows, once the
        new loaded copies have their lake paths (``lake_paths``: landing path -> lake path)."""
        new: dict[str, tuple[str, str | None]] = {}
        changes: list[Relabel] = []
        for group in self.groups.values():
            for c in group.new:
                new[c.path] = (self.status(c), None if group.keeper is c else _reason(group, c, lake_paths))
            keeper_changed = group.keeper is not None and group.keeper.id is None
            for c in group.logged:
                if group.conflict:
                    status = "conflict"
                elif keeper_changed:
                    status = "duplicate"
                else:
                    continue
                reason = _reason(group, c, lake_paths)
                if (status, reason) != (c.status, c.reason):
                    changes.append(
                        Relabel(
                            c.id,
                            c.sha256,
                            c.path,
                            c.emotion,
                            c.load_date,
                            status,
                            reason,
                            c.status == "loaded",
                        )
                    )
        return new, changes


def _reason(group: Group, copy: Copy, lake_paths: Mapping[str, str | None]) -> str:
    if group.conflict:
        others = [o for o in group.copies if o is not copy]
        named = ", ".join(f"{o.emotion} ({o.path})" for o in others[:_NAMED])
        more = f" and {len(others) - _NAMED} more" if len(others) > _NAMED else ""
        return f"{CONFLICT}: the same content is also filed as {named}{more}; no copy is loaded"
    keeper = group.keeper
    where = keeper.lake_path if keeper.id is not None else lake_paths.get(keeper.path)
    if copy.split == TRAIN_SPLIT and keeper.split == TEST_SPLIT:
        return f"{LEAKAGE}: same content as {where} (the test copy is kept)"
    return f"same content as {where}"


def _rank(copy: Copy) -> tuple[bool, str]:
    """The new copy a content keeps: a test copy first, then the first by landing path (never the listing
    order or a timestamp)."""
    return copy.split != TEST_SPLIT, copy.path


def decide(logged: Mapping[str, Sequence[Copy]], new: Sequence[Copy]) -> Decision:
    """Group the batch's valid copies (``new``) with the load log's (``logged``: sha256 -> copies) and pick
    each content's keeper (see the module docstring)."""
    out = Decision()
    for c in new:
        group = out.groups.get(c.sha256)
        if group is None:
            group = out.groups[c.sha256] = Group(c.sha256, list(logged.get(c.sha256, ())), [])
        group.new.append(c)
    for group in out.groups.values():
        group.new.sort(key=_rank)
        if len({c.emotion for c in group.copies}) > 1:
            continue  # a label conflict: no keeper
        loaded = next((c for c in group.logged if c.status == "loaded"), None)
        best = group.new[0]
        if loaded is not None and (loaded.split == TEST_SPLIT or best.split != TEST_SPLIT):
            group.keeper = loaded
        else:
            group.keeper = best
    return out
