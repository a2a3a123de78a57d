from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.lake import LakeResource, LandingResource
from fer_platform.resources.postgres import PostgresResource

__all__ = ["EmbedderResource", "LakeResource", "LandingResource", "PostgresResource"]
