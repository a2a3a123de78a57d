"""The embedding model: torchvision ResNet18 without its classifier, 512-d vectors.

Profiles:
  fidelity (default)  the classic loader's preprocessing: Grayscale(3) -> Resize(256) ->
                      CenterCrop(224) -> ToTensor -> ImageNet Normalize, fp32.
  fast                Resize(128) -> CenterCrop(112), bf16 autocast where the CPU has
                      AVX512-BF16/AMX or on a GPU; fp32 elsewhere. Its cosine to fidelity is
                      measured by bench/, never assumed.

Weights: ``auto`` (ImageNet where cached or downloadable, else deterministic random),
``imagenet`` (torchvision IMAGENET1K_V1; fails offline with one line saying what to do),
``random`` (deterministic, seeded) or a path to a state dict. The model id
``resnet18-<weights>-<profile>`` is stored with every vector.

torch and torchvision are imported only when a model is built.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fer_platform.core.errors import ConfigError

log = logging.getLogger(__name__)

DIM = 512
PROFILES = ("fidelity", "fast")
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_FILE = "resnet18-f37072fd.pth"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class WeightsUnavailable(ConfigError):
    """The requested weights cannot be had here (one line saying what to do instead)."""


@dataclass(frozen=True)
class EmbedderSpec:
    weights: str = "auto"  # auto | imagenet | random | /path/to/state_dict.pt
    profile: str = "fidelity"  # fidelity | fast
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 64
    num_threads: int = 0  # 0: all cores
    seed: int = 0  # for random weights
    fast_size: int = 112  # input size of the fast profile

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ConfigError(f"embedder profile must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        if self.batch_size < 1:
            raise ConfigError("embedder batch_size must be at least 1")

    @property
    def input_size(self) -> int:
        return 224 if self.profile == "fidelity" else self.fast_size

    @property
    def resize_to(self) -> int:
        return round(self.input_size * 256 / 224)

    @property
    def profile_tag(self) -> str:
        return "fidelity" if self.profile == "fidelity" else f"fast{self.fast_size}"


@dataclass(frozen=True)
class Weights:
    kind: str  # imagenet | random | file
    tag: str  # goes into the model id
    path: Path | None = None
    note: str | None = None  # why auto chose what it chose


# --------------------------------------------------------------------------- weights
def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _download_imagenet(target: Path, timeout: float = 30.0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    with urllib.request.urlopen(IMAGENET_URL, timeout=timeout) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    os.replace(tmp, target)


_resolved: dict[tuple, Weights] = {}


def resolve_weights(spec: EmbedderSpec) -> Weights:
    """What ``spec.weights`` means on this machine (downloads ImageNet once if it must and can)."""
    key = (spec.weights, spec.seed)
    if key not in _resolved:
        _resolved[key] = _resolve(spec)
    return _resolved[key]


def _resolve(spec: EmbedderSpec) -> Weights:
    w = spec.weights.strip()
    if w == "random":
        return Weights("random", f"random-s{spec.seed}")
    if w in ("imagenet", "auto"):
        cached = torch_hub_checkpoints() / IMAGENET_FILE
        if cached.exists():
            return Weights("imagenet", "imagenet1k_v1", cached)
        try:
            _download_imagenet(cached)
            return Weights("imagenet", "imagenet1k_v1", cached)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            if w == "auto":
                note = (f"ImageNet weights not available ({reason}); using deterministic random weights "
                        f"(seed {spec.seed})")  # fmt: skip
                log.warning(note)
                return Weights("random", f"random-s{spec.seed}", note=note)
            raise WeightsUnavailable(
                f"ImageNet weights for resnet18 are not cached at {cached} and cannot be downloaded ({reason}): "
                f"pre-place {IMAGENET_FILE} there (from {IMAGENET_URL}), or set weights to 'random' or to the "
                "path of a state dict (FER_EMBED_WEIGHTS)"
            ) from None
    path = Path(w).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"weights {w!r}: not 'auto', 'imagenet', 'random' or an existing state-dict file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Weights("file", f"file-{digest}", path)


def model_id(spec: EmbedderSpec, weights: Weights | None = None) -> str:
    weights = weights or resolve_weights(spec)
    return f"resnet18-{weights.tag}-{spec.profile_tag}"


# --------------------------------------------------------------------------- preprocessing
def preprocess(pngs: Sequence[bytes], spec: EmbedderSpec) -> np.ndarray:
    """(N, 3, S, S) float32, equal to torchvision's Grayscale(3) -> Resize -> CenterCrop -> ToTensor
    -> Normalize on each image (a gray image has three equal channels, so resizing one channel and
    replicating it is the same computation)."""
    r, s = spec.resize_to, spec.input_size
    off = (r - s) // 2
    gray = np.empty((len(pngs), s, s), dtype=np.float32)
    for i, data in enumerate(pngs):
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L").resize((r, r), Image.BILINEAR)
            gray[i] = np.asarray(im, dtype=np.float32)[off : off + s, off : off + s]
    gray /= 255.0
    out = (gray[:, None, :, :] - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- the model
class Embedder:
    """A loaded model. Build with ``Embedder.get(spec)`` (cached per process)."""

    _cache: dict[tuple, "Embedder"] = {}
    _lock = threading.Lock()

    def __init__(self, spec: EmbedderSpec, weights: Weights):
        import torch
        import torchvision

        self.spec, self.weights = spec, weights
        self.model_id = model_id(spec, weights)
        if spec.num_threads:
            torch.set_num_threads(spec.num_threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
        )
        torch.manual_seed(spec.seed)
        model = torchvision.models.resnet18(weights=None)
        if weights.path is not None:
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if set(missing) - {"fc.weight", "fc.bias"} or unexpected:
                raise WeightsUnavailable(f"{weights.path} is not a resnet18 state dict (missing {missing[:3]})")
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.bf16 = spec.profile == "fast" and _bf16_supported(self.device)

    @classmethod
    def get(cls, spec: EmbedderSpec) -> "Embedder":
        weights = resolve_weights(spec)
        key = (spec, weights)
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(spec, weights)
            return cls._cache[key]

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Vectors (N, 512) float32 of a preprocessed batch."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.bf16:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            return y.float().cpu().numpy()

    def embed(self, pngs: Sequence[bytes]) -> np.ndarray:
        """All vectors at once (N, 512)."""
        parts = list(self.stream(pngs))
        return np.concatenate(parts) if parts else np.empty((0, DIM), np.float32)

    def stream(self, pngs: Sequence[bytes], prefetch: int = 2) -> Iterator[np.ndarray]:
        """Vectors batch by batch. Decoding and transforms run in a background thread, ``prefetch``
        batches ahead, so the model never waits on PIL."""
        bs = self.spec.batch_size
        chunks = [pngs[i : i + bs] for i in range(0, len(pngs), bs)]
        if not chunks:
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce():
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    q.put(preprocess(chunk, self.spec))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                q.put(exc)

        worker = threading.Thread(target=produce, name="fer-preprocess", daemon=True)
        worker.start()
        try:
            for _ in chunks:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield self.forward(item)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(0.05)


def _bf16_supported(device) -> bool:
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)
