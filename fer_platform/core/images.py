"""Image validation and hashing: what a FER2013 image must be, and why it is not."""

from __future__ import annotations

import hashlib
import io
import posixpath
import warnings
from dataclasses import dataclass

from PIL import Image

from fer_platform.core.errors import one_line
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
    """Check that ``data`` (a file called ``name``) is a FER2013 image: one 48x48 grayscale still image,
    nothing before or after it.

    Raises InvalidImage with a one-line reason otherwise, and nothing else whatever the bytes. Decoding
    is bounded before it starts: the header's declared size is checked first, so a decompression bomb is
    refused without decoding it; several frames, bytes after the image's end and a second image inside
    the file are refused.
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
    end, declared = _png_layout(data) if fmt == "PNG" else _jpeg_layout(data)
    if declared is not None and declared != size:  # from the header alone: nothing is decoded
        raise InvalidImage(f"wrong size {declared[0]}x{declared[1]} (expected {size[0]}x{size[1]})")
    if end < len(data):
        raise InvalidImage(
            f"{len(data) - end} byte(s) after the end of the {fmt} image (a second file appended?)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # DecompressionBombWarning: the size is judged below, from the header
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                declared = im.size
                if declared != size:  # from the header alone: nothing is decoded
                    raise InvalidImage(
                        f"wrong size {declared[0]}x{declared[1]} (expected {size[0]}x{size[1]})"
                    )
                frames = getattr(im, "n_frames", 1)
                if frames != 1:
                    raise InvalidImage(f"{frames} frames (animated or multi-page): expected one still image")
                im.load()
                info = ImageInfo(format=fmt, width=im.width, height=im.height, mode=im.mode)
    except (InvalidImage, MemoryError):  # running out of memory is not the file's fault: never hidden
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on hostile bytes is the file's fault
        raise InvalidImage(f"truncated or corrupt {fmt}: {one_line(exc)}") from None
    if info.mode != EXPECTED_MODE:
        raise InvalidImage(f"not single-channel grayscale: mode {info.mode} (expected {EXPECTED_MODE})")
    return info


MAX_QUERY_SIDE = 4096  # pixels: a query photo larger than this is refused from its header, before decoding


def as_face(data: bytes, max_side: int = MAX_QUERY_SIDE) -> bytes:
    """A query image as FER2013 holds faces. A FER2013 image is returned as it is (so a stored face is found
    at distance 0); any other still PNG or JPEG (a photo of a face: colour, any size up to ``max_side``
    pixels a side) is centre-cropped to a square, made grayscale and resized to 48x48, as a PNG.

    Raises InvalidImage with a one-line reason for anything else, judged as ``validate`` judges landing
    files: the declared size before any decoding, one frame, nothing after the image's end."""
    fmt = sniff_format(data)
    if fmt is None:
        kind = "text" if _looks_like_text(data[:8]) else "binary"
        raise InvalidImage(f"not a PNG or JPEG: content starts with {kind} {data[:8]!r}")
    try:
        validate(data, "query.png" if fmt == "PNG" else "query.jpg")
        return data
    except InvalidImage:
        pass  # not FER-shaped: made so below, if it is an image at all
    end, declared = _png_layout(data) if fmt == "PNG" else _jpeg_layout(data)
    if declared is not None and max(declared) > max_side:
        raise InvalidImage(f"too large: {declared[0]}x{declared[1]} (at most {max_side} pixels a side)")
    if end < len(data):
        raise InvalidImage(f"{len(data) - end} byte(s) after the end of the {fmt} image")
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning: the size is judged from the header, before decoding
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                if max(im.size) > max_side:
                    size = f"{im.width}x{im.height}"
                    raise InvalidImage(f"too large: {size} (at most {max_side} pixels a side)")
                if getattr(im, "n_frames", 1) != 1:
                    raise InvalidImage("several frames (animated or multi-page): expected one still image")
                gray = im.convert("L")
    except (InvalidImage, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on hostile bytes is the file's fault
        raise InvalidImage(f"truncated or corrupt {fmt}: {one_line(exc)}") from None
    side = min(gray.size)
    left, top = (gray.width - side) // 2, (gray.height - side) // 2
    face = gray.crop((left, top, left + side, top + side)).resize(EXPECTED_SIZE, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    face.save(out, format="PNG")
    return out.getvalue()


def _png_layout(data: bytes) -> tuple[int, tuple[int, int] | None]:
    """(offset just after the PNG's IEND chunk, the size IHDR declares). APNG (an acTL chunk) and chunks
    that run past the end are refused here."""
    pos, declared = 8, None
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise InvalidImage(f"truncated or corrupt PNG: chunk {kind!r} runs past the end of the file")
        if kind == b"IHDR" and length >= 8:
            declared = (
                int.from_bytes(data[pos + 8 : pos + 12], "big"),
                int.from_bytes(data[pos + 12 : pos + 16], "big"),
            )
        if kind == b"acTL":
            raise InvalidImage("animated PNG (APNG): expected one still image")
        if kind == b"IEND":
            return end, declared
        pos = end
    raise InvalidImage("truncated or corrupt PNG: no IEND chunk")


def _jpeg_layout(data: bytes) -> tuple[int, tuple[int, int] | None]:
    """(offset just after the JPEG's EOI marker, the size its frame header declares), walking its segments
    (and the entropy-coded data of each scan). A second JPEG inside a segment (e.g. an EXIF thumbnail) is
    refused."""
    pos, n, declared = 2, len(data), None
    while pos + 1 < n:
        if data[pos] != 0xFF:
            raise InvalidImage(f"truncated or corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2, declared
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            raise InvalidImage("truncated or corrupt JPEG: a segment runs past the end of the file")
        segment = data[pos + 4 : pos + 2 + length]
        if marker in _JPEG_FRAMES and len(segment) >= 5 and declared is None:
            declared = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
        if 0xE0 <= marker <= 0xEF and b"\xff\xd8\xff" in segment:
            raise InvalidImage("a second image inside the JPEG (e.g. an EXIF thumbnail): expected one image")
        pos += 2 + length
        if (
            marker == 0xDA
        ):  # start of scan: entropy-coded data up to the next marker that is not stuffing or RSTn
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    pos = n
                    break
                if data[pos + 1] not in _JPEG_IN_SCAN:
                    break
                pos += 2
    raise InvalidImage("truncated or corrupt JPEG: no end-of-image marker")


_JPEG_IN_SCAN = frozenset({0x00, *range(0xD0, 0xD8)})
_JPEG_FRAMES = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
)  # SOFn


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
