import contextlib
import threading

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from fer_platform.core.errors import DatabaseUnavailable
from fer_platform.core.pg.connect import connect, describe, ensure_database, masked
from fer_platform.core.pg.pool import ReadOnlyPool
from fer_platform.core.pg.schema import ensure_schema, ensure_vector_extension, schema_present, vectors_inline


def test_schema_is_idempotent_and_has_pgvector(pg_dsn):
    ensure_schema(pg_dsn)
    ensure_schema(pg_dsn)
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()
        cols = dict(
            conn.execute(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name='imagenes_fer'"
            ).fetchall()
        )
        assert {
            "id",
            "filepath",
            "emotion",
            "vector",
            "image_id",
            "split",
            "load_date",
            "model",
            "written_by",
        } <= cols.keys()
        assert cols["vector"] == "vector"
        indexes = {
            r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename='imagenes_fer'")
        }
        assert "imagenes_fer_vector_hnsw" in indexes


def test_unreachable_server_is_one_line_with_host_and_without_password():
    dsn = "postgresql://fer:s3cr3t-pw@127.0.0.1:1/fer"
    with pytest.raises(DatabaseUnavailable) as err:
        connect(dsn)
    msg = str(err.value)
    assert "127.0.0.1:1/fer" in msg and "s3cr3t-pw" not in msg and "\n" not in msg


def test_masked_and_described_dsns_hide_the_password():
    dsn = "postgresql://fer:s3cr3t-pw@db.example.com:5432/fer"
    assert "s3cr3t-pw" not in masked(dsn) and "***" in masked(dsn)
    assert describe(dsn) == "db.example.com:5432/fer"


def test_remote_hosts_default_to_sslmode_require(monkeypatch):
    seen = {}

    def fake_connect(conninfo, **kwargs):
        seen["conninfo"] = conninfo
        raise psycopg.OperationalError("stop here")

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    with pytest.raises(DatabaseUnavailable):
        connect("postgresql://u@db.example.com/x")
    assert "sslmode=require" in seen["conninfo"]
    with pytest.raises(DatabaseUnavailable):
        connect("postgresql://u@db.example.com/x?sslmode=disable")
    assert "sslmode=disable" in seen["conninfo"]
    with pytest.raises(DatabaseUnavailable):
        connect("postgresql://u@/x?host=/tmp/sock")
    assert "sslmode" not in seen["conninfo"]


def test_missing_extension_is_explained(pg_dsn, monkeypatch):
    class FakeConn:
        def transaction(self):
            return contextlib.nullcontext()

        def execute(self, *a):
            raise psycopg.errors.FeatureNotSupported(
                'extension "vector" is not allow-listed for "azure_pg_admin" users '
                "in Azure Database for PostgreSQL"
            )

    with pytest.raises(DatabaseUnavailable, match="not allow-listed .*azure.extensions"):
        ensure_vector_extension(FakeConn(), "postgresql://u@srv.postgres.database.azure.com/x")


def test_schema_check_does_not_wait_behind_a_run_writing_vectors(pg_dsn):
    """A run holds the vectors table (writing a partition) for minutes: a sensor tick's or a new run's
    schema check must not queue behind it (CREATE INDEX IF NOT EXISTS would take a SHARE lock)."""
    writer = connect(pg_dsn)
    register_vector(writer)
    writer.execute(
        "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, load_date, model) "
        "VALUES ('f', 'happy', %s, 'x', '2026-11-01', 'm')",
        (np.ones(512, np.float32),),
    )  # the transaction stays open: ROW EXCLUSIVE held
    done = threading.Event()
    t = threading.Thread(target=lambda: (ensure_schema(pg_dsn), done.set()), daemon=True)
    t.start()
    try:
        assert done.wait(10), "ensure_schema waited for the writing transaction"
    finally:
        writer.rollback()
        writer.close()
        t.join(30)


def test_a_malformed_dsn_is_one_line_without_the_password():
    with pytest.raises(DatabaseUnavailable) as info:
        connect("host='unterminated password=S3CRET-pw")
    assert (
        "cannot be read" in str(info.value)
        and "S3CRET" not in str(info.value)
        and "\n" not in str(info.value)
    )


def test_the_read_only_pool_refuses_writes_and_reuses_its_connections(pg_dsn):
    pool = ReadOnlyPool(pg_dsn, size=2)
    try:
        with pool.connection() as conn:
            first = conn.info.backend_pid
            assert conn.execute("SELECT count(*) FROM imagenes_fer").fetchone() == (0,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("CREATE TABLE written_by_the_service (x int)")
        with pool.connection() as conn:  # the same connection, its failed transaction rolled back
            assert conn.info.backend_pid == first
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("DELETE FROM imagenes_fer")
        # a connection killed meanwhile: one line, and the next use connects again
        with pytest.raises(DatabaseUnavailable, match="lost PostgreSQL at"), pool.connection() as conn:
            with connect(pg_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            conn.execute("SELECT 1")
        with pool.connection() as conn:
            assert conn.info.backend_pid != first and conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_the_pool_says_in_one_line_when_the_database_holds_nothing_to_read(pg_server):
    dsn = ensure_database(pg_server, "nothing_loaded")  # no schema: the service does not create one
    pool = ReadOnlyPool(dsn, size=1)
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot answer.*nothing loaded yet") as info:
            with pool.connection() as conn:
                conn.execute("SELECT count(*) FROM imagenes_fer")
        assert "\n" not in str(info.value)
        with pool.connection() as conn:  # the connection stays usable
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()
        with connect(pg_server, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "nothing_loaded" WITH (FORCE)')


def _toast_bytes(conn) -> int:
    return conn.execute(
        "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'imagenes_fer'::regclass"
    ).fetchone()[0]


def _insert_vectors(conn, ids: range) -> None:
    register_vector(conn)
    rng = np.random.default_rng(ids.start)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO imagenes_fer (filepath, emotion, vector, image_id, model, written_by) "
            "VALUES (%s, 'happy', %s, %s, 'm', 'fer-platform')",
            [
                (
                    f"raw/images/fer2013/train/happy/{i:05d}.png",
                    rng.standard_normal(512).astype(np.float32),
                    f"{i:064x}",
                )
                for i in ids
            ],
        )
    conn.commit()


def test_vectors_are_stored_inline_and_an_older_table_is_changed_once(pg_dsn):
    """Issue 15: a 512-d vector takes its row past the TOAST threshold; the table keeps it (and the row's
    text columns) inline, and a table made before is changed by ensure_schema, for the rows written after."""
    with connect(pg_dsn) as conn:
        _insert_vectors(conn, range(0, 40))
        assert _toast_bytes(conn) == 0  # nothing out of line: neither the vectors nor filepath / image_id
        assert vectors_inline(conn)

        # the table as it was made before: pgvector's EXTERNAL storage, the default toast_tuple_target
        conn.execute("ALTER TABLE imagenes_fer ALTER COLUMN vector SET STORAGE EXTERNAL")
        conn.execute("ALTER TABLE imagenes_fer RESET (toast_tuple_target)")
        conn.commit()
        _insert_vectors(conn, range(40, 80))
        before = _toast_bytes(conn)
        assert before > 0  # each of these vectors went out of line
        assert not vectors_inline(conn) and not schema_present(conn)
        conn.rollback()

    ensure_schema(pg_dsn)
    ensure_schema(pg_dsn)
    with connect(pg_dsn) as conn:
        assert vectors_inline(conn) and schema_present(conn)
        _insert_vectors(conn, range(80, 200))
        assert _toast_bytes(conn) == before  # the new rows are inline; the older ones stay where they are
        register_vector(conn)
        n, dims = conn.execute("SELECT count(*), min(vector_dims(vector)) FROM imagenes_fer").fetchone()
        assert (n, dims) == (200, 512)


def test_a_role_that_does_not_own_the_vectors_table_does_not_try_to_change_its_storage(pg_dsn):
    with connect(pg_dsn) as conn:
        conn.execute("ALTER TABLE imagenes_fer ALTER COLUMN vector SET STORAGE EXTERNAL")
        assert not vectors_inline(conn)
        role = f"not_owner_{conn.info.backend_pid}"
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"SET ROLE {role}")
            # it could not change it: the schema counts as present and nothing is attempted, every run
            assert vectors_inline(conn) and schema_present(conn)
            conn.execute("RESET ROLE")
        finally:
            conn.rollback()


def _record(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test asserts there is none
        errors.append(exc)


def test_changing_an_older_table_does_not_wait_behind_a_writer_or_fail_the_schema(pg_dsn):
    """The storage change takes the table's exclusive lock: behind a run writing vectors it gives up after
    DROP_LOCK_TIMEOUT (searches would queue behind it), the schema is still made, and the next
    ensure_schema applies it."""
    with connect(pg_dsn) as conn:
        conn.execute("ALTER TABLE imagenes_fer ALTER COLUMN vector SET STORAGE EXTERNAL")
        conn.commit()
    with connect(pg_dsn) as writer:
        writer.execute("LOCK TABLE imagenes_fer IN ROW EXCLUSIVE MODE")  # a COPY in progress
        errors = []
        schema = threading.Thread(target=lambda: _record(errors, ensure_schema, pg_dsn))
        schema.start()
        schema.join(60)  # DROP_LOCK_TIMEOUT (2 s), not the writer's whole run
        assert not schema.is_alive(), "ensure_schema waited behind the writer"
        assert errors == []  # the schema is not failed by it
        with connect(pg_dsn) as conn:
            assert not vectors_inline(conn)
            assert conn.execute("SELECT count(*) FROM imagenes_fer").fetchone()[0] == 0  # reads go on
        writer.rollback()
    ensure_schema(pg_dsn)
    with connect(pg_dsn) as conn:
        assert vectors_inline(conn)
