"""Freed memory given back to the system between the phases of a long process (``demo``).

A process that embeds, then builds an index, then searches keeps the high-water mark of every phase
unless what a phase freed is returned: Python's objects go at ``gc``, but Arrow's allocator (jemalloc or
mimalloc) keeps freed buffers for reuse until ``release_unused``, and glibc's malloc keeps freed heap in
each thread's arena until ``malloc_trim``. Every thread that allocates (PyTorch's, Arrow's, Dagster's)
gets an arena of its own, up to 8 per core; ``limit_arenas`` caps them, so that freed memory is not
scattered over arenas nobody allocates from again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import pyarrow as pa

M_ARENA_MAX = -8  # glibc's mallopt parameter number


@functools.cache
def _libc():
    """glibc, or None (another C library: musl, macOS): then only gc and Arrow release memory."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc has both
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads started later share them); whether it applied."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def release_memory() -> None:
    """Collect garbage, then return what Arrow's pool and malloc hold free to the system."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
