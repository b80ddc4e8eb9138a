"""Entry weights: implicit feedback's confidence and given per-entry weights, against dense
references written here and in the kernels' tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

import bignmf
from bignmf.errors import CheckpointError, InputError, ParameterError
from bignmf.fit.transform import transform
from tests.kernels.test_kernels_observed import dense_cd, dense_masked_mu

K = 3
ALPHA = 2.0


def planted_counts(m=240, n=50, seed=0):
    """Implicit-feedback counts: a user's items drawn from a planted rank-K taste, 1-9 plays."""
    rng = np.random.default_rng(seed)
    taste = rng.random((m, K)) ** 3 @ rng.random((K, n)) ** 3
    seen = rng.random((m, n)) < 0.15 + 0.6 * taste / taste.max()  # >= k plays a user
    plays = np.where(seen, rng.integers(1, 10, size=(m, n)), 0).astype(np.float64)
    return sp.csr_matrix(plays)


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    """The counts as a store in several row blocks, and given weights stored in others."""
    root = tmp_path_factory.mktemp("weights")
    A = planted_counts()
    C = A.copy()
    C.data = np.random.default_rng(1).uniform(0.2, 3.0, A.nnz)
    store = bignmf.convert(A, root / "A.zarr", block_rows=40)
    weights = bignmf.convert(C, root / "C.zarr", block_rows=70)
    return store, weights, A, C


def dense_problem(A, C, kind):
    """(dense weights of every entry, targets as a sparse matrix) of a weighted fit."""
    if kind == "implicit":
        P = A.copy()
        P.data = np.ones(A.nnz)
        return 1.0 + ALPHA * A.toarray(), P
    if kind == "given":
        c = np.ones(A.shape)
        c[A.nonzero()] = C.data
        return c, A
    c = np.zeros(A.shape)  # given weights on the stored entries only
    c[A.nonzero()] = C.data
    return c, A


def options(kind, C):
    if kind == "implicit":
        return {"weights": "implicit", "implicit_alpha": ALPHA}
    return {"weights": C, "missing": "zeros" if kind == "given-stored" else None}


def objective(c, T, W, H):
    return 0.5 * float(np.sum(c * (T.toarray() - W @ H) ** 2))


def start(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((shape[0], K)) + 0.1, rng.random((K, shape[1])) + 0.1


def same_bits(a, b):
    assert np.asarray(a.W).tobytes() == np.asarray(b.W).tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    assert a.loss_history == b.loss_history


KINDS = ["implicit", "given", "given-stored"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_weighted_fits_equal_the_dense_references(counts, solver, kind):
    _, _, A, C = counts
    c, T = dense_problem(A, C, kind)
    W0, H0 = start(A.shape)
    run = {"init": "custom", "W": W0, "H": H0, "tol": 0, "max_iter": 5, "scheduler": "sync"}
    result = bignmf.nmf(A, K, solver=solver, n_inner=1, **run, **options(kind, C))
    if solver == "hals":
        W_ref, H_ref = dense_cd(T, W0, H0, 5, weights=c)
    else:
        W_ref, H_ref = dense_masked_mu(T, W0, H0, 5, weights=c)
    np.testing.assert_allclose(result.W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.H, H_ref, rtol=1e-9, atol=1e-12)
    # the loss of (W_t, H_{t-1}) after each iteration, and the final one exactly (hals)
    W1, _ = (dense_cd if solver == "hals" else dense_masked_mu)(T, W0, H0, 1, weights=c)
    W_half = W1  # the first W half-step against H0
    assert result.loss_history[0] == pytest.approx(objective(c, T, W_half, H0), rel=1e-9)
    if solver == "hals":
        final = objective(c, T, result.W, result.H)
        assert result.reconstruction_err == pytest.approx(np.sqrt(2 * final), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_the_weighted_objective_never_rises_and_reaches_a_fixed_point(counts, kind):
    """Coordinate descent converges to a point where every row of W and every column of H is
    the exact weighted NNLS solution against the other factor (scipy's ``nnls``)."""
    _, _, A, C = counts
    c, T = dense_problem(A, C, kind)
    result = bignmf.nmf(
        A, K, tol=0, max_iter=400, random_state=0, alpha_W=1e-4, scheduler="sync",
        **options(kind, C),
    )  # fmt: skip
    history = np.asarray(result.objective_history)
    assert np.all(np.diff(history) <= 1e-9 * history[:-1])
    W, H = result.W, result.H
    l2_W, l2_H = A.shape[1] * 1e-4, A.shape[0] * 1e-4  # scikit-learn's scaling
    dense_T = T.toarray()

    def exact(F_fixed, weights, targets, l2):  # min ½Σ c(t − x·F)² + ½·l2·‖x‖², x ≥ 0
        k = F_fixed.shape[0]
        rows = []
        for cr, tr in zip(weights, targets, strict=True):
            s = np.sqrt(cr)
            lhs = np.vstack([(F_fixed * s).T, np.sqrt(l2) * np.eye(k)])
            rows.append(scipy.optimize.nnls(lhs, np.concatenate([s * tr, np.zeros(k)]))[0])
        return np.array(rows)

    scale = max(np.abs(W).max(), np.abs(H).max())
    np.testing.assert_allclose(exact(H, c, dense_T, l2_W), W, atol=2e-3 * scale)
    np.testing.assert_allclose(exact(W.T, c.T, dense_T.T, l2_H).T, H, atol=2e-3 * scale)


def test_unit_weights_are_the_plain_fit(counts):
    _, _, A, _ = counts
    W0, H0 = start(A.shape, seed=4)
    run = {"init": "custom", "W": W0, "H": H0, "tol": 0, "max_iter": 8, "scheduler": "sync"}
    plain = bignmf.nmf(A, K, **run)
    ones = A.copy()
    ones.data = np.ones(A.nnz)
    unit = bignmf.nmf(A, K, weights=ones, n_inner=1, **run)
    np.testing.assert_allclose(unit.W, plain.W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(unit.loss_history, plain.loss_history, rtol=1e-9)
    # implicit feedback with α = 0 is the plain fit of the preferences
    flat = bignmf.nmf(A, K, weights="implicit", implicit_alpha=0.0, n_inner=1, **run)
    preferences = bignmf.nmf(ones, K, **run)
    np.testing.assert_allclose(flat.H, preferences.H, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["implicit", "given"])
def test_same_bits_on_every_scheduler_and_bitwise_resume(tmp_path, counts, kind, dask_cluster):
    from distributed import Client

    store, weights, _, _ = counts
    given = {"weights": "implicit", "implicit_alpha": ALPHA, "implicit_f": "log"}
    run = {"random_state": 2, "tol": 0, "max_iter": 6}
    run.update(given if kind == "implicit" else {"weights": weights})
    reference = bignmf.nmf(store, K, scheduler="sync", **run)
    same_bits(bignmf.nmf(store, K, scheduler="threads", n_tasks=3, **run), reference)
    zarr_w = {"w_storage": "zarr", "workdir": tmp_path / "w"}
    same_bits(bignmf.nmf(store, K, scheduler="threads", **zarr_w, **run), reference)
    with Client(dask_cluster, timeout=60) as client:
        same_bits(bignmf.nmf(store, K, scheduler=client, workdir=tmp_path / "d", **run), reference)
    first = {**run, "max_iter": 3, "checkpoint_every": 2}
    bignmf.nmf(store, K, scheduler="sync", checkpoint_dir=tmp_path / "run", **first)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    settings = recorded["settings"]
    if kind == "implicit":
        assert (settings["weights"], settings["implicit_alpha"]) == ("implicit", ALPHA)
        assert settings["implicit_f"] == "log"
    else:
        assert settings["weights"] == "given"
        assert recorded["matrix"]["weights"]["path"] == str(weights.path)
    same_bits(bignmf.resume(tmp_path / "run", max_iter=6, scheduler="threads"), reference)
    if kind == "implicit":
        with pytest.raises(CheckpointError, match=r"implicit_alpha: recorded 2\.0, given 3\.0"):
            bignmf.nmf(store, K, **{**run, "implicit_alpha": 3.0}, resume=tmp_path / "run")


def test_a_run_with_in_memory_weights_needs_them_to_resume(tmp_path, counts):
    store, _, _, C = counts
    run = {"random_state": 2, "tol": 0, "scheduler": "sync", "weights": C}
    whole = bignmf.nmf(store, K, max_iter=4, **run)
    bignmf.nmf(store, K, max_iter=2, checkpoint_dir=tmp_path / "run", **run)
    with pytest.raises(CheckpointError, match="in-memory weights: pass them as weights="):
        bignmf.resume(tmp_path / "run", max_iter=4)
    same_bits(bignmf.resume(tmp_path / "run", weights=C, max_iter=4), whole)
    other = C.copy()
    other.data = other.data * 2
    with pytest.raises(CheckpointError, match="another matrix"):
        bignmf.resume(tmp_path / "run", weights=other, max_iter=4)


def bad_weights(A, C):
    """(options, message) of every kind of weights a fit refuses before writing anything."""
    wide = sp.random(A.shape[0], A.shape[1] + 1, density=0.1, format="csr")
    moved = C.tolil()
    r, j = A.nonzero()[0][0], A.nonzero()[1][0]
    moved[r, j] = 0
    moved[r, next(x for x in range(A.shape[1]) if A[r, x] == 0)] = 1.0
    moved = sp.csr_matrix(moved)
    negative, nan = C.copy(), C.copy()
    negative.data[7], nan.data[3] = -0.5, np.nan
    row7, col7 = A.nonzero()[0][7], A.nonzero()[1][7]
    return [
        ({"weights": wide}, f"the weights are {A.shape[0]} x {A.shape[1] + 1}; A is"),
        ({"weights": moved}, f"row {r} \\(row block 0\\) has an entry in column"),
        ({"weights": negative}, f"the weights: .* negative values.*row {row7}, column {col7}"),
        ({"weights": nan}, "the weights: .* 1 NaN or infinite values"),
        ({"weights": "implicit", "missing": "zeros"}, "cannot be combined with missing"),
        ({"weights": C, "mask": C}, "either weights= or mask="),
        ({"weights": C, "solver": "bpp"}, "solver 'bpp' cannot fit around unknown entries or"),
        ({"weights": C, "solver": "mu", "beta_loss": 1}, "supports only beta_loss=2"),
        ({"weights": "implicit", "implicit_alpha": -1.0}, "implicit_alpha must be a finite"),
        ({"weights": "implicit", "implicit_f": "cube"}, "unknown implicit_f 'cube'"),
    ]


def test_bad_weights_are_refused_and_nothing_is_written(tmp_path, counts):
    _, _, A, C = counts
    for given, message in bad_weights(A, C):
        with pytest.raises((ParameterError, InputError), match=message):
            bignmf.nmf(A, K, max_iter=2, checkpoint_dir=tmp_path / "run", **given)
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_transform_solves_each_rows_weighted_problem(counts, kind):
    _, _, A, C = counts
    c, T = dense_problem(A, C, kind)
    H = start(A.shape, seed=3)[1]
    W = transform(A, H, max_iter=2000, **options(kind, C))
    # a row's objective at W is the minimum: no coordinate can improve it
    W_ref, _ = dense_cd(T, W.copy(), H, 1, weights=c)  # one more sweep changes nothing...
    np.testing.assert_allclose(W, W_ref, atol=1e-8)
    # ...and it is scipy's exact NNLS of the weighted rows
    exact = np.array(
        [
            scipy.optimize.nnls((H * np.sqrt(cr)).T, np.sqrt(cr) * tr)[0]
            for cr, tr in zip(c, T.toarray(), strict=True)
        ]
    )
    np.testing.assert_allclose(W, exact, rtol=1e-4, atol=1e-6)  # CD: slow on few entries


def test_the_estimator_fits_implicit_feedback(counts):
    from sklearn.utils._param_validation import InvalidParameterError

    _, _, A, C = counts
    c, T = dense_problem(A, C, "implicit")
    model = bignmf.NMF(
        K, weights="implicit", implicit_alpha=ALPHA, random_state=0, max_iter=50, tol=0,
        scheduler="sync",
    )  # fmt: skip
    W = model.fit_transform(A)
    assert model.reconstruction_err_ == pytest.approx(
        np.sqrt(2 * objective(c, T, W, model.components_)), rel=1e-9
    )
    assert model.transform(A).shape == W.shape
    assert model.get_params()["implicit_f"] == "linear"
    with pytest.raises(InvalidParameterError, match="implicit_f"):
        bignmf.NMF(K, weights="implicit", implicit_f="cube").fit(A)


def heavy_tailed_plays(m=240, n=50, seed=0):
    """Users in K taste groups playing mostly their group's items, play counts Pareto-tailed
    (a few in the thousands) and unrelated to the taste: the counts' scale misleads a plain
    fit."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, K, m), rng.integers(0, K, n)
    seen = rng.random((m, n)) < np.where(user[:, None] == item[None, :], 0.4, 0.05)
    return sp.csr_matrix(np.where(seen, np.ceil(rng.pareto(1.0, size=(m, n))), 0.0))


def test_implicit_feedback_ranks_held_out_plays_above_the_plain_fit():
    """What implicit feedback is for: the items a user played but the fit did not see rank
    above the items they never played, where a plain fit of the counts ranks them at random
    (measured: AUC 0.78 against 0.48)."""
    A = heavy_tailed_plays()
    rng = np.random.default_rng(7)
    rows, cols = A.nonzero()
    held = rng.random(rows.size) < 0.2
    train = sp.csr_matrix((A.data[~held], (rows[~held], cols[~held])), shape=A.shape)
    never = np.argwhere(A.toarray() == 0)
    never = never[rng.choice(len(never), size=held.sum(), replace=False)]

    def auc(result):  # P(a held-out play scores above a never-played entry)
        pos = result.predict(rows[held], cols[held])
        neg = result.predict(never[:, 0], never[:, 1])
        return float(np.mean(pos[:, None] > neg[None, :]))

    run = {"random_state": 0, "max_iter": 60, "scheduler": "sync", "alpha_W": 1e-3}
    implicit = {"weights": "implicit", "implicit_alpha": 1.0, "implicit_f": "log"}
    ranked = auc(bignmf.nmf(train, K, **implicit, **run))
    plain = auc(bignmf.nmf(train, K, **run))
    assert ranked > 0.7
    assert ranked > plain + 0.15
