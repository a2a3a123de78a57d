"""Freed memory given back to the system between the phases of a long process (``demo``).

A process that embeds, then builds an index, then searches keeps the high-water mark of every phase
unless what a phase freed is returned: Python's objects go at ``gc``, but Arrow's allocator (jemalloc or
mimalloc) keeps freed buffers for reuse until ``release_unused``, and glibc's malloc keeps freed heap in
each thread's arena until ``malloc_trim``. Every thread that allocates (PyTorch's, Arrow's, Dagster's)
gets an arena of its own, up to 8 per core; ``limit_arenas`` caps them, so that freed memory is not
scattered over arenas nobody allocates from again.

Two more settings bound a long process's high-water mark (``demo`` at FER2013's size: 1,319 -> 1,235 MiB,
BENCHMARKS.md):

* ``limit_arenas`` also makes Arrow allocate with the system allocator (malloc, so the arenas above):
  mimalloc keeps what a thread freed in that thread's heap, and Arrow's dataset scanner allocates on its
  own I/O and CPU threads, which ``release_unused`` (the calling thread's heap) never reaches: reading
  silver's 70 MiB of vectors with that scanner peaked ~300 MiB above the process with mimalloc, ~230 MiB
  with malloc (silver is now read file by file on one thread: ``silver_scan.iter_silver_vectors``).
* ``unpool_large_allocations`` (once nothing is embedded any more) serves every allocation of 1 MiB or
  more by its own mmap, returned to the system when freed. glibc's default raises that threshold to the
  size of the largest block freed (up to 32 MiB), so the index build's and silver's temporaries of a few
  MiB each came from the heap and stayed there. Not while embedding: the model's activations are such
  blocks, and mapping them afresh on every batch cost ~30 % of the model's speed (measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import pyarrow as pa

M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


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
    """At most ``arenas`` malloc arenas from now on (threads started later share them), and Arrow on the
    system allocator; whether the cap applied."""
    pa.set_memory_pool(pa.system_memory_pool())
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def unpool_large_allocations(threshold: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``threshold`` bytes or more mapped on their own, given back when freed; whether it applied.
    Not in a process still embedding (see above)."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_memory() -> None:
    """Collect garbage, then return what Arrow's pool and malloc hold free to the system."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
