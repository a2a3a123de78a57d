"""Vector maths: exact search, nearest neighbours without the query itself, unit length."""

import numpy as np
import pytest

from fer_platform.core import vecmath


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((1000, 64)).astype(np.float32)
    q = rng.standard_normal((7, 64)).astype(np.float32)
    sims, pos = vecmath.exact_search(v, q, 5, block=3)  # tiny blocks: the merge across blocks is exercised
    expected = np.argsort(-(q @ v.T), axis=1)[:, :5]
    assert (pos == expected).all()
    np.testing.assert_allclose(sims, np.take_along_axis(q @ v.T, expected, 1), rtol=1e-5)


def test_nearest_neighbours_exclude_self_and_match_brute_force():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((60, 512)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    nn = vecmath.nearest_neighbours(v, k=5)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert (nn == expected).all()


def test_normalise_leaves_zero_rows_zero_unless_strict():
    v = np.array([[3.0, 4.0], [0.0, 0.0]])
    unit = vecmath.normalise(v)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(vecmath.ZeroVectors, match="1 zero vector"):
        vecmath.normalise(v, strict=True)
