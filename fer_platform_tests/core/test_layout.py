import pytest

from fer_platform.core.layout import quarantine_path, raw_image_path, route, versioned_name


@pytest.mark.parametrize(
    "key, emotion, split",
    [
        ("train/angry/a.png", "angry", "train"),
        ("test/surprise/Im 12.png", "surprise", "test"),
        ("happy/x.jpg", "happy", None),
        ("Train/Happy/x.png", "happy", "train"),
        ("train/sad/café ü 1.png", "sad", "train"),
    ],
)
def test_routes_of_the_fer_layout(key, emotion, split):
    r = route(key)
    assert (r.emotion, r.split, r.ignored, r.problem) == (emotion, split, None, None)
    assert r.name == key.split("/")[-1]


@pytest.mark.parametrize(
    "key, why",
    [
        (".DS_Store", "hidden"),
        ("train/.hidden/a.png", "hidden"),
        ("train/angry/.a.png.swp", "hidden"),
        ("train/angry/Thumbs.db", "system"),
        ("README.txt", "stray file at the landing root"),
        ("_archive/2026-01-01/train/angry/a.png", "archive"),
    ],
)
def test_files_outside_the_data_set_are_ignored(key, why):
    assert why in route(key).ignored


@pytest.mark.parametrize(
    "key, emotion, problem",
    [
        ("train/contempt/a.png", None, "unknown emotion folder 'contempt'"),
        ("validation/angry/a.png", "angry", "unknown split folder 'validation'"),
        ("x/train/angry/a.png", "angry", "nested too deep"),
        ("train/a.png", None, "unknown emotion folder 'train'"),
    ],
)
def test_layout_problems_are_reasons_to_quarantine(key, emotion, problem):
    r = route(key)
    assert r.ignored is None
    assert r.emotion == emotion
    assert problem in r.problem


def test_lake_paths():
    assert raw_image_path("train", "angry", "a b.png") == "raw/images/fer2013/train/angry/a b.png"
    assert raw_image_path(None, "angry", "a.png") == "raw/images/fer2013/angry/a.png"
    assert quarantine_path("2026-11-25", "train/sad/x.png") == "quarantine/2026-11-25/train/sad/x.png"
    assert versioned_name("raw/a/x.png", "0123456789abcdef") == "raw/a/x.0123456789ab.png"
