"""Issue 15: a bulk load COPYs without the HNSW index and builds it after; a small one keeps it live;
concurrent loaders end with one index; a loader killed in between is repaired; the embedded server is
tuned, a user's server is not."""

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fer_platform.core import convergence, faults
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.embedded import embedded_start, embedded_stop, server_settings
from fer_platform.core.pg.schema import BULK_MIN_ROWS, VECTOR_INDEX, DeclaredLoad, ensure_schema, is_bulk
from fer_platform.core.search.pgvector import pgvector_search
from fer_platform.core.storage import Storage
from fer_platform.core.vecmath import normalise
from fer_platform.core.vectors import EmbeddingPlan, write_partition
from fer_platform.resources import PostgresResource
from fer_platform_tests.helpers import embedding_plan

DAY = dt.date(2026, 11, 21)
BULK = BULK_MIN_ROWS + 200  # a first load of this many rows into an empty table is a bulk load
HNSW_INDEXES = "SELECT count(*) FROM pg_indexes WHERE tablename = 'imagenes_fer' AND indexdef LIKE '%hnsw%'"


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)


def _plan(emotion: str, n: int, seed: int, barrier: threading.Barrier | None = None) -> EmbeddingPlan:
    ids = [f"{emotion}{i:05d}" for i in range(n)]
    vectors = _vectors(seed, n)

    def embed(pngs):
        for start in range(0, len(pngs), 500):
            yield vectors[start : start + 500]
            if barrier is not None and start == 0:
                barrier.wait(30)  # both loaders are inside their COPY at once

    return embedding_plan(ids, embed, DAY, emotion)


def _index_present(dsn) -> bool:
    with connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VECTOR_INDEX,)).fetchone()[0]


def _count(dsn) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0]


@pytest.fixture
def pause(tmp_path, monkeypatch):
    """Pause a write at ``vectors.index_deferred`` (or another point) in this process."""

    def at(point: str) -> tuple[Path, Path]:
        monkeypatch.setenv("FER_FAULTS", f"{point}=pause:{tmp_path}")
        faults._hits.clear()
        return tmp_path / f"{point}.reached", tmp_path / f"{point}.go"

    yield at
    faults._hits.clear()


def test_a_bulk_load_copies_without_the_index_and_searches_answer_meanwhile(pg_dsn, pause):
    with connect(pg_dsn) as conn:  # what was there before the load: a search must find it exactly
        write_partition(conn, _plan("sad", 300, seed=1))
    assert 300 < BULK_MIN_ROWS + 4 * BULK  # the load below adds more than a quarter of the table
    assert _index_present(pg_dsn)
    reached, go = pause("vectors.index_deferred")
    result = {}
    loader = threading.Thread(
        target=lambda: result.update(write_partition(connect(pg_dsn), _plan("happy", BULK, seed=2)))
    )
    loader.start()
    try:
        deadline = time.monotonic() + 60
        while not reached.exists():
            assert time.monotonic() < deadline and loader.is_alive(), "the load never reached its build"
            time.sleep(0.05)
        assert not _index_present(pg_dsn), "the bulk COPY ran with the HNSW index"
        assert _count(pg_dsn) == 300 + BULK  # the COPY committed; the build is still to come
        everything = np.concatenate([_vectors(1, 300), _vectors(2, BULK)])
        ids = [f"sad{i:05d}" for i in range(300)] + [f"happy{i:05d}" for i in range(BULK)]
        query = _vectors(3, 1)[0]
        exact = np.argsort(-(normalise(everything) @ normalise(query[None])[0]))[:10]
        with connect(pg_dsn) as conn:
            hits = pgvector_search(conn, query, "m1", k=10)
        assert [h.image_id for h in hits] == [ids[i] for i in exact]
    finally:
        go.write_text("")
        loader.join(120)
    assert result["index_deferred"] and result["index"] == "built"
    assert _index_present(pg_dsn)


def test_a_small_load_keeps_the_index_live(pg_dsn, pause):
    with connect(pg_dsn) as conn:
        assert write_partition(conn, _plan("sad", 1200, seed=1))["index"] == "built"  # a bulk load
    reached, go = pause("vectors.batch_copied")  # mid-COPY of the small load
    result = {}
    loader = threading.Thread(
        target=lambda: result.update(write_partition(connect(pg_dsn), _plan("happy", 100, seed=2)))
    )
    loader.start()
    try:
        deadline = time.monotonic() + 60
        while not reached.exists():
            assert time.monotonic() < deadline and loader.is_alive()
            time.sleep(0.05)
        assert _index_present(pg_dsn), "a small load dropped the index"
    finally:
        go.write_text("")
        loader.join(60)
    assert result["index_deferred"] is False and result["index"] == "present"
    assert _count(pg_dsn) == 1300


def test_concurrent_bulk_loads_end_with_one_index_and_every_row(pg_dsn):
    barrier = threading.Barrier(2)
    results, errors = [], []

    def load(emotion, seed):
        try:
            with connect(pg_dsn) as conn:
                results.append(write_partition(conn, _plan(emotion, BULK, seed, barrier)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(e, s)) for e, s in (("happy", 1), ("angry", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert all(r["index_deferred"] for r in results) and len(results) == 2
    assert sorted(r["index"] for r in results).count("built") == 1
    with connect(pg_dsn) as conn:
        assert conn.execute(HNSW_INDEXES).fetchone()[0] == 1
    assert _count(pg_dsn) == 2 * BULK


_LOADER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from fer_platform.core.pg.connect import connect
    from fer_platform.core.vectors import write_partition
    from test_vector_index import _plan
    with connect({dsn!r}) as conn:
        write_partition(conn, _plan("happy", {n}, seed=1))
    """
)


def _killed_load(dsn):
    code = _LOADER.format(tests=str(Path(__file__).parent), dsn=dsn, n=BULK)
    env = {**os.environ, "FER_FAULTS": "vectors.index_deferred=kill"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert _count(dsn) == BULK and not _index_present(dsn)  # committed rows, no index


def test_a_loader_killed_between_copy_and_build_is_repaired_by_the_next_run_or_the_audit(pg_dsn, tmp_path):
    _killed_load(pg_dsn)
    ensure_schema(pg_dsn)  # what every run, sensor tick and demo does first
    assert _index_present(pg_dsn)
    with connect(pg_dsn) as conn:
        conn.execute(f"DROP INDEX {VECTOR_INDEX}")
        conn.commit()
    _killed_load(pg_dsn)  # the same partition again: its rows are reused, so it is a small load...
    with connect(pg_dsn) as conn:  # ...but the index is missing and nobody loads: it is rebuilt
        found = convergence.audit(conn, Storage(str(tmp_path)), "m1")
    assert found.vector_index == "built" and _index_present(pg_dsn)
    assert any("HNSW index was missing" in line for line in found.lines())


def test_the_embedded_server_is_tuned_and_a_users_server_is_not(pg_dsn):
    root = Path(tempfile.mkdtemp(prefix="fertune-"))
    try:
        dsn = embedded_start(root / "pg")
        wanted = server_settings(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), os.cpu_count() or 2, 0, []
        )
        with connect(dsn) as conn:
            for name in ("shared_buffers", "maintenance_work_mem", "max_wal_size"):
                shown = conn.execute(f"SHOW {name}").fetchone()[0]
                same = conn.execute("SELECT pg_size_bytes(%s) = pg_size_bytes(%s)", (shown, wanted[name]))
                assert same.fetchone()[0], (name, shown, wanted[name])
            for name in ("wal_level", "checkpoint_timeout", "max_parallel_maintenance_workers"):
                assert conn.execute(f"SHOW {name}").fetchone()[0] == wanted[name], name
        assert embedded_start(root / "pg") == dsn  # idempotent: nothing to change, no restart
        # stopped from this process (or another, `fer-platform db stop`): a long-lived process (the daemon,
        # the code server) starting it again gets a running, tuned server, not the package's stale handle
        embedded_stop(root / "pg")
        with connect(embedded_start(root / "pg")) as conn:
            assert conn.execute("SHOW wal_level").fetchone()[0] == wanted["wal_level"]
    finally:
        embedded_stop(root / "pg")
        shutil.rmtree(root, ignore_errors=True)
    # the session's server stands in for a user's FER_PG_DSN server: the platform writes no setting to it
    PostgresResource(dsn=pg_dsn).get_dsn()
    with connect(pg_dsn) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"
            ).fetchone()[0]
            == 0
        )


# the demo's shape: one run per emotion partition, one after another, FER2013's class shares
_DEMO_SHAPE = (("angry", 300), ("disgust", 30), ("fear", 300), ("happy", 500), ("neutral", 350), ("sad", 350))


def test_a_declared_load_of_many_partitions_copies_each_without_the_index_and_builds_it_once(pg_dsn):
    with connect(pg_dsn) as conn:  # what was there before: searched throughout
        write_partition(conn, _plan("surprise", 250, seed=9))
    total = sum(n for _, n in _DEMO_SHAPE)
    # judged alone, later partitions are no bulk load (a small one into a grown table)
    assert not is_bulk(30, 550) and not is_bulk(350, 1730)
    with DeclaredLoad(pg_dsn) as load:
        assert load.begin(total) and not _index_present(pg_dsn)
        for seed, (emotion, n) in enumerate(_DEMO_SHAPE):
            with connect(pg_dsn) as conn:
                stats = write_partition(conn, _plan(emotion, n, seed=seed))
            assert stats["index_deferred"] and stats["index"] == "loading", (emotion, stats)
            assert not _index_present(pg_dsn), f"the index was built after {emotion}"
            ensure_schema(pg_dsn)  # what the next run does first: it does not build the index either
            assert not _index_present(pg_dsn)
            with connect(pg_dsn) as conn:  # searches answer meanwhile (exact scan)
                assert len(pgvector_search(conn, _vectors(3, 1)[0], "m1", k=10)) == 10
    assert load.index == "built" and load.summary()["index_deferred"]
    with connect(pg_dsn) as conn:
        assert conn.execute(HNSW_INDEXES).fetchone()[0] == 1
    assert _count(pg_dsn) == 250 + total


def test_a_small_declared_load_keeps_the_index_live(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan("sad", 1200, seed=1))
    with DeclaredLoad(pg_dsn) as load:
        assert not load.begin(40)  # a sensor-sized load: the runs insert into the live index
        assert _index_present(pg_dsn)
    assert load.index is None and _index_present(pg_dsn)


_DECLARER = textwrap.dedent(
    """
    import sys, time
    from fer_platform.core.pg.schema import DeclaredLoad
    load = DeclaredLoad({dsn!r})
    assert load.begin(10_000)
    print("declared", flush=True)
    time.sleep(120)
    """
)


def test_a_declarer_killed_mid_load_is_repaired_by_the_next_run(pg_dsn):
    with connect(pg_dsn) as conn:
        write_partition(conn, _plan("sad", 300, seed=1))
    proc = subprocess.Popen(
        [sys.executable, "-c", _DECLARER.format(dsn=pg_dsn)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "declared"
        assert not _index_present(pg_dsn)
        ensure_schema(pg_dsn)  # a run meanwhile: the load is under way, no build
        assert not _index_present(pg_dsn)
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 30
    while True:  # the server notices the lost session (and drops its lock) at once or nearly
        ensure_schema(pg_dsn)
        if _index_present(pg_dsn) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _index_present(pg_dsn)
