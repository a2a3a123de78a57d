"""Data-quality rules of each layer, as plain functions that return the problems found."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fer_platform.core.images import EXPECTED_MODE, EXPECTED_SIZE


def bronze_problems(table: pa.Table, expected_rows: int | None = None) -> list[str]:
    """Why a bronze partition is not fit for embedding (empty list: it is)."""
    problems = []
    if table.num_rows == 0:
        return problems
    bad_size = pc.sum(
        pc.or_(
            pc.not_equal(table["width"], EXPECTED_SIZE[0]), pc.not_equal(table["height"], EXPECTED_SIZE[1])
        )
    ).as_py()
    if bad_size:
        problems.append(f"{bad_size} image(s) are not {EXPECTED_SIZE[0]}x{EXPECTED_SIZE[1]}")
    bad_mode = pc.sum(pc.not_equal(table["mode"], EXPECTED_MODE)).as_py()
    if bad_mode:
        problems.append(f"{bad_mode} image(s) are not mode {EXPECTED_MODE}")
    dupes = table.num_rows - len(pc.unique(table["image_id"]))
    if dupes:
        problems.append(f"{dupes} duplicate image_id(s)")
    empty = pc.sum(pc.equal(pc.binary_length(table["png"]), 0)).as_py()
    if empty:
        problems.append(f"{empty} row(s) without image bytes")
    if expected_rows is not None and table.num_rows != expected_rows:
        problems.append(f"{table.num_rows} rows but the load log has {expected_rows} loaded images")
    return problems
