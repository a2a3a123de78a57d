"""The gold tables drawn as plots for readers outside Dagster (the search service's page).

Each plot is drawn from its gold Parquet table in the lake, the same drawing as the asset's metadata
(``core.plots``), and kept until the table changes (its size or modification time): a plot costs a
matplotlib figure once per build of gold, not once per page view.
"""

from __future__ import annotations

import io
import threading
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from fer_platform.core import plots
from fer_platform.core.errors import FerError, one_line
from fer_platform.core.gold import similarity_matrix
from fer_platform.core.layout import EMOTIONS, GOLD

# name -> (gold table, title)
GOLD_PLOTS = {
    "class_balance": ("emotion_summary", "Class balance"),
    "agreement": ("neighbour_agreement", "10-NN emotion agreement vs chance"),
    "centroids": ("centroid_similarity", "Cosine of emotion centroids"),
}


def table_key(name: str) -> str:
    """Lake key of the gold table a plot is drawn from."""
    return f"{GOLD}/{GOLD_PLOTS[name][0]}.parquet"


def draw(name: str, table: pa.Table) -> bytes:
    """PNG of plot ``name`` from its gold table."""
    title = GOLD_PLOTS[name][1]
    rows = table.to_pylist()
    if name == "class_balance":
        counts: dict = defaultdict(dict)
        for r in rows:
            counts[r["emotion"]][r["split"]] = r["images"]
        return plots.class_balance(counts)
    if name == "agreement":
        rows = [r for r in rows if r["emotion"] != "all"]
        return plots.agreement_bars(
            [r["emotion"] for r in rows], [r["agreement"] for r in rows], [r["chance"] for r in rows], title
        )
    if name == "centroids":
        return plots.heatmap(similarity_matrix(table), EMOTIONS, title)
    raise KeyError(name)


class GoldPlots:
    """Plots of the gold tables in ``lake``, drawn on first request and again when a table changes."""

    def __init__(self, lake):
        self.lake = lake
        self._cache: dict[str, tuple[tuple[int, int], bytes]] = {}
        self._draw = threading.Lock()  # matplotlib's pyplot is not thread-safe

    def _stamps(self, names) -> dict[str, tuple[int, int]]:
        found, _missing = self.lake.stat_many([table_key(n) for n in names])
        by_key = {e.key: (e.size, e.modified_us) for e in found if e.kind == "file"}
        return {n: by_key[table_key(n)] for n in names if table_key(n) in by_key}

    def available(self) -> list[str]:
        """The plots whose gold table is in the lake."""
        stamps = self._stamps(GOLD_PLOTS)
        return [n for n in GOLD_PLOTS if n in stamps]

    def png(self, name: str) -> bytes | None:
        """PNG of plot ``name``; None if its gold table is not in the lake or holds no rows."""
        stamp = self._stamps([name]).get(name)
        if stamp is None:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            table = pq.read_table(io.BytesIO(self.lake.read_bytes(table_key(name))), use_threads=False)
        except FileNotFoundError:  # replaced or removed since the stat
            return None
        except (OSError, pa.ArrowException) as exc:  # a lake that refuses the read, a damaged table
            raise FerError(f"the gold table of plot {name} cannot be read: {one_line(exc)}") from None
        if table.num_rows == 0:
            return None
        with self._draw:
            png = draw(name, table)
        self._cache[name] = (stamp, png)
        return png
