"""The embedding model: classic preprocessing, batched == single, weights and model ids."""

import io
import threading
import time
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from fer_platform.core import embedding
from fer_platform.core.embedding import (
    Embedder,
    EmbedderSpec,
    WeightsUnavailable,
    model_id,
    preprocess,
    resolve_weights,
)
from fer_platform_tests.helpers import face

PNGS = [face(e, i) for i in range(5) for e in ("happy", "sad", "angry")]


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fidelity_preprocessing_is_the_classic_torchvision_pipeline():
    classic = T.Compose(
        [
            T.Grayscale(3),
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    expected = torch.stack([classic(Image.open(io.BytesIO(p))) for p in PNGS]).numpy()
    got = preprocess(PNGS, EmbedderSpec(weights="random"))
    assert got.shape == (len(PNGS), 3, 224, 224)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_query_image_of_another_shape_is_preprocessed_as_torchvision_does():
    """`fer-platform search --image` takes any image: not square, not 48x48, in colour."""
    classic = T.Compose(
        [
            T.Grayscale(3),
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    rng = np.random.default_rng(0)
    for size, mode in (((80, 48), "L"), ((48, 97), "RGB"), ((300, 200), "RGB")):
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, format="PNG")
        expected = classic(Image.open(io.BytesIO(buf.getvalue()))).numpy()
        got = preprocess([buf.getvalue()], EmbedderSpec(weights="random"))[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(size))


def test_fast_profile_uses_a_smaller_input():
    assert preprocess(PNGS[:2], EmbedderSpec(weights="random", profile="fast")).shape == (2, 3, 112, 112)


def test_batched_equals_one_at_a_time():
    e = Embedder.get(EmbedderSpec(weights="random", batch_size=8))
    batched = e.embed(PNGS)
    single = np.concatenate([e.forward(preprocess([p], e.spec)) for p in PNGS])
    assert batched.shape == (len(PNGS), 512) and batched.dtype == np.float32
    assert _cos(batched, single).min() >= 0.9999


def test_random_weights_are_deterministic_and_seeded():
    spec = EmbedderSpec(weights="random", seed=3)
    a = Embedder(spec, resolve_weights(spec)).embed(PNGS[:4])
    b = Embedder(spec, resolve_weights(spec)).embed(PNGS[:4])
    np.testing.assert_array_equal(a, b)
    other = EmbedderSpec(weights="random", seed=4)
    c = Embedder(other, resolve_weights(other)).embed(PNGS[:4])
    assert _cos(a, c).max() < 0.9999


def test_our_resnet18_is_torchvisions_without_importing_it():
    """core.resnet builds torchvision's ResNet18 from torch.nn: the same state-dict keys and shapes, the
    same random weights for a seed (so existing random-weight model ids keep their vectors), the same
    outputs for the same weights; and building a model leaves torchvision unimported."""
    import subprocess
    import sys

    import torchvision

    from fer_platform.core.resnet import resnet18

    torch.manual_seed(7)
    ours = resnet18().eval()
    torch.manual_seed(7)
    theirs = torchvision.models.resnet18(weights=None).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        np.testing.assert_array_equal(ours(x).numpy(), theirs(x).numpy())
    # the ImageNet weights' keys: a torchvision state dict loads strictly
    torch.manual_seed(8)
    other = torchvision.models.resnet18(weights=None).eval()
    ours.load_state_dict(other.state_dict(), strict=True)
    with torch.inference_mode():
        np.testing.assert_array_equal(ours(x).numpy(), other(x).numpy())
    probe = (
        "import sys; from fer_platform.core.embedding import Embedder, EmbedderSpec; "
        "Embedder.get(EmbedderSpec(weights='random', profile='native')).embed([]); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_state_dict_file_weights(tmp_path):
    spec = EmbedderSpec(weights="random", seed=5)
    ref = Embedder(spec, resolve_weights(spec))
    path = tmp_path / "w.pt"
    torch.save(ref.model.state_dict(), path)
    from_file = EmbedderSpec(weights=str(path))
    e = Embedder.get(from_file)
    assert e.model_id.startswith("resnet18-file-") and e.model_id.endswith("-fidelity")
    assert _cos(e.embed(PNGS[:3]), ref.embed(PNGS[:3])).min() > 0.99999


def test_model_ids():
    assert model_id(EmbedderSpec(weights="random")) == "resnet18-random-s0-fidelity"
    assert model_id(EmbedderSpec(weights="random", seed=2, profile="fast")) == "resnet18-random-s2-fast112"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch cache and a download that fails as it does without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(target, timeout=30.0):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(embedding, "_download_imagenet", no_network)
    monkeypatch.setattr(embedding, "_resolved", {})


def test_imagenet_offline_fails_with_one_line_saying_what_to_do(offline):
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(EmbedderSpec(weights="imagenet"))
    msg = str(err.value)
    assert "\n" not in msg and "resnet18-f37072fd.pth" in msg and "pre-place" in msg and "'random'" in msg


def test_auto_falls_back_to_random_offline_and_says_so(offline):
    w = resolve_weights(EmbedderSpec(weights="auto"))
    assert w.kind == "random" and "not available" in w.note
    assert model_id(EmbedderSpec(weights="auto")) == "resnet18-random-s0-fidelity"


def test_imagenet_cached_file_is_used(offline, tmp_path):
    spec = EmbedderSpec(weights="random", seed=9)
    ckpt = embedding.torch_hub_checkpoints() / embedding.IMAGENET_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save(Embedder(spec, resolve_weights(spec)).model.state_dict(), ckpt)
    w = resolve_weights(EmbedderSpec(weights="imagenet"))
    assert (w.kind, w.path) == ("imagenet", ckpt)
    assert model_id(EmbedderSpec(weights="imagenet")) == "resnet18-imagenet1k_v1-fidelity"


def test_bad_settings_are_one_line_errors():
    with pytest.raises(embedding.ConfigError, match="profile"):
        EmbedderSpec(profile="turbo")
    with pytest.raises(WeightsUnavailable, match="not 'auto'"):
        resolve_weights(EmbedderSpec(weights="/nope/w.pt"))


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _fresh_thread_count() -> int:
    """The torch thread count a thread set up now starts with."""
    got = []
    t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
    t.start(), t.join()
    return got[0]


def _lane_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fer-embed")]


def test_cpu_lanes_embed_in_order_one_thread_each_and_leave_the_thread_counts_as_they_were(two_torch_threads):
    cpu = {"weights": "random", "device": "cpu"}
    native = Embedder.get(EmbedderSpec(**cpu, profile="native", batch_size=8))
    # how many lanes: the caller's threads, never more than the batches, within the pixels' bound
    assert native.lanes() == (2, 2) and native.lanes(1) == (1, 2)
    assert Embedder.get(EmbedderSpec(**cpu, batch_size=64)).lanes() == (1, 2)  # fidelity's default batch
    assert Embedder.get(EmbedderSpec(**cpu, batch_size=16)).lanes() == (2, 2)

    # results in order whatever order the lanes finish in; each lane pinned before any work (3 threads:
    # 2 + 1), and a thread set up meanwhile starts with the caller's count
    def work(i):
        time.sleep(0.02 * ((7 * i) % 3))
        return i, torch.get_num_threads(), threading.current_thread().name, _fresh_thread_count()

    done = list(embedding._in_lanes(work, iter(range(9)), lanes=2, threads=3, prefetch=2))
    assert [i for i, *_ in done] == list(range(9))
    by_lane = {name: n for _, n, name, _ in done}
    assert sorted(by_lane.values()) == [1, 2] and {f for *_, f in done} == {2}
    assert torch.get_num_threads() == 2 and _fresh_thread_count() == 2 and not _lane_threads()

    # the vectors: 37 faces in batches of 8 (the last one short) equal one forward per batch, in order, the
    # forwards run in two lanes of one thread each
    pngs = [face(e, i) for i in range(13) for e in ("happy", "sad", "angry")][:37]
    ref = np.concatenate([native.forward(preprocess(pngs[i : i + 8], native.spec)) for i in range(0, 37, 8)])
    seen = []
    lane_forward = Embedder(native.spec, native.weights)
    lane_forward.model = native.model

    def forward(batch):
        seen.append((threading.current_thread().name, torch.get_num_threads(), _fresh_thread_count()))
        return Embedder.forward(lane_forward, batch)

    lane_forward.forward = forward
    got = lane_forward.embed(pngs)
    assert got.shape == (37, 512) and _cos(got, ref).min() > 0.99999
    assert len(seen) == 5 and len({name for name, _, _ in seen}) == 2
    assert {n for _, n, _ in seen} == {1} and {f for *_, f in seen} == {2}
    batches = [preprocess(pngs[i : i + 8], native.spec) for i in range(0, 37, 8)]
    assert _cos(np.concatenate(list(native.forward_all(batches))), ref).min() > 0.99999
    assert torch.get_num_threads() == 2 and not _lane_threads()

    # a face that cannot be decoded, in the third batch: its error reaches the caller, no lane is left behind
    with pytest.raises(Exception, match="cannot identify image"):
        native.embed(pngs[:20] + [b"not an image"] + pngs[20:])
    assert torch.get_num_threads() == 2 and _fresh_thread_count() == 2 and not _lane_threads()
