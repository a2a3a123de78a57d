"""The embedding model: ResNet18 (torchvision's, built by ``core.resnet``) without its classifier, 512-d
vectors.

Profiles:
  fidelity (default)  the classic loader's preprocessing: Grayscale(3) -> Resize(256) ->
                      CenterCrop(224) -> ToTensor -> ImageNet Normalize, fp32.
  fast                Resize(128) -> CenterCrop(112), bf16 autocast where the CPU has
                      AVX512-BF16/AMX or on a GPU; fp32 elsewhere. Its cosine to fidelity is
                      measured by bench/, never assumed.
  native              the images' own 48x48 (Resize(48), no crop), fp32: what the emotion-tuned
                      models are trained at and served with (their config names the profile).

Weights: ``auto`` (ImageNet where cached or downloadable, else deterministic random),
``imagenet`` (torchvision IMAGENET1K_V1; fails offline with one line saying what to do),
``random`` (deterministic, seeded), a path to a state dict, or a path to a model folder
(``config.json`` + ``weights.pt``, what the ``emotion_model`` asset writes; its config names the
profile it serves with). ``tuned`` (the latest approved emotion model) is resolved to such a
folder by the embedder resource, which knows the lake. The model id
``resnet18-<weights>-<profile>`` is stored with every vector.

torch is imported only when a model is built; torchvision never (``core.resnet``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import threading
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from fer_platform.core.errors import ConfigError
from fer_platform.core.resnet import resnet18

log = logging.getLogger(__name__)

DIM = 512
PROFILES = ("fidelity", "fast", "native")
TRAIN_PROFILE = "native"  # emotion models are trained at it, and serve at it (their config names it)
NATIVE_SIZE = 48  # FER2013 images are 48x48
MAX_LANES = 4  # lanes of ``Embedder.stream`` on the CPU (measured on 2 cores: 2 lanes)
LANE_PIXELS = 64 * 224 * 224  # input pixels the lanes' batches may hold together: one fidelity batch of 64
PIN_TIMEOUT = 60.0  # seconds the lanes' threads may take to start and set their thread counts
MODEL_CONFIG = "config.json"  # a model folder: config.json + weights.pt
MODEL_WEIGHTS = "weights.pt"
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
        return {"fidelity": 224, "native": NATIVE_SIZE}.get(self.profile, self.fast_size)

    @property
    def resize_to(self) -> int:
        if self.profile == "native":
            return NATIVE_SIZE  # the whole face, no crop
        return round(self.input_size * 256 / 224)

    @property
    def profile_tag(self) -> str:
        return {"fidelity": "fidelity", "native": f"native{NATIVE_SIZE}"}.get(
            self.profile, f"fast{self.fast_size}"
        )


@dataclass(frozen=True)
class Weights:
    kind: str  # imagenet | random | file | tuned
    tag: str  # goes into the model id
    path: Path | None = None
    note: str | None = None  # why auto chose what it chose
    profile: str | None = None  # a model folder's own profile (it was trained at that input)


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
    if w == "tuned" or w.startswith("tuned:"):
        raise WeightsUnavailable(
            f"weights {w!r} name an emotion model in the lake: the embedder resource resolves them (it needs "
            "its lake); here give the path of a model folder instead"
        )
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
                note = (
                    f"ImageNet weights not available ({reason}); using deterministic random weights "
                    f"(seed {spec.seed})"
                )
                log.warning(note)
                return Weights("random", f"random-s{spec.seed}", note=note)
            raise WeightsUnavailable(
                f"ImageNet weights for resnet18 are not cached at {cached} and cannot be downloaded "
                f"({reason}): pre-place {IMAGENET_FILE} there (from {IMAGENET_URL}), or set weights to "
                "'random' or to the path of a state dict (FER_EMBED_WEIGHTS)"
            ) from None
    path = Path(w).expanduser()
    if path.is_dir():
        return model_folder_weights(path)
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights {w!r}: not 'auto', 'imagenet', 'random', 'tuned', an existing state-dict file or "
            "model folder"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Weights("file", f"file-{digest}", path)


def weights_digest(data: bytes) -> str:
    """The digest of a state-dict file that names it in model ids."""
    return hashlib.sha256(data).hexdigest()[:12]


def model_folder_weights(folder: Path) -> Weights:
    """The weights of a model folder (config.json + weights.pt), checked against the digest its config
    names."""
    config_path, weights_path = folder / MODEL_CONFIG, folder / MODEL_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise WeightsUnavailable(
            f"{folder} is not a model folder (it needs {MODEL_CONFIG} and {MODEL_WEIGHTS})"
        )
    config = json.loads(config_path.read_text())
    digest = weights_digest(weights_path.read_bytes())
    if digest != config.get("weights_digest"):
        raise WeightsUnavailable(
            f"{weights_path} has digest {digest}, its config names {config.get('weights_digest')}: the "
            "folder is corrupt or half-copied; fetch the model again"
        )
    profile = config.get("profile", "fidelity")
    if profile not in PROFILES:
        raise WeightsUnavailable(f"{config_path} names profile {profile!r}, not one of {', '.join(PROFILES)}")
    return Weights("tuned", f"tuned-{digest}", weights_path, profile=profile)


def effective_spec(spec: EmbedderSpec, weights: Weights) -> EmbedderSpec:
    """``spec`` with the profile a model folder was trained at (a tuned model serves at its own input
    size)."""
    if weights.profile and weights.profile != spec.profile:
        return replace(spec, profile=weights.profile)
    return spec


def replace_profile(spec: EmbedderSpec, profile: str) -> EmbedderSpec:
    """``spec`` with another preprocessing profile (e.g. ``TRAIN_PROFILE``), all else kept."""
    return replace(spec, profile=profile)


def model_id(spec: EmbedderSpec, weights: Weights | None = None) -> str:
    weights = weights or resolve_weights(spec)
    return f"resnet18-{weights.tag}-{effective_spec(spec, weights).profile_tag}"


# --------------------------------------------------------------------------- preprocessing
def preprocess(pngs: Sequence[bytes], spec: EmbedderSpec) -> np.ndarray:
    """(N, 3, S, S) float32, equal to torchvision's Grayscale(3) -> Resize -> CenterCrop -> ToTensor
    -> Normalize on each image (a gray image has three equal channels, so resizing one channel and
    replicating it is the same computation). A gray image already at the profile's size (FER's 48x48 at
    ``native``) is neither converted nor resized: the same pixels, without PIL's two copies."""
    r, s = spec.resize_to, spec.input_size
    gray = np.empty((len(pngs), s, s), dtype=np.uint8)
    for i, data in enumerate(pngs):
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "L":
                im = im.convert("L")
            w, h = im.size
            # Resize(r): the shorter side to r, the aspect kept (a FER image is square: r x r)
            nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))  # CenterCrop(s)
            gray[i] = np.asarray(im)[top : top + s, left : left + s]
    scaled = gray.astype(np.float32)
    scaled /= 255.0
    out = np.empty((len(pngs), 3, s, s), dtype=np.float32)
    for c in range(3):  # (x - mean) / std per channel, into the one output
        np.subtract(scaled, IMAGENET_MEAN[c], out=out[:, c])
        out[:, c] /= IMAGENET_STD[c]
    return out


# --------------------------------------------------------------------------- the model
class Embedder:
    """A loaded model. Build with ``Embedder.get(spec)`` (cached per process)."""

    _cache: dict[tuple, "Embedder"] = {}
    _lock = threading.Lock()

    def __init__(self, spec: EmbedderSpec, weights: Weights, model=None):
        """``model``: an already built backbone (e.g. one just trained) instead of loading ``weights``."""
        import torch  # deferred: heavy

        spec = effective_spec(spec, weights)
        self.spec, self.weights = spec, weights
        self.model_id = model_id(spec, weights)
        if spec.num_threads:
            torch.set_num_threads(spec.num_threads)
        self.device = resolve_device(spec.device)
        model = model if model is not None else build_backbone(weights, spec.seed)
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

    @classmethod
    def release_all(cls) -> None:
        """Forget the models this process loaded (a long process done embedding frees their memory; the
        next ``get`` loads again)."""
        with cls._lock:
            cls._cache.clear()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Vectors (N, 512) float32 of a preprocessed batch."""
        import torch  # deferred: heavy

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

    def preprocess_workers(self) -> int:
        """Threads that decode and transform ahead of the model in front of a GPU, which one thread of PIL
        cannot keep busy (bench_gpu.py)."""
        return max(1, min(8, (os.cpu_count() or 2) - 1))

    def lanes(self, batches: int | None = None) -> tuple[int, int]:
        """(lanes, the torch threads they share) of ``stream`` on the CPU for ``batches`` batches: the
        caller's torch threads split into lanes, each decoding and embedding whole batches of its own on
        its own threads. On 2 cores two one-thread lanes run the model 15-18 % faster than one forward on
        two threads at ``native`` (5-16 % at ``fast``), and decoding costs its own CPU time only, where a
        decoding thread beside a two-thread forward stalled the OpenMP team at every barrier: decoding +
        model 17-23 % faster at ``native`` (bench/bench_lanes.py, three runs). Each lane holds a batch's
        activations, so the lanes' batches together stay within ``LANE_PIXELS`` (the default batch at
        ``fidelity``: one lane, as much memory as before); never more lanes than batches (one query image:
        all threads on it). One thread (the tests, ``serve``) or a GPU: one lane."""
        if self.device.type != "cpu":
            return 1, 0
        import torch  # deferred: heavy

        threads = torch.get_num_threads()
        fits = LANE_PIXELS // (self.spec.batch_size * self.spec.input_size**2)
        lanes = max(1, min(MAX_LANES, threads, fits, batches if batches is not None else MAX_LANES))
        return lanes, threads

    def stream(self, pngs: Sequence[bytes], prefetch: int = 2) -> Iterator[np.ndarray]:
        """Vectors batch by batch, in order. On the CPU each lane (``lanes``) decodes and embeds batches of
        its own, ``prefetch`` batches per lane queued (the lanes hold one batch's activations each); in
        front of a GPU decoding runs in background threads (PIL releases the GIL), ``prefetch`` batches
        ahead of the model."""
        bs = self.spec.batch_size
        chunks = (pngs[i : i + bs] for i in range(0, len(pngs), bs))  # sliced when read (``BinaryRows``)
        lanes, threads = self.lanes(-(-len(pngs) // bs))
        if lanes > 1:
            yield from _in_lanes(
                lambda chunk: self.forward(preprocess(chunk, self.spec)), chunks, lanes, threads, prefetch
            )
            return
        workers = 1 if self.device.type == "cpu" else self.preprocess_workers()  # one lane on the CPU: one
        decode = functools.partial(preprocess, spec=self.spec)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="fer-preprocess") as pool,
            contextlib.closing(_ordered(pool, decode, chunks, prefetch + workers - 1)) as decoded,
        ):  # closed first: what is queued is cancelled before the pool waits for its threads
            for batch in decoded:
                yield self.forward(batch)

    def forward_all(self, batches: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Vectors of preprocessed batches, in order, in the lanes ``stream`` uses: the model alone, as
        the pipeline runs it (the benchmarks' reference)."""
        lanes, threads = self.lanes(len(batches))
        if lanes == 1:
            yield from (self.forward(b) for b in batches)
            return
        yield from _in_lanes(self.forward, iter(batches), lanes, threads, 2)


def _pin_threads(n: int) -> None:
    """Run this thread's torch operations on ``n`` threads. torch (OpenMP) keeps the count per thread once
    the thread has set itself up, so a lane's count does not change the caller's; ``set_num_threads``
    also sets the count threads set up later start with, which ``_in_lanes`` puts back before any work."""
    import torch  # deferred: heavy

    # the first get_num_threads also sets this thread up (torch's once per thread), so nothing undoes the set
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _in_lanes(fn, items: Iterator, lanes: int, threads: int, prefetch: int) -> Iterator:
    """``fn`` over ``items`` on ``lanes`` threads sharing ``threads`` torch threads (the first
    ``threads % lanes`` lanes one more), results in order, ``prefetch`` items per lane queued. Every lane
    is pinned before any work, and the count threads started later take is put back right after: a
    thread that starts using torch during the stream (another stream's caller) gets the caller's count."""
    import torch  # deferred: heavy

    before = torch.get_num_threads()
    counts = iter([threads // lanes + (i < threads % lanes) for i in range(lanes)])
    lock, pinned = threading.Lock(), threading.Barrier(lanes + 1)

    def pin() -> None:
        with lock:
            n = next(counts)
        _pin_threads(n)
        pinned.wait(PIN_TIMEOUT)

    with ThreadPoolExecutor(lanes, thread_name_prefix="fer-embed", initializer=pin) as pool:
        try:
            for _ in range(lanes):  # each submit starts a thread: none is idle until all are pinned
                pool.submit(int)
            pinned.wait(PIN_TIMEOUT)
        finally:
            torch.set_num_threads(before)  # the count for threads set up later, as the caller had it
        yield from _ordered(pool, fn, items, lanes * prefetch)


def _ordered(pool: ThreadPoolExecutor, fn, items: Iterator, ahead: int) -> Iterator:
    """``fn`` over ``items`` on ``pool``, results in order, ``ahead`` items submitted ahead of the one
    waited for; what is still queued is cancelled when the caller stops early."""
    pending: deque = deque()

    def fill() -> None:
        while len(pending) < ahead:
            item = next(items, None)
            if item is None:
                return
            pending.append(pool.submit(fn, item))

    try:
        fill()
        while pending:
            out = pending.popleft().result()
            fill()
            yield out
    finally:
        for f in pending:
            f.cancel()


def resolve_device(device: str):
    """A torch device: ``auto`` is CUDA when available, else the CPU."""
    import torch  # deferred: heavy

    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def build_backbone(weights: Weights, seed: int = 0, state: dict | None = None):
    """ResNet18 with the classifier replaced by identity (512-d output), from ``weights`` (or a
    state dict in memory); random weights are drawn from ``seed``."""
    import torch  # deferred: heavy

    torch.manual_seed(seed)
    model = resnet18()  # torchvision's network, without torchvision's ~164 MiB import
    if state is None and weights.path is not None:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if set(missing) - {"fc.weight", "fc.bias"} or unexpected:
            raise WeightsUnavailable(
                f"{weights.path or 'the state dict'} is not a resnet18 state dict (missing {missing[:3]})"
            )
    model.fc = torch.nn.Identity()
    return model


def _bf16_supported(device) -> bool:
    if device.type == "cuda":
        import torch  # deferred: heavy

        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
