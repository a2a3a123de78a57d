"""A landing file read by `raw_images`: the confined read against the check it replaced, in one run.

    .venv/bin/python bench/bench_landing_reads.py [--files 20000] [--repeat 3]

N FER-sized files (2.3 KB) in emotion folders of a temp landing zone, each read whole three ways, the
fastest of ``--repeat`` passes each:

- plain ``open().read()`` (no check: the floor);
- the check as it was (before 3386e96): the folders' real path against the root's, both resolved by
  ``os.path.realpath`` per file, the file opened with O_NOFOLLOW by its path, then the descriptor's real
  path (``realpath`` of ``/proc/self/fd/N``) against the root's, resolved again;
- ``Storage.read_bytes`` on a confined store, as ``raw_images`` reads: the folder opened and its real path
  read from ``/proc/self/fd`` once, the file opened by name inside it.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import row

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fer_platform.core.layout import EMOTIONS  # noqa: E402
from fer_platform.core.storage import NotARegularFile, Storage, special_kind  # noqa: E402


def read_as_before(root: str, key: str) -> bytes:
    """The confined read before 3386e96, as it was written."""
    path = f"{root}/{key}"
    parent = os.path.dirname(path)
    inside = os.path.realpath(parent) == os.path.join(os.path.realpath(root), os.path.dirname(key)).rstrip(
        "/"
    )
    if not inside:
        raise NotARegularFile("path through a symbolic link")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if special_kind(os.fstat(fd).st_mode) != "file":
            raise NotARegularFile("not a file")
        opened = f"/proc/self/fd/{fd}"
        if os.path.exists(opened) and not os.path.realpath(opened).startswith(
            os.path.realpath(root) + os.sep
        ):
            raise NotARegularFile("path through a symbolic link")
        return f.read()


def plain(root: str, key: str) -> bytes:
    with open(f"{root}/{key}", "rb") as f:
        return f.read()


def timed(read, keys: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for key in keys:
            read(key)
        best = min(best, time.perf_counter() - started)
    return best / len(keys) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferbench-landing-") as tmp:
        root = f"{tmp}/landing"
        keys = [f"train/{EMOTIONS[i % len(EMOTIONS)]}/Training_{i}.png" for i in range(args.files)]
        data = os.urandom(2300)
        for key in keys:
            Path(root, key).parent.mkdir(parents=True, exist_ok=True)
            Path(root, key).write_bytes(data)
        store = Storage(root, confined=True)
        assert store.read_bytes(keys[0]) == read_as_before(root, keys[0]) == data
        floor = timed(lambda k: plain(root, k), keys, args.repeat)
        before = timed(lambda k: read_as_before(root, k), keys, args.repeat)
        now = timed(store.read_bytes, keys, args.repeat)
        row(f"plain open + read ({args.files} files)", floor, "us/file")
        row("confined read as before (four realpaths)", before, "us/file")
        row("confined read now (Storage.read_bytes)", now, "us/file")
        row(
            "now / before",
            now / before,
            "x",
            f"above the plain read: {now - floor:.1f} against {before - floor:.1f} us",
        )


if __name__ == "__main__":
    main()
