"""PostgreSQL + pgvector: an external server by DSN, or the embedded local one."""


from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core import db


class PostgresResource(dg.ConfigurableResource):
    """Where vectors and the load log live.

    ``dsn`` (from ``FER_PG_DSN``) names any server; without it the embedded
    server in ``embedded_dir`` is started on demand and left running.
    """

    dsn: Optional[str] = None
    embedded_dir: Optional[str] = None

    _resolved: Optional[str] = PrivateAttr(default=None)

    def get_dsn(self) -> str:
        if self._resolved is None:
            if self.dsn:
                resolved = self.dsn
            elif self.embedded_dir:
                resolved = db.embedded_start(self.embedded_dir)
            else:
                raise db.DatabaseUnavailable("no PostgreSQL configured: set FER_PG_DSN or an embedded_dir")
            db.ensure_schema(resolved)
            self._resolved = resolved
        return self._resolved

    def connect(self):
        return db.connect(self.get_dsn())
