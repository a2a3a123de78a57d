"""A few connections kept open for a long-running reader (the search service), every transaction READ ONLY.

A connection costs a TCP or Unix-socket handshake, authentication and pgvector's type lookup: a reader
answering many small queries keeps some open. Each use is one transaction, begun READ ONLY by psycopg
(``BEGIN READ ONLY``: the server refuses any write in it) and rolled back when the caller is done; a
connection that broke meanwhile is closed, never handed out again, and the next use opens a new one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterator

import psycopg

from fer_platform.core.errors import DatabaseUnavailable, one_line
from fer_platform.core.pg.connect import connect, describe


class ReadOnlyPool:
    def __init__(self, dsn: str, size: int = 4):
        self.dsn = dsn
        self.size = size
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> psycopg.Connection:
        conn = connect(self.dsn)
        conn.read_only = True  # every transaction of this connection: BEGIN READ ONLY
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An open connection for one read (a READ ONLY transaction, rolled back afterwards).

        A connection lost in the middle (the server restarted, the network dropped) raises
        ``DatabaseUnavailable`` with one line naming the server; the next use connects again."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._open()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lost PostgreSQL at {describe(self.dsn)}: {one_line(exc)}") from None
        except psycopg.ProgrammingError as exc:  # no vectors table or no pgvector extension there yet
            raise DatabaseUnavailable(
                f"PostgreSQL at {describe(self.dsn)} cannot answer: {one_line(exc)} (nothing loaded yet?)"
            ) from None
        finally:
            self._give_back(conn)

    def _give_back(self, conn: psycopg.Connection) -> None:
        try:
            if not conn.closed:
                conn.rollback()
        except psycopg.Error:
            pass
        with self._lock:  # checked and kept under one lock: never more than size idle, none after close
            keep = not conn.closed and not conn.broken and not self._closed and self._idle.qsize() < self.size
            if keep:
                self._idle.put(conn)
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
