"""PostgreSQL as in the cloud, on a real server that asks for passwords: a Microsoft Entra access
token as the password (fetched at connect time, refreshed, never logged), the allow-list error of
Azure's ``azure.extensions``, and ``sslmode=require`` for non-local hosts."""

import time

import dagster as dg
import psycopg
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from fer_platform.assets.raw import raw_images
from fer_platform.core.errors import DatabaseUnavailable
from fer_platform.core.pg import auth
from fer_platform.core.pg.auth import ENTRA_SCOPE, use_password_provider
from fer_platform.core.pg.connect import connect, describe
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.io_managers.parquet import LakeIOManager
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import LakeResource, LandingResource, PostgresResource
from fer_platform_tests.cloud.conftest import unique
from fer_platform_tests.helpers import face, put


class StandInCredential:
    """Plays DefaultAzureCredential: hands out the tokens it is given, in order (the database is real)."""

    def __init__(self, *tokens):
        self.tokens = list(tokens)
        self.scopes = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        token = self.tokens.pop(0)
        if isinstance(token, Exception):
            raise token
        return token


@pytest.fixture
def entra_role(pg_cloud):
    """A role whose password is the token Entra would issue, and its DSN without any password."""
    name = unique("entra")
    first = "eyJ0eXAi." + unique("tok")
    pg_cloud.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{first}'")
    pg_cloud.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    pg_cloud.execute("CREATE EXTENSION vector", dbname=name)  # an admin allow-listed and created it
    dsn = pg_cloud.dsn(name, name)
    yield name, dsn, first
    use_password_provider(dsn, None)


def _use(monkeypatch, credential):
    import azure.identity  # deferred: heavy

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda **kw: credential)


def test_entra_token_is_the_password_fetched_at_connect_and_refreshed(entra_role, pg_cloud, monkeypatch):
    name, dsn, first = entra_role
    second = "eyJ0eXAi." + unique("tok")
    now = time.time()
    credential = StandInCredential(AccessToken(first, int(now) + 3600), AccessToken(second, int(now) + 7200))
    _use(monkeypatch, credential)
    with pytest.raises(DatabaseUnavailable, match="no password supplied"):
        connect(dsn)  # the server really asks for a password
    postgres = PostgresResource(dsn=dsn, entra_auth=True)
    for _ in range(3):
        with postgres.connect() as conn:  # the first: get_dsn creates the schema over a token connection
            assert conn.execute("SELECT current_user").fetchone() == (name,)
    assert credential.scopes == [(ENTRA_SCOPE,)], "one token, reused while valid"
    # 57 minutes later the token has less than 5 minutes left: the next connection fetches a new one
    pg_cloud.execute(f"ALTER ROLE \"{name}\" PASSWORD '{second}'")
    monkeypatch.setattr(auth, "time", type("Clock", (), {"time": staticmethod(lambda: now + 57 * 60)}))
    for _ in range(2):
        with postgres.connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (name,)
    assert len(credential.scopes) == 2


def test_entra_auth_through_a_dagster_run_keeps_the_token_out_of_events(entra_role, tmp_path, monkeypatch):
    name, dsn, first = entra_role
    _use(monkeypatch, StandInCredential(AccessToken(first, int(time.time()) + 3600)))
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    put(landing, "train/happy/a.png", face("happy", 1))
    result = dg.materialize(
        [raw_images],
        partition_key=partition_key("happy", utc_today()),
        resources={
            "landing": LandingResource(url=str(landing)),
            "lake": LakeResource(url=str(lake)),
            "lake_io_manager": LakeIOManager(base_url=str(lake)),
            "postgres": PostgresResource(dsn=dsn, entra_auth=True),
        },
    )
    assert result.success
    assert result.asset_materializations_for_node("raw_images")[0].metadata["loaded"].value == 1
    with psycopg.connect(dsn, password=first) as conn:
        assert conn.execute("SELECT path, status FROM load_log").fetchall() == [
            ("train/happy/a.png", "loaded")
        ]
    assert all(first not in str(event) for event in result.all_events)


def test_a_wrong_token_or_no_credential_is_one_line_without_the_token(entra_role, monkeypatch):
    name, dsn, first = entra_role
    _use(
        monkeypatch,
        StandInCredential(
            AccessToken("not-the-token", int(time.time()) + 3600),
            ClientAuthenticationError(
                "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
                "Attempted credentials:\n\tEnvironmentCredential: ..."
            ),
        ),
    )
    with pytest.raises(DatabaseUnavailable) as err:
        PostgresResource(dsn=dsn, entra_auth=True).get_dsn()
    msg = str(err.value)
    assert msg.startswith(f"cannot connect to PostgreSQL at {describe(dsn)}: ")
    assert "password authentication failed" in msg and "not-the-token" not in msg and "\n" not in msg
    with pytest.raises(DatabaseUnavailable) as err:
        PostgresResource(dsn=dsn, entra_auth=True).get_dsn()
    assert str(err.value) == (
        f"could not get a Microsoft Entra token for PostgreSQL at {describe(dsn)}: "
        "DefaultAzureCredential failed to retrieve a token from the included credentials."
    )


# Azure's exact wording (RAISE takes a literal format string, so the text is formatted in here).
AZURE_DENIAL = (
    'extension "vector" is not allow-listed for "azure_pg_admin" users in Azure Database for PostgreSQL'
)
DENY_VECTOR = f"""
CREATE FUNCTION deny_vector() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '{AZURE_DENIAL}'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'to see the full allow list of extensions, please run: "show azure.extensions;"';
END $$;
CREATE EVENT TRIGGER deny_vector ON ddl_command_start WHEN TAG IN ('CREATE EXTENSION')
  EXECUTE FUNCTION deny_vector();
"""


def test_vector_not_allow_listed_is_one_line_saying_how_to_fix_it(pg_cloud, tmp_path):
    """A real server answering CREATE EXTENSION the way Azure does when VECTOR is not in azure.extensions."""
    dsn = pg_cloud.new_database(unique("noext"), vector=False)
    name = dsn.rsplit("/", 1)[1]
    pg_cloud.execute(DENY_VECTOR, dbname=name)
    with pytest.raises(DatabaseUnavailable) as err:
        ensure_schema(dsn)
    msg = str(err.value)
    assert msg.startswith(f"the 'vector' extension is not allow-listed on 127.0.0.1:{pg_cloud.port}/{name}: ")
    assert "azure.extensions" in msg and "\n" not in msg and dsn.split(":")[2].split("@")[0] not in msg

    put(tmp_path / "landing", "train/happy/a.png", face("happy", 1))
    result = dg.materialize(
        [raw_images],
        partition_key=partition_key("happy", utc_today()),
        raise_on_error=False,
        resources={
            "landing": LandingResource(url=str(tmp_path / "landing")),
            "lake": LakeResource(url=str(tmp_path / "lake")),
            "lake_io_manager": LakeIOManager(base_url=str(tmp_path / "lake")),
            "postgres": PostgresResource(dsn=dsn),
        },
    )
    assert not result.success
    errors = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
    assert any(msg in (err.message + (err.cause.message if err.cause else "")) for err in errors)


def test_non_local_hosts_require_ssl_by_default(pg_cloud):
    """host= names a remote server (no DNS lookup: hostaddr is the local server, which has no TLS)."""
    dsn = pg_cloud.new_database(unique("ssl"))
    remote = f"host=fer.postgres.database.azure.com hostaddr=127.0.0.1 port={pg_cloud.port} " + " ".join(
        f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if k not in ("host", "port")
    )
    with pytest.raises(DatabaseUnavailable) as err:
        connect(remote)
    msg = str(err.value)
    assert msg.startswith(f"cannot connect to PostgreSQL at fer.postgres.database.azure.com:{pg_cloud.port}/")
    assert msg.endswith("server does not support SSL, but SSL was required") and "\n" not in msg
    with connect(remote + " sslmode=disable") as conn:  # said explicitly in the DSN: honoured
        assert conn.execute("SELECT 1").fetchone() == (1,)
