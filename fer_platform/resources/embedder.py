"""The embedding model as a resource (logic in core/embedding.py; torch loads only when used)."""

from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core import models
from fer_platform.core.embedding import Embedder, EmbedderSpec, WeightsUnavailable, model_id, resolve_weights
from fer_platform.core.errors import FerError
from fer_platform.core.layout import MODELS
from fer_platform.resources.lake import LakeResource


class EmbedderResource(dg.ConfigurableResource):
    """ResNet18 -> 512-d vectors. ``weights``: auto (the latest emotion_model that passed its check, from
    ``lake``, once there is one; before that ImageNet where it can be had, else deterministic random) |
    imagenet | random | a state-dict path | a model folder | ``tuned`` (the latest approved emotion_model,
    an error while there is none) | ``tuned:<model id>`` (that approved model, pinned); ``profile``:
    fidelity | fast | native (a tuned model serves at the profile it was trained at); ``device``: auto |
    cpu | cuda."""

    weights: str = "auto"
    profile: str = "fidelity"
    device: str = "auto"
    batch_size: int = 64
    num_threads: int = 0
    seed: int = 0
    fast_size: int = 112
    lake: Optional[LakeResource] = None
    """Where emotion models live (lake/models/): needed for weights 'tuned'."""
    model_cache: str = ""
    """Local folder for models fetched from a remote lake (default FER_MODEL_CACHE or
    ~/.cache/fer-platform/models)."""

    # The approved model is read once per initialised resource (a run's resources, one CLI command), so the
    # id a step stores with its vectors is the id of the model that made them ({} until read; for weights
    # 'auto' None records that no model was approved yet).
    _approved: Optional[dict] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.reread()

    def reread(self) -> None:
        """Forget the approval read so far: the next call reads the lake again (a model was approved)."""
        self._approved = {}

    @property
    def tuned(self) -> bool:
        """Whether the weights name a tuned model explicitly (``tuned``, ``tuned:<id>``)."""
        return self.weights.strip() == "tuned" or self.weights.strip().startswith("tuned:")

    @property
    def follows_approval(self) -> bool:
        """Whether the served model changes when a new emotion model is approved (``auto``, ``tuned``): what
        ``demo`` trains for. Pinned weights (imagenet, random, a path, ``tuned:<id>``) never change."""
        return self.weights.strip() in ("auto", "tuned")

    def _approval(self) -> Optional[dict]:
        """The approval record the weights resolve to (None: pinned untuned weights, or ``auto`` before any
        model was approved)."""
        if self._approved == {}:
            if self.tuned and self.lake is None:
                raise WeightsUnavailable(
                    f"weights {self.weights!r} need the lake the emotion models are in: the embedder "
                    "resource has none"
                )
            if self.tuned:
                self._approved = models.resolve_tuned(self.lake.storage(), self.weights.strip())
            elif self.weights.strip() == "auto" and self.lake is not None:
                self._approved = models.approved_model(self.lake.storage())
            else:
                self._approved = None
        return self._approved

    @property
    def serves_tuned(self) -> bool:
        """Whether the served model is an approved emotion model (``tuned*``, or ``auto`` once one exists)."""
        return self.tuned or self._approval() is not None

    def approved(self) -> dict:
        """The approval record of the tuned model served (read from the lake once)."""
        record = self._approval()
        if record is None:
            raise WeightsUnavailable(f"weights {self.weights!r}: no approved emotion model to serve")
        return record

    def base_spec(self) -> EmbedderSpec:
        return EmbedderSpec(
            weights=self.weights,
            profile=self.profile,
            device=self.device,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            seed=self.seed,
            fast_size=self.fast_size,
        )

    def spec(self) -> EmbedderSpec:
        """The settings with the weights resolved to something the core embedder loads (for ``tuned``:
        the approved model's local folder, fetched from the lake if it is remote)."""
        spec = self.base_spec()
        if not self.serves_tuned:
            return spec
        model = self.approved()["model"]
        cache = Path(self.model_cache).expanduser() if self.model_cache else None
        folder = models.local_model_folder(self.lake.storage(), model, cache)
        spec = models.serving_spec(spec, folder)
        if model_id(spec) != model:
            raise WeightsUnavailable(
                f"the model folder {folder} makes {model_id(spec)}, not the approved {model}"
            )
        return spec

    def model_id(self) -> str:
        """The id stored with every vector (resolving weights, not loading the model)."""
        if self.serves_tuned:
            return self.approved()["model"]
        return model_id(self.spec())

    def served_model(self) -> str:
        """``model_id`` inside a step: a wrong setting (e.g. weights 'tuned' with no approved model) ends the
        step with its one-line reason."""
        try:
            return self.model_id()
        except FerError as exc:
            raise dg.Failure(description=str(exc)) from None

    def weights_note(self) -> Optional[str]:
        """What the run log says about the weights: for ``auto`` before any model was approved, that the
        untuned weights serve (and, offline, that they are random)."""
        if self.serves_tuned:
            return None
        note = resolve_weights(self.spec()).note
        if self.weights.strip() != "auto" or self.lake is None:
            return note
        untuned = f"serving the untuned {model_id(self.spec())}"
        return (
            f"weights 'auto': no approved emotion model in {self.lake.storage().uri(MODELS)} yet, {untuned}"
            + (f" ({note})" if note else "")
            + ": the job train_emotion_model (or `fer-platform demo`) trains one, served once it passes its "
            "check"
        )

    def load(self) -> Embedder:
        return Embedder.get(self.spec())
