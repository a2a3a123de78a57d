"""core.migrate between two real PostgreSQL servers: the session's embedded server (source, Unix socket)
and the password-protected one on 127.0.0.1 (target, as in the cloud). A copy, a re-run, source changes,
an interrupted run completed by a re-run, and the migrate_vectors job."""

import datetime as dt

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from fer_platform.core.migrate import MigrationError, Progress, migrate_vectors
from fer_platform.core.pg.connect import describe, ensure_database
from fer_platform.definitions import defs
from fer_platform.resources import PostgresResource
from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.helpers import old_vectors_table

ALL = (
    "SELECT id, filepath, emotion, vector::text, image_id, split, load_date, model, created_at "
    "FROM imagenes_fer ORDER BY id"
)


def _rows(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(ALL).fetchall()


def _add(dsn, n, seed, emotion="happy", model="resnet18-random-s0-fidelity"):
    rng = np.random.default_rng(seed)
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        for i in range(n):
            v = rng.standard_normal(512).astype(np.float32)
            conn.execute(
                "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model, "
                "written_by) VALUES (%s, %s, %s, %s, %s, %s, %s, 'fer-platform')",
                (
                    f"raw/images/fer2013/train/{emotion}/{seed}-{i}.png",
                    emotion,
                    v / np.linalg.norm(v),
                    f"sha-{seed}-{i}",
                    None if i % 5 == 0 else "train",
                    dt.date(2026, 1, 1 + i % 3),
                    model,
                ),
            )


@pytest.fixture
def source(pg_dsn):
    """The local database: 23 vectors, ids 1..23 with id 7 deleted (ids are sparse in real tables)."""
    _add(pg_dsn, 23, seed=1)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM imagenes_fer WHERE id = 7")
    return pg_dsn


@pytest.fixture
def target(pg_cloud):
    """An empty database on the cloud-like server, owned by an app role with a password; pgvector created."""
    return pg_cloud.new_database(unique("mig"))


def _has_index(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass('imagenes_fer_vector_hnsw') IS NOT NULL").fetchone()[0]


def test_copy_then_rerun_then_source_changes(source, target):
    first = migrate_vectors(source, target, range_size=5)
    assert (first.rows, first.ranges, first.ranges_copied, first.rows_copied, first.rows_removed) == (
        22,
        5,
        5,
        22,
        0,
    )
    assert first.index_built and _has_index(target)
    assert _rows(target) == _rows(source), "same ids, vectors, columns and created_at"
    password = psycopg.conninfo.conninfo_to_dict(target)["password"]
    assert first.target == describe(target) and password not in str(first)

    again = migrate_vectors(source, target, range_size=5)
    assert (again.rows_copied, again.ranges_copied, again.index_built) == (0, 0, False)
    assert again.checksum == first.checksum and _rows(target) == _rows(source)

    # the source moves on: a re-embedded vector (same id), two new rows, a deleted row
    with psycopg.connect(source) as conn:
        conn.execute(
            "UPDATE imagenes_fer SET vector = (SELECT vector FROM imagenes_fer WHERE id = 5) WHERE id = 3"
        )
    _add(source, 2, seed=2)  # ids 24, 25
    third = migrate_vectors(source, target, range_size=5)
    # ranges 0 (ids 1-4), 4 (20-24), 5 (25)
    assert (third.ranges_copied, third.rows_copied, third.rows) == (3, 4 + 5 + 1, 24)
    assert third.checksum != first.checksum and _rows(target) == _rows(source)
    with psycopg.connect(source) as conn:
        conn.execute("DELETE FROM imagenes_fer WHERE id = 12")
    before = _rows(target)
    with pytest.raises(MigrationError, match=r"the target has 1 row\(s\) the source lacks \(e.g. id 12\)"):
        migrate_vectors(source, target, range_size=5)  # a deletion is applied only when asked for
    assert _rows(target) == before
    fourth = migrate_vectors(source, target, range_size=5, allow_deletes=True)
    assert (fourth.ranges_copied, fourth.rows_copied, fourth.rows_removed) == (1, 4, 5)
    assert _rows(target) == _rows(source)

    # the target's sequence moved past the migrated ids: a row written there gets a new id
    with psycopg.connect(target) as conn:
        new_id = conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, load_date, model) "
            "SELECT filepath, emotion, vector, 'target-only', load_date, model "
            "FROM imagenes_fer WHERE id = 1 "
            "RETURNING id"
        ).fetchone()[0]
    assert new_id == 26


def test_target_rows_the_source_lacks_stop_the_run_before_any_change(source, target):
    migrate_vectors(source, target, range_size=5)
    with psycopg.connect(
        source
    ) as conn:  # an image re-embedded under a new id (24): id 4 is gone from the source
        conn.execute(
            "WITH gone AS (DELETE FROM imagenes_fer WHERE id = 4 RETURNING *) "
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model, "
            "written_by) SELECT filepath, emotion, vector, image_id, split, load_date, model, written_by "
            "FROM gone"
        )
    before = _rows(target)
    with pytest.raises(MigrationError) as err:
        migrate_vectors(source, target, range_size=5)
    msg = str(err.value)
    assert (
        "the target has 1 row(s) the source lacks (e.g. id 4)" in msg
        and "allow_deletes" in msg
        and "\n" not in msg
    )
    assert _rows(target) == before
    done = migrate_vectors(source, target, range_size=5, allow_deletes=True)
    assert _rows(target) == _rows(source) and done.rows == 22


def test_an_interrupted_run_is_completed_by_a_rerun(source, target, pg_cloud):
    """The target's connection is killed by the server in the middle of streaming range 3."""
    name = target.rsplit("/", 1)[1]

    def cut(p: Progress):
        if p.range_no == 3 and p.bytes_streamed > 0 and p.ranges_done == 3:
            pg_cloud.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (name,),
            )

    with pytest.raises(MigrationError) as err:
        migrate_vectors(source, target, range_size=5, progress=cut)
    msg = str(err.value)
    assert "stopped in id range 3 (3 of 5 ranges copied)" in msg and "run it again" in msg and "\n" not in msg
    kept = _rows(target)
    assert [r[0] for r in kept] == [r[0] for r in _rows(source) if r[0] < 15], (
        "ranges 0-2 whole, nothing of 3"
    )
    assert not _has_index(target), "a first load builds the index at the end"

    done = migrate_vectors(source, target, range_size=5)
    assert (done.ranges_copied, done.rows_copied, done.index_built) == (2, 9, True)
    assert _rows(target) == _rows(source) and _has_index(target)
    assert migrate_vectors(source, target, range_size=5).rows_copied == 0


def test_bad_sources_are_one_line(pg_server, target, source):
    empty = ensure_database(pg_server, unique("nothing"))
    with pytest.raises(MigrationError, match=r"^there is no imagenes_fer table on the source "):
        migrate_vectors(empty, target)
    with pytest.raises(MigrationError, match="source and target are the same database"):
        migrate_vectors(source, source)


def _events_text(result) -> str:
    return "\n".join(str(e) for e in result.all_events)


def test_the_migrate_vectors_job_copies_verifies_and_reruns_idempotently(source, target, monkeypatch):
    job = defs.resolve_job_def("migrate_vectors")
    monkeypatch.setenv("FER_MIGRATE_TARGET_DSN", target)  # holds the app role's password
    password = psycopg.conninfo.conninfo_to_dict(target)["password"]
    run_config = {"ops": {"copy_vector_table": {"config": {"range_size": 4}}}}

    first = job.execute_in_process(
        run_config=run_config, resources={"postgres": PostgresResource(dsn=source)}
    )
    assert first.success
    meta = next(
        e for e in first.all_events if e.event_type_value == "STEP_OUTPUT"
    ).event_specific_data.metadata
    assert meta["rows"].value == 22 and meta["rows_copied"].value == 22 and meta["verified"].value is True
    assert meta["target"].value == describe(target) and len(meta["checksum_sha256"].value) == 64
    assert _rows(target) == _rows(source)
    assert password not in _events_text(first)

    again = job.execute_in_process(
        run_config=run_config, resources={"postgres": PostgresResource(dsn=source)}
    )
    meta2 = next(
        e for e in again.all_events if e.event_type_value == "STEP_OUTPUT"
    ).event_specific_data.metadata
    assert (
        again.success
        and meta2["rows_copied"].value == 0
        and meta2["checksum_sha256"] == meta["checksum_sha256"]
    )

    monkeypatch.delenv("FER_MIGRATE_TARGET_DSN")
    failed = job.execute_in_process(
        run_config=run_config, resources={"postgres": PostgresResource(dsn=source)}, raise_on_error=False
    )
    failure = next(e for e in failed.all_events if e.is_step_failure).step_failure_data
    assert failure.user_failure_data.description == (
        "target: environment variable FER_MIGRATE_TARGET_DSN is not set (it must hold a PostgreSQL DSN)"
    )


def test_foreign_rows_stay_where_they_are_and_paths_stay_lake_relative(source, target):
    """Rows other clients wrote: the source's are not migrated, the target's are neither deleted nor
    replaced; one holding an id the source's rows keep stops the run in one line, changing nothing."""
    with psycopg.connect(source) as conn:
        register_vector(conn)
        conn.execute(
            "INSERT INTO imagenes_fer (filepath, emotion, vector) VALUES ('seed/happy/x.png', 'happy', %s)",
            (np.ones(512, np.float32),),
        )  # id 24
    first = migrate_vectors(source, target, range_size=5)
    assert (first.rows, first.foreign_rows_left) == (22, 1)
    platform = ALL.replace("ORDER BY", "WHERE written_by = 'fer-platform' ORDER BY")
    assert _rows(target) == [r for r in _rows(source) if r[0] != 24]
    assert all(r[1].startswith("raw/images/fer2013/train/happy/") for r in _rows(target))

    with psycopg.connect(target) as conn:  # the target's own seed rows: id 24 (after the migrated ids), 26
        register_vector(conn)
        for row_id in ("DEFAULT", "26"):
            conn.execute(
                f"INSERT INTO imagenes_fer (id, filepath, emotion, vector) VALUES ({row_id}, 'seed/t.png', "
                "'sad', %s)",
                (np.ones(512, np.float32),),
            )
    theirs = [r for r in _rows(target) if r[0] in (24, 26)]
    assert [r[0] for r in theirs] == [24, 26]
    with psycopg.connect(source) as conn:
        conn.execute("DELETE FROM imagenes_fer WHERE id = 12")
    again = migrate_vectors(source, target, range_size=5, allow_deletes=True)
    assert (again.rows, again.rows_removed) == (21, 5)
    assert [r for r in _rows(target) if r[0] in (24, 26)] == theirs, "the target's foreign rows untouched"
    with psycopg.connect(target) as conn:
        assert conn.execute(platform).fetchall() == [r for r in _rows(source) if r[0] != 24]

    _add(source, 2, seed=3)  # ids 25, 26: 26 is a foreign row's on the target
    before = _rows(target)
    with pytest.raises(MigrationError) as err:
        migrate_vectors(source, target, range_size=5)
    msg = str(err.value)
    assert "another client wrote on the target hold id(s)" in msg and "e.g. id 26" in msg and "\n" not in msg
    assert _rows(target) == before


def test_an_older_source_is_upgraded_and_migrates_lake_relative_paths(pg_server, target):
    source = ensure_database(pg_server, unique("oldsrc"))
    old_vectors_table(source)
    report = migrate_vectors(source, target)
    assert report.rows == 3 and report.foreign_rows_left == 0
    with psycopg.connect(target) as conn:
        paths = [r[0] for r in conn.execute("SELECT filepath FROM imagenes_fer ORDER BY id")]
    assert paths == [
        "raw/images/fer2013/train/happy/a.png",
        "raw/images/fer2013/test/happy/b.png",
        "raw/images/fer2013/train/sad/c.png",
    ]
