"""Plots for asset metadata (PNG bytes), made with matplotlib on the Agg backend (imported lazily).

``markdown_image`` embeds a PNG in a markdown metadata value, which the Dagster UI renders.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from fer_platform.core.layout import EMOTIONS
from fer_platform.core.report import distance_decimals

COLOURS = {
    "angry": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happy": "#ff7f0e",
    "neutral": "#7f7f7f",
    "sad": "#1f77b4",
    "surprise": "#2ca02c",
}


def _figure(width: float = 6.0, height: float = 3.6):
    import matplotlib  # deferred: heavy

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # deferred: heavy (and only after choosing the Agg backend)

    return plt, plt.figure(figsize=(width, height), dpi=80)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def class_balance(counts: dict[str, dict[str, int]]) -> bytes:
    """Stacked bars: images per emotion, one colour per split. ``counts[emotion][split]``."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    splits = sorted({s for per in counts.values() for s in per})
    bottom = np.zeros(len(EMOTIONS))
    for split in splits:
        values = np.array([counts.get(e, {}).get(split, 0) for e in EMOTIONS], dtype=float)
        ax.bar(EMOTIONS, values, bottom=bottom, label=split)
        bottom += values
    ax.set_ylabel("images")
    ax.set_title("Class balance")
    ax.legend(title="split")
    ax.tick_params(axis="x", rotation=30)
    return _png(plt, fig)


def heatmap_scale(matrix: np.ndarray) -> tuple[float, float, int]:
    """(vmin, vmax, decimals) of a similarity heatmap: the colours spread over the off-diagonal values (the
    diagonal is 1 by construction), and the labels carry the decimals at which those values read apart
    (real embeddings' centroids all have cosines near 1: two decimals print every cell 1.00)."""
    off = matrix[~np.eye(*matrix.shape, dtype=bool) & np.isfinite(matrix)] if matrix.size else matrix
    if off.size == 0:
        return 0.0, 1.0, 2
    low, high = float(off.min()), float(off.max())
    if high - low < 1e-9:
        low, high = low - 1e-3, high + 1e-3
    return low, high, distance_decimals(off.tolist(), minimum=2, maximum=6)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    plt, fig = _figure(6.4, 5.2)
    ax = fig.add_subplot(111)
    low, high, decimals = heatmap_scale(matrix)
    im = ax.imshow(np.clip(matrix, low, high), cmap="viridis", vmin=low, vmax=high)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    middle = (low + high) / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                colour = "black" if min(matrix[i, j], high) > middle else "white"  # viridis: light at the top
                text = f"{matrix[i, j]:.{decimals}f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6 if decimals > 3 else 7, color=colour)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("cosine (colours: the off-diagonal range; the diagonal is 1)")
    ax.set_title(title)
    return _png(plt, fig)


def scatter_2d(points: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    plt, fig = _figure(5.6, 4.6)
    ax = fig.add_subplot(111)
    labels = np.asarray(labels, dtype=object)
    for e in EMOTIONS:
        mask = labels == e
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=COLOURS[e], label=e)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(markerscale=2, fontsize=7, loc="best")
    return _png(plt, fig)


def agreement_bars(
    emotions: Sequence[str], agreement: Sequence[float], chance: Sequence[float], title: str
) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    x = np.arange(len(emotions))
    ax.bar(x - 0.2, agreement, width=0.4, label="10-NN agreement")
    ax.bar(x + 0.2, chance, width=0.4, label="chance")
    ax.set_xticks(x, emotions, rotation=30)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _png(plt, fig)


def bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    ax.bar(list(labels), list(values))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return _png(plt, fig)


def confusion_matrix(counts: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """Rows: true class, columns: predicted; cells coloured by the share of the row, labelled with counts."""
    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    plt, fig = _figure(5.6, 4.8)
    ax = fig.add_subplot(111)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title)
    return _png(plt, fig)
