"""Named fault points, for the fault-injection tests: a real SIGKILL, or a pause, at an exact step.

``FER_FAULTS`` lists ``point=action`` pairs separated by commas; with none set (always, outside
tests) ``point()`` returns at once. Actions:

- ``kill``: the process sends itself SIGKILL (no cleanup, no finally blocks, no atexit);
  ``kill@N`` does so on the point's N-th hit in this process.
- ``pause:<folder>``: writes ``<folder>/<point>.reached`` and waits (at most 10 minutes) until
  ``<folder>/<point>.go`` exists, so a test can act at that moment (stop the database, kill another
  process) and then let the step go on.

Points: ``lake.file_written`` (after each file of a local multi-file lake write, e.g. the raw copy),
``ingest.committed`` (after a batch's load-log commit, before the run goes on), ``vectors.batch_copied``
(after each batch of rows streamed into the vectors COPY), ``vectors.index_deferred`` (a bulk load's COPY
committed without the HNSW index, before the index is built), ``lake.write:<layer>`` (a Parquet file of
``raw``, ``bronze``, ``silver``... written to its temporary name, before the rename), ``csv.staged`` (a
challenge CSV batch's images and quarantined lines written, before its checkpoint commit).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

_hits: Counter = Counter()


def _spec() -> dict[str, str]:
    text = os.environ.get("FER_FAULTS", "")
    out = {}
    for part in text.split(","):
        if "=" in part:
            name, action = part.split("=", 1)
            out[name.strip()] = action.strip()
    return out


def point(name: str) -> None:
    if "FER_FAULTS" not in os.environ:
        return
    action = _spec().get(name)
    if action is None:
        return
    _hits[name] += 1
    if action.startswith("kill"):
        nth = int(action.split("@", 1)[1]) if "@" in action else 1
        if _hits[name] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("pause:") and _hits[name] == 1:
        folder = Path(action.split(":", 1)[1])
        (folder / f"{name}.reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not (folder / f"{name}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
