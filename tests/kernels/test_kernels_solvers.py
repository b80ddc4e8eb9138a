"""End-to-end tests of the per-solver contract: multi-block loops against scikit-learn's NMF."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.decomposition._nmf import _beta_divergence
from sklearn.exceptions import ConvergenceWarning

from bignmf.kernels import products
from bignmf.kernels.solvers import (
    SOLVERS,
    SolverParams,
    combine,
    get_solver,
    penalty,
    prepare_h,
    regularization,
)

M, N, K = 23, 17, 4


def split_rows(m, n_blocks):
    edges = np.linspace(0, m, n_blocks + 1).round().astype(int)
    return list(itertools.pairwise(int(e) for e in edges))


def run_loop(name, A, W0, H0, params, n_blocks, n_iter, *, work=True):
    """One bignmf iteration = W update of every block, tree-free reduction, H update."""
    solver = get_solver(name)
    A = sp.csr_matrix(A)
    W = W0.copy()
    H = H0.copy()
    m, n = A.shape
    k = W.shape[1]
    blocks = split_rows(m, n_blocks)
    norm_a_sq = sum(products.sq_norm(A[r0:r1]) for r0, r1 in blocks)
    scratch = {} if work else None
    losses = []
    for _ in range(n_iter):
        Ht, HHt = prepare_h(H)
        total = None
        for r0, r1 in blocks:
            acc = solver.new_accumulator(n, k, A.dtype, params.beta_loss)
            W[r0:r1] = solver.update_w_block(A[r0:r1], W[r0:r1], H, Ht, HHt, params, acc, scratch)
            total = acc if total is None else solver.combine(total, acc)
        H, loss = solver.update_h(H, total, params, norm_a_sq)
        assert np.all(W >= 0)
        assert np.all(H >= 0)
        assert H.flags.c_contiguous
        losses.append(loss)
    return W, H, np.array(losses)


def problem(seed, beta=2.0, dense=False, dtype=np.float64):
    """A sparse non-negative matrix with a planted rank-K structure, and a positive init."""
    rng = np.random.default_rng(seed)
    Wt = rng.random((M, K)) * (rng.random((M, K)) < 0.6)
    Ht = rng.random((K, N)) * (rng.random((K, N)) < 0.6)
    X = Wt @ Ht + 0.05 * rng.random((M, N))
    X[rng.random((M, N)) < 0.3] = 0.0
    if beta <= 0:  # Itakura–Saito needs a matrix without zeros
        X = X + 0.05
    X = X.astype(dtype)
    W0 = (rng.random((M, K)) + 0.1).astype(dtype)
    H0 = (rng.random((K, N)) + 0.1).astype(dtype)
    return (X if dense else sp.csr_matrix(X)), W0, H0


def sklearn_fit(X, W0, H0, **kwargs):
    model = NMF(n_components=W0.shape[1], init="custom", tol=0, **kwargs)
    # tol=0: scikit-learn never runs its convergence test, so it does exactly max_iter
    # iterations; it only warns about convergence when tol > 0, but ignore it explicitly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert model.n_iter_ == kwargs["max_iter"]
    return W, model.components_


def penalised(X, W, H, reg):
    return (
        _beta_divergence(X, W, H, 2)
        + reg.l1_W * W.sum()
        + 0.5 * reg.l2_W * (W**2).sum()
        + reg.l1_H * H.sum()
        + 0.5 * reg.l2_H * (H**2).sum()
    )


# ------------------------------------------------------------------- MU vs scikit-learn


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0])
@pytest.mark.parametrize("alpha", [0.0, 0.02], ids=["plain", "l1l2"])
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize("n_blocks", [1, 2, 5])
def test_mu_matches_sklearn_iterate_for_iterate(beta, alpha, dense, n_blocks):
    X, W0, H0 = problem(3, beta, dense)
    kw = {"alpha_W": alpha, "alpha_H": "same", "l1_ratio": 0.4}
    W_ref, H_ref = sklearn_fit(X, W0, H0, solver="mu", beta_loss=beta, max_iter=50, **kw)
    params = SolverParams.from_alpha(n_samples=M, n_features=N, beta_loss=beta, **kw)
    W, H, losses = run_loop("mu", X, W0, H0, params, n_blocks, 50)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12 * W_ref.max())
    np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12 * H_ref.max())
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0, 1.5, 3.0])
def test_mu_matches_sklearn_with_a_dead_component(beta):
    # a zero row of H0 makes denominators exactly 0: scikit-learn's EPSILON substitution;
    # β = 1.5 and 3 exercise the general-β branches (γ = 1/(β−1) for β > 2)
    X, W0, H0 = problem(15, beta)
    H0[1] = 0.0
    W_ref, H_ref = sklearn_fit(X, W0, H0, solver="mu", beta_loss=beta, max_iter=30)
    W, H, _ = run_loop("mu", X, W0, H0, SolverParams(beta_loss=beta), 2, 30)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12 * W_ref.max())
    np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12 * H_ref.max())
    np.testing.assert_array_equal(H[1], 0.0)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0, 1.5])
def test_reported_loss_is_sklearn_divergence_of_w_new_h_old(beta):
    X, W0, H0 = problem(4, beta)
    params = SolverParams(beta_loss=beta)
    W1, H1, _ = run_loop("mu", X, W0, H0, params, 3, 1)
    W2, _, losses = run_loop("mu", X, W0, H0, params, 3, 2)
    # iteration 2 reports D(A, W2, H1), W2 being the W after the second W half-step
    ref = _beta_divergence(X, W2, H1, beta, square_root=False)
    assert losses[1] == pytest.approx(ref, rel=1e-10)
    del W1


@pytest.mark.parametrize(
    ("name", "beta", "n_inner"),
    [
        ("mu", 2.0, 1),
        ("mu", 1.0, 1),
        ("mu", 0.0, 1),
        ("hals", 2.0, 1),
        ("hals", 2.0, 3),
        ("bpp", 2.0, 1),
    ],
)
def test_loss_is_non_increasing(name, beta, n_inner):
    X, W0, H0 = problem(5, beta)
    params = SolverParams(beta_loss=beta, n_inner=n_inner)
    _, _, losses = run_loop(name, X, W0, H0, params, 3, 40)
    assert np.all(np.diff(losses) <= 1e-12 * losses[:-1])


# ------------------------------------------------------------- HALS / BPP vs sklearn cd


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_hals_and_bpp_reach_sklearn_cd_loss(dense):
    X, W0, H0 = problem(6, 2.0, dense)
    W_ref, H_ref = sklearn_fit(X, W0, H0, solver="cd", max_iter=200)
    ref = _beta_divergence(X, W_ref, H_ref, 2)
    for name, n_inner, n_iter in [("hals", 1, 200), ("hals", 4, 200), ("bpp", 1, 60)]:
        W, H, _ = run_loop(name, X, W0, H0, SolverParams(n_inner=n_inner), 3, n_iter)
        loss = _beta_divergence(X, W, H, 2)
        assert loss <= 1.01 * ref, (name, n_inner, loss, ref)
        assert loss >= 0.9 * ref, (name, n_inner, loss, ref)
    # one HALS sweep per product is scikit-learn's coordinate descent, iterate for iterate
    W, H, _ = run_loop("hals", X, W0, H0, SolverParams(), 3, 200)
    np.testing.assert_allclose(W @ H, W_ref @ H_ref, rtol=1e-6, atol=1e-9)


def test_hals_and_bpp_with_penalties_match_sklearn_cd_objective():
    X, W0, H0 = problem(7)
    kw = {"alpha_W": 0.01, "alpha_H": 0.02, "l1_ratio": 0.3}
    reg = regularization(kw["alpha_W"], kw["alpha_H"], kw["l1_ratio"], M, N)
    W_ref, H_ref = sklearn_fit(X, W0, H0, solver="cd", max_iter=150, **kw)
    ref = penalised(X, W_ref, H_ref, reg)
    params = SolverParams.from_alpha(n_samples=M, n_features=N, **kw)
    W, H, _ = run_loop("hals", X, W0, H0, params, 2, 150)
    np.testing.assert_allclose(W, W_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(H, H_ref, rtol=1e-6, atol=1e-9)
    W, H, _ = run_loop("bpp", X, W0, H0, params, 2, 60)
    assert penalised(X, W, H, reg) <= 1.01 * ref


@pytest.mark.parametrize(
    ("name", "beta"), [("hals", 2.0), ("bpp", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 1.5)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_penalty_sums_and_objective_match_numpy(name, beta, dtype):
    X, W0, H0 = problem(14, beta, dtype=dtype)
    params = SolverParams(beta_loss=beta, l1_W=0.3, l2_W=0.7, l1_H=0.2, l2_H=0.9)
    solver = get_solver(name)
    Ht, HHt = prepare_h(H0)
    total, W_new = None, np.empty_like(W0)
    for r0, r1 in split_rows(M, 5):
        acc = solver.new_accumulator(N, K, X.dtype, beta)
        W_new[r0:r1] = solver.update_w_block(X[r0:r1], W0[r0:r1], H0, Ht, HHt, params, acc)
        total = acc if total is None else solver.combine(total, acc)
    W64, H64 = W_new.astype(np.float64), H0.astype(np.float64)
    np.testing.assert_allclose(float(total["W_l1"]), W64.sum(), rtol=1e-13)
    w_sq = float(np.trace(total["WtW"])) if beta == 2 else float(total["W_sq"])
    np.testing.assert_allclose(w_sq, (W64**2).sum(), rtol=1e-13)
    _, loss = solver.update_h(H0, total, params, products.sq_norm(X))
    reference = (
        _beta_divergence(X.astype(np.float64), W64, H64, beta)
        + 0.3 * W64.sum()
        + 0.5 * 0.7 * (W64**2).sum()
        + 0.2 * H64.sum()
        + 0.5 * 0.9 * (H64**2).sum()
    )
    # the objective of (W_new, H_old): the loss update_h reports plus the penalty terms
    objective = loss + penalty(total, H0, params)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(objective, reference, rtol=rtol)
    assert penalty(total, H0, SolverParams(beta_loss=beta)) == 0.0


# ----------------------------------------------------------- blocking, dtypes, buffers


@pytest.mark.parametrize(
    ("name", "beta"),
    [("hals", 2.0), ("bpp", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 0.0), ("mu", 1.5)],
)
def test_results_do_not_depend_on_blocking(name, beta):
    X, W0, H0 = problem(8, beta)
    params = SolverParams(beta_loss=beta, n_inner=2, l1_W=0.01, l2_H=0.1)
    W1, H1, l1 = run_loop(name, X, W0, H0, params, 1, 10)
    for n_blocks in (3, 7, M):
        W, H, losses = run_loop(name, X, W0, H0, params, n_blocks, 10, work=n_blocks != 3)
        np.testing.assert_allclose(W, W1, rtol=1e-10, atol=1e-10 * W1.max())
        np.testing.assert_allclose(H, H1, rtol=1e-10, atol=1e-10 * H1.max())
        np.testing.assert_allclose(losses, l1, rtol=1e-10)


@pytest.mark.parametrize(
    ("name", "beta"), [("hals", 2.0), ("bpp", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 0.0)]
)
def test_float32_close_to_float64(name, beta):
    X64, W0, H0 = problem(9, beta)
    X32 = X64.astype(np.float32)
    params = SolverParams(beta_loss=beta, n_inner=2)
    W, H, losses = run_loop(name, X64, W0, H0, params, 3, 15)
    W32, H32, losses32 = run_loop(
        name, X32, W0.astype(np.float32), H0.astype(np.float32), params, 3, 15
    )
    assert W32.dtype == np.float32
    assert H32.dtype == np.float32
    np.testing.assert_allclose(W32 @ H32, W @ H, rtol=2e-3, atol=2e-3 * (W @ H).max())
    np.testing.assert_allclose(losses32, losses, rtol=1e-3)


def test_blocks_with_no_rows_or_no_entries():
    X, W0, H0 = problem(10)
    X = X.tolil()
    X[:4] = 0.0
    X = X.tocsr()
    for name in SOLVERS:
        for beta in [2.0] if name != "mu" else [2.0, 1.0, 0.5]:
            solver = get_solver(name)
            params = SolverParams(beta_loss=beta)
            Ht, HHt = prepare_h(H0)
            acc = solver.new_accumulator(N, K, X.dtype, beta)
            empty = solver.update_w_block(X[:0], W0[:0], H0, Ht, HHt, params, acc)
            assert empty.shape == (0, K)
            for value in acc.values():
                assert not np.any(value)
            Wz = solver.update_w_block(X[:4], W0[:4], H0, Ht, HHt, params, acc)
            assert np.all(Wz >= 0)
            assert np.all(np.isfinite(Wz))


def test_update_w_block_leaves_inputs_alone_and_buffers_do_not_leak():
    X, W0, H0 = problem(11, 1.0)
    A = X[:10]
    for name, beta in [("hals", 2.0), ("bpp", 2.0), ("mu", 2.0), ("mu", 1.0), ("mu", 0.0)]:
        solver = get_solver(name)
        params = SolverParams(beta_loss=beta, n_inner=2)
        Ht, HHt = prepare_h(H0)
        copies = [a.copy() for a in (A.data, W0, Ht, HHt, H0)]
        work = {}
        results = []
        for w in (None, work, work):
            acc = solver.new_accumulator(N, K, A.dtype, beta)
            results.append((solver.update_w_block(A, W0[:10], H0, Ht, HHt, params, acc, w), acc))
        for a, b in zip((A.data, W0, Ht, HHt, H0), copies, strict=True):
            np.testing.assert_array_equal(a, b)
        for W_new, acc in results[1:]:
            np.testing.assert_array_equal(W_new, results[0][0])
            for key in acc:
                np.testing.assert_array_equal(acc[key], results[0][1][key])
        # returned rows never alias a scratch buffer
        for buf in work.values():
            assert not np.shares_memory(buf, results[1][0])
        # update_h does not modify the accumulator
        acc = results[0][1]
        before = {key: v.copy() for key, v in acc.items()}
        solver.update_h(H0, acc, params, products.sq_norm(A))
        for key in acc:
            np.testing.assert_array_equal(acc[key], before[key])


def test_mu_kl_accepts_missing_h():
    X, W0, H0 = problem(12, 1.0)
    solver = get_solver("mu")
    params = SolverParams(beta_loss="kullback-leibler")
    Ht, _ = prepare_h(H0)
    acc_a = solver.new_accumulator(N, K, X.dtype, 1.0)
    acc_b = solver.new_accumulator(N, K, X.dtype, 1.0)
    Wa = solver.update_w_block(X, W0, H0, Ht, None, params, acc_a)
    Wb = solver.update_w_block(X, W0, None, Ht, None, params, acc_b)
    np.testing.assert_allclose(Wa, Wb, rtol=1e-13)
    for key in acc_a:
        np.testing.assert_allclose(acc_a[key], acc_b[key], rtol=1e-13)


# --------------------------------------------------------------------------- contract


def test_registry_and_errors():
    assert set(SOLVERS) == {"hals", "mu", "bpp"}
    for name, solver in SOLVERS.items():
        assert get_solver(name) is solver
        assert solver.name == name
    with pytest.raises(ValueError, match="valid solvers: bpp, hals, mu"):
        get_solver("als")
    with pytest.raises(ValueError, match="only beta_loss=2"):
        get_solver("hals").new_accumulator(5, 2, np.float64, "kullback-leibler")
    with pytest.raises(ValueError, match="only beta_loss=2"):
        get_solver("bpp").update_w_block(
            sp.csr_matrix((1, 5)),
            np.ones((1, 2)),
            None,
            np.ones((5, 2)),
            None,
            SolverParams(beta_loss=1),
            {},
        )


def test_accumulator_layout():
    mu = get_solver("mu")
    assert set(mu.new_accumulator(5, 2, np.float32, 2)) == {"AtW", "WtW", "cross", "W_l1", "A_sq"}
    acc = mu.new_accumulator(5, 2, np.float32, 1)
    assert set(acc) == {"AtW", "W_sum", "loss", "W_l1", "W_sq", "A_sq"}
    assert acc["AtW"].dtype == np.float32
    assert acc["W_sum"].dtype == np.float64
    assert acc["loss"].shape == ()
    assert acc["W_l1"].shape == acc["W_sq"].shape == ()
    assert acc["W_sq"].dtype == np.float64
    assert set(mu.new_accumulator(5, 2, np.float64, "itakura-saito")) == {
        "AtW",
        "den",
        "loss",
        "W_l1",
        "W_sq",
        "A_sq",
    }
    assert get_solver("hals").new_accumulator(5, 2, np.int32)["AtW"].dtype == np.float64
    a = get_solver("hals").new_accumulator(3, 2, np.float64)
    b = get_solver("hals").new_accumulator(3, 2, np.float64)
    b["AtW"] += 1.0
    b["cross"] += 2.0
    assert combine(a, b) is a
    assert float(a["cross"]) == 2.0
    np.testing.assert_array_equal(a["AtW"], 1.0)
    with pytest.raises(ValueError, match="keys differ"):
        combine(a, mu.new_accumulator(3, 2, np.float64, 1))


def test_missing_frobenius_inputs_are_reported():
    X, W0, H0 = problem(13)
    solver = get_solver("hals")
    params = SolverParams()
    Ht, HHt = prepare_h(H0)
    acc = solver.new_accumulator(N, K, X.dtype)
    with pytest.raises(ValueError, match="HHt"):
        solver.update_w_block(X, W0, H0, Ht, None, params, acc)
    with pytest.raises(ValueError, match="Ht must have shape"):
        solver.update_w_block(X, W0, H0, Ht[:, :2], HHt, params, acc)
    with pytest.raises(ValueError, match="W_i must have shape"):
        solver.update_w_block(X, W0[:3], H0, Ht, HHt, params, acc)
    solver.update_w_block(X, W0, H0, Ht, HHt, params, acc)
    with pytest.raises(ValueError, match="norm_a_sq"):
        solver.update_h(H0, acc, params)
    with pytest.raises(ValueError, match="H must have shape"):
        solver.update_h(H0.T, acc, params, 1.0)


def test_regularization_matches_sklearn():
    X, _, _ = problem(14)
    for alpha_W, alpha_H, l1_ratio in [(0.1, "same", 0.3), (0.0, 0.5, 1.0), (0.2, 0.0, 0.0)]:
        model = NMF(alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio)
        l1_W, l1_H, l2_W, l2_H = model._compute_regularization(X)
        reg = regularization(alpha_W, alpha_H, l1_ratio, M, N)
        assert reg == pytest.approx((l1_W, l2_W, l1_H, l2_H), rel=1e-15)
        assert reg.l1_H == pytest.approx(l1_H)
    with pytest.raises(ValueError, match="alpha_H"):
        regularization(0.1, "other", 0.5, 3, 4)
    with pytest.raises(ValueError, match="l1_ratio"):
        regularization(0.1, "same", 1.5, 3, 4)
    with pytest.raises(ValueError, match=">= 0"):
        regularization(-0.1, "same", 0.5, 3, 4)


def test_solver_params_validation():
    assert SolverParams(beta_loss="itakura-saito").beta_loss == 0.0
    assert SolverParams(beta_loss="frobenius").beta_loss == 2.0
    assert isinstance(SolverParams(beta_loss=1).beta_loss, float)
    p = SolverParams.from_alpha(n_samples=10, n_features=20, alpha_W=0.1, l1_ratio=0.5)
    assert p.l1_W == pytest.approx(1.0)
    assert p.l2_H == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown beta_loss"):
        SolverParams(beta_loss="euclid")
    with pytest.raises(ValueError, match="finite"):
        SolverParams(beta_loss=float("nan"))
    with pytest.raises(ValueError, match="l2_W"):
        SolverParams(l2_W=-1.0)
    with pytest.raises(ValueError, match="n_inner"):
        SolverParams(n_inner=0)
    with pytest.raises(ValueError, match="batch_elements"):
        SolverParams(batch_elements=0)
    with pytest.raises(AttributeError):
        p.n_inner = 3  # frozen
