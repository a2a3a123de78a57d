"""Is the process that runs something still alive? A run worker is named ``host:pid:started``
(its process's start time, so a reused pid is not mistaken for it)."""

from __future__ import annotations

import os
import socket

import psutil


def _started(pid: int) -> float | None:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent: gone
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0


def this_worker() -> str:
    """The name of this process as a run worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid()):.2f}"


def gone(worker: str, started_before: float | None = None) -> bool | None:
    """True when ``worker`` (``host:pid[:started]``) is a process of this host that no longer exists
    (or whose pid now belongs to a process started later); None when it cannot be told (another host)."""
    try:
        host, pid_text, *rest = worker.split(":")
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    started = _started(pid)
    if started is None:
        return True
    if started < 0:  # exists, not ours to inspect
        return False
    if rest and rest[0]:
        return abs(started - float(rest[0])) > 1.0
    if started_before is not None:
        return started > started_before + 1.0
    return False
