"""The landing sensor's listing of a local landing folder, re-reading only the folders that changed.

A local folder's modification time changes whenever an entry is added to it, removed from it or renamed in
it, also when the file comes with an old mtime (``cp -p``, ``touch -d``: creating the entry changes the
folder). So a tick stats every folder (a few dozen for FER's layout), re-lists the ones whose (inode, mtime,
ctime, size) moved, and takes the files of the others from the previous tick: an idle tick costs one stat
per folder, not one per file. What a folder's stat cannot tell is covered apart:

* a file written in place (appended, truncated, overwritten by ``cp``) changes its own mtime, not its
  folder's: files that were still being written when seen (modified within ``settle_seconds``, the
  sensor's own rule for "not settled") are stat'ed again at every tick until they have settled, and every
  other file once in ``restat_rotation`` ticks (a rotating share of each folder: an overwrite of a settled
  file is seen within that many ticks, at 1/``restat_rotation`` of the cost of a stat per file);
* a folder modified within ``racy_seconds`` of when it was read may change again within the same timestamp
  tick of the file system (coarse clocks): it is not trusted, and is read again next tick;
* every ``full_listing_seconds`` the whole tree is read again (the sensor's memory re-checks everything
  as often);
* a forgotten memory (a new process, a different root) is a full listing.

The listing comes in folder order (each folder's files by name), not sorted by key: the tick sorts only
what is due. Cloud stores (S3, ADLS) have no folder modification time: they are listed in full at every
tick.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import dataclass, field

from fer_platform.core.storage import FileEntry, Storage, special_kind

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
FULL_LISTING_SECONDS = 3600.0
RACY_SECONDS = 2.0
RESTAT_ROTATION = 8  # ticks: every settled file of an unchanged folder is stat'ed once in this many


@dataclass
class _Folder:
    stamp: tuple[int, int, int, int]  # (inode, mtime_ns, ctime_ns, size) of the folder when it was read
    files: list[FileEntry]
    folders: list[str]  # names of its sub-folders
    trusted: bool  # read long enough after its last change (not racy)
    unsettled: list[int] = field(default_factory=list)  # positions of files still being written when seen


@dataclass
class ListingMemory:
    """Per landing root, what the previous tick listed, folder by folder (this process's memory)."""

    settle_seconds: float = 5.0
    racy_seconds: float = RACY_SECONDS
    full_listing_seconds: float = FULL_LISTING_SECONDS
    restat_rotation: int = RESTAT_ROTATION
    ticks: int = 0
    folders: dict[str, _Folder] = field(default_factory=dict)  # keyed by the folder's key prefix
    listed_at: float = 0.0  # monotonic time of the last full listing
    root: str | None = None
    # this tick, for the logs and the tests
    read: int = 0  # folders read (scandir)
    reused: int = 0  # folders whose files came from the memory
    restated: int = 0  # files of reused folders stat'ed again (the unsettled ones, the rotating share)
    changed: int = 0  # of which changed in place
    full: bool = False
    generation: int = 0  # moves whenever the listing may differ from the previous tick's

    def list_files(self, storage: Storage) -> list[FileEntry]:
        """Every file of ``storage``, as ``Storage.list_files`` finds it, in folder order (not sorted)."""
        if not storage.local:
            self.full = True
            return storage.list_files()
        base = storage.path("")
        now = time.monotonic()
        self.full = self.root != base or now - self.listed_at > self.full_listing_seconds
        if self.full:
            self.folders, self.root, self.listed_at = {}, base, now
        self.read = self.reused = self.restated = self.changed = 0
        self.ticks += 1
        phase = self.ticks % self.restat_rotation
        settle_us = int(self.settle_seconds * 1_000_000)
        racy_ns = int(self.racy_seconds * 1e9)
        wall_ns = time.time_ns()
        seen: dict[str, _Folder] = {}
        out: list[FileEntry] = []
        stack = [(base, "")]
        while stack:
            path, prefix = stack.pop()
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            old = self.folders.get(prefix)
            if old is not None and old.trusted and old.stamp == stamp:
                folder = old
                self.reused += 1
                self._restat(path, folder, wall_ns // 1000 - settle_us, phase)
            else:
                folder = self._read(path, prefix, stamp, trusted=wall_ns - st.st_mtime_ns > racy_ns)
                if folder is None:
                    continue
                self.read += 1
                settled_before = wall_ns // 1000 - settle_us
                folder.unsettled = [j for j, e in enumerate(folder.files) if e.modified_us > settled_before]
            seen[prefix] = folder
            out.extend(folder.files)
            stack.extend((os.path.join(path, name), f"{prefix}{name}/") for name in reversed(folder.folders))
        if self.full or self.read or self.changed or seen.keys() != self.folders.keys():
            self.generation += 1
        self.folders = seen  # folders gone from the tree leave the memory
        return out

    def _read(self, path: str, prefix: str, stamp, trusted: bool) -> _Folder | None:
        files, folders = [], []
        try:
            it = os.scandir(path)
        except OSError:  # removed or unreadable while listing
            return None
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):  # a linked folder is listed, not entered
                        folders.append(entry.name)
                        continue
                    files.append(_entry(prefix + entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:  # removed while listing
                    continue
        files.sort(key=lambda e: e.key)
        return _Folder(stamp, files, sorted(folders), trusted)

    def _restat(self, path: str, folder: _Folder, settled_before_us: int, phase: int) -> None:
        """Stat again the folder's files not settled when last seen, and this tick's rotating share."""
        files = folder.files
        picks = sorted({*folder.unsettled, *range(phase, len(files), self.restat_rotation)})
        unsettled = []
        for j in picks:
            e = files[j]
            self.restated += 1
            try:
                st = os.lstat(os.path.join(path, e.key.rsplit("/", 1)[-1]))
            except FileNotFoundError:  # gone: its folder changed too, and is read next tick
                self.changed += 1
                continue
            if st.st_size != e.size or st.st_mtime_ns // 1000 != e.modified_us:
                self.changed += 1
                if files is folder.files:
                    files = folder.files = list(files)  # the previous tick's listing is not changed
                e = files[j] = _entry(e.key, st)
            if e.modified_us > settled_before_us:
                unsettled.append(j)
        folder.unsettled = unsettled


def _entry(key: str, st: os.stat_result) -> FileEntry:
    us = st.st_mtime_ns // 1000
    found = FileEntry(key, st.st_size, EPOCH + dt.timedelta(microseconds=us), special_kind(st.st_mode))
    found.__dict__["modified_us"] = us  # the cached property, known already
    return found


_memories: dict[tuple[str, float], ListingMemory] = {}
_lock = threading.Lock()


def list_landing(storage: Storage, settle_seconds: float) -> tuple[list[FileEntry], ListingMemory]:
    """The landing listing through this process's memory of ``storage`` (one per root and settle time;
    ticks of one sensor run one at a time)."""
    with _lock:
        memory = _memories.setdefault((storage.uri(), settle_seconds), ListingMemory(settle_seconds))
    return memory.list_files(storage), memory
