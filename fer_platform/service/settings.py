"""The search service's settings, read from the environment in one place; a wrong value stops the service
before it starts, with one line naming the variable and what it accepts."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from fer_platform.core.errors import ConfigError
from fer_platform.resources.environments import env_float, env_int, max_file_bytes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_HEADER = "api-key"  # as Azure AI Search's REST API names it
API_KEY_COOKIE = "fer-api-key"  # set by the page, so that its <img> elements load with the key
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


@dataclass(frozen=True)
class ServeSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)  # a secret: never printed, never logged
    cors_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 64 * 1024
    max_k: int = 100
    index_check_seconds: float = 5.0
    pool_size: int = 4

    @property
    def auth(self) -> str:
        return "api-key" if self.api_key else "none"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from_env(host: str | None = None, port: int | None = None) -> ServeSettings:
    """The settings (``host`` and ``port``, from the command line, win over their variables)."""
    host = host or os.environ.get("FER_SERVE_HOST", "").strip() or DEFAULT_HOST
    port = env_int("FER_SERVE_PORT", DEFAULT_PORT) if port is None else port
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not between 0 and 65535 (0: any free port)")
    api_key = os.environ.get("FER_API_KEY") or None
    if api_key is not None and not _KEY.match(api_key):
        # the value itself is never repeated: it is a secret
        raise ConfigError(
            "FER_API_KEY must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ + / = - "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if api_key is None and not is_loopback(host):
        raise ConfigError(
            f"serving on {host} exposes the search API beyond this machine: set FER_API_KEY (every request "
            "but /health must then carry it), or bind 127.0.0.1"
        )
    origins = tuple(
        o.strip().rstrip("/") for o in os.environ.get("FER_CORS_ORIGINS", "").split(",") if o.strip()
    )
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ConfigError(
                f"FER_CORS_ORIGINS: {origin!r} is not an origin (https://host[:port], comma-separated, or *)"
            )
    return ServeSettings(
        host=host,
        port=port,
        api_key=api_key,
        cors_origins=origins,
        max_upload_bytes=env_int("FER_MAX_UPLOAD_BYTES", max_file_bytes(), minimum=1),
        max_k=env_int("FER_SERVE_MAX_K", 100, minimum=1),
        index_check_seconds=env_float("FER_INDEX_CHECK_SECONDS", 5.0),
        pool_size=env_int("FER_SERVE_PG_CONNECTIONS", 4, minimum=1),
    )
