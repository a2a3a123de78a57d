"""PostgreSQL + pgvector: an external server by DSN, or the embedded local one."""

from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core.errors import DatabaseUnavailable
from fer_platform.core.pg.auth import EntraToken, use_password_provider
from fer_platform.core.pg.connect import connect as pg_connect
from fer_platform.core.pg.connect import describe
from fer_platform.core.pg.embedded import embedded_start
from fer_platform.core.pg.schema import ensure_schema


class PostgresResource(dg.ConfigurableResource):
    """Where vectors and the load log live.

    ``dsn`` (from ``FER_PG_DSN``) names any server (Azure Database for PostgreSQL
    Flexible Server, RDS/Aurora: ``sslmode=require`` unless the DSN says otherwise);
    without it the embedded server in ``embedded_dir`` is started on demand and left
    running. ``entra_auth``: the password is a Microsoft Entra access token from
    ``DefaultAzureCredential`` (managed identity), fetched at connect time and refreshed
    before it expires; the DSN's user is the Entra principal's PostgreSQL role.
    """

    dsn: Optional[str] = None
    embedded_dir: Optional[str] = None
    entra_auth: bool = False

    _resolved: Optional[str] = PrivateAttr(default=None)
    _schema_ensured: bool = PrivateAttr(default=False)

    def get_dsn(self, create_schema: bool = True) -> str:
        """The server's DSN (the embedded server started if it is the one); with ``create_schema`` the
        fer-platform tables are created where missing. A reader that never writes (the search service)
        passes ``create_schema=False``."""
        if self._resolved is None:
            if isinstance(self.dsn, dg.EnvVar):  # not initialised by Dagster
                raise DatabaseUnavailable(
                    f"PostgresResource.dsn is {self.dsn.env_var_name} unresolved: "
                    "use it inside a run or through dg.build_resources"
                )
            if self.dsn:
                resolved = self.dsn
                if self.entra_auth:  # every connect to this server and user, wherever the DSN goes
                    use_password_provider(resolved, EntraToken(where=f"PostgreSQL at {describe(resolved)}"))
            elif self.embedded_dir:
                resolved = embedded_start(self.embedded_dir)
            else:
                raise DatabaseUnavailable("no PostgreSQL configured: set FER_PG_DSN or an embedded_dir")
            self._resolved = resolved
        if create_schema and not self._schema_ensured:
            ensure_schema(self._resolved)
            self._schema_ensured = True
        return self._resolved

    def connect(self):
        return pg_connect(self.get_dsn())
