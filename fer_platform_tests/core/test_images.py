import hashlib

import pytest

from fer_platform.core import images
from fer_platform_tests.helpers import encoded, face


def test_generated_face_is_valid():
    info = images.validate(face("sad"), "x.png")
    assert (info.format, info.width, info.height, info.mode) == ("PNG", 48, 48, "L")


def test_grayscale_jpeg_with_jpg_extension_is_valid():
    # The Kaggle FER2013 download ships .jpg files: they must load unchanged.
    assert images.validate(encoded(fmt="JPEG"), "Training_1.jpg").format == "JPEG"


@pytest.mark.parametrize(
    "data, name, reason",
    [
        (b"", "a.png", "empty file"),
        (b"hello, I am text\n", "a.png", "not a PNG or JPEG: content starts with text"),
        (b"\x00\x01\x02\x03garbage", "a.png", "not a PNG or JPEG: content starts with binary"),
        (encoded(fmt="JPEG"), "a.png", "JPEG content with a .png extension"),
        (encoded(), "a.jpg", "PNG content with a .jpg extension"),
        (encoded("RGB"), "a.png", "not single-channel grayscale: mode RGB"),
        (encoded("L", (64, 64)), "a.png", "wrong size 64x64 (expected 48x48)"),
        (encoded("L", (48, 47)), "a.png", "wrong size 48x47"),
        (encoded(), "a.gif", "not an image file: extension '.gif'"),
        (encoded(), "noext", "not an image file: extension '(none)'"),
    ],
)
def test_broken_files_get_a_one_line_reason(data, name, reason):
    with pytest.raises(images.InvalidImage) as err:
        images.validate(data, name)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_png_is_rejected():
    good = face("angry")
    with pytest.raises(images.InvalidImage, match="truncated or corrupt PNG"):
        images.validate(good[: len(good) // 2], "a.png")


def test_corrupted_png_body_is_rejected():
    good = bytearray(face("fear"))
    good[60:80] = b"\x00" * 20  # inside the IDAT chunk
    with pytest.raises(images.InvalidImage, match="corrupt"):
        images.validate(bytes(good), "a.png")


def test_sha256_is_of_the_bytes_and_equal_for_duplicates():
    a, b = face("happy", 1), face("happy", 1)
    assert images.sha256(a) == images.sha256(b) == hashlib.sha256(a).hexdigest()
    assert images.sha256(a) != images.sha256(face("happy", 2))


def test_to_png_keeps_png_and_reencodes_jpeg_losslessly():
    png = face("neutral")
    assert images.to_png(png) is png
    out = images.to_png(encoded(fmt="JPEG"))
    assert out.startswith(b"\x89PNG")
    assert images.validate(out, "x.png").mode == "L"


def test_a_query_photo_is_made_a_fer_face_and_a_fer_face_is_kept_as_it_is():
    fer = encoded("L")
    assert images.as_face(fer) == fer  # a stored face keeps its bytes, so its hash finds it
    for photo in (
        encoded("RGB", size=(200, 150), fmt="JPEG"),
        encoded("RGBA", size=(64, 96)),
        encoded("L", (49, 48)),
    ):
        face = images.as_face(photo)
        info = images.validate(face, "q.png")
        assert (info.width, info.height, info.mode) == (48, 48, "L")
    for bad, says in (
        (b"GIF89a....", "not a PNG or JPEG"),
        (encoded("L", size=(5000, 8)), "too large: 5000x8"),
        (encoded("RGB", size=(60, 60)) + b"tail", "after the end"),
        (encoded("RGB", size=(60, 60))[:-30], "truncated or corrupt"),
    ):
        with pytest.raises(images.InvalidImage, match=says):
            images.as_face(bad)
