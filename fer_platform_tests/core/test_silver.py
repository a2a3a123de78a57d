"""Silver's build and validation over partitions larger than a block of rows: the same rows and values as
whole-matrix maths, every bad row found wherever it lies, and no matrix-sized temporaries (issue 15: a
partition of 63k vectors at 7x FER held its vectors ~4 times over in the silver step)."""

import datetime as dt
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from fer_platform.core import vecmath
from fer_platform.core.layout import RAW_IMAGES
from fer_platform.core.silver import InvalidVectors, build_silver, silver_problems
from fer_platform.core.vectors import BinaryRows, arrow_to_vectors, rows_of, vectors_to_arrow

N = 4 * vecmath.ROW_BLOCK + 37  # several blocks and a ragged last one


def _embeddings(vectors: np.ndarray, ids: list[int], image_ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "image_id": pa.array(image_ids, pa.string()),
            "filepath": pa.array([f"/lake/{RAW_IMAGES}/train/happy/{i}.png" for i in image_ids], pa.string()),
            "split": pa.array(["train"] * n, pa.string()),
            "model": pa.array(["m"] * n, pa.string()),
            "created_at": pa.array(
                [dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)] * n, pa.timestamp("us", "UTC")
            ),
            "vector": vectors_to_arrow(vectors),
            "emotion": pa.array(["happy"] * n, pa.string()),
            "load_date": pa.array([dt.date(2026, 12, 2)] * n, pa.date32()),
        }
    )


def _traced_peak(fn, *args):
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_normalise_in_blocks_equals_the_whole_matrix_and_finds_a_zero_row_in_any_block():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((N, 512)).astype(np.float32) * 3
    unit = vecmath.normalise(v)
    whole = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous
    np.testing.assert_array_equal(unit, whole)  # per row the same arithmetic: equal, not merely close
    v[3 * vecmath.ROW_BLOCK + 5] = 0
    v[N - 1] = 0
    assert not vecmath.normalise(v)[N - 1].any()
    with pytest.raises(vecmath.ZeroVectors, match="2 zero vector"):
        vecmath.normalise(v, strict=True)


def test_build_silver_sorts_keeps_the_first_row_of_an_image_and_normalises():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((N, 512)).astype(np.float32)
    ids = list(range(N))[::-1]  # out of id order
    image_ids = [f"img{i:06d}" for i in range(N)]
    image_ids[0] = image_ids[1]  # id N-1 and id N-2 are one image: the lower id (N-2) is kept
    out = build_silver(_embeddings(v, ids, image_ids))
    assert out["id"].to_pylist() == list(range(N - 1))
    assert len(set(out["image_id"].to_pylist())) == N - 1
    expected = v[::-1][: N - 1]  # rows in id order, the last id dropped
    got = arrow_to_vectors(out["vector"])
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert out["filepath"][0].as_py().startswith(RAW_IMAGES)
    assert silver_problems(out) == []


def test_silver_problems_finds_bad_rows_in_the_last_block():
    rng = np.random.default_rng(2)
    v = vecmath.normalise(rng.standard_normal((N, 512)).astype(np.float32))
    table = build_silver(_embeddings(v, list(range(N)), [f"i{i}" for i in range(N)]))
    bad = v.copy()
    bad[N - 2] *= 1.01
    bad[N - 1, 7] = np.nan
    problems = silver_problems(table.set_column(7, "vector", vectors_to_arrow(bad)))
    assert "non-finite values" in problems
    assert any(p.startswith("1 vector(s) not of norm 1") for p in problems)  # the scaled one (NaN: above)
    with pytest.raises(InvalidVectors, match="NaN or inf"):
        build_silver(_embeddings(bad, list(range(N)), [f"i{i}" for i in range(N)]))


def test_the_checks_hold_no_copy_of_the_matrix():
    rng = np.random.default_rng(3)
    v = vecmath.normalise(rng.standard_normal((4 * N, 512)).astype(np.float32))
    table = build_silver(_embeddings(v, list(range(4 * N)), [f"i{i}" for i in range(4 * N)]))
    size = v.nbytes  # ~34 MB
    # numpy's buffers are traced: the validation held the float64 matrix and its squares (4x) before
    assert _traced_peak(silver_problems, table) < 0.5 * size
    # the output itself, plus a block's temporaries (the squares of the whole matrix besides, before)
    assert _traced_peak(vecmath.normalise, v) < 1.5 * size


def test_bronze_pngs_are_read_from_the_column_a_batch_at_a_time():
    pngs = [bytes([i % 251]) * (2000 + i % 7) for i in range(3000)]  # FER PNGs are ~2 KB
    column = pa.chunked_array([pa.array(pngs[:1000], pa.binary()), pa.array(pngs[1000:], pa.binary())])
    rows = BinaryRows(column)
    assert len(rows) == 3000 and rows[1234] == pngs[1234] and rows[10:20] == pngs[10:20]
    todo = [5, 999, 1000, 2999]
    picked = rows_of(rows, todo)
    assert isinstance(picked, BinaryRows) and list(picked[0:4]) == [pngs[i] for i in todo]
    assert rows_of(pngs, todo) == [pngs[i] for i in todo]  # a plain list stays a list
    run = rows_of(rows, range(990, 1010))  # a run across the two chunks: one slice
    assert run[0:20] == pngs[990:1010] and run[5] == pngs[995]
    # making the view holds no Python copy of the bytes (to_pylist() held them all, ~6 MB here)
    assert _traced_peak(lambda: rows_of(BinaryRows(column), range(3000))) < 0.05 * sum(map(len, pngs))
