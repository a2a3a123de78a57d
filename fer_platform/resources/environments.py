"""Resources per environment, chosen once at load time by ``FER_ENV`` (local | azure | aws).

Only resources differ between environments; no asset body branches on them.
"""


import os

from fer_platform.core.errors import ConfigError
from fer_platform.core.home import Home
from fer_platform.io_managers.parquet import LakeIOManager
from fer_platform.resources.lake import LakeResource, LandingResource
from fer_platform.resources.postgres import PostgresResource

ENVIRONMENTS = ("local", "azure", "aws")


def environment() -> str:
    env = os.environ.get("FER_ENV", "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"FER_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


def local_resources(home: Home | None = None) -> dict:
    """A folder lake and landing zone under the home, the embedded PostgreSQL (or FER_PG_DSN)."""
    home = home or Home.resolve()
    lake_url = os.environ.get("FER_LAKE_URL") or str(home.lake)
    landing_url = os.environ.get("FER_LANDING") or str(home.landing)
    dsn = os.environ.get("FER_PG_DSN") or None
    return {
        "lake": LakeResource(url=lake_url),
        "landing": LandingResource(url=landing_url),
        "lake_io_manager": LakeIOManager(base_url=lake_url),
        "postgres": PostgresResource(dsn=dsn, embedded_dir=None if dsn else str(home.postgres)),
    }


def resources_for(env: str | None = None) -> dict:
    env = env or environment()
    if env == "local":
        return local_resources()
    raise ConfigError(f"FER_ENV={env} is not wired yet (see the cloud environments issue)")
