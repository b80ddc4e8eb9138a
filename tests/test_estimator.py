"""The scikit-learn estimator: API compatibility, agreement with scikit-learn, stores."""

from __future__ import annotations

import os
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from bignmf import convert, nmf, open_matrix
from bignmf.estimator import NMF

# The checks' data are exactly representable at rank n_features (n_components='auto'), where
# the loss decays slowly towards 0 and max_iter is reached before tol, as it is for
# scikit-learn's own NMF; scikit-learn's test suite ignores that ConvergenceWarning too.
ignore_convergence = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@ignore_convergence
@parametrize_with_checks([NMF(solver="bpp", max_iter=50, scheduler="sync")])
def test_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@ignore_convergence
@parametrize_with_checks([NMF(max_iter=500)])  # scikit-learn's own test parameters for NMF
def test_sklearn_checks_default_solver(estimator, check):
    check(estimator)


def low_rank(m=50, n=15, k=3, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.random((m, k))
    W[W < 0.3] = 0.0
    H = rng.random((k, n))
    H[H < 0.3] = 0.0
    return W @ H


def counts(m=90, n=25, density=0.3, seed=0):
    A = sp.random(m, n, density=density, format="csr", random_state=seed)
    A.data = np.floor(A.data * 5 + 1)
    return A


@pytest.mark.parametrize("solver", ["hals", "cd", "bpp", "mu"])
def test_fit_then_transform_agrees_with_fit_transform(solver):
    A = np.abs(np.random.RandomState(42).randn(40, 12))
    model = NMF(3, solver=solver, init="random", random_state=0, tol=1e-6, max_iter=1000)
    W = model.fit_transform(A)
    assert isinstance(W, np.ndarray)
    np.testing.assert_allclose(model.transform(A), W, atol=1e-2 * W.max())
    assert model.n_iter_ == len(model.loss_history_) < 1000
    assert model.components_.shape == (3, 12)
    assert model.n_components_ == 3


def test_inverse_transform_recovers_low_rank_data():
    rng = np.random.default_rng(1)
    W0, H0 = rng.random((50, 3)), rng.random((3, 15))
    W0[W0 < 0.3], H0[H0 < 0.3] = 0.0, 0.0
    X = W0 @ H0
    exact = NMF(init="custom", max_iter=2, tol=0).fit(X, W=W0, H=H0)  # a fixed point
    np.testing.assert_allclose(exact.inverse_transform(exact.transform(X)), X, atol=1e-10)

    model = NMF(3, max_iter=300, tol=0, random_state=0).fit(X)
    X_back = model.inverse_transform(model.transform(X))
    assert model.reconstruction_err_ < 1e-5
    np.testing.assert_allclose(X_back, X, atol=1e-5)
    Ws = sp.csr_matrix(model.transform(X))
    np.testing.assert_allclose(model.inverse_transform(Ws), X_back)


@pytest.mark.parametrize(
    ("solver", "reference"), [("cd", {"solver": "cd"}), ("mu", {"solver": "mu"})]
)
def test_same_iterates_as_sklearn_from_the_same_start(solver, reference):
    A = counts(seed=1)
    rng = np.random.default_rng(2)
    W0, H0 = rng.random((90, 4)) + 0.1, rng.random((4, 25)) + 0.1
    reg = {"alpha_W": 0.001, "l1_ratio": 0.5}
    ours = NMF("auto", init="custom", solver=solver, tol=0, max_iter=20, **reg)
    W = ours.fit_transform(A, W=W0.copy(), H=H0.copy())
    theirs = SkNMF("auto", init="custom", tol=0, max_iter=20, **reference, **reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W_sk = theirs.fit_transform(A, W=W0.copy(), H=H0.copy())
    assert ours.n_components_ == 4  # 'auto' takes H's rows
    np.testing.assert_allclose(W, W_sk, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=1e-8, atol=1e-12)
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-6)


def test_n_components_none_and_auto_mean_n_features():
    X = low_rank(m=20, n=6)
    for n_components in (None, "auto"):
        model = NMF(n_components, max_iter=5, tol=0).fit(X)
        assert model.n_components_ == 6
        assert model.n_features_in_ == 6


def test_convergence_warning_when_max_iter_reached():
    X = counts(seed=3)
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 2 reached"):
        NMF(4, max_iter=2).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NMF(4, max_iter=2, tol=0).fit(X)  # tol=0 asks for exactly max_iter iterations


def test_store_path_gives_lazy_w_and_matches_memory(tmp_path):
    A = counts(m=150, seed=4)
    store = convert(A, tmp_path / "A.zarr", block_rows=32, chunk_size=128)
    params = {"n_components": 4, "random_state": 0, "max_iter": 30, "tol": 0}
    model = NMF(w_storage="zarr", workdir=tmp_path / "work", **params)
    W = model.fit_transform(str(tmp_path / "A.zarr"))
    assert isinstance(W, da.Array)
    assert W.shape == (150, 4)
    assert model.n_features_in_ == 25
    assert not hasattr(model, "feature_names_in_")
    in_memory = NMF(**params)
    W_mem = in_memory.fit_transform(A)
    assert isinstance(W_mem, np.ndarray)
    np.testing.assert_allclose(W.compute(), W_mem, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.components_, in_memory.components_, rtol=1e-6, atol=1e-9)

    W_new = model.transform(open_matrix(tmp_path / "A.zarr"))
    assert isinstance(W_new, da.Array)
    np.testing.assert_allclose(W_new.compute(), model.transform(A), rtol=1e-10, atol=1e-12)
    assert isinstance(NMF(w_storage="memory", **params).fit_transform(store), np.ndarray)
    lazy_x = model.inverse_transform(W)
    assert isinstance(lazy_x, da.Array)
    assert lazy_x.shape == A.shape


def test_fit_leaves_no_w_files_behind(tmp_path):
    A = counts(seed=5)
    convert(A, tmp_path / "A.zarr", block_rows=30)
    work = tmp_path / "work"
    NMF(4, w_storage="zarr", workdir=work, max_iter=3, tol=0).fit(tmp_path / "A.zarr")
    assert os.listdir(work) == []
    W = NMF(4, w_storage="zarr", workdir=work, max_iter=3, tol=0).fit_transform(A)
    assert isinstance(W, np.ndarray)  # in-memory X: W comes back in memory
    assert os.listdir(work) == []


def test_transform_checks_the_number_of_features(tmp_path):
    model = NMF(3, max_iter=5, tol=0).fit(counts(seed=6))
    convert(counts(n=24, seed=6), tmp_path / "B.zarr", block_rows=30)
    with pytest.raises(ValueError, match="X has 24 features, but NMF is expecting 25"):
        model.transform(tmp_path / "B.zarr")
    with pytest.raises(ValueError, match="X has 24 features, but NMF is expecting 25"):
        model.transform(counts(n=24, seed=6))


def test_dask_arrays_are_refused_with_a_pointer_to_convert():
    X = da.from_array(low_rank(), chunks=10)
    with pytest.raises(TypeError, match=r"bignmf\.convert"):
        NMF(3).fit(X)


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        ({"solver": "als"}, ["'hals'", "'cd'", "'mu'", "'bpp'"]),
        ({"w_storage": "disk"}, ["'auto'", "'memory'", "'zarr'"]),
        ({"init": "svd"}, ["'random'", "'nndsvd'", "'nndsvda'", "'nndsvdar'", "'custom'", "None"]),
        ({"beta_loss": "kl"}, ["'frobenius'", "'kullback-leibler'", "'itakura-saito'"]),
        ({"n_components": 0}, ["an int in the range [1, inf)", "None", "'auto'"]),
        ({"l1_ratio": 2.0}, ["a float in the range [0.0, 1.0]"]),
    ],
)
def test_invalid_parameters_list_the_valid_values(params, valid):
    (name,) = params
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of NMF must be") as e:
        NMF(**params).fit(low_rank())
    assert all(value in str(e.value) for value in valid), str(e.value)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"beta_loss": "kullback-leibler"}, "solver 'hals' does not handle beta_loss"),
        ({"solver": "cd", "n_inner": 3}, "solver='cd' is HALS with one sweep"),
        ({"solver": "mu", "beta_loss": "itakura-saito"}, "beta_loss <= 0 and X contains zeros"),
        ({"init": "custom"}, "init='custom' needs both W and H"),
    ],
)
def test_inconsistent_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        NMF(3, **params).fit(counts(seed=7))


def test_sklearn_warnings_are_kept():
    X = low_rank()
    with pytest.warns(RuntimeWarning, match="provided W or H are ignored"):
        NMF(3, max_iter=2, tol=0).fit(X, H=np.ones((3, 15)))
    with pytest.warns(UserWarning, match="cannot update zeros"):
        NMF(3, solver="mu", init="nndsvd", max_iter=2, tol=0).fit(X)


def test_feature_names():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(low_rank(m=20, n=4), columns=["a", "b", "c", "d"])
    model = NMF(2, max_iter=5, tol=0).fit(X)
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(model.get_feature_names_out(), ["nmf0", "nmf1"])
    out = model.set_output(transform="pandas").transform(X)
    assert list(out.columns) == ["nmf0", "nmf1"]


def test_verbose_prints_the_loss(capsys):
    NMF(2, max_iter=3, tol=0, verbose=1).fit(low_rank(m=20, n=5))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Iteration    1: loss ")


def test_float32_is_preserved_and_close_to_float64():
    X = counts(seed=8)
    params = {"n_components": 4, "random_state": 0, "max_iter": 20, "tol": 0}
    W32 = NMF(**params).fit_transform(X.astype(np.float32))
    W64 = NMF(**params).fit_transform(X)
    assert W32.dtype == np.float32
    np.testing.assert_allclose(W32, W64, rtol=1e-2, atol=1e-3 * W64.max())


def test_same_fit_on_a_distributed_cluster(tmp_path, dask_client):
    X = counts(seed=9)
    params = {"n_components": 4, "random_state": 0, "max_iter": 5, "tol": 0}
    local = NMF(scheduler="sync", **params)
    W_local = local.fit_transform(X)
    remote = NMF(scheduler=dask_client, workdir=tmp_path, **params)
    W = remote.fit_transform(X)  # W goes through Zarr on a cluster, and comes back in memory
    assert isinstance(W, np.ndarray)
    assert W.tobytes() == W_local.tobytes()
    assert remote.components_.tobytes() == local.components_.tobytes()
    assert remote.transform(X).tobytes() == local.transform(X).tobytes()
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore::bignmf.errors.MissingEntriesWarning")
def test_missing_entries_fit_and_transform_the_stored_entries_only(tmp_path):
    from bignmf.datasets import make_ratings

    ratings = make_ratings(tmp_path / "r.zarr", 400, 60, 3, ratings_per_user=25, seed=4)
    A = ratings.store.to_dask().compute().tocsr()
    options = {"init": "random", "random_state": 1, "tol": 0, "max_iter": 30, "alpha_W": 1e-4}
    model = NMF(3, missing="zeros", scheduler="sync", **options)
    W = model.fit_transform(A)
    direct = nmf(A, 3, missing="zeros", scheduler="sync", stopping="sklearn", **options)
    assert W.tobytes() == np.asarray(direct.W).tobytes()
    assert model.components_.tobytes() == direct.H.tobytes()
    rows, cols = A.nonzero()
    values = np.asarray(A[rows, cols]).ravel()

    def observed_rmse(W, H):
        return np.sqrt(np.mean(((W @ H)[rows, cols] - values) ** 2))

    # each row solved to the end on its stored entries against the fitted H: no worse
    again = model.transform(A)
    assert observed_rmse(again, model.components_) <= observed_rmse(W, model.components_)
    assert np.linalg.norm(again - W) < 0.15 * np.linalg.norm(W)
    plain = NMF(3, scheduler="sync", **options).fit(A)

    assert observed_rmse(W, model.components_) < 0.5 * observed_rmse(
        plain.transform(A), plain.components_
    )
    with pytest.raises(ValueError, match="missing"):
        NMF(3, missing="nan").fit(A)


def test_nan_in_x_is_an_unknown_entry():
    rng = np.random.default_rng(3)
    X = rng.random((120, 3)) @ rng.random((3, 25))
    held = rng.random(X.shape) < 0.1
    X_nan = np.where(held, np.nan, X)
    options = {"init": "random", "random_state": 0, "tol": 0, "max_iter": 150, "n_inner": 3}
    model = NMF(3, scheduler="sync", **options)
    W = model.fit_transform(X_nan)
    # what nmf gives with the NaNs as a mask, bit for bit
    unknown = sp.csr_matrix(held)
    masked = nmf(
        np.where(held, 0, X), 3, mask=unknown, scheduler="sync", stopping="sklearn", **options
    )
    assert W.tobytes() == np.asarray(masked.W).tobytes()
    predicted = (W @ model.components_)[held]
    assert np.sqrt(np.mean((predicted - X[held]) ** 2)) < 1e-2  # the held-out entries, found
    sparse = NMF(3, scheduler="sync", **options).fit_transform(sp.csr_matrix(X_nan))
    assert sparse.tobytes() == W.tobytes()
    assert np.linalg.norm(model.transform(X_nan) - W) < 1e-3 * np.linalg.norm(W)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        NMF(3, solver="bpp").fit(X_nan)
    with pytest.raises(ValueError, match="Negative values"):
        NMF(3).fit(np.where(held, np.nan, -X))
