import hashlib

from fer_platform.core import images
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.sample_data import DEFECTS, write_sample_landing


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_sample_landing(tmp_path / "a", 3, 1, seed=7)
    write_sample_landing(tmp_path / "b", 3, 1, seed=7)
    write_sample_landing(tmp_path / "c", 3, 1, seed=8)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_fer2013_layout_and_valid_images(tmp_path):
    counts = write_sample_landing(tmp_path, per_class=4, test_per_class=2, seed=1)
    assert counts["images"] == 7 * 6
    for split, n in (("train", 4), ("test", 2)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == sorted(EMOTIONS)
        for emotion in EMOTIONS:
            files = sorted((tmp_path / split / emotion).iterdir())
            assert len(files) == n
            for f in files:
                images.validate(f.read_bytes(), f.name)
    shas = {images.sha256(p.read_bytes()) for p in tmp_path.rglob("*.png")}
    assert len(shas) == counts["images"], "generated faces must all differ"


def test_defects_are_written_and_are_really_broken(tmp_path):
    counts = write_sample_landing(tmp_path, per_class=2, test_per_class=1, defects=True)
    assert counts["defects"] == len(DEFECTS)
    for rel, _what in DEFECTS:
        assert (tmp_path / rel).exists(), rel
    broken = [
        rel
        for rel, what in DEFECTS
        if "duplicate" not in what and "ignored" not in what and "unknown emotion" not in what
    ]
    for rel in broken:
        try:
            images.validate((tmp_path / rel).read_bytes(), rel.split("/")[-1])
        except images.InvalidImage:
            continue
        raise AssertionError(f"{rel} should not validate")
