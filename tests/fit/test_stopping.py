"""Stopping on the objective (loss + penalties), the stopping rules, and sklearn's validation.

References are deliberately simple: the objective is recomputed densely from the iterates the
run went through, scikit-learn's NMF is run from the same initial factors, and the stopping
rules are re-derived by hand from their definitions.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning

import bignmf
from bignmf import write_matrix
from bignmf.errors import ObjectiveIncreaseWarning, ParameterError
from bignmf.fit.callbacks import Callback
from bignmf.fit.outputs import read_metrics
from bignmf.fit.rundir import CheckpointError, CheckpointWarning, RunDir
from bignmf.fit.stopping import STOPPING, relative_decrease, sklearn_decrease
from bignmf.kernels.solvers import regularization
from bignmf.types import Source


def problem(seed=0, m=60, n=40, k=4):
    """A sparse non-negative matrix with a planted rank-k structure, and a positive start."""
    rng = np.random.default_rng(seed)
    Wt = rng.random((m, k)) * (rng.random((m, k)) < 0.6)
    Ht = rng.random((k, n)) * (rng.random((k, n)) < 0.6)
    X = Wt @ Ht + 0.05 * rng.random((m, n))
    X[rng.random((m, n)) < 0.3] = 0.0
    return sp.csr_matrix(X), rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1


def counts(seed=0, m=150, n=80, k=6):
    """Small text-like counts, on which bignmf's 'relative' rule stops early."""
    rng = np.random.default_rng(seed)
    A = sp.random(m, n, density=0.15, format="csr", random_state=seed)
    A.data = np.floor(A.data * 5 + 1)
    return A, rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1


def store_of(A, path, block_rows=40):
    source = Source("test", A.shape, A.dtype, lambda: iter([sp.csr_matrix(A)]))
    return write_matrix(source, path, block_rows=block_rows, chunk_size=256)


def dense_objective(X, W, H, reg):
    """½‖X − WH‖²_F + l1_W·ΣW + ½·l2_W·‖W‖² + l1_H·ΣH + ½·l2_H·‖H‖², densely."""
    R = np.asarray(X.todense()) - W @ H
    return (
        0.5 * (R**2).sum()
        + reg.l1_W * W.sum()
        + 0.5 * reg.l2_W * (W**2).sum()
        + reg.l1_H * H.sum()
        + 0.5 * reg.l2_H * (H**2).sum()
    )


class Iterates(Callback):
    """Records ``(W_t, H_{t-1})`` after every iteration: the iterate its objective is of."""

    def __init__(self, H0):
        self.H_before = np.array(H0)
        self.pairs = []

    def on_iteration(self, state, info):
        self.pairs.append((np.vstack(list(state.w_blocks())), self.H_before))
        self.H_before = state.H.copy()


def quiet_sklearn(model, X, W0, H0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    return W, model


REGULARISED = [
    ("mu", {"alpha_W": 0.1, "l1_ratio": 1.0}),
    ("hals", {"alpha_W": 0.05, "alpha_H": 0.02, "l1_ratio": 0.5}),
    ("bpp", {"alpha_W": 0.05, "alpha_H": 0.02, "l1_ratio": 0.5}),
]


# ------------------------------------------------------------------ the objective itself


@pytest.mark.parametrize(("solver", "alphas"), REGULARISED, ids=[s for s, _ in REGULARISED])
def test_regularised_fit_stops_on_the_objective_it_records(solver, alphas):
    X, W0, H0 = problem()
    m, n = X.shape
    iterates = Iterates(H0)
    result = bignmf.nmf(
        X,
        4,
        solver=solver,
        init="custom",
        W=W0,
        H=H0,
        tol=1e-4,
        max_iter=300,
        callbacks=[iterates],
        **alphas,
    )
    # the loss alone rises under the penalty from the second iteration on: that used to stop
    # the fit at n_iter = 2
    assert result.n_iter > 2
    assert result.converged
    objective = np.array(result.objective_history)
    assert len(objective) == len(result.loss_history) == result.n_iter
    if solver != "bpp":
        assert np.all(np.diff(objective) <= 1e-12 * objective[:-1])
    reg = regularization(alphas["alpha_W"], alphas.get("alpha_H", "same"), alphas["l1_ratio"], m, n)
    reference = [dense_objective(X, W, H, reg) for W, H in iterates.pairs]
    np.testing.assert_allclose(objective, reference, rtol=1e-10)
    no_penalty = regularization(0, 0, 0, m, n)
    losses = [dense_objective(X, W, H, no_penalty) for W, H in iterates.pairs]
    np.testing.assert_allclose(result.loss_history, losses, rtol=1e-10)


def test_regularised_mu_is_sklearn_iterate_for_iterate_with_the_same_zeros():
    X, W0, H0 = problem()
    alphas = {"alpha_W": 0.05, "l1_ratio": 1.0}
    fixed = {"solver": "mu", "init": "custom", "tol": 0, "max_iter": 100, **alphas}
    W_ref, ref = quiet_sklearn(SkNMF(4, **fixed), X, W0, H0)
    ours = bignmf.NMF(4, **fixed)
    W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W, W_ref, rtol=1e-10, atol=1e-10 * W_ref.max())
    np.testing.assert_allclose(
        ours.components_, ref.components_, rtol=1e-10, atol=1e-10 * ref.components_.max()
    )
    assert 0 < (W_ref == 0).sum() < W_ref.size
    np.testing.assert_array_equal(W == 0, W_ref == 0)
    # with scikit-learn's default tol both run on to the same iterate and zero W alike (on
    # this matrix both rules stop at the second check; it used to stop at n_iter_ = 2)
    stopping = {**fixed, "tol": 1e-4, "alpha_W": 0.1}
    W_ref, ref = quiet_sklearn(SkNMF(4, **stopping), X, W0, H0)
    ours = bignmf.NMF(4, **stopping)
    W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert ours.n_iter_ == ref.n_iter_ == 20
    np.testing.assert_array_equal(W == 0, W_ref == 0)
    assert (W == 0).sum() > 0


def test_the_estimator_and_the_metrics_file_record_both_histories(tmp_path):
    X, W0, H0 = problem(1)
    infos = []
    options = {
        "solver": "hals",
        "init": "custom",
        "W": W0,
        "H": H0,
        "max_iter": 6,
        "tol": 0,
        "alpha_W": 0.02,
        "l1_ratio": 0.3,
    }
    result = bignmf.nmf(X, 4, checkpoint_dir=tmp_path / "run", callback=infos.append, **options)
    lines = read_metrics(tmp_path / "run")
    assert [line["objective"] for line in lines] == result.objective_history
    assert [line["loss"] for line in lines] == result.loss_history
    assert [info.objective for info in infos] == result.objective_history
    assert all(
        o > loss for o, loss in zip(result.objective_history, result.loss_history, strict=True)
    )
    model = bignmf.NMF(
        4, solver="hals", init="custom", max_iter=6, tol=0, alpha_W=0.02, l1_ratio=0.3
    ).fit(X, W=W0, H=H0)
    np.testing.assert_array_equal(model.objective_history_, result.objective_history)
    np.testing.assert_array_equal(model.loss_history_, result.loss_history)
    plain = bignmf.NMF(4, init="custom", max_iter=6, tol=0).fit(X, W=W0, H=H0)
    np.testing.assert_array_equal(plain.objective_history_, plain.loss_history_)


# ------------------------------------------------------------ the same bits everywhere


def _regularised_store_fit(store, **kwargs):
    _, W0, H0 = problem(2, m=store.shape[0], n=store.shape[1])
    options = {
        "init": "custom",
        "W": W0,
        "H": H0,
        "max_iter": 10,
        "tol": 0,
        "alpha_W": 0.02,
        "alpha_H": 0.01,
        "l1_ratio": 0.4,
        **kwargs,
    }
    return bignmf.nmf(store, 4, **options)


def _same_bits(a, b):
    assert np.asarray(a.W).tobytes() == np.asarray(b.W).tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    assert a.loss_history == b.loss_history
    assert a.objective_history == b.objective_history


@pytest.mark.parametrize(("solver", "beta_loss"), [("hals", 2), ("mu", 1)])
def test_the_objective_is_the_same_bits_on_every_scheduler(
    tmp_path, dask_client, solver, beta_loss
):
    X, _, _ = problem(2, m=200)
    store = store_of(X, tmp_path / "a.zarr", block_rows=15)
    kw = {"solver": solver, "beta_loss": beta_loss}
    reference = _regularised_store_fit(store, scheduler="sync", n_tasks=1, **kw)
    assert reference.objective_history != reference.loss_history
    _same_bits(_regularised_store_fit(store, scheduler="threads", n_tasks=5, **kw), reference)
    _same_bits(_regularised_store_fit(store, scheduler=dask_client, **kw), reference)
    on_disk = _regularised_store_fit(
        store, scheduler="sync", w_storage="zarr", workdir=tmp_path / "w", **kw
    )
    _same_bits(on_disk, reference)


def test_two_passes_objective_matches_the_dense_reference(tmp_path):
    X, W0, H0 = problem(3, m=120, n=50)
    m, n = X.shape
    alphas = {"alpha_W": 0.03, "alpha_H": 0.01, "l1_ratio": 0.6}
    iterates = Iterates(H0)
    options = {
        "solver": "hals",
        "init": "custom",
        "W": W0,
        "H": H0,
        "max_iter": 8,
        "tol": 0,
        "column_chunks": 3,
        "block_nnz": 300,
        **alphas,
    }
    two = bignmf.nmf(X, 4, scheduler="sync", callbacks=[iterates], **options)
    reg = regularization(alphas["alpha_W"], alphas["alpha_H"], alphas["l1_ratio"], m, n)
    reference = [dense_objective(X, W, H, reg) for W, H in iterates.pairs]
    np.testing.assert_allclose(two.objective_history, reference, rtol=1e-10)
    _same_bits(bignmf.nmf(X, 4, scheduler="threads", n_tasks=3, **options), two)
    on_disk = bignmf.nmf(X, 4, scheduler="sync", w_storage="zarr", workdir=tmp_path, **options)
    _same_bits(on_disk, two)


# ------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resume_store(tmp_path_factory):
    X, _, _ = problem(4, m=300, n=60)
    return store_of(X, tmp_path_factory.mktemp("data") / "A.zarr", block_rows=40)


def _resumable(store, run_dir=None, **kwargs):
    _, W0, H0 = problem(5, m=store.shape[0], n=store.shape[1])
    options = {
        "solver": "mu",
        "init": "custom",
        "W": W0,
        "H": H0,
        "tol": 1e-4,
        "max_iter": 300,
        "alpha_W": 0.02,
        "l1_ratio": 1.0,
        "scheduler": "sync",
        "checkpoint_every": 5,
        **kwargs,
    }
    return bignmf.nmf(store, 4, checkpoint_dir=run_dir, **options)


@pytest.mark.parametrize(("stopping", "cut"), [("relative", 5), ("sklearn", 15)])
def test_a_resumed_regularised_run_stops_at_the_same_iteration(
    tmp_path, resume_store, stopping, cut
):
    whole = _resumable(resume_store, stopping=stopping)
    assert whole.converged
    assert whole.n_iter > cut + 2
    _resumable(resume_store, tmp_path / "run", stopping=stopping, max_iter=cut)
    resumed = bignmf.resume(tmp_path / "run", max_iter=300, scheduler="threads", n_tasks=3)
    _same_bits(resumed, whole)
    assert resumed.n_iter == whole.n_iter
    assert resumed.converged
    lines = read_metrics(tmp_path / "run")
    assert [line["objective"] for line in lines] == whole.objective_history


@pytest.mark.slow  # 16 s, kept out of the default run for CI time
def test_resume_may_change_the_stopping_rule(tmp_path, resume_store):
    sklearn_rule = _resumable(resume_store, stopping="sklearn")
    _resumable(resume_store, tmp_path / "run", stopping="relative", max_iter=5)
    resumed = bignmf.resume(tmp_path / "run", max_iter=300, stopping="sklearn")
    _same_bits(resumed, sklearn_rule)
    with pytest.raises(ParameterError, match=r"unknown stopping rule 'often'.*relative, sklearn"):
        bignmf.resume(tmp_path / "run", stopping="often")


def _drop_objective_history(run_dir):
    (checkpoint,) = RunDir(run_dir).committed()
    group = zarr.open_group(checkpoint, mode="r+", use_consolidated=False)
    attrs = dict(group.attrs)
    # as checkpoints written before it was recorded (and before manifests had checksums)
    for name in ("objective_history", "manifest_crc32", "record_crc32"):
        del attrs[name]
    group.attrs.clear()
    group.attrs.update(attrs)
    assert "objective_history" not in dict(zarr.open_group(checkpoint, mode="r").attrs)
    return checkpoint


def test_a_checkpoint_without_objective_history(tmp_path, resume_store):
    plain = {"alpha_W": 0.0, "tol": 0, "checkpoint_every": 4}
    whole = _resumable(resume_store, max_iter=8, **plain)
    _resumable(resume_store, tmp_path / "plain", max_iter=4, **plain)
    _drop_objective_history(tmp_path / "plain")
    # without penalties the loss is the objective: the old checkpoint resumes exactly
    _same_bits(bignmf.resume(tmp_path / "plain", max_iter=8), whole)
    _resumable(resume_store, tmp_path / "reg", max_iter=4, tol=0, checkpoint_every=4)
    checkpoint = _drop_objective_history(tmp_path / "reg")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as error:
        bignmf.resume(tmp_path / "reg", max_iter=8)
    assert checkpoint.name in str(error.value)
    assert "objective" in str(error.value)


# ----------------------------------------------------------------------- stopping rules


def test_relative_rule_on_histories():
    assert STOPPING["relative"] is relative_decrease
    assert not relative_decrease([10.0], 0.1)
    assert relative_decrease([10.0, 9.5], 0.1)  # 0.5 <= 0.1·10
    assert not relative_decrease([10.0, 8.5], 0.1)
    assert not relative_decrease([10.0, 9.99], 0)  # tol = 0 never stops
    assert not relative_decrease([10.0, 10.5], 0.1)  # a rise is not convergence
    assert relative_decrease([10.0, 10.0], 0.1)
    assert relative_decrease([10.0, 10.0 + 1e-9], 0.1, noise=1e-8)  # rounding, not a rise


def sklearn_reference(objective, tol):
    """The first t (10, 20, ...) at which the documented rule stops, or None."""
    errors = [math.sqrt(2 * f) for f in objective]
    previous = errors[0]
    for t in range(10, len(errors) + 1, 10):
        error = errors[t - 1]
        if 0 <= previous - error < tol * errors[0]:
            return t
        previous = error
    return None


def test_sklearn_rule_on_histories():
    assert STOPPING["sklearn"] is sklearn_decrease
    rng = np.random.default_rng(0)
    for _ in range(50):
        objective = list(np.cumprod(1 - rng.random(80) * rng.choice([0.3, 1e-3, 1e-5], 80)))
        stops = [t for t in range(1, 81) if sklearn_decrease(objective[:t], 1e-3)]
        expected = sklearn_reference(objective, 1e-3)
        assert (stops[0] if stops else None) == expected
        assert all(t % 10 == 0 for t in stops)
    # the reference is the error after the first iteration, and the first check compares to it
    flat = [50.0] + [2.0] * 9
    assert sklearn_decrease(flat, 1e-4) is False  # e_1 = 10, e_10 = 2: a large decrease
    assert sklearn_decrease([2.0] * 10, 1e-4) is True
    assert not sklearn_decrease([2.0] * 9, 1e-4)  # only at multiples of 10
    assert not sklearn_decrease([2.0] * 10, 0)
    assert not sklearn_decrease([2.0] * 9 + [2.5], 1e-4)  # a rise is not convergence
    assert sklearn_decrease([2.0] * 9 + [2.0 + 1e-9], 1e-4, noise=1e-8)


def dense_mu(X, W, H, n_iter):
    """scikit-learn's Frobenius MU (no penalties), dense: the iterates both libraries follow."""
    X, W, H = np.asarray(X.todense()), W.copy(), H.copy()
    ours, theirs = [], [np.linalg.norm(X - W @ H)]  # e_t of (W_t, H_{t-1}) and of (W_t, H_t)
    for _ in range(n_iter):
        W *= (X @ H.T) / (W @ (H @ H.T))
        ours.append(0.5 * np.linalg.norm(X - W @ H) ** 2)
        H *= (W.T @ X) / ((W.T @ W) @ H)
        theirs.append(np.linalg.norm(X - W @ H))
    return ours, theirs


def test_estimator_tol_means_sklearns_rule():
    X, W0, H0 = counts()
    tol = 1e-4
    _, ref = quiet_sklearn(SkNMF(6, solver="mu", init="custom", tol=tol, max_iter=1000), X, W0, H0)
    relative = bignmf.nmf(X, 6, solver="mu", init="custom", W=W0, H=H0, tol=tol, max_iter=1000)
    ours = bignmf.NMF(6, solver="mu", init="custom", tol=tol, max_iter=1000)
    ours.fit(X, W=W0.copy(), H=H0.copy())
    # bignmf's own rule stops long before scikit-learn's; the estimator's does not
    assert relative.n_iter < 0.8 * ref.n_iter_
    objective, errors = dense_mu(X, W0, H0, 300)
    # scikit-learn's rule re-derived: every 10 iterations, the error of (W_t, H_t) against
    # that of the initial factors
    sk_stop = next(t for t in range(10, 301, 10) if (errors[t - 10] - errors[t]) / errors[0] < tol)
    assert sk_stop == ref.n_iter_
    # bignmf's: the objective of (W_t, H_{t-1}), against the error after the first iteration
    assert ours.n_iter_ == sklearn_reference(objective, tol)
    np.testing.assert_allclose(ours.objective_history_, objective[: ours.n_iter_], rtol=1e-10)
    # measured on this matrix: one check later (the smaller reference e_1 is stricter)
    assert ref.n_iter_ <= ours.n_iter_ <= ref.n_iter_ + 30


def test_convergence_warning_exactly_when_max_iter_comes_first():
    X, W0, H0 = counts()
    fixed = {"solver": "mu", "init": "custom", "tol": 1e-4}
    stops = bignmf.NMF(6, max_iter=1000, **fixed).fit(X, W=W0, H=H0).n_iter_
    assert stops % 10 == 0  # scikit-learn's rule checks every 10 iterations
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rule stops it at max_iter itself: converged
        assert bignmf.NMF(6, max_iter=stops, **fixed).fit(X, W=W0, H=H0).n_iter_ == stops
    with pytest.warns(ConvergenceWarning, match=f"Maximum number of iterations {stops - 1}"):
        bignmf.NMF(6, max_iter=stops - 1, **fixed).fit(X, W=W0, H=H0)


class Spoil(Callback):
    """Replaces H by a bad one after the given iterations: the next objective rises."""

    def __init__(self, after):
        self.after = after

    def on_iteration(self, state, info):
        if info.iteration in self.after:
            state.H = np.full_like(state.H, 50 * state.H.max())


def test_a_rise_of_the_objective_warns_once_and_is_not_convergence():
    X, W0, H0 = problem(6)
    with pytest.warns(ObjectiveIncreaseWarning) as caught:
        result = bignmf.nmf(
            X,
            4,
            solver="hals",
            init="custom",
            W=W0,
            H=H0,
            tol=1e-3,
            max_iter=200,
            callbacks=[Spoil({3, 8})],
        )
    objective = result.objective_history
    assert objective[3] > objective[2]
    assert objective[8] > objective[7]
    rises = [w for w in caught if issubclass(w.category, ObjectiveIncreaseWarning)]
    assert len(rises) == 1
    message = str(rises[0].message)
    assert "iteration 4" in message
    assert f"{objective[2]:.17g}" in message
    assert f"{objective[3]:.17g}" in message
    assert result.n_iter > 9
    assert result.converged
    assert issubclass(ObjectiveIncreaseWarning, RuntimeWarning)
    assert bignmf.ObjectiveIncreaseWarning is ObjectiveIncreaseWarning


def test_an_unknown_stopping_rule_is_refused_before_anything_is_written(tmp_path):
    X, _, _ = problem()
    with pytest.raises(ParameterError, match=r"unknown stopping rule 'soon'.*relative, sklearn"):
        bignmf.nmf(X, 4, stopping="soon", checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------- scikit-learn validation


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_needs_k_at_most_min_of_the_shape(tmp_path, init):
    X = np.ones((2, 2))
    message = re.escape(
        f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
    )
    with pytest.raises(ValueError, match=message):
        bignmf.nmf(X, 3, init=init, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=message):
        bignmf.NMF(3, init=init).fit(X)
    with pytest.raises(ValueError, match=message):  # scikit-learn says the same
        SkNMF(3, init=init).fit(X)
    # init=None picks 'random' above min(m, n), as scikit-learn, and keeps k
    model = bignmf.NMF(3, max_iter=5, tol=0, random_state=0).fit(X)
    assert model.n_components_ == 3
    assert model.components_.shape == (3, 2)
    assert bignmf.nmf(X, 3, max_iter=5, tol=0, random_state=0).H.shape == (3, 2)
    assert bignmf.NMF(2, init=init, max_iter=5, tol=0).fit(X).components_.shape == (2, 2)


def test_custom_factors_of_another_dtype_are_refused():
    X, W0, H0 = problem()
    W32 = W0.astype(np.float32)
    pattern = r"same dtype as X \(float64\)\. Got H\.dtype = float64 and W\.dtype = float32"
    with pytest.raises(TypeError, match=pattern):
        bignmf.NMF(4, init="custom").fit(X, W=W32, H=H0)
    with pytest.raises(TypeError, match=pattern):
        bignmf.nmf(X, 4, init="custom", W=W32, H=H0)
    X32 = X.astype(np.float32)
    theirs = r"H\.dtype = float64 and W\.dtype = float32"
    with pytest.raises(TypeError, match=r"same dtype as X \(float32\)\. Got " + theirs):
        bignmf.NMF(4, init="custom").fit(X32, W=W32, H=H0)
    with pytest.raises(TypeError, match=theirs):  # scikit-learn's words
        SkNMF(4, init="custom").fit(X32, W=W32, H=H0)
    # wrong shapes stay ValueErrors naming both shapes
    with pytest.raises(ValueError, match=r"initial H must have shape \(4, 40\), got \(4, 39\)"):
        bignmf.NMF(4, init="custom").fit(X, W=W0, H=H0[:, 1:])
    with pytest.raises(ValueError, match=r"initial W must have shape \(60, 4\), got \(59, 4\)"):
        bignmf.nmf(X, 4, init="custom", W=W0[1:], H=H0)
