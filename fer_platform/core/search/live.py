"""The index of one model kept in memory by a long-running reader (the search service), and replaced by a
new build without a restart and without failing a query.

Queries take ``current()``, the build in memory. At most every ``check_seconds`` a query also has the lake
looked at, in a background thread, so no query waits on the lake: only ``meta.json`` is read (a few hundred
bytes) and the digests it names compared with the build in memory. A new build is read and verified
(every file against the digests its ``meta.json`` names, ``load_index``) before it replaces
the old one in one assignment; until then, and whenever reading it fails (a rebuild still replacing its
files, a store out of reach, the index deleted), the old build keeps answering.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from fer_platform.core.errors import one_line
from fer_platform.core.search.index import (
    IndexUnavailable,
    SearchIndex,
    index_dir,
    load_index,
    read_digest,
)

log = logging.getLogger(__name__)


class LiveIndex:
    def __init__(self, lake, model: str, check_seconds: float = 5.0):
        self.lake, self.model, self.check_seconds = lake, model, check_seconds
        self._index: SearchIndex | None = None
        self._problem: str | None = None  # why there is no build in memory, or why the newest was not read
        self._checked = float("-inf")  # time.monotonic() of the last look at the lake
        self._busy = threading.Lock()  # one look at a time; held by the background thread while it looks
        self.loaded_at: str | None = None
        self.reloads = 0

    def current(self) -> SearchIndex:
        """The build in memory (and a background look at the lake if the last one is old enough); an
        ``IndexUnavailable`` naming what to do if no build could be read yet."""
        self.poke()
        index = self._index
        if index is None:
            raise IndexUnavailable(self._problem or f"no search index for model {self.model} yet")
        return index

    def poke(self) -> None:
        """Look at the lake in a background thread if the last look is ``check_seconds`` old, else nothing."""
        if time.monotonic() - self._checked < self.check_seconds or not self._busy.acquire(blocking=False):
            return
        self._checked = time.monotonic()
        threading.Thread(target=self._refresh_and_release, name="fer-index-refresh", daemon=True).start()

    def refresh(self) -> bool:
        """Look at the lake now (waiting for a look in progress); True if a new build replaced the old."""
        with self._busy:
            return self._refresh()

    def _refresh_and_release(self) -> None:
        try:
            self._refresh()
        finally:
            self._busy.release()

    def _refresh(self) -> bool:
        self._checked = time.monotonic()
        current = self._index
        try:
            digest = read_digest(self.lake, self.model)
            if current is not None and digest == current.digest:
                self._problem = None
                return False
            if current is not None and digest is None:  # no build to replace it with: it keeps answering
                return self._keep(f"no readable meta.json at {self.lake.uri(index_dir(self.model))}")
            new = load_index(self.lake, self.model)
        except IndexUnavailable as exc:
            return self._keep(str(exc))
        except Exception as exc:  # noqa: BLE001 - a store out of reach must not stop the build in memory
            return self._keep(f"cannot read the search index at {self.lake.uri()}: {one_line(exc)}")
        if current is not None and new.digest == current.digest:
            return False
        self._index, self._problem = new, None
        self.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.reloads += 1
        log.info("search index %s loaded: %d vectors, build %s", self.model, new.size, new.digest[:12])
        return True

    def _keep(self, problem: str) -> bool:
        self._problem = problem
        if self._index is not None:
            log.warning("%s; the build in memory keeps answering", problem)
        return False

    def status(self) -> dict[str, Any]:
        """What is in memory (for a health check): model, size, kind, build digest and time, problem."""
        index = self._index
        out: dict[str, Any] = {"model": self.model, "loaded": index is not None, "problem": self._problem}
        if index is not None:
            out.update(
                size=index.size,
                kind=index.kind,
                digest=index.digest,
                built_at=index.meta.get("built_at"),
                loaded_at=self.loaded_at,
                reloads=self.reloads,
            )
        return out
