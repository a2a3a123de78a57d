"""Builders of good and broken landing files for tests."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fer_platform.core.sample_data import render_face


def face(emotion: str = "happy", seed: int = 0) -> bytes:
    return render_face(emotion, np.random.default_rng(seed))


def encoded(mode: str = "L", size=(48, 48), fmt: str = "PNG", value=100) -> bytes:
    buf = io.BytesIO()
    color = value if mode == "L" else (value, 50, 20)
    Image.new(mode, size, color=color).save(buf, format=fmt)
    return buf.getvalue()


def put(root: Path, key: str, data: bytes) -> Path:
    p = root / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p
