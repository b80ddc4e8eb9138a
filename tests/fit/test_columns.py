"""The two-pass iteration (H cut into column ranges) against the fused pass and scikit-learn."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import scipy.sparse as sp

import bignmf.fit.engine
from bignmf.fit.columns import ColumnRanges
from bignmf.fit.engine import nmf, resume
from bignmf.fit.rundir import CheckpointError
from bignmf.plan import choose_column_chunks, fused_task_bytes
from tests.conftest import LocalProcessCluster
from tests.fit.test_engine import K, _same_bits, sklearn_fit, store_of, text_like


def _fit(A, **kwargs):
    _, W0, H0 = text_like(m=A.shape[0], n=A.shape[1], seed=6)
    options = {"init": "custom", "W": W0, "H": H0, "max_iter": 12, "tol": 0, **kwargs}
    return nmf(A, K, **options)


def test_ranges_cover_the_columns_and_reject_bad_counts():
    assert ColumnRanges.split(10, 3).ranges == [(0, 3), (3, 7), (7, 10)]
    assert ColumnRanges.split(5, 5).ranges == [(i, i + 1) for i in range(5)]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="column_chunks must be between 1 and n = 5"):
            ColumnRanges.split(5, bad)


def test_fewest_ranges_that_fit_a_task():
    need = fused_task_bytes(10**6, 20, 4, 2)  # (2 + 4) × n × k × 4 bytes
    assert need == 6 * 10**6 * 20 * 4
    assert choose_column_chunks(10**6, 20, 4, 2, task_memory=4 * need) == 1
    assert choose_column_chunks(10**6, 20, 4, 2, task_memory=need) == 4
    assert choose_column_chunks(10**6, 20, 4, 2, task_memory=need // 10) == 40


@pytest.mark.parametrize("solver", ["hals", "bpp", "mu"])
@pytest.mark.parametrize("w_storage", ["memory", "zarr"])
def test_two_passes_follow_the_fused_pass(tmp_path, solver, w_storage):
    A, _, _ = text_like(seed=6)
    fused = _fit(A, solver=solver, block_nnz=300)
    for chunks in (2, 7):
        two = _fit(A, solver=solver, block_nnz=300, column_chunks=chunks, w_storage=w_storage,
                   workdir=tmp_path)  # fmt: skip
        np.testing.assert_allclose(np.asarray(two.W), np.asarray(fused.W), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(two.H, fused.H, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(two.loss_history, fused.loss_history, rtol=1e-12)


def test_two_pass_mu_matches_sklearn_iterate_for_iterate():
    A, W0, H0 = text_like(seed=3)
    W_ref, H_ref, _ = sklearn_fit(A, W0, H0, solver="mu", max_iter=50)
    result = nmf(A, K, solver="mu", init="custom", W=W0, H=H0, max_iter=50, tol=0,
                 column_chunks=4, block_nnz=500)  # fmt: skip
    np.testing.assert_allclose(result.W, W_ref, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(result.H, H_ref, rtol=1e-9, atol=1e-13)


def test_same_bits_on_any_scheduler_and_task_count(tmp_path, dask_client):
    A, _, _ = text_like(seed=6)
    store = store_of(A, tmp_path / "a.zarr", block_rows=9)
    reference = _fit(store, column_chunks=3, scheduler="sync", n_tasks=1)
    for options in (
        {"scheduler": "threads", "n_tasks": 5},
        {"scheduler": "sync", "w_storage": "zarr", "workdir": tmp_path / "w", "n_tasks": 3},
        {"scheduler": dask_client, "workdir": tmp_path / "d"},
    ):
        _same_bits(_fit(store, column_chunks=3, **options), reference)


def test_other_losses_refuse_column_ranges():
    A, _, _ = text_like(seed=6)
    with pytest.raises(ValueError, match="Frobenius loss only"):
        _fit(A, solver="mu", beta_loss="kullback-leibler", column_chunks=2)


def _task_memory(monkeypatch, share: int) -> None:
    """Make this machine's RAM ``share`` bytes per thread of the local scheduler."""
    threads = bignmf.fit.engine.scheduler_threads(None)
    monkeypatch.setattr(bignmf.fit.engine, "machine_memory_bytes", lambda: share * threads)


def test_chosen_automatically_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    A, _, _ = text_like(m=300, n=400, seed=5)
    store = store_of(A, tmp_path / "a.zarr", block_rows=40)
    # a worker thread whose task share (a quarter) holds one n×k float64 array
    _task_memory(monkeypatch, 4 * 400 * K * 8)
    run = tmp_path / "run"
    first = _fit(store, max_iter=6, checkpoint_dir=run, checkpoint_every=3)
    chunks = json.loads((run / "run.json").read_text())["settings"]["column_chunks"]
    assert 4 <= chunks <= 10
    whole = _fit(store, max_iter=10, column_chunks=chunks)
    np.testing.assert_array_equal(first.H, _fit(store, max_iter=6, column_chunks=chunks).H)
    _task_memory(monkeypatch, 2**40)
    resumed = resume(run, max_iter=10)  # plenty of memory now: the recorded ranges still hold
    _same_bits(resumed, whole)
    with pytest.raises(TypeError, match="cannot change \\['column_chunks'\\]"):
        resume(run, max_iter=12, column_chunks=1)
    with pytest.raises(CheckpointError, match="column_chunks: recorded"):
        _fit(store, max_iter=12, column_chunks=1, resume=run)


def _worker_peaks(client) -> list[int]:
    """Peak RSS (bytes) of each worker process so far."""
    peak = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return sorted(peak.values())


def test_workers_hold_only_a_range_of_h(tmp_path):
    """n = 2M columns, k = 16: H is 128 MB, a fused task needs several times that."""
    from distributed import Client

    m, n, k = 4000, 2_000_000, 16
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, m, 400_000), rng.integers(0, n, 400_000)
    A = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(m, n))
    store = store_of(A, tmp_path / "wide.zarr", block_rows=500)
    fused_need = fused_task_bytes(n, k, 4, 1)
    cluster = LocalProcessCluster(tmp_path / "cluster")
    try:
        with Client(cluster.address) as client:
            before = _worker_peaks(client)
            nmf(store, k, init="random", random_state=0, max_iter=2, tol=0, scheduler=client,
                column_chunks=32, workdir=tmp_path / "w")  # fmt: skip
            grown = [after - b for after, b in zip(_worker_peaks(client), before, strict=True)]
    finally:
        cluster.close()
    # each task holds n/32 × k of H and its sums (~4 MB each) plus a block of A
    print("worker peak RSS growth", grown, "fused task needs", fused_need)
    assert max(grown) < fused_need / 4, (grown, fused_need)


@pytest.mark.parametrize("w_storage", ["memory", "zarr"])
def test_nndsvd_over_column_ranges_matches_sklearn(tmp_path, w_storage):
    from sklearn.decomposition._nmf import _initialize_nmf

    from bignmf.datasets.synthetic import planted_source

    source = planted_source(2000, 300, 5, nnz_per_row=30, seed=1, dtype=np.float64)
    A = sp.vstack(list(source.blocks()), format="csr")
    W_sk, H_sk = _initialize_nmf(A, 5, init="nndsvda", random_state=0)
    store = store_of(A, tmp_path / "a.zarr", block_rows=150)
    result = nmf(store, 5, init="nndsvda", max_iter=0, w_storage=w_storage, column_chunks=4,
                 workdir=tmp_path / "w")  # fmt: skip
    np.testing.assert_allclose(result.H, H_sk, rtol=1e-6, atol=1e-7 * H_sk.max())
    np.testing.assert_allclose(np.asarray(result.W), W_sk, rtol=1e-6, atol=1e-7 * W_sk.max())


def test_the_nndsvd_sketch_counts_in_the_automatic_choice(tmp_path, monkeypatch):
    A, _, _ = text_like(m=300, n=400, seed=5)
    # room for H's share (k = 4 float64 columns) but not for the sketch's (k + 10 columns)
    _task_memory(monkeypatch, 4 * 400 * 8 * 8 * 6)
    chosen = {}
    for init in ("random", "nndsvda"):
        nmf(A, K, init=init, max_iter=1, checkpoint_dir=tmp_path / init, block_nnz=2000)
        record = json.loads((tmp_path / init / "run.json").read_text())
        chosen[init] = record["settings"]["column_chunks"]
    assert chosen["random"] == 1
    assert chosen["nndsvda"] > 1


def test_graphs_do_not_grow(monkeypatch):
    import bignmf.fit.columns

    sizes: list[int] = []
    real = bignmf.fit.columns.block_pass

    def recording(*args, **kwargs):
        new_w, total = real(*args, **kwargs)
        graphs = [total, *(new_w or [])]
        sizes.append(sum(len(dict(g.__dask_graph__())) for g in graphs if g is not None))
        return new_w, total

    monkeypatch.setattr(bignmf.fit.columns, "block_pass", recording)
    A, _, _ = text_like(seed=10)
    _fit(A, max_iter=20, column_chunks=3, block_nnz=300, n_tasks=4)
    per_iteration = len(sizes) // 20
    assert per_iteration == 3 + 1 + 3  # a product per range, the W update, AᵀW per range
    assert sum(sizes[-per_iteration:]) <= sum(sizes[per_iteration : 2 * per_iteration])
