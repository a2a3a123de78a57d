"""Builders of good and broken landing files for tests, and the local resources pointed at test places."""

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


def folder_resources(dsn: str, lake: Path, landing: Path, **embedder) -> dict:
    """The environments' own resources (``environment_resources``) on a database and two folders;
    ``embedder`` settings (e.g. ``weights="random"``) replace the environment's."""
    from fer_platform.resources import EmbedderResource, PostgresResource
    from fer_platform.resources.environments import environment_resources, vector_resources

    res = environment_resources(str(lake), str(landing), PostgresResource(dsn=dsn))
    if embedder:
        res.update(vector_resources(res["postgres"], EmbedderResource(lake=res["lake"], **embedder)))
    return res
