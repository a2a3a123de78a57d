"""Contact sheets: the query image and its neighbours, with their emotions, as one PNG.

``result_sheet`` draws a ``query.find_similar`` result (reading the images from the lake);
``contact_sheet`` and the tile layout below it know nothing of searches: captioned images in a grid.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from fer_platform.core.report import format_distances

TILE = 96  # image side in the sheet (FER's 48x48 at 2x, nearest neighbour)
PAD = 6
LABEL_H = 30
MAX_COLS = 6
QUERY_BG = (255, 200, 60)
BG = (245, 245, 245)


def result_sheet(result: dict[str, Any], lake, query_image: bytes | None = None) -> bytes:
    """A contact sheet of a ``find_similar`` result: the query, then each neighbour."""
    return contact_sheet(result_tiles(result, lake, query_image))


def result_tiles(result: dict[str, Any], lake, query_image: bytes | None = None) -> list[tuple[bytes, str]]:
    """The tiles of a result's sheet: (image bytes, caption) of the query, then of each neighbour with its
    rank, emotion and distance."""
    q = result["query"]
    if query_image is None:
        query_image = lake.read_bytes(q["filepath"])
    tiles = [(query_image, f"query\n{q.get('emotion') or ''}")]
    hits = result["hits"]
    # as many decimals as tell the neighbours apart (untuned vectors all lie within ~0.001 of each other)
    distances = format_distances([h["distance"] for h in hits])
    for h, d in zip(hits, distances, strict=True):
        tiles.append((lake.read_bytes(h["filepath"]), f"#{h['rank']} {h['emotion']}\nd={d}"))
    return tiles


def layout(n_tiles: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    """(columns, rows) of a sheet of ``n_tiles``."""
    cols = max(1, min(n_tiles, max_cols))
    return cols, max(1, math.ceil(n_tiles / cols))


def cell_size() -> tuple[int, int]:
    return TILE + 2 * PAD, TILE + 2 * PAD + LABEL_H


def image_box(i: int, cols: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of tile ``i``'s image in the sheet."""
    w, h = cell_size()
    x0, y0 = (i % cols) * w + PAD, (i // cols) * h + PAD
    return x0, y0, x0 + TILE, y0 + TILE


def tile_image(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB").resize((TILE, TILE), Image.NEAREST)


def contact_sheet(tiles: Sequence[tuple[bytes, str]]) -> bytes:
    """PNG of ``tiles`` (image bytes, caption) in a grid; the first tile is the query, highlighted."""
    cols, rows = layout(len(tiles))
    w, h = cell_size()
    sheet = Image.new("RGB", (cols * w, rows * h), BG)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (png, caption) in enumerate(tiles):
        x0, y0, x1, y1 = image_box(i, cols)
        if i == 0:
            draw.rectangle([x0 - PAD, y0 - PAD, x1 + PAD - 1, y1 + PAD + LABEL_H - 1], fill=QUERY_BG)
        sheet.paste(tile_image(png), (x0, y0))
        for j, line in enumerate(caption.split("\n")[:2]):
            draw.text((x0, y1 + 3 + 13 * j), line, fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()
