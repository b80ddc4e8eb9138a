"""Fits on the stored entries only, block by block, against dense NumPy references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

from bignmf.kernels.hals import hals_update
from bignmf.kernels.observed import cd_rows, packed_outer, packed_size
from bignmf.kernels.solvers import SolverParams, get_solver, prepare_h

EPS = np.finfo(np.float32).eps


def ratings(m=60, n=40, k=3, density=0.3, seed=0, noise=0.0):
    """Low-rank values observed on a random pattern (stored values strictly positive)."""
    rng = np.random.default_rng(seed)
    W, H = rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1
    pattern = sp.random(m, n, density=density, format="csr", random_state=seed)
    rows, cols = pattern.nonzero()
    values = (W @ H)[rows, cols] + noise * rng.standard_normal(rows.size)
    A = sp.csr_matrix((np.maximum(values, 1e-3), (rows, cols)), shape=(m, n))
    W0, H0 = rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1
    return A, W0, H0


def fit_blocks(A, W, H, solver, params, n_iter, cuts=(0, 17, 35, None)):
    """The engine's iteration, by hand: W per row block, sums added, then H."""
    W, H = W.copy(), H.copy()
    bounds = [c if c is not None else A.shape[0] for c in cuts]
    losses = []
    for _ in range(n_iter):
        Ht, HHt = prepare_h(H)
        total = solver.new_accumulator(A.shape[1], H.shape[0], A.dtype)
        for r0, r1 in itertools.pairwise(bounds):
            acc = solver.new_accumulator(A.shape[1], H.shape[0], A.dtype)
            W[r0:r1] = solver.update_w_block(A[r0:r1], W[r0:r1], H, Ht, HHt, params, acc)
            solver.combine(total, acc)
        H, loss = solver.update_h(H, total, params)
        losses.append(loss)
    return W, H, losses


def dense_cd(A, W, H, n_iter, l1=0.0, l2=0.0, n_sweeps=1, observed=None, weights=None):
    """Coordinate descent on each row's and column's own gram over the ``observed`` entries
    (default: the stored ones), one entry at a time; with ``weights`` (dense c of every entry)
    on ``½Σ c·(a − wh)²``, A's dense values the targets."""
    C, X = _weights_and_targets(A, observed, weights)
    W, H = W.copy(), H.copy()

    def half_step(F, G, data, c):  # F rows updated against the fixed factor G (k, n)
        for r in range(F.shape[0]):
            gram = (G * c[r]) @ G.T + l2 * np.eye(G.shape[0])
            rhs = G @ (c[r] * data[r]) - l1
            for _ in range(n_sweeps):
                for t in range(F.shape[1]):
                    if gram[t, t] <= 0:
                        F[r, t] = 0.0
                        continue
                    grad = gram[t] @ F[r] - rhs[t]
                    F[r, t] = max(F[r, t] - grad / gram[t, t], 0.0)

    for _ in range(n_iter):
        half_step(W, H, X, C)
        Ht = H.T.copy()
        half_step(Ht, W.T, X.T, C.T)
        H = Ht.T.copy()
    return W, H


def _weights_and_targets(A, observed, weights):
    if weights is not None:
        return np.asarray(weights, dtype=float), A.toarray()
    M = (A != 0).toarray() if observed is None else observed
    return M.astype(float), A.toarray() * M


def dense_masked_mu(A, W, H, n_iter, observed=None, weights=None):
    """Lee & Seung's updates for ½Σ_observed (a − wh)², dense, with scikit-learn's EPSILON
    (observed: the stored entries by default); with ``weights``, for ``½Σ c·(a − wh)²``."""
    C, X = _weights_and_targets(A, observed, weights)
    X = C * X
    W, H = W.copy(), H.copy()
    for _ in range(n_iter):
        den = (C * (W @ H)) @ H.T
        den[den == 0] = EPS
        W *= (X @ H.T) / den
        den = W.T @ (C * (W @ H))
        den[den == 0] = EPS
        H *= (W.T @ X) / den
    return W, H


def observed_objective(A, W, H):
    rows, cols = A.nonzero()
    d = np.asarray(A[rows, cols]).ravel() - (W @ H)[rows, cols]
    return 0.5 * float(d @ d)


# --------------------------------------------------------------------------- kernels


def test_packed_outer_is_the_upper_triangle():
    X = np.random.default_rng(1).random((5, 4))
    P = packed_outer(X)
    assert P.shape == (5, packed_size(4)) == (5, 10)
    a, b = np.triu_indices(4)
    for r in range(5):
        assert np.array_equal(P[r], np.outer(X[r], X[r])[a, b])


@pytest.mark.parametrize(("l1", "l2", "sweeps"), [(0, 0, 1), (0.3, 0, 2), (0, 0.5, 3)])
def test_cd_rows_with_one_gram_is_the_hals_step(l1, l2, sweeps):
    rng = np.random.default_rng(2)
    X, B, Ht = rng.random((30, 5)), rng.random((30, 5)) * 4, rng.random((40, 5))
    G = Ht.T @ Ht
    packed = np.tile(G[np.triu_indices(5)], (30, 1))
    got = cd_rows(X.copy(), B, packed, l1=l1, l2=l2, n_sweeps=sweeps, batch_elements=60)
    want = hals_update(X.copy(), B, G, l1=l1, l2=l2, n_sweeps=sweeps)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_cd_rows_zeroes_coordinates_without_observations():
    X = np.ones((2, 2))
    grams = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]])  # row 0 observes nothing
    cd_rows(X, np.array([[0.0, 0.0], [2.0, 0.0]]), grams)
    assert np.array_equal(X, [[0.0, 0.0], [0.5, 0.0]])


# --------------------------------------------------------------------------- solvers


@pytest.mark.parametrize(("l1", "l2", "n_inner"), [(0, 0, 1), (0, 0, 3), (0.05, 0.1, 2)])
def test_observed_hals_equals_dense_coordinate_descent(l1, l2, n_inner):
    A, W0, H0 = ratings(seed=3)
    params = SolverParams(missing="zeros", n_inner=n_inner, l1_W=l1, l1_H=l1, l2_W=l2, l2_H=l2)
    W, H, _ = fit_blocks(A, W0, H0, get_solver("hals", "zeros"), params, 6)
    W_ref, H_ref = dense_cd(A, W0, H0, 6, l1=l1, l2=l2, n_sweeps=n_inner)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12)


def test_observed_mu_equals_dense_masked_mu_iterate_for_iterate():
    A, W0, H0 = ratings(seed=4, noise=0.05)
    solver, params = get_solver("mu", "zeros"), SolverParams(missing="zeros")
    W, H = W0, H0
    for _ in range(5):
        W, H, _ = fit_blocks(A, W, H, solver, params, 1)
        W0, H0 = dense_masked_mu(A, W0, H0, 1)
        np.testing.assert_allclose(W, W0, rtol=1e-10)
        np.testing.assert_allclose(H, H0, rtol=1e-10)


@pytest.mark.parametrize("name", ["hals", "mu"])
def test_the_loss_is_the_observed_entries_of_the_w_half_step(name):
    A, W0, H0 = ratings(seed=5, noise=0.1)
    solver, params = get_solver(name, "zeros"), SolverParams(missing="zeros")
    W1, _, (loss,) = fit_blocks(A, W0, H0, solver, params, 1)
    assert loss == pytest.approx(observed_objective(A, W1, H0), rel=1e-12)


@pytest.mark.parametrize("name", ["hals", "mu"])
def test_the_objective_never_rises(name):
    A, W0, H0 = ratings(seed=6, noise=0.2)
    _, _, losses = fit_blocks(A, W0, H0, get_solver(name, "zeros"), SolverParams(), 40)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.2 * losses[0]


def test_observed_hals_converges_to_an_exact_als_fixed_point():
    A, W0, H0 = ratings(m=50, n=30, k=3, density=0.5, seed=7, noise=0.05)
    params = SolverParams(missing="zeros", n_inner=5)
    W, H, losses = fit_blocks(A, W0, H0, get_solver("hals", "zeros"), params, 400)
    M = (A != 0).toarray()
    X = A.toarray()
    for r in range(W.shape[0]):  # no row of W can do better: each solves its own NNLS
        obs = M[r]
        w, best = scipy.optimize.nnls(H[:, obs].T, X[r, obs])
        assert np.linalg.norm(H[:, obs].T @ W[r] - X[r, obs]) <= best * (1 + 1e-6)
        np.testing.assert_allclose(W[r], w, rtol=1e-2, atol=1e-5)
    # the planted structure is recovered on the observed entries
    rmse = np.sqrt(2 * losses[-1] / A.nnz)
    assert rmse < 0.06


def test_rows_and_columns_without_entries_get_zeros():
    A, W0, H0 = ratings(seed=8)
    A = A.tolil()
    A[4, :] = 0
    A[:, 7] = 0
    A = A.tocsr()
    A.eliminate_zeros()
    for name in ("hals", "mu"):
        W, H, _ = fit_blocks(A, W0, H0, get_solver(name, "zeros"), SolverParams(), 3)
        assert not W[4].any()
        assert not H[:, 7].any()


def test_bpp_and_other_losses_are_refused_with_missing_entries():
    message = "cannot fit around unknown entries or with entry weights; use one of hals, mu"
    with pytest.raises(ValueError, match=message):
        get_solver("bpp", "zeros")
    with pytest.raises(ValueError, match="supports only beta_loss=2"):
        get_solver("mu", "zeros").new_accumulator(4, 2, np.float64, beta_loss=1.0)
    with pytest.raises(ValueError, match="missing must be None or one of 'zeros'"):
        SolverParams(missing="nan")


# --------------------------------------------------------------------------- a mask


def masked_blocks(A, mask, block_rows=13):
    from bignmf.store.masked import MaskedMatrix
    from bignmf.store.matrix import MemoryMatrix

    return MaskedMatrix(MemoryMatrix(A, block_rows=block_rows), MemoryMatrix(mask, block_rows=7))


def fit_masked(masked, W, H, solver, params, n_iter):
    W, H = W.copy(), H.copy()
    losses = []
    for _ in range(n_iter):
        Ht, HHt = prepare_h(H)
        total = solver.new_accumulator(masked.shape[1], H.shape[0], masked.dtype)
        for i in range(masked.n_blocks):
            r0, r1 = masked.block_rows(i)
            acc = solver.new_accumulator(masked.shape[1], H.shape[0], masked.dtype)
            W[r0:r1] = solver.update_w_block(
                masked.read_block(i), W[r0:r1], H, Ht, HHt, params, acc
            )
            solver.combine(total, acc)
        H, loss = solver.update_h(H, total, params, masked.frobenius_sq)
        losses.append(loss)
    return W, H, losses, total


@pytest.fixture
def with_mask():
    A, W0, H0 = ratings(m=45, n=30, density=0.5, seed=11, noise=0.05)
    mask = sp.random(45, 30, density=0.25, format="csr", random_state=12)
    observed = mask.toarray() == 0  # every entry off the mask, zeros included
    return A, mask, observed, W0, H0


@pytest.mark.parametrize(("l2", "n_inner"), [(0.0, 1), (0.2, 3)])
def test_masked_hals_equals_dense_coordinate_descent(with_mask, l2, n_inner):
    A, mask, observed, W0, H0 = with_mask
    params = SolverParams(missing="mask", n_inner=n_inner, l2_W=l2, l2_H=l2)
    W, H, _, _ = fit_masked(masked_blocks(A, mask), W0, H0, get_solver("hals", "mask"), params, 5)
    W_ref, H_ref = dense_cd(A, W0, H0, 5, l2=l2, n_sweeps=n_inner, observed=observed)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12)


def test_masked_mu_equals_dense_masked_mu(with_mask):
    A, mask, observed, W0, H0 = with_mask
    masked, solver = masked_blocks(A, mask), get_solver("mu", "mask")
    W, H, _, _ = fit_masked(masked, W0, H0, solver, SolverParams(missing="mask"), 5)
    W_ref, H_ref = dense_masked_mu(A, W0, H0, 5, observed=observed)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9)
    np.testing.assert_allclose(H, H_ref, rtol=1e-9)


@pytest.mark.parametrize("name", ["hals", "mu"])
def test_masked_losses_are_of_the_entries_off_the_mask(with_mask, name):
    A, mask, observed, W0, H0 = with_mask
    masked, solver = masked_blocks(A, mask), get_solver(name, "mask")
    params = SolverParams(missing="mask")
    W1, H1, (loss,), total = fit_masked(masked, W0, H0, solver, params, 1)
    X = A.toarray()

    def objective(W, H):
        return 0.5 * float((((X - W @ H) * observed) ** 2).sum())

    assert loss == pytest.approx(objective(W1, H0), rel=1e-10)
    after = solver.loss_after_h(total, H1, masked.frobenius_sq)
    if name == "hals":
        assert after == pytest.approx(objective(W1, H1), rel=1e-9)
    else:
        assert after is None


def test_masked_blocks_with_empty_rows_anywhere():
    A = sp.random(30, 12, density=0.3, format="lil", random_state=13)
    A[0, :] = 0
    A[17:20, :] = 0
    A[29, :] = 0  # empty last rows: their indptr entries are nnz itself
    A = A.tocsr()
    A.eliminate_zeros()
    mask = sp.random(30, 12, density=0.3, format="csr", random_state=14)
    masked = masked_blocks(A, mask, block_rows=10)
    kept = sp.vstack([masked.read_block(i) for i in range(masked.n_blocks)]).toarray()
    assert np.array_equal(kept, np.where(mask.toarray() != 0, 0, A.toarray()))
