"""PostgreSQL + pgvector: an external server by DSN, or the embedded local one."""


from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core import db


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

    def get_dsn(self) -> str:
        if self._resolved is None:
            if isinstance(self.dsn, dg.EnvVar):  # not initialised by Dagster
                raise db.DatabaseUnavailable(f"PostgresResource.dsn is {self.dsn.env_var_name} unresolved: "
                                             "use it inside a run or through dg.build_resources")  # fmt: skip
            if self.dsn:
                resolved = self.dsn
                if self.entra_auth:
                    db.use_password_provider(resolved, db.EntraToken(where=f"PostgreSQL at {db.describe(resolved)}"))
            elif self.embedded_dir:
                resolved = db.embedded_start(self.embedded_dir)
            else:
                raise db.DatabaseUnavailable("no PostgreSQL configured: set FER_PG_DSN or an embedded_dir")
            db.ensure_schema(resolved)
            self._resolved = resolved
        return self._resolved

    def connect(self):
        return db.connect(self.get_dsn())
