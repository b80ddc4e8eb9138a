"""W of new rows against a fixed H: exact NNLS, scikit-learn's MU, one pass, out of core."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning

from bignmf import convert
from bignmf.fit.transform import transform
from bignmf.kernels.loss import block_divergence
from bignmf.kernels.transform import FixedH, row_divergence
from bignmf.store.matrix import MemoryMatrix

K = 4


def counts(m=120, n=30, density=0.3, seed=0, dtype=np.float64):
    A = sp.random(m, n, density=density, format="csr", random_state=seed, dtype=dtype)
    A.data = np.floor(A.data * 5 + 1).astype(dtype)
    A.data[A.indptr[3] : A.indptr[4]] = 0  # an empty row
    A.eliminate_zeros()
    return A


def components(n=30, k=K, seed=1):
    H = np.random.default_rng(seed).random((k, n)) + 0.05
    H[:, ::7] = 0.0
    return H


def kkt_violation(A, W, H, l1=0.0, l2=0.0):
    """Largest violation of the NNLS optimality conditions, relative to the gradient's scale."""
    AHt = np.asarray(A @ H.T)
    grad = W @ (H @ H.T) - AHt + l1 + l2 * W
    scale = np.abs(AHt).max()
    return max(-W.min(), -grad.min() / scale, np.abs(W * grad).max() / (scale * W.max()))


@pytest.mark.parametrize("solver", ["bpp", "hals"])
def test_frobenius_is_exact_nnls_per_row(solver):
    A, H = counts(), components()
    W = transform(A, H, solver=solver, scheduler="sync")
    assert isinstance(W, np.ndarray)
    assert W.shape == (A.shape[0], K)
    assert kkt_violation(A, W, H) < 1e-10
    Ad = A.toarray()
    reference = np.array([nnls(H.T, row)[0] for row in Ad])
    np.testing.assert_allclose(W, reference, atol=1e-10)
    np.testing.assert_array_equal(W[3], 0.0)


def test_regularised_nnls_satisfies_kkt():
    A, H = counts(seed=2), components(seed=3)
    alpha, l1_ratio = 0.01, 0.4
    W = transform(A, H, alpha_W=alpha, l1_ratio=l1_ratio, n_tasks=3)
    n = A.shape[1]
    l1, l2 = n * alpha * l1_ratio, n * alpha * (1 - l1_ratio)
    assert kkt_violation(A, W, H, l1, l2) < 1e-10
    assert kkt_violation(A, W, H) > 1e-3  # the penalties were applied


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler", 1.5])
def test_mu_with_tol_zero_is_sklearn_transform(beta_loss):
    A = counts(seed=4)
    model = SkNMF(K, solver="mu", beta_loss=beta_loss, init="random", random_state=0,
                  max_iter=37, tol=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(A)
        expected = model.transform(A)
    W = transform(A, model.components_, solver="mu", beta_loss=beta_loss, max_iter=37, tol=0)
    np.testing.assert_allclose(W, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_mu_stopping_test_is_sklearns_on_each_row(beta_loss):
    H = components(seed=21)
    rows = sp.csr_matrix(np.random.default_rng(22).random((4, K)) @ H)  # error falls to ~0
    for i in range(rows.shape[0]):  # on one row, scikit-learn's global test is the row's test
        row = rows[i : i + 1]
        model = SkNMF(K, solver="mu", beta_loss=beta_loss, tol=1e-2, max_iter=2000)
        model.components_, model.n_components_, model.n_features_in_ = H, K, H.shape[1]
        expected = model.transform(row)
        W = transform(row, H, solver="mu", beta_loss=beta_loss, tol=1e-2, max_iter=2000)
        np.testing.assert_allclose(W, expected, rtol=1e-9, atol=1e-12)


def test_mu_stops_each_row_on_its_own_and_ignores_blocking():
    A, H = counts(seed=5), components(seed=6)
    kwargs = {"solver": "mu", "beta_loss": "kullback-leibler", "max_iter": 500, "tol": 1e-3}
    one = transform(MemoryMatrix(A), H, **kwargs)
    many = transform(MemoryMatrix(A, block_rows=7), H, n_tasks=5, **kwargs)
    np.testing.assert_allclose(one, many, rtol=1e-10, atol=1e-14)


def test_mu_warns_when_rows_reach_max_iter():
    A, H = counts(seed=7), components(seed=8)
    with pytest.warns(ConvergenceWarning, match="rows reached max_iter=3"):
        transform(A, H, solver="mu", max_iter=3, tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transform(A, H, solver="mu", max_iter=3, tol=0)  # tol=0: no test, no warning


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0, 1.5])
def test_row_divergence_adds_up_to_the_block_divergence(beta):
    A = counts(m=40, seed=9)
    if beta <= 0:
        A = sp.csr_matrix(A.toarray() + 0.5)
    W = np.random.default_rng(10).random((A.shape[0], K))
    H = components(seed=11)
    rows = row_divergence(A, W, FixedH.of(H, np.float64), beta)
    total = block_divergence(A, W, np.ascontiguousarray(H.T), beta)
    assert rows.sum() == pytest.approx(total, rel=1e-10)
    assert rows[5] == pytest.approx(block_divergence(A[5:6], W[5:6], H.T.copy(), beta), rel=1e-9)


def test_one_pass_over_a():
    reads = []

    class Counting(MemoryMatrix):
        def read_block(self, i, buffers=None):
            reads.append(i)
            return super().read_block(i, buffers)

    A, H = counts(seed=12), components(seed=13)
    matrix = Counting(A, block_rows=10)
    transform(matrix, H, scheduler="sync", n_tasks=4)
    assert sorted(reads) == list(range(matrix.n_blocks))
    reads.clear()
    transform(matrix, H, solver="mu", scheduler="sync", n_tasks=4)
    assert sorted(reads) == list(range(matrix.n_blocks))


@pytest.mark.parametrize("solver", ["bpp", "mu"])
def test_stored_matrix_out_of_core_equals_in_memory(tmp_path, solver):
    A, H = counts(m=150, seed=14), components(seed=15)
    store = convert(A, tmp_path / "A.zarr", block_rows=16, chunk_size=64)
    expected = transform(A, H, solver=solver)
    W = transform(str(tmp_path / "A.zarr"), H, solver=solver, w_storage="zarr",
                  workdir=tmp_path / "work")  # fmt: skip
    assert isinstance(W, da.Array)
    assert W.chunks[0] == tuple(np.diff(store.row_offsets))
    np.testing.assert_allclose(W.compute(), expected, rtol=1e-10, atol=1e-12)
    assert transform(store, H, solver=solver, w_storage="memory").shape == W.shape


def test_float32_stays_float32():
    A, H = counts(seed=16, dtype=np.float32), components(seed=17)
    for solver in ("bpp", "mu"):
        W = transform(A, H, solver=solver)
        assert W.dtype == np.float32
        np.testing.assert_allclose(W, transform(A.astype(np.float64), H, solver=solver),
                                   rtol=2e-3, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "cd"}, "unknown solver 'cd'; choose one of bpp, hals, mu"),
        ({"beta_loss": "kullback-leibler"}, "use solver 'mu'"),
        ({"solver": "mu", "beta_loss": "itakura-saito"}, "beta_loss <= 0 and A contains zeros"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"tol": -1.0}, "tol must be"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        transform(counts(), components(), **kwargs)


def test_h_must_match_a():
    with pytest.raises(ValueError, match=r"shape \(n_components, 30\)"):
        transform(counts(), components(n=29))
    with pytest.raises(ValueError, match="non-negative"):
        transform(counts(), -components())


@pytest.mark.parametrize("w_storage", ["memory", "zarr"])
def test_same_result_on_a_distributed_cluster(tmp_path, dask_client, w_storage):
    A, H = counts(m=150, seed=18), components(seed=19)
    store = convert(A, tmp_path / "A.zarr", block_rows=16, chunk_size=64)
    for solver in ("bpp", "mu"):
        expected = transform(store, H, solver=solver, scheduler="sync")
        W = transform(store, H, solver=solver, w_storage=w_storage, workdir=tmp_path / "work",
                      scheduler=dask_client)  # fmt: skip
        W = W.compute(scheduler="sync") if w_storage == "zarr" else W
        assert W.tobytes() == expected.tobytes()
