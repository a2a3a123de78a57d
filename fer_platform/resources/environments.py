"""Resources per environment, chosen once at load time by ``FER_ENV`` (local | azure | aws).

Only resources differ between environments; no asset body branches on them.
"""


import os

from fer_platform.core.errors import ConfigError
from fer_platform.core.home import Home
from fer_platform.io_managers.parquet import LakeIOManager
from fer_platform.io_managers.pgvector import PgVectorIOManager
from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.lake import LakeResource, LandingResource
from fer_platform.resources.postgres import PostgresResource

ENVIRONMENTS = ("local", "azure", "aws")


def environment() -> str:
    env = os.environ.get("FER_ENV", "local").strip().lower() or "local"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"FER_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


def embedder_from_env(lake: LakeResource | None = None) -> EmbedderResource:
    """The embedding model's settings (the same in every environment); ``lake`` holds the emotion
    models that ``FER_EMBED_WEIGHTS=tuned`` serves."""
    try:
        return EmbedderResource(
            weights=os.environ.get("FER_EMBED_WEIGHTS", "auto"),
            profile=os.environ.get("FER_EMBED_PROFILE", "fidelity"),
            device=os.environ.get("FER_EMBED_DEVICE", "auto"),
            batch_size=int(os.environ.get("FER_EMBED_BATCH_SIZE", "64")),
            num_threads=int(os.environ.get("FER_EMBED_THREADS", "0")),
            lake=lake,
            model_cache=os.environ.get("FER_MODEL_CACHE", ""),
        )
    except ValueError as exc:
        raise ConfigError(f"FER_EMBED_BATCH_SIZE and FER_EMBED_THREADS must be integers ({exc})") from None


def vector_resources(
    postgres: PostgresResource, embedder: EmbedderResource | None = None, lake: LakeResource | None = None
) -> dict:
    """The embedder (from the environment unless given; its emotion models in ``lake``) and the pgvector
    IO manager on ``postgres``."""
    embedder = embedder or embedder_from_env(lake)
    return {"embedder": embedder, "pgvector_io_manager": PgVectorIOManager(postgres=postgres, embedder=embedder)}


def local_resources(home: Home | None = None) -> dict:
    """A folder lake and landing zone under the home, the embedded PostgreSQL (or FER_PG_DSN)."""
    home = home or Home.resolve()
    lake_url = os.environ.get("FER_LAKE_URL") or str(home.lake)
    landing_url = os.environ.get("FER_LANDING") or str(home.landing)
    dsn = os.environ.get("FER_PG_DSN") or None
    postgres = PostgresResource(dsn=dsn, embedded_dir=None if dsn else str(home.postgres))
    lake = LakeResource(url=lake_url)
    return {
        "lake": lake,
        "landing": LandingResource(url=landing_url),
        "lake_io_manager": LakeIOManager(base_url=lake_url),
        "postgres": postgres,
        **vector_resources(postgres, lake=lake),
    }


def resources_for(env: str | None = None) -> dict:
    env = env or environment()
    if env == "local":
        return local_resources()
    raise ConfigError(f"FER_ENV={env} is not wired yet (see the cloud environments issue)")
