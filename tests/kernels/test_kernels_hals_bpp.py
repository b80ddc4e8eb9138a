"""Tests of the HALS update and of the block-principal-pivoting NNLS solver."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from bignmf.kernels import bpp
from bignmf.kernels.bpp import nnls_bpp
from bignmf.kernels.hals import hals_update


def hals_reference(X, XY, G, l1, l2, n_sweeps):
    """Scalar transcription of scikit-learn's ``_update_cdnmf_fast`` (with its penalties)."""
    X = X.astype(np.float64).copy()
    XY = XY.astype(np.float64) - l1
    G = G.astype(np.float64) + l2 * np.eye(G.shape[0])
    r, k = X.shape
    for _ in range(n_sweeps):
        for t in range(k):
            for i in range(r):
                grad = -XY[i, t]
                for s in range(k):
                    grad += G[t, s] * X[i, s]
                if G[t, t] != 0:
                    X[i, t] = max(X[i, t] - grad / G[t, t], 0.0)
    return X


def nnls_problem(rng, p, k, r, dtype=np.float64):
    C = rng.random((p, k))
    B = rng.random((p, r)) - 0.3  # some negative targets, so that constraints bind
    return C, B, (C.T @ C), (C.T @ B).astype(dtype)


def assert_kkt(X, CtC, CtB, l1=0.0, l2=0.0, tol=1e-8):
    """KKT conditions of min ½xᵀGx − bᵀx + l1·Σx + ½l2‖x‖², x ≥ 0, column by column."""
    G = CtC + l2 * np.eye(CtC.shape[0])
    grad = G @ X - CtB + l1
    scale = tol * (1.0 + np.abs(CtB).max() + np.abs(G).max() * np.abs(X).max())
    assert np.all(X >= 0)
    assert np.all(grad >= -scale)
    assert np.all(np.abs(X * grad) <= scale * (1.0 + np.abs(X).max()))


# --------------------------------------------------------------------------- HALS


@settings(max_examples=30, deadline=None)
@given(
    r=st.integers(0, 7),
    k=st.integers(1, 5),
    dtype=st.sampled_from([np.float32, np.float64]),
    l1=st.sampled_from([0.0, 0.3]),
    l2=st.sampled_from([0.0, 0.7]),
    n_sweeps=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_hals_matches_scalar_reference(r, k, dtype, l1, l2, n_sweeps, seed):
    rng = np.random.default_rng(seed)
    X = rng.random((r, k)).astype(dtype)
    XY = (rng.random((r, k)) * 2).astype(dtype)
    M = rng.random((k + 2, k))
    G = M.T @ M
    ref = hals_reference(X, XY, G, l1, l2, n_sweeps)
    X0, XY0, G0 = X.copy(), XY.copy(), G.copy()
    out = hals_update(X, XY, G, l1=l1, l2=l2, n_sweeps=n_sweeps)
    assert out is X
    assert X.dtype == dtype
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(X, ref, rtol=rtol, atol=rtol)
    assert np.all(X >= 0)
    np.testing.assert_array_equal(XY, XY0)  # inputs other than X untouched
    np.testing.assert_array_equal(G, G0)
    del X0


def test_hals_skips_zero_curvature_columns():
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    XY = np.ones((2, 2))
    G = np.array([[0.0, 0.0], [0.0, 2.0]])
    hals_update(X, XY, G)
    np.testing.assert_array_equal(X[:, 0], [1.0, 3.0])
    np.testing.assert_allclose(X[:, 1], [0.5, 0.5])


def test_hals_works_on_fortran_and_strided_input():
    rng = np.random.default_rng(0)
    X = np.asfortranarray(rng.random((6, 3)))
    XY = rng.random((6, 3))
    M = rng.random((5, 3))
    G = M.T @ M
    ref = hals_reference(X, XY, G, 0.0, 0.0, 2)
    hals_update(X, XY, G, n_sweeps=2)
    np.testing.assert_allclose(X, ref, rtol=1e-12)
    big = rng.random((6, 6))
    view = big[:, ::2]  # non-contiguous view is updated in place
    ref = hals_reference(view, XY, G, 0.0, 0.0, 1)
    hals_update(view, XY, G)
    np.testing.assert_allclose(big[:, ::2], ref, rtol=1e-12)


def test_hals_many_sweeps_reach_the_nnls_solution():
    rng = np.random.default_rng(1)
    C, _, CtC, CtB = nnls_problem(rng, 12, 4, 5)
    X = np.zeros((5, 4))
    hals_update(X, CtB.T.copy(), CtC, n_sweeps=3000)
    np.testing.assert_allclose(X, nnls_bpp(CtC, CtB).T, rtol=1e-6, atol=1e-8)
    del C


def test_hals_rejects_bad_arguments():
    X = np.ones((3, 2))
    with pytest.raises(ValueError, match="n_sweeps"):
        hals_update(X, X, np.eye(2), n_sweeps=0)
    with pytest.raises(ValueError, match="same 2-d shape"):
        hals_update(X, np.ones((2, 2)), np.eye(2))
    with pytest.raises(ValueError, match="G must have shape"):
        hals_update(X, X, np.eye(3))


# --------------------------------------------------------------------------- BPP


@settings(max_examples=30, deadline=None)
@given(
    p=st.integers(1, 15),
    k=st.integers(1, 7),
    r=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_bpp_matches_scipy_nnls_column_by_column(p, k, r, seed):
    rng = np.random.default_rng(seed)
    C, B, CtC, CtB = nnls_problem(rng, p, k, r)
    if np.linalg.matrix_rank(C) < k:
        C = C + np.eye(p, k)  # keep the problem strictly convex so the solution is unique
        CtC, CtB = C.T @ C, C.T @ B
    if np.linalg.cond(CtC) > 1e8:
        return
    X = nnls_bpp(CtC, CtB)
    assert X.shape == (k, r)
    for j in range(r):
        ref = nnls(C, B[:, j])[0]
        np.testing.assert_allclose(X[:, j], ref, rtol=1e-7, atol=1e-9)
    assert_kkt(X, CtC, CtB)


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.0), (0.5, 0.0), (0.0, 2.0), (0.3, 1.0)])
def test_bpp_kkt_with_penalties(l1, l2):
    rng = np.random.default_rng(2)
    _, _, CtC, CtB = nnls_problem(rng, 30, 6, 200)
    X, info = nnls_bpp(CtC, CtB, l1=l1, l2=l2, return_info=True)
    assert info["n_fallback"] == 0
    assert info["ridge"] == 0.0
    assert_kkt(X, CtC, CtB, l1=l1, l2=l2, tol=1e-10)
    # penalties as an augmented plain NNLS: l2 on the diagonal, l1 off the right-hand side
    ref = nnls_bpp(CtC + l2 * np.eye(6), CtB - l1)
    np.testing.assert_allclose(X, ref, rtol=1e-12, atol=1e-14)


def test_bpp_warm_start_and_fallback_give_the_same_solution():
    rng = np.random.default_rng(3)
    _, _, CtC, CtB = nnls_problem(rng, 25, 8, 60)
    X, info = nnls_bpp(CtC, CtB, return_info=True)
    assert info["n_iter"] >= 1
    Xw, infow = nnls_bpp(CtC, CtB, init=X, return_info=True)
    assert infow["n_iter"] == 0  # started at the optimal passive sets
    np.testing.assert_allclose(Xw, X, rtol=1e-10, atol=1e-12)
    Xn = nnls_bpp(CtC, CtB, init=rng.random(X.shape))  # a poor warm start
    np.testing.assert_allclose(Xn, X, rtol=1e-10, atol=1e-12)
    Xf, infof = nnls_bpp(CtC, CtB, max_iter=0, return_info=True)
    assert infof["n_fallback"] > 0
    np.testing.assert_allclose(Xf, X, rtol=1e-8, atol=1e-10)


def test_bpp_singular_and_degenerate_grams():
    rng = np.random.default_rng(4)
    C = rng.random((20, 5))
    C[:, 3] = 0.0  # a dead component: zero diagonal, fixed at 0
    C[:, 4] = C[:, 1]  # duplicated column: singular gram
    B = rng.random((20, 9))
    CtC, CtB = C.T @ C, C.T @ B
    X, info = nnls_bpp(CtC, CtB, return_info=True)
    assert 0 < info["ridge"] < 1e-10 * CtC.max()  # singular: regularised by a tiny ridge
    assert np.all(np.isfinite(X))
    np.testing.assert_array_equal(X[3], 0.0)
    assert_kkt(X, CtC, CtB, tol=1e-6)
    # the fit is as good as scipy's (solutions need not be unique)
    for j in range(9):
        ref = nnls(C, B[:, j])[0]
        res = np.linalg.norm(C @ X[:, j] - B[:, j])
        assert res <= np.linalg.norm(C @ ref - B[:, j]) * (1 + 1e-6) + 1e-9
    Z, info0 = nnls_bpp(np.zeros((3, 3)), np.ones((3, 4)), return_info=True)
    np.testing.assert_array_equal(Z, 0.0)
    assert info0["n_iter"] == 0


def test_bpp_ill_conditioned_gram_gets_a_tiny_ridge():
    rng = np.random.default_rng(5)
    C = rng.random((10, 3))
    C = np.c_[C, C[:, :1] * (1 + 1e-13)]  # nearly collinear
    CtC, CtB = C.T @ C, C.T @ rng.random((10, 4))
    CtC[3, 3] -= 1e-9 * CtC[3, 3]  # make it indefinite: Cholesky fails
    X, info = nnls_bpp(CtC, CtB, return_info=True)
    assert info["ridge"] > 0
    assert info["ridge"] < 1e-6 * np.abs(CtC).max()
    assert np.all(np.isfinite(X))
    assert np.all(X >= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bpp_dtype_layout_and_edge_shapes(dtype):
    rng = np.random.default_rng(6)
    _, _, CtC, CtB = nnls_problem(rng, 10, 3, 7, dtype)
    X = nnls_bpp(CtC, CtB)
    assert X.dtype == dtype
    assert X.T.flags.c_contiguous
    assert nnls_bpp(CtC, np.zeros((3, 0), dtype=dtype)).shape == (3, 0)
    x1 = nnls_bpp(np.array([[4.0]]), np.array([[2.0, -1.0]]))
    np.testing.assert_allclose(x1, [[0.5, 0.0]])
    with pytest.raises(ValueError, match="CtB must have shape"):
        nnls_bpp(CtC, np.ones((4, 2)))
    with pytest.raises(ValueError, match="init must have shape"):
        nnls_bpp(CtC, CtB, init=np.ones((3, 2)))


def test_bpp_many_components_uses_packed_group_keys():
    rng = np.random.default_rng(7)
    k = 70  # more than 62 variables: passive sets are keyed by packed bytes
    C = rng.random((90, k)) + np.eye(90, k)
    B = rng.random((90, 4)) - 0.4
    CtC, CtB = C.T @ C, C.T @ B
    X = nnls_bpp(CtC, CtB)
    for j in range(4):
        np.testing.assert_allclose(X[:, j], nnls(C, B[:, j])[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("min_group", [1, 10**9], ids=["all-grouped", "all-batched"])
def test_bpp_group_and_batched_solves_agree(monkeypatch, min_group):
    rng = np.random.default_rng(8)
    C, B, CtC, CtB = nnls_problem(rng, 40, 7, 300)
    ref = nnls_bpp(CtC, CtB)
    monkeypatch.setattr(bpp, "_MIN_GROUP", min_group)
    monkeypatch.setattr(bpp, "_BATCH_ROWS", 64)  # several chunks
    X = nnls_bpp(CtC, CtB)
    np.testing.assert_allclose(X, ref, rtol=1e-10, atol=1e-12)
    for j in range(0, 300, 37):
        np.testing.assert_allclose(X[:, j], nnls(C, B[:, j])[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("min_group", [1, 10**9], ids=["grouped", "batched"])
def test_bpp_subsolves_fall_back_to_least_squares(monkeypatch, min_group):
    # an exactly singular passive block reaches the lstsq fallback of either path
    monkeypatch.setattr(bpp, "_MIN_GROUP", min_group)
    G = np.array([[1.0, 1.0], [1.0, 1.0]])
    B = np.array([[1.0, 1.0], [2.0, 2.0]])
    P = np.ones((2, 2), dtype=bool)
    X = np.zeros((2, 2))
    Y = np.zeros((2, 2))
    bpp._solve_groups(G, B, P, X, Y, np.arange(2))
    np.testing.assert_allclose(X, [[0.5, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(Y, 0.0)
