"""Passwords asked at connect time instead of written in the DSN: a Microsoft Entra access token.

A DSN is a plain string that travels from the ``postgres`` resource into the core functions that
connect by themselves (ingest, reconcile, search, the migration...). A token cannot ride in it: it
expires within the hour, and a DSN gets shown and logged (masked, but still). So whoever knows that a
server wants a token registers a provider for that server and user, once, and every later
``connect.connect`` to it (any database) asks the provider. Registered by:

- ``PostgresResource`` with ``entra_auth=True``, for its own DSN;
- the ``migrate_vectors`` op with ``target_entra_auth``, for the migration's target.

The registry is process-wide on purpose: the resource is configured once, and the DSN it hands out
must work wherever it goes in that process.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from psycopg.conninfo import conninfo_to_dict

from fer_platform.core.errors import DatabaseUnavailable, one_line

# The scope of a Microsoft Entra access token for Azure Database for PostgreSQL.
ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"

_password_providers: dict[tuple[str, str, str], Callable[[], str]] = {}


def _server_key(params: dict) -> tuple[str, str, str]:
    return (params.get("host") or "localhost", str(params.get("port") or "5432"), params.get("user") or "")


def use_password_provider(dsn: str, provider: Callable[[], str] | None) -> None:
    """Every later ``connect`` to the server and user of ``dsn`` (any database) asks ``provider``
    for the password; ``None`` removes it."""
    key = _server_key(conninfo_to_dict(dsn))
    if provider is None:
        _password_providers.pop(key, None)
    else:
        _password_providers[key] = provider


def provided_password(params: dict) -> str | None:
    """The password from the provider registered for the server and user of these DSN
    parameters (``conninfo_to_dict``), asked now; None when none is registered."""
    provider = _password_providers.get(_server_key(params))
    return provider() if provider is not None else None


class EntraToken:
    """A Microsoft Entra access token for Azure Database for PostgreSQL, used as the password.

    ``credential`` is any azure-identity credential (default: ``DefaultAzureCredential``:
    managed identity, workload identity, environment, Azure CLI). The token is
    fetched when a connection is made and again 5 minutes before it expires;
    it is never logged or put in a DSN.
    """

    REFRESH_MARGIN_S = 300

    def __init__(self, credential=None, scope: str = ENTRA_SCOPE, where: str = "PostgreSQL"):
        self._credential = credential
        self._scope = scope
        self._where = where
        self._token = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._token.expires_on - self.REFRESH_MARGIN_S <= time.time():
                if self._credential is None:
                    from azure.identity import DefaultAzureCredential  # deferred: heavy

                    self._credential = DefaultAzureCredential()
                try:
                    self._token = self._credential.get_token(self._scope)
                except Exception as exc:  # noqa: BLE001 - azure-identity errors are pages long
                    raise DatabaseUnavailable(
                        f"could not get a Microsoft Entra token for {self._where}: {one_line(exc)}"
                    ) from None
            return self._token.token
