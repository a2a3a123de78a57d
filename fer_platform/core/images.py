"""Image validation and hashing: what a FER2013 image must be, and why it is not."""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from fer_platform.core.layout import IMAGE_EXTENSIONS

EXPECTED_SIZE = (48, 48)
EXPECTED_MODE = "L"

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
}
_EXT_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


class InvalidImage(ValueError):
    """A file that is not a valid FER2013 image; the message is the quarantine reason."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    return None


def validate(data: bytes, name: str, size: tuple[int, int] = EXPECTED_SIZE) -> ImageInfo:
    """Check that ``data`` (a file called ``name``) is a FER2013 image.

    Raises InvalidImage with a one-line reason otherwise.
    """
    ext = posixpath.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InvalidImage(f"not an image file: extension '{ext or '(none)'}' (expected .png, .jpg or .jpeg)")
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:8]
        kind = "text" if _looks_like_text(head) else "binary"
        raise InvalidImage(f"not a PNG or JPEG: content starts with {kind} {head!r}")
    if fmt != _EXT_FORMAT[ext]:
        raise InvalidImage(f"{fmt} content with a {ext} extension")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            info = ImageInfo(format=fmt, width=im.width, height=im.height, mode=im.mode)
    except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as exc:
        raise InvalidImage(f"truncated or corrupt {fmt}: {_one_line(exc)}") from None
    if (info.width, info.height) != size:
        raise InvalidImage(f"wrong size {info.width}x{info.height} (expected {size[0]}x{size[1]})")
    if info.mode != EXPECTED_MODE:
        raise InvalidImage(f"not single-channel grayscale: mode {info.mode} (expected {EXPECTED_MODE})")
    return info


def to_png(data: bytes) -> bytes:
    """PNG bytes of a valid image: PNGs as they are, other formats re-encoded losslessly."""
    if sniff_format(data) == "PNG":
        return data
    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def _looks_like_text(head: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
