"""Fits on the stored entries only (``missing="zeros"``): the engine against dense references,
the same bits on every scheduler and storage, bitwise resume, the plan and the checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from bignmf.datasets import held_out_ratings, make_ratings
from bignmf.errors import CheckpointError, InputError, MissingEntriesWarning, ParameterError
from bignmf.fit.predict import predict, score
from bignmf.io.registry import open_source
from tests.kernels.test_kernels_observed import dense_cd, dense_masked_mu

# the planted users whose every rating was held out: tested on their own below
pytestmark = pytest.mark.filterwarnings("ignore::bignmf.errors.MissingEntriesWarning")

K = 4
OPTIONS = {"missing": "zeros", "init": "random", "random_state": 3, "tol": 0}


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    path = tmp_path_factory.mktemp("ratings") / "r.zarr"
    return make_ratings(path, 900, 120, K, ratings_per_user=40, noise=0.1, seed=2, block_rows=128)


def same_bits(a, b):
    assert np.asarray(a.W).tobytes() == np.asarray(b.W).tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    assert a.loss_history == b.loss_history


def custom_start(shape, seed=0):
    rng = np.random.default_rng(seed)
    W0 = (rng.random((shape[0], K)) + 0.1).astype(np.float32)
    H0 = (rng.random((K, shape[1])) + 0.1).astype(np.float32)
    return W0, H0


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_the_engine_equals_the_dense_references(ratings, solver):
    store = ratings.store
    A = store.to_dask().compute().tocsr().astype(np.float64)
    W0, H0 = custom_start(store.shape)
    n_inner = 2 if solver == "hals" else None
    options = {"missing": "zeros", "tol": 0, "max_iter": 6, "scheduler": "sync"}
    result = bignmf.nmf(
        store, K, init="custom", W=W0, H=H0, solver=solver, n_inner=n_inner, **options
    )
    if solver == "hals":
        W_ref, H_ref = dense_cd(A, W0.astype(np.float64), H0.astype(np.float64), 6, n_sweeps=2)
    else:
        W_ref, H_ref = dense_masked_mu(A, W0.astype(np.float64), H0.astype(np.float64), 6)
    np.testing.assert_allclose(np.asarray(result.W), W_ref, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(result.H, H_ref, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_same_bits_on_every_scheduler_and_storage(tmp_path, ratings, solver, dask_cluster):
    store = ratings.store
    run = {"solver": solver, "max_iter": 5, **OPTIONS}
    reference = bignmf.nmf(store, K, scheduler="sync", w_storage="memory", **run)
    same_bits(bignmf.nmf(store, K, scheduler="threads", n_tasks=3, **run), reference)
    same_bits(
        bignmf.nmf(store, K, scheduler="threads", w_storage="zarr", workdir=tmp_path, **run),
        reference,
    )
    from distributed import Client

    with Client(dask_cluster, timeout=60) as client:
        same_bits(bignmf.nmf(store, K, scheduler=client, workdir=tmp_path / "d", **run), reference)


def test_resume_is_bitwise_and_the_run_records_missing(tmp_path, ratings):
    store = ratings.store
    run = {"max_iter": 9, "scheduler": "sync", "checkpoint_every": 3, **OPTIONS}
    whole = bignmf.nmf(store, K, **run)
    bignmf.nmf(store, K, checkpoint_dir=tmp_path / "run", **{**run, "max_iter": 4})
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["missing"] == "zeros"
    same_bits(bignmf.resume(tmp_path / "run", max_iter=9, scheduler="threads"), whole)
    with pytest.raises(CheckpointError, match="missing"):
        bignmf.nmf(store, K, **{**run, "missing": None}, resume=tmp_path / "run")


def test_the_fit_recovers_planted_ratings_and_beats_the_plain_fit(ratings):
    store = ratings.store
    test = held_out_ratings(ratings.spec)
    fits = {
        "observed": bignmf.nmf(
            store, K, max_iter=150, n_inner=3, scheduler="threads", **{**OPTIONS, "tol": 1e-6}
        ),
        "plain": bignmf.nmf(store, K, max_iter=150, init="random", random_state=3),
    }
    rmse = {}
    for name, result in fits.items():
        W, H = np.asarray(result.W), result.H
        predicted = np.einsum("ik,ki->i", W[test.rows], H[:, test.cols])
        rmse[name] = float(np.sqrt(np.mean((predicted - test.values) ** 2)))
    assert rmse["observed"] < 0.2  # the noise is 0.1
    assert rmse["plain"] > 5 * rmse["observed"]  # zeros read as ratings pull every value down


def test_an_observed_fit_reports_the_observed_error(ratings):
    result = bignmf.nmf(ratings.store, K, max_iter=3, scheduler="sync", **OPTIONS)
    A = ratings.store.to_dask().compute().tocsr()
    rows, cols = A.nonzero()
    residual = np.asarray(A[rows, cols]).ravel() - (np.asarray(result.W) @ result.H)[rows, cols]
    assert result.reconstruction_err == pytest.approx(np.linalg.norm(residual), rel=1e-5)


def test_the_plan_counts_the_column_grams(ratings):
    store = ratings.store
    plain = bignmf.nmf(store, K, plan_only=True, scheduler="threads")
    observed = bignmf.nmf(store, K, plan_only=True, scheduler="threads", missing="zeros")
    assert observed.h_task_bytes > plain.h_task_bytes
    assert "missing entries: H's share with every column's gram" in observed.columns_why


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"solver": "bpp"}, "solver 'bpp' cannot fit around unknown entries or with entry"),
        ({"solver": "mu", "beta_loss": "kullback-leibler"}, "supports only beta_loss=2"),
        ({"column_chunks": 2}, "column_chunks > 1 cannot be used with missing entries"),
        ({"missing": "nan"}, "unknown missing 'nan'; choose one of zeros"),
    ],
)
def test_what_cannot_fit_missing_entries_is_refused(tmp_path, ratings, options, message):
    with pytest.raises(ParameterError, match=message):
        bignmf.nmf(ratings.store, K, checkpoint_dir=tmp_path / "run", **{**OPTIONS, **options})
    assert not (tmp_path / "run").exists()


def small_ratings_with_gaps():
    """20 × 8 ratings: row 3 and column 5 unrated, row 7 rated once."""
    rng = np.random.default_rng(9)
    A = sp.random(20, 8, density=0.6, format="lil", random_state=9)
    A[3, :] = 0
    A[:, 5] = 0
    A[7, :] = 0
    A[7, 0] = 4.0
    A = A.tocsr()
    A.eliminate_zeros()
    A.data = 1 + 4 * rng.random(A.nnz)
    return A


def test_rows_and_columns_without_entries_are_named_and_get_zeros():
    A = small_ratings_with_gaps()
    with pytest.warns(MissingEntriesWarning) as caught:
        result = bignmf.nmf(A, 2, max_iter=5, scheduler="sync", **OPTIONS)
    messages = [str(w.message) for w in caught]
    assert "1 row has no stored entry (3): W is 0 there" in messages
    assert "1 column has no stored entry (5): H is 0 there" in messages
    assert any(m.startswith("1 row has fewer stored entries than k = 2") for m in messages)
    assert not np.asarray(result.W)[3].any()
    assert not result.H[:, 5].any()
    with warnings.catch_warnings():  # an L2 penalty holds the thin ones: no word of them
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*no stored entry")
        bignmf.nmf(A, 2, max_iter=2, scheduler="sync", alpha_W=1e-3, **OPTIONS)


def test_predict_and_score_on_held_out_entries(tmp_path, ratings):
    result = bignmf.nmf(ratings.store, K, max_iter=40, n_inner=3, scheduler="threads", **OPTIONS)
    test = held_out_ratings(ratings.spec)
    W = np.asarray(result.W)
    dense = (W @ result.H)[test.rows, test.cols]
    np.testing.assert_allclose(result.predict(test.rows, test.cols), dense, rtol=1e-6)
    np.testing.assert_allclose(
        predict(W, result.H, test.rows, test.cols, batch=7), dense, rtol=1e-6
    )
    got = score(W, result.H, open_source(str(ratings.test_path)))
    error = dense - test.values
    assert got.n == test.values.size
    assert got.rmse == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-6)
    assert got.mae == pytest.approx(np.mean(np.abs(error)), rel=1e-6)
    with pytest.raises(ParameterError, match=r"cols\[1\] = 120 is outside 0..119"):
        result.predict([0, 1], [0, 120])
    with pytest.raises(InputError, match="is 900 x 119; W·H is 900 x 120"):
        score(W, result.H, open_source(sp.random(900, 119, density=0.01, format="csr")))


def test_score_reads_w_by_row_slabs_from_a_finished_run(tmp_path, ratings, capsys):
    from bignmf.cli import main

    run = tmp_path / "run"
    fit = ["fit", str(ratings.train_path), "-k", str(K), "--missing", "zeros", "--out", str(run)]
    options = ["--scheduler", "threads", "--max-iter", "30", "--no-progress", "--top", "0"]
    status = main([*fit, *options, "--alpha-W", "1e-4"])
    assert status == 0
    capsys.readouterr()
    assert main(["score", str(run), str(ratings.test_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    W = zarr.open_array(run / "W.zarr", mode="r")
    H = zarr.open_array(run / "H.zarr", mode="r")[...]
    assert printed == score(np.asarray(W[...]), H, open_source(str(ratings.test_path)))._asdict()
    assert printed["rmse"] < 0.2
    assert main(["score", str(run), str(tmp_path / "none.mtx")]) == 2
    assert "none.mtx: no such file or directory" in capsys.readouterr().err


def test_transform_fits_new_rows_to_their_stored_entries(ratings):
    from bignmf.fit.transform import transform

    store = ratings.store
    options = {**OPTIONS, "tol": 0, "alpha_W": 1e-4}
    result = bignmf.nmf(store, K, max_iter=300, n_inner=5, scheduler="threads", **options)
    W = transform(store, result.H, missing="zeros", alpha_W=1e-4, max_iter=300, scheduler="sync")
    A = store.to_dask().compute().tocsr()
    l2 = store.shape[1] * 1e-4  # scikit-learn's scaling of alpha_W

    def row_objectives(W):
        rows, cols = A.nonzero()
        residual = np.asarray(A[rows, cols]).ravel() - (W @ result.H)[rows, cols]
        per_row = np.bincount(rows, residual.astype(np.float64) ** 2, minlength=A.shape[0])
        return 0.5 * per_row + 0.5 * l2 * (W.astype(np.float64) ** 2).sum(axis=1)

    # each row's own problem, solved again from a cold start: as well as the fit (rows with
    # fewer entries than k are ill-conditioned and converge slowest: 0.3% at the worst)
    fitted = np.asarray(result.W)
    mine, theirs = row_objectives(W), row_objectives(fitted)
    assert mine.sum() <= theirs.sum() * (1 + 1e-4)
    assert (mine <= theirs * (1 + 1e-2)).all()
    assert np.linalg.norm(W - fitted) < 0.02 * np.linalg.norm(fitted)
    empty = np.flatnonzero(np.diff(A.indptr) == 0)
    assert empty.size
    assert not W[empty].any()
    plain = transform(store, result.H, alpha_W=1e-4)  # reads the unknown entries as zeros
    assert np.linalg.norm(plain - W) > 0.3 * np.linalg.norm(W)
    with pytest.raises(ValueError, match="only beta_loss='frobenius'"):
        transform(store, result.H, missing="zeros", solver="mu", beta_loss="kullback-leibler")


# --------------------------------------------------------------------------- a mask


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A planted low-rank store and a held-out mask stored in other row blocks."""
    root = tmp_path_factory.mktemp("masked")
    rng = np.random.default_rng(5)
    W, H = rng.random((700, K)), rng.random((K, 90))
    A = sp.random(700, 90, density=0.4, format="csr", random_state=5)
    A.data = (W @ H)[A.nonzero()].astype(np.float32)
    mask = sp.random(700, 90, density=0.1, format="csr", random_state=6)
    store = bignmf.convert(A, root / "A.zarr", block_rows=64)
    mask_store = bignmf.convert(mask, root / "mask.zarr", block_rows=150)
    return store, mask_store, A, mask


def test_a_mask_fit_equals_the_dense_references(masked):
    store, mask_store, A, mask = masked
    W0, H0 = custom_start(store.shape, seed=1)
    observed = mask.toarray() == 0
    A64, start64 = A.astype(np.float64), (W0.astype(np.float64), H0.astype(np.float64))
    reference = {
        "hals": dense_cd(A64, *start64, 5, observed=observed),
        "mu": dense_masked_mu(A64, *start64, 5, observed=observed),
    }
    run = {"init": "custom", "W": W0, "H": H0, "tol": 0, "max_iter": 5, "scheduler": "sync",
           "n_inner": 1}  # fmt: skip
    for solver, (W_ref, H_ref) in reference.items():
        result = bignmf.nmf(store, K, mask=mask_store, solver=solver, **run)
        np.testing.assert_allclose(np.asarray(result.W), W_ref, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(result.H, H_ref, rtol=1e-3, atol=1e-5)


def test_a_mask_gives_the_same_bits_everywhere_and_resumes(tmp_path, masked, dask_cluster):
    from distributed import Client

    store, mask_store, _, _ = masked
    run = {"init": "random", "random_state": 2, "tol": 0, "max_iter": 6, "mask": mask_store}
    reference = bignmf.nmf(store, K, scheduler="sync", **run)
    same_bits(bignmf.nmf(store, K, scheduler="threads", n_tasks=3, **run), reference)
    with Client(dask_cluster, timeout=60) as client:
        same_bits(bignmf.nmf(store, K, scheduler=client, workdir=tmp_path / "d", **run), reference)
    first = {**run, "max_iter": 3, "checkpoint_every": 2}
    bignmf.nmf(store, K, scheduler="sync", checkpoint_dir=tmp_path / "run", **first)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["missing"] == "mask"
    assert recorded["matrix"]["mask"]["path"] == str(mask_store.path)
    same_bits(bignmf.resume(tmp_path / "run", max_iter=6, scheduler="threads"), reference)


def test_an_empty_mask_is_no_mask_and_bad_masks_are_refused(tmp_path, masked):
    store, _, A, _ = masked
    run = {"init": "random", "random_state": 2, "tol": 0, "max_iter": 3, "scheduler": "sync"}
    empty = sp.csr_matrix(A.shape)
    same_bits(bignmf.nmf(store, K, mask=empty, **run), bignmf.nmf(store, K, **run))
    wide = sp.random(700, 91, density=0.1, format="csr")
    cases = [
        ({"mask": wide}, "the mask is 700 x 91; A is 700 x 90"),
        ({"mask": A, "missing": "zeros"}, "either missing= or mask="),
        ({"mask": A, "solver": "bpp"}, "solver 'bpp' cannot fit around unknown entries"),
    ]
    for options, message in cases:
        with pytest.raises(ParameterError, match=message):
            bignmf.nmf(store, K, checkpoint_dir=tmp_path / "run", **run, **options)
        assert not (tmp_path / "run").exists()


def test_a_run_with_an_in_memory_mask_needs_it_to_resume(tmp_path, masked):
    store, _, _, mask = masked
    run = {"init": "random", "random_state": 2, "tol": 0, "scheduler": "sync"}
    whole = bignmf.nmf(store, K, mask=mask, max_iter=4, **run)
    bignmf.nmf(store, K, mask=mask, max_iter=2, checkpoint_dir=tmp_path / "run", **run)
    with pytest.raises(CheckpointError, match="in-memory mask: pass it as mask="):
        bignmf.resume(tmp_path / "run", max_iter=4)
    same_bits(bignmf.resume(tmp_path / "run", mask=mask, max_iter=4), whole)
    other = sp.random(*mask.shape, density=0.1, format="csr", random_state=99)
    with pytest.raises(CheckpointError, match="another matrix"):
        bignmf.resume(tmp_path / "run", mask=other, max_iter=4)
