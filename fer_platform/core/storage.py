"""One storage abstraction for the landing zone and the lake: a folder, ``s3://`` or ``abfs://``.

Keys are posix paths relative to the storage root. Built on fsspec, so the
same code lists, reads and writes a local folder, an S3 bucket prefix or an
ADLS Gen2 / Blob container prefix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import os
import posixpath
import re
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import fsspec

from fer_platform.core import faults, liveness
from fer_platform.core.errors import FerError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class FileEntry:
    key: str
    size: int
    modified: dt.datetime  # UTC, microsecond precision
    kind: str = "file"  # "file" (a regular file), or what else it is: never opened (see special_kind)

    @functools.cached_property
    def modified_us(self) -> int:  # computed once per entry: a tick compares every listed file's
        return to_us(self.modified)


@dataclass
class LakeFiles:
    """A set of files that belong together (an index, a model) stored in one lake folder.

    The lake IO manager writes them to ``<asset path>/<folder>/<name>``, in order, and then names
    ``folder`` in ``<asset path>/LATEST``, so a reader never sees a half-written set. A file is its bytes,
    or a function that writes it into the open file it is given (a big file streamed, never whole in
    memory); ``written`` holds each file's size once written.
    """

    folder: str
    files: dict[str, bytes | Callable[[BinaryIO], None]]
    written: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(len(b) if isinstance(b, bytes) else self.written.get(n, 0) for n, b in self.files.items())

    def write(self, name: str, f: BinaryIO) -> None:
        """Write file ``name`` into ``f`` (opened for writing) and note its size."""
        content = self.files[name]
        if isinstance(content, bytes):
            f.write(content)
            self.written[name] = len(content)
            return
        counted = _Counted(f)
        content(counted)
        self.written[name] = counted.size


class _Counted:
    """A binary file being written, counting what goes in."""

    def __init__(self, f: BinaryIO):
        self.f, self.size = f, 0

    def write(self, data) -> int:
        self.f.write(data)
        self.size += len(data)
        return len(data)


class StorageUnavailable(FerError):
    """An object store root that cannot be used (credentials, container/bucket name, network); one line."""


class NotARegularFile(OSError):
    """A landing entry that is a symbolic link, a FIFO, a socket or a device, or that lies under a
    symbolic link: its target is never opened."""


class FileTooLarge(OSError):
    """A file larger than the size cap: it is not read."""


def special_kind(mode: int) -> str:
    """'file' for a regular file, else what the entry is (from ``os.lstat``: links are not followed)."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


def to_us(t: dt.datetime) -> int:
    """Microseconds since the epoch (the precision PostgreSQL keeps)."""
    delta = t - _EPOCH
    return delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds


# A write to a local folder goes to a hidden temporary name beside its target, then is renamed over it,
# so a reader never sees half a file. A write killed before the rename leaves the temporary file: the
# next write of the same place removes it, and the reconcile reports (and removes) the others.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})\.tmp$")
STALE_TEMP_SECONDS = 3600.0  # older than this, a temporary file is stale whatever its writer


def temp_path(path: str) -> str:
    """The temporary name a write of ``path`` uses (unique to this process and this write)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def temp_target(name: str) -> str | None:
    """The file name a temporary file of a write was for; None if ``name`` is not one."""
    m = _TEMP.match(name)
    return m.group("name") if m else None


def temp_is_stale(path: str, now: float | None = None) -> bool:
    """Whether a temporary file's writer is gone (its process no longer exists) or it is older than
    ``STALE_TEMP_SECONDS``: a write in progress in another live process is left alone."""
    m = _TEMP.match(os.path.basename(path))
    if m is None:
        return False
    try:
        age = (now or time.time()) - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_TEMP_SECONDS or liveness.gone(f"{socket.gethostname()}:{m.group('pid')}") is True


def stale_temps(folder: str) -> dict[str, list[str]]:
    """The stale temporary files in ``folder``, by the name each was written for."""
    found: dict[str, list[str]] = {}
    try:
        listing = os.listdir(folder)
    except FileNotFoundError:
        return found
    for entry in listing:
        target = temp_target(entry)
        full = os.path.join(folder, entry)
        if target is not None and temp_is_stale(full):
            found.setdefault(target, []).append(full)
    return found


def remove_stale_temps(folder: str, names: set[str] | None = None) -> list[str]:
    """Remove the stale temporary files in ``folder`` (of the targets ``names``, or all); their paths."""
    removed = []
    for target, paths in stale_temps(folder).items():
        if names is not None and target not in names:
            continue
        for full in paths:
            try:
                os.remove(full)
                removed.append(full)
            except FileNotFoundError:
                pass
    return removed


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class Storage:
    """A storage root (folder or bucket/container prefix) addressed by relative keys."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, confined: bool = False):
        """``confined`` (the landing zone): a local read opens only a regular file inside the root, never
        through a symbolic link; the lake (not confined) may live behind links, e.g. on a bigger disk."""
        self.confined = confined
        url = str(url)
        if is_local(url):
            url = os.path.abspath(url.removeprefix("file://"))
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/")
        self.local = is_local(self.url)
        self._real_root: str | None = None  # the root's real path, once a confined read needs it
        self._stale_temps: dict[str, dict[str, list[str]]] = {}  # folder -> target -> stale temp files

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def check(self) -> None:
        """Fail with one line if the container or bucket cannot be reached (a folder may not exist yet:
        it is created on first write, and listing a missing one is empty)."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        self.fs.invalidate_cache(bucket)
        try:
            self.fs.info(bucket)
            return
        except FileNotFoundError:
            raise StorageUnavailable(
                f"{self.url}: there is no container or bucket named '{bucket}'"
            ) from None
        except Exception as exc:  # noqa: BLE001 - SDK errors carry pages of XML; the first line says it
            error = exc
        # credentials scoped to a prefix (a SAS, a bucket policy) may list it without reading the container
        try:
            self.fs.ls(self.root)
            return
        except FileNotFoundError:  # nothing under the prefix yet, but the store answered
            return
        except Exception:  # noqa: BLE001 - report the first error
            pass
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(error).__name__
        raise StorageUnavailable(f"cannot reach {self.url}: {type(error).__name__}: {reason}") from None

    # ---- addressing
    def path(self, key: str = "") -> str:
        key = key.strip("/")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str = "") -> str:
        key = key.strip("/")
        return f"{self.url}/{key}" if key else self.url

    def key_of(self, path: str) -> str:
        path = path.split("://", 1)[-1] if not self.local else path
        return posixpath.relpath(path, self.root) if self.local else path[len(self.root) :].strip("/")

    # ---- listing
    def list_files(self, prefix: str = "") -> list[FileEntry]:
        """Every file under ``prefix``, recursively, with size and modification time."""
        base = self.path(prefix)
        if self.local:
            return sorted(_walk_local(base, self.root), key=lambda e: e.key)
        # fsspec filesystems are cached per process and may keep listings: a sensor in a
        # long-running daemon must see what other processes wrote since its last tick.
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            return []
        entries = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            entries.append(FileEntry(self.key_of(path), int(info.get("size") or 0), _modified(info)))
        return sorted(entries, key=lambda e: e.key)

    def stat_many(self, keys: Iterable[str]) -> tuple[list[FileEntry], list[str]]:
        """Current size and mtime of ``keys``; keys that no longer exist come back apart."""
        keys = list(keys)
        found, missing = [], []
        if self.local:
            for key in keys:
                try:
                    st = os.lstat(self.path(key))  # a link is described, never followed
                except (FileNotFoundError, NotADirectoryError):
                    missing.append(key)
                    continue
                kind = special_kind(st.st_mode) if self._inside(key) else "path through a symbolic link"
                found.append(
                    FileEntry(
                        key, st.st_size, _EPOCH + dt.timedelta(microseconds=st.st_mtime_ns // 1000), kind
                    )
                )
            return found, missing
        wanted = set(keys)
        parents = {k.rsplit("/", 1)[0] if "/" in k else "" for k in keys}
        listed = {e.key: e for p in parents for e in self.list_files(p) if e.key in wanted}
        for key in keys:
            (found if key in listed else missing).append(listed.get(key, key))
        return found, missing

    def exists(self, key: str) -> bool:
        if not self.local:
            self.fs.invalidate_cache(self.path(key))
        return self.fs.exists(self.path(key))

    def _inside(self, key: str) -> bool:
        """Whether the folders of ``key`` are real folders under the root (no symbolic link on the way)."""
        return self._is_real_folder(os.path.realpath(os.path.dirname(self.path(key))), key)

    def _is_real_folder(self, real: str, key: str) -> bool:
        """Whether ``real`` is where the folder of ``key`` is when no link is on the way: under the root's
        real path, resolved once per Storage and again after a mismatch (a root that is itself a link may
        be re-pointed)."""
        for again in (False, True):
            if again or self._real_root is None:
                self._real_root = os.path.realpath(self.root)
            if real == os.path.join(self._real_root, os.path.dirname(key.strip("/"))).rstrip("/"):
                return True
        return False

    def _folder_is_real(self, dir_fd: int, key: str) -> bool:
        """Whether the folder opened as ``dir_fd`` is the real folder of ``key`` (no link on the way): what
        the kernel says was opened (``/proc/self/fd``), else, without /proc, the path resolved now."""
        try:
            opened = os.readlink(f"/proc/self/fd/{dir_fd}")
        except OSError:
            return self._inside(key)
        return self._is_real_folder(opened, key)

    # ---- bytes
    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes. Locally only a regular file inside the root is opened (a symbolic link, a FIFO, a
        socket or a device raises NotARegularFile, and its target is never opened); a file larger than
        ``max_bytes`` raises FileTooLarge without being read whole."""
        if self.local:
            if self.confined:
                return self._read_local(key, max_bytes)
            with open(self.path(key), "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise FileTooLarge(f"more than {max_bytes} bytes")
            return data
        path = self.path(key)
        if max_bytes is None:
            return self.fs.cat_file(path)
        try:
            data = self.fs.cat_file(path, start=0, end=max_bytes + 1)
        except Exception:
            if self.fs.size(path) != 0:
                raise
            return b""  # Azure refuses any range of an empty blob (InvalidRange): it is empty, as locally
        if len(data) > max_bytes:
            raise FileTooLarge(f"larger than {max_bytes} bytes")
        return data

    @contextlib.contextmanager
    def open_read(self, key: str, block_size: int = 1 << 20) -> Iterator[BinaryIO]:
        """The file opened for streaming (read in pieces, never whole), with the same rules as read_bytes:
        on a confined local root only a regular file inside the root is opened."""
        if self.local:
            f = self._open_local(key) if self.confined else open(self.path(key), "rb")
        else:
            self.fs.invalidate_cache(self.path(key))
            f = self.fs.open(self.path(key), "rb", block_size=block_size)
        with f:
            yield f

    def _open_local(self, key: str) -> BinaryIO:
        """A regular file inside the root, opened without following a symbolic link: its folder is opened
        and must be the key's real folder under the root, then the file is opened by name inside that open
        folder, never through a link (a folder swapped for a link after the check is not the one opened)."""
        path = self.path(key)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        if os.open not in os.supports_dir_fd:  # (Windows) the folders checked, then the file by its path
            if not self._inside(key):
                raise NotARegularFile("path through a symbolic link")
            fd = _open_file(path, flags)
        else:
            # O_PATH (Linux): the folder is only a place to open the file from, no read permission needed
            folder_flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0)
            dir_fd = os.open(os.path.dirname(path), folder_flags)
            try:
                if not self._folder_is_real(dir_fd, key):
                    raise NotARegularFile("path through a symbolic link")
                fd = _open_file(os.path.basename(path), flags, dir_fd)
            finally:
                os.close(dir_fd)
        f = os.fdopen(fd, "rb")
        try:
            kind = special_kind(os.fstat(fd).st_mode)
            if kind != "file":
                raise NotARegularFile(kind)
        except BaseException:
            f.close()
            raise
        return f

    def _read_local(self, key: str, max_bytes: int | None) -> bytes:
        with self._open_local(key) as f:
            st = os.fstat(f.fileno())
            if max_bytes is None:
                return f.read()
            if st.st_size > max_bytes:
                raise FileTooLarge(f"{st.st_size} bytes")
            data = f.read(max_bytes + 1)  # it may have grown since
            if len(data) > max_bytes:
                raise FileTooLarge(f"more than {max_bytes} bytes")
            return data

    def read_many(self, keys: Iterable[str], threads: int = 8, max_bytes: int | None = None) -> list[bytes]:
        keys = list(keys)
        if self.local or len(keys) < 2:
            return [self.read_bytes(k, max_bytes) for k in keys]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda k: self.read_bytes(k, max_bytes), keys))

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = temp_path(path)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                _remove_quietly(tmp)
                raise
        else:
            self.fs.pipe_file(path, data)

    def write_many(self, items: Iterable[tuple[str, bytes]], threads: int = 8) -> None:
        items = list(items)
        if self.local:
            folders: dict[str, set[str]] = {}
            for key, data in items:
                self.write_bytes(key, data)
                faults.point("lake.file_written")
                folder, name = os.path.split(self.path(key))
                folders.setdefault(folder, set()).add(name)
            for folder, names in folders.items():  # what killed writes of the same places left behind
                self._remove_stale_temps_of(folder, names)
            return
        if len(items) < 2:
            for key, data in items:
                self.write_bytes(key, data)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: self.write_bytes(*kv), items))

    def _remove_stale_temps_of(self, folder: str, names: set[str]) -> None:
        """Remove the stale temporary files of ``names`` in ``folder``. The folder is listed once per Storage
        (its stale temporary files kept by target): listing it after every batch of writes cost each batch
        the whole folder (17 ms at 63,000 files), so a partition's copies grew with its square."""
        found = self._stale_temps.get(folder)
        if found is None:
            found = self._stale_temps[folder] = stale_temps(folder)
        for name in names & found.keys():
            for path in found.pop(name):
                if temp_is_stale(path):
                    _remove_quietly(path)

    def delete(self, key: str) -> None:
        self.fs.rm_file(self.path(key))

    def move(self, key: str, dest_key: str) -> None:
        if self.local:
            dest = self.path(dest_key)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(self.path(key), dest)
        else:
            self.fs.mv(self.path(key), self.path(dest_key))

    def makedirs(self, key: str) -> None:
        if self.local:
            os.makedirs(self.path(key), exist_ok=True)


class ReadOnlyStorage:
    """A storage root that only reads (the search service's lake): it has no method that writes, moves or
    deletes, so nothing holding it can change the lake."""

    def __init__(self, storage: Storage):
        self._storage = storage
        self.url, self.root, self.local = storage.url, storage.root, storage.local

    def __repr__(self) -> str:
        return f"ReadOnlyStorage({self.url!r})"

    def uri(self, key: str = "") -> str:
        return self._storage.uri(key)

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        return self._storage.read_bytes(key, max_bytes)

    def open_read(self, key: str, block_size: int = 1 << 20):
        return self._storage.open_read(key, block_size)

    def exists(self, key: str) -> bool:
        return self._storage.exists(key)

    def stat_many(self, keys: Iterable[str]) -> tuple[list[FileEntry], list[str]]:
        return self._storage.stat_many(keys)


def _open_file(path: str, flags: int, dir_fd: int | None = None) -> int:
    """``os.open`` with O_NOFOLLOW's refusal of a symbolic link as NotARegularFile."""
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symbolic link
            raise NotARegularFile("symbolic link") from None
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _walk_local(base: str, root: str) -> Iterable[FileEntry]:
    """Every entry under ``base`` that is not a real folder, links not followed: regular files, and symbolic
    links (to files or folders), FIFOs, sockets and devices with their ``kind`` (never opened). Keys are
    built as the walk descends (one lstat per entry, no path arithmetic per file: the landing sensor lists
    everything at every tick)."""
    if not os.path.isdir(base):
        return
    rel = os.path.relpath(base, root).replace(os.sep, "/")
    stack = [(base, "" if rel == "." else rel + "/")]
    while stack:
        folder, prefix = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError:  # removed or unreadable while listing (os.walk skipped these too)
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):  # a linked folder is listed, not entered
                        stack.append((entry.path, prefix + entry.name + "/"))
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while listing
                    continue
                us = st.st_mtime_ns // 1000
                found = FileEntry(
                    prefix + entry.name,
                    st.st_size,
                    _EPOCH + dt.timedelta(microseconds=us),
                    special_kind(st.st_mode),
                )
                found.__dict__["modified_us"] = us  # the cached property, known already
                yield found


def _modified(info: dict[str, Any]) -> dt.datetime:
    for key in ("LastModified", "last_modified", "mtime", "modified", "creation_time", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):  # S3 listings come in the local zone, Azure's in UTC
            return (
                value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
            )
        if isinstance(value, (int, float)):
            return _EPOCH + dt.timedelta(microseconds=int(value * 1e6))
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (
                parsed.astimezone(dt.timezone.utc)
                if parsed.tzinfo
                else parsed.replace(tzinfo=dt.timezone.utc)
            )
    raise ValueError(f"no modification time in listing entry: {sorted(info)}")
