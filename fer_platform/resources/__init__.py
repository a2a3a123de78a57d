from fer_platform.resources.auto_loader import AutoLoaderResource
from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.lake import LakeResource, LandingResource
from fer_platform.resources.postgres import PostgresResource

__all__ = ["AutoLoaderResource", "EmbedderResource", "LakeResource", "LandingResource", "PostgresResource"]
