"""The embedding model as a resource (logic in core/embedding.py; torch loads only when used)."""

from typing import Optional

import dagster as dg

from fer_platform.core.embedding import Embedder, EmbedderSpec, model_id, resolve_weights


class EmbedderResource(dg.ConfigurableResource):
    """ResNet18 -> 512-d vectors. ``weights``: auto | imagenet | random | a state-dict path;
    ``profile``: fidelity | fast; ``device``: auto | cpu | cuda."""

    weights: str = "auto"
    profile: str = "fidelity"
    device: str = "auto"
    batch_size: int = 64
    num_threads: int = 0
    seed: int = 0
    fast_size: int = 112

    def spec(self) -> EmbedderSpec:
        return EmbedderSpec(
            weights=self.weights, profile=self.profile, device=self.device, batch_size=self.batch_size,
            num_threads=self.num_threads, seed=self.seed, fast_size=self.fast_size,
        )  # fmt: skip

    def model_id(self) -> str:
        """The id stored with every vector (resolving weights, not loading the model)."""
        return model_id(self.spec())

    def weights_note(self) -> Optional[str]:
        return resolve_weights(self.spec()).note

    def load(self) -> Embedder:
        return Embedder.get(self.spec())
