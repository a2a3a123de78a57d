"""`fer-platform serve`: this environment's lake, embedder and PostgreSQL, the listening socket, uvicorn."""

from __future__ import annotations

import socket
import sys

import uvicorn

from fer_platform.core.errors import ConfigError
from fer_platform.core.storage import ReadOnlyStorage
from fer_platform.resources.environments import resolved_resources
from fer_platform.service.app import create_app
from fer_platform.service.settings import ServeSettings, settings_from_env


def listen(settings: ServeSettings) -> socket.socket:
    """The bound listening socket (port 0: any free port); one line if it cannot be had."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.listen(128)
    return sock


def run(host: str | None = None, port: int | None = None) -> int:
    """Serve until SIGINT or SIGTERM. Prints the address it listens on (the port chosen for port 0)."""
    settings = settings_from_env(host, port)
    res = resolved_resources(("lake", "embedder", "postgres"))
    lake = ReadOnlyStorage(res["lake"].storage())
    spec = res["embedder"].spec()
    dsn = res["postgres"].get_dsn(create_schema=False)  # the service never writes
    app = create_app(settings, lake, spec, dsn)
    sock = listen(settings)
    host_shown, bound = settings.host, sock.getsockname()[1]
    if ":" in host_shown:
        host_shown = f"[{host_shown}]"
    print(
        f"fer-platform serve: http://{host_shown}:{bound}/ (API: /openapi.json; lake {lake.url}; "
        f"API key {'required' if settings.api_key else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the signal again once it has shut down: a clean stop
        pass
    return 0
