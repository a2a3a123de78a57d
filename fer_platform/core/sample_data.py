"""A deterministic, FER2013-shaped landing folder of generated faces.

Each image is a 48x48 grayscale face drawn with features that depend on the
emotion (mouth curve and opening, eyebrow slant and height, eye size, nose
wrinkles) at a random intensity, under random pose, size, lighting, background
and noise: similar expressions resemble each other, but not trivially.
Same seed, same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer_platform.core.layout import EMOTIONS, SPLITS

_CANVAS = 96  # drawn at twice the size, then downsampled to 48x48


@dataclass(frozen=True)
class _Expr:
    mouth_curve: float  # + smile, - frown
    mouth_open: float  # 0 closed .. 1 wide open (height)
    mouth_width: float  # relative width
    brow_slant: float  # + inner ends down (angry), - inner ends up (sad)
    brow_raise: float  # + higher
    eye_open: float  # 1 normal
    wrinkle: float  # nose wrinkles (disgust)
    asym: float  # mouth asymmetry


_EXPRESSIONS = {
    "angry": _Expr(-0.15, 0.05, 0.8, 1.0, -0.4, 0.7, 0.2, 0.0),
    "disgust": _Expr(-0.35, 0.15, 0.8, 0.4, -0.2, 0.6, 1.0, 0.8),
    "fear": _Expr(-0.2, 0.45, 1.05, -0.6, 0.9, 1.45, 0.0, 0.0),
    "happy": _Expr(1.0, 0.25, 1.2, 0.0, 0.1, 0.75, 0.0, 0.0),
    "neutral": _Expr(0.0, 0.0, 0.9, 0.0, 0.0, 1.0, 0.0, 0.0),
    "sad": _Expr(-0.9, 0.0, 0.85, -1.0, 0.2, 0.8, 0.0, 0.0),
    "surprise": _Expr(0.0, 1.0, 0.6, 0.0, 1.2, 1.5, 0.0, 0.0),
}


def render_face(emotion: str, rng: np.random.Generator) -> bytes:
    """PNG bytes of one generated 48x48 grayscale face showing ``emotion``."""
    ex = _EXPRESSIONS[emotion]
    k = float(rng.uniform(0.55, 1.0))  # expression intensity
    s = _CANVAS
    bg_a, bg_b = rng.uniform(10, 110, size=2)
    grad = np.linspace(bg_a, bg_b, s)[None, :] if rng.random() < 0.5 else np.linspace(bg_a, bg_b, s)[:, None]
    canvas = Image.fromarray(np.broadcast_to(grad, (s, s)).astype(np.uint8), mode="L")
    d = ImageDraw.Draw(canvas)

    cx = s / 2 + rng.uniform(-6, 6)
    cy = s / 2 + rng.uniform(-5, 5)
    rx = rng.uniform(28, 36)
    ry = rx * rng.uniform(1.1, 1.3)
    skin = int(rng.uniform(130, 215))
    dark = int(max(0, skin - rng.uniform(90, 130)))
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    hair = int(rng.uniform(10, 90))
    d.chord([cx - rx, cy - ry, cx + rx, cy + ry * 0.2], start=180, end=360, fill=hair)

    # eyes
    eye_dx = rx * rng.uniform(0.36, 0.46)
    eye_y = cy - ry * 0.12
    eye_w = rx * 0.17
    eye_h = max(1.2, rx * 0.09 * (1 + (ex.eye_open - 1) * k))
    for side in (-1, 1):
        ex_c = cx + side * eye_dx
        d.ellipse([ex_c - eye_w, eye_y - eye_h, ex_c + eye_w, eye_y + eye_h], fill=255)
        pr = min(eye_h, eye_w) * 0.8
        d.ellipse([ex_c - pr, eye_y - pr, ex_c + pr, eye_y + pr], fill=dark)

    # eyebrows: inner end moves by slant, both by raise
    brow_y = eye_y - ry * 0.2 - ex.brow_raise * k * ry * 0.1
    for side in (-1, 1):
        outer = (cx + side * (eye_dx + eye_w * 1.2), brow_y - ex.brow_slant * k * ry * 0.02)
        inner_y = brow_y + ex.brow_slant * k * ry * 0.09
        if side == -1 or ex.asym == 0:
            inner = (cx + side * eye_dx * 0.35, inner_y)
        else:
            inner = (cx + side * eye_dx * 0.35, inner_y - ex.asym * k * ry * 0.06)
        d.line([outer, inner], fill=dark, width=int(rng.integers(3, 5)))

    # nose and wrinkles
    d.line([(cx, eye_y + ry * 0.05), (cx - rx * 0.05, cy + ry * 0.22)], fill=dark + 30, width=2)
    if ex.wrinkle > 0:
        for j in range(3):
            yy = eye_y + ry * (0.02 + 0.06 * j)
            d.line([(cx - rx * 0.18, yy), (cx + rx * 0.18, yy - ex.wrinkle * k * 2)], fill=dark + 20, width=1)

    # mouth: a quadratic curve, optionally opened
    mouth_y = cy + ry * 0.48
    half = rx * 0.38 * ex.mouth_width
    curve = ex.mouth_curve * k * ry * 0.16
    opening = ex.mouth_open * k * ry * 0.22
    pts_top, pts_bot = [], []
    for i in range(21):
        t = -1 + i / 10
        x = cx + t * half
        lift = curve * (1 - t * t) + ex.asym * k * t * ry * 0.06
        y = mouth_y - (curve - lift) - curve * 0.5
        pts_top.append((x, y))
        pts_bot.append((x, y + opening * (1 - t * t)))
    if opening > 1.0:
        d.polygon(pts_top + pts_bot[::-1], fill=max(0, dark - 30))
    d.line(pts_top, fill=max(0, dark - 20), width=3)

    rot = float(rng.uniform(-10, 10))
    canvas = canvas.rotate(rot, resample=Image.BILINEAR, fillcolor=int(bg_a))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    img = canvas.resize((48, 48), Image.LANCZOS)

    arr = np.asarray(img, dtype=np.float32)
    light = np.linspace(-1, 1, 48)
    angle = rng.uniform(0, 2 * math.pi)
    shade = (math.cos(angle) * light[None, :] + math.sin(angle) * light[:, None]) * rng.uniform(0, 35)
    arr = arr * rng.uniform(0.7, 1.2) + shade + rng.normal(0, rng.uniform(2, 9), size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()


def write_sample_landing(
    out: Path | str,
    per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
    defects: bool = False,
) -> dict[str, int]:
    """Write ``train/<emotion>/`` and ``test/<emotion>/`` PNGs under ``out``.

    With ``defects``, also write the broken and stray files a real landing zone
    gets (see ``DEFECTS``). Returns counts by kind.
    """
    out = Path(out)
    counts = {"images": 0, "defects": 0}
    first_png: bytes | None = None
    for split_i, (split, n) in enumerate(zip(SPLITS, (per_class, test_per_class), strict=True)):
        for emo_i, emotion in enumerate(EMOTIONS):
            folder = out / split / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_i, emo_i, i])
                data = render_face(emotion, rng)
                first_png = first_png or data
                (folder / f"{split}_{emotion}_{i:05d}.png").write_bytes(data)
                counts["images"] += 1
    if defects:
        counts["defects"] = write_defects(out, first_png or render_face("happy", np.random.default_rng(seed)))
    return counts


# (relative path, what is wrong with it) -- what a real landing zone gets.
DEFECTS = (
    ("train/angry/truncated.png", "truncated PNG"),
    ("train/happy/empty.png", "zero bytes"),
    ("train/sad/notes.png", "text named .png"),
    ("train/fear/colour.png", "RGB instead of grayscale"),
    ("test/neutral/too_big.png", "64x64 instead of 48x48"),
    ("train/surprise/photo.png", "JPEG named .png"),
    ("train/contempt/x.png", "unknown emotion folder"),
    ("train/angry/copie d'écran 1.png", "duplicate content, unicode name with spaces"),
    (".DS_Store", "hidden file (ignored)"),
    ("README.txt", "stray file at the root (ignored)"),
)


def write_defects(out: Path, good_png: bytes) -> int:
    def encoded(mode: str, size: tuple[int, int], fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, size, color=128 if mode == "L" else (128, 64, 32)).save(buf, format=fmt)
        return buf.getvalue()

    contents = {
        "train/angry/truncated.png": good_png[: len(good_png) // 2],
        "train/happy/empty.png": b"",
        "train/sad/notes.png": b"this is not an image\n",
        "train/fear/colour.png": encoded("RGB", (48, 48), "PNG"),
        "test/neutral/too_big.png": encoded("L", (64, 64), "PNG"),
        "train/surprise/photo.png": encoded("L", (48, 48), "JPEG"),
        "train/contempt/x.png": encoded("L", (48, 48), "PNG"),
        "train/angry/copie d'écran 1.png": good_png,
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "README.txt": b"FER2013 landing zone\n",
    }
    for rel, data in contents.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return len(contents)
