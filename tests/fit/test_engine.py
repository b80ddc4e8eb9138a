"""The blockwise engine against references, across chunkings, storages and schedulers."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF

import bignmf.fit.driver
from bignmf import write_matrix
from bignmf.fit.engine import nmf
from bignmf.fit.graph import HState, Pass, iteration
from bignmf.fit.init import InitSpec, custom_init, random_init
from bignmf.kernels.solvers import SolverParams
from bignmf.store.matrix import MemoryMatrix
from bignmf.types import Source

K = 4


def text_like(m=240, n=90, density=0.12, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    A = sp.random(m, n, density=density, format="csr", random_state=seed, dtype=dtype)
    A.data = np.floor(A.data * 5 + 1).astype(dtype)  # small counts
    W0 = rng.random((m, K)).astype(dtype) + 0.1
    H0 = rng.random((K, n)).astype(dtype) + 0.1
    return A, W0, H0


def dense_mu_reference(A, W, H, n_iter):
    """Lee & Seung's multiplicative updates for ½‖A − WH‖², dense, no tricks."""
    A, W, H = np.asarray(A.todense()), W.copy(), H.copy()
    eps = np.finfo(np.float32).eps
    for _ in range(n_iter):
        W *= (A @ H.T) / np.maximum(W @ (H @ H.T), eps)
        H *= (W.T @ A) / np.maximum((W.T @ W) @ H, eps)
    return W, H


def sklearn_fit(A, W0, H0, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the point here
        model = NMF(K, init="custom", tol=0, **kwargs)
        W = model.fit_transform(A, W=W0.copy(), H=H0.copy())
    return W, model.components_, model


def store_of(A, path, block_rows):
    A = sp.csr_matrix(A)
    source = Source("test", A.shape, A.dtype, lambda: iter([A]))
    return write_matrix(source, path, block_rows=block_rows, chunk_size=256)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("block_rows", [None, 7, 64])
def test_mu_matches_sklearn_iterate_for_iterate(beta_loss, dense, block_rows):
    A, W0, H0 = text_like()
    X = A.toarray() if dense else A
    W_sk, H_sk, _ = sklearn_fit(X, W0, H0, solver="mu", beta_loss=beta_loss, max_iter=50)
    blocking = {"block_rows": block_rows} if block_rows else {}
    result = nmf(
        MemoryMatrix(X, **blocking), K, solver="mu", beta_loss=beta_loss, init="custom",
        W=W0, H=H0, max_iter=50, tol=0, scheduler="sync",
    )  # fmt: skip
    np.testing.assert_allclose(result.W, W_sk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.H, H_sk, rtol=1e-9, atol=1e-12)


def test_mu_matches_dense_reference_and_regularised_sklearn():
    A, W0, H0 = text_like(seed=1)
    W_ref, H_ref = dense_mu_reference(A, W0, H0, 30)
    result = nmf(A, K, solver="mu", init="custom", W=W0, H=H0, max_iter=30, tol=0)
    np.testing.assert_allclose(result.W, W_ref, rtol=1e-9)
    np.testing.assert_allclose(result.H, H_ref, rtol=1e-9)

    reg = {"alpha_W": 0.01, "alpha_H": 0.02, "l1_ratio": 0.3}
    W_sk, H_sk, _ = sklearn_fit(A, W0, H0, solver="mu", max_iter=30, **reg)
    result = nmf(A, K, solver="mu", init="custom", W=W0, H=H0, max_iter=30, tol=0, **reg)
    np.testing.assert_allclose(result.W, W_sk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.H, H_sk, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["hals", "bpp"])
def test_hals_and_bpp_reach_sklearn_cd_loss(solver):
    A, W0, H0 = text_like(m=300, n=120, seed=2)
    _, _, model = sklearn_fit(A, W0, H0, solver="cd", max_iter=300)
    result = nmf(A, K, solver=solver, init="custom", W=W0, H=H0, max_iter=300, tol=0,
                 block_nnz=800)  # fmt: skip
    assert result.reconstruction_err <= 1.01 * model.reconstruction_err_
    assert result.reconstruction_err >= 0.99 * model.reconstruction_err_


@pytest.mark.parametrize(
    ("solver", "beta_loss"), [("mu", "frobenius"), ("mu", "kullback-leibler"), ("hals", 2)]
)
def test_loss_never_increases(solver, beta_loss):
    A, W0, H0 = text_like(seed=3)
    matrix = MemoryMatrix(A, block_rows=30)
    result = nmf(matrix, K, solver=solver, beta_loss=beta_loss, init="custom", W=W0, H=H0,
                 max_iter=60, tol=0)  # fmt: skip
    history = np.array(result.loss_history)
    assert np.all(np.diff(history) <= 1e-12 * history[:-1])


def test_random_init_is_seeded_and_float32_tracks_float64():
    A, _, _ = text_like(seed=4)
    a = nmf(A, K, random_state=7, max_iter=20, tol=0)
    b = nmf(A, K, random_state=7, max_iter=20, tol=0)
    assert a.W.tobytes() == b.W.tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    c = nmf(A.astype(np.float32), K, random_state=7, max_iter=20, tol=0)
    assert c.W.dtype == np.float32
    assert c.H.dtype == np.float32
    assert c.reconstruction_err == pytest.approx(a.reconstruction_err, rel=1e-4)
    assert (a.W >= 0).all()
    assert (a.H >= 0).all()


def test_tol_stops_early():
    A, W0, H0 = text_like(seed=5)
    result = nmf(A, K, init="custom", W=W0, H=H0, tol=1e-3, max_iter=500)
    assert result.converged
    assert result.n_iter < 500
    assert len(result.loss_history) == result.n_iter


def _fit_store(store, **kwargs):
    _, W0, H0 = text_like(m=store.shape[0], n=store.shape[1], seed=6)
    options = {"init": "custom", "W": W0, "H": H0, "max_iter": 8, "tol": 0, **kwargs}
    return nmf(store, K, **options)


def _same_bits(a, b):
    assert np.asarray(a.W).tobytes() == np.asarray(b.W).tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    assert a.loss_history == b.loss_history


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_same_bits_whatever_tasks_storage_or_threads(tmp_path, solver):
    A, _, _ = text_like(seed=6)
    store = store_of(A, tmp_path / "a.zarr", block_rows=9)
    reference = _fit_store(store, solver=solver, scheduler="sync", n_tasks=1)
    for options in (
        {"scheduler": "threads", "n_tasks": 3},
        {"scheduler": "threads", "n_tasks": 16, "split_every": 2},
        {"scheduler": "sync", "w_storage": "zarr", "workdir": tmp_path / "w", "n_tasks": 5},
    ):
        _same_bits(_fit_store(store, solver=solver, **options), reference)


def test_a_custom_w_is_written_to_its_store_without_a_graph(tmp_path):
    from bignmf.store.factors import ZarrBlocks

    A, W0, H0 = text_like(seed=6)
    matrix = MemoryMatrix(A, block_rows=9)
    spec = InitSpec(K, np.dtype(np.float64), 0, matrix.row_offsets)
    store = ZarrBlocks(tmp_path / "W", matrix.row_offsets, K, np.float64).create()
    groups, H = custom_init(matrix, [(0, matrix.n_blocks)], spec, W0, H0, store)
    assert groups == []  # nothing for a graph to carry to the workers
    assert H.tobytes() == np.ascontiguousarray(H0).tobytes()
    ro = matrix.row_offsets
    for i in range(matrix.n_blocks):
        assert store.read(0, i).tobytes() == np.ascontiguousarray(W0[ro[i] : ro[i + 1]]).tobytes()


def test_same_bits_on_a_distributed_cluster(tmp_path, dask_client):
    A, _, _ = text_like(seed=6)
    store = store_of(A, tmp_path / "a.zarr", block_rows=9)
    reference = _fit_store(store, scheduler="sync", n_tasks=1)
    _same_bits(_fit_store(store, scheduler=dask_client), reference)
    on_disk = _fit_store(store, scheduler=dask_client, w_storage="zarr", workdir=tmp_path / "w")
    _same_bits(on_disk, reference)


def test_zarr_w_is_lazy_and_on_disk(tmp_path):
    A, _, _ = text_like(seed=8)
    store = store_of(A, tmp_path / "a.zarr", block_rows=50)
    result = _fit_store(store, w_storage="zarr", workdir=tmp_path / "w")
    assert isinstance(result.W, dask.array.Array)
    assert result.W.shape == (A.shape[0], K)
    assert len(list((tmp_path / "w").glob("bignmf-*/W-buffers.zarr"))) == 1


class CountingMatrix(MemoryMatrix):
    reads = 0

    def read_block(self, i, buffers=None):
        CountingMatrix.reads += 1
        return super().read_block(i, buffers)


def test_building_the_graph_computes_nothing():
    A, _, H0 = text_like(seed=9)
    matrix = CountingMatrix(A, block_rows=20)
    plan = Pass.plan(matrix.n_blocks, 4, "hals", SolverParams())
    w_groups, _ = random_init(matrix, plan.groups, InitSpec(K, A.dtype, 0, matrix.row_offsets))
    _, total = iteration(matrix, plan, HState.of(H0), w_groups)
    assert CountingMatrix.reads == 0
    dask.compute(total, scheduler="sync")
    assert CountingMatrix.reads == matrix.n_blocks


def test_graph_does_not_grow(monkeypatch):
    sizes = []
    real = bignmf.fit.driver.iteration

    def recording(*args, **kwargs):
        new_w, total = real(*args, **kwargs)
        sizes.append(len(dict(total.__dask_graph__())))
        return new_w, total

    monkeypatch.setattr(bignmf.fit.driver, "iteration", recording)
    A, W0, H0 = text_like(seed=10)
    nmf(A, K, init="custom", W=W0, H=H0, max_iter=50, tol=0, block_nnz=300, n_tasks=4)
    assert len(sizes) == 50
    assert sizes[49] <= sizes[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "als"}, "unknown solver 'als'; choose one of"),
        ({"init": "svd"}, "unknown init 'svd'; choose one of"),
        ({"solver": "hals", "beta_loss": "kullback-leibler"}, "supports only beta_loss=2"),
        ({"init": "custom"}, "needs both W and H"),
        ({"n_components": 0}, "n_components must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    A, _, _ = text_like()
    options = {"n_components": K, **kwargs}
    with pytest.raises(ValueError, match=message):
        nmf(A, **options)


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda"])
def test_nndsvd_matches_sklearn_out_of_core(tmp_path, variant):
    from sklearn.decomposition._nmf import _initialize_nmf

    from bignmf.datasets.synthetic import planted_source

    source = planted_source(2000, 300, 5, nnz_per_row=30, seed=1, dtype=np.float64)
    A = sp.vstack(list(source.blocks()), format="csr")
    W_sk, H_sk = _initialize_nmf(A, 5, init=variant, random_state=0)
    store = store_of(A, tmp_path / "a.zarr", block_rows=150)
    for w_storage in ("memory", "zarr"):
        result = nmf(store, 5, init=variant, max_iter=0, w_storage=w_storage,
                     workdir=tmp_path / w_storage)  # fmt: skip
        np.testing.assert_allclose(result.H, H_sk, rtol=1e-6, atol=1e-7 * H_sk.max())
        np.testing.assert_allclose(np.asarray(result.W), W_sk, rtol=1e-6, atol=1e-7 * W_sk.max())


def test_nndsvdar_fills_zeros_with_small_noise():
    A, _, _ = text_like(seed=11)
    plain = nmf(A, K, init="nndsvd", max_iter=0, random_state=3)
    noisy = nmf(A, K, init="nndsvdar", max_iter=0, random_state=3)
    zeros = plain.W == 0
    assert zeros.any()
    np.testing.assert_array_equal(noisy.W[~zeros], plain.W[~zeros])
    mean = A.sum() / np.prod(A.shape)
    assert (noisy.W[zeros] > 0).mean() > 0.9
    assert noisy.W[zeros].max() < mean


def test_default_init_follows_sklearn():
    A, _, _ = text_like(seed=12)
    default = nmf(A, K, max_iter=3, tol=0, random_state=0)
    explicit = nmf(A, K, init="nndsvda", max_iter=3, tol=0, random_state=0)
    assert default.W.tobytes() == explicit.W.tobytes()


def test_float32_nndsvd_gives_the_same_bits_wherever_w_is_kept(tmp_path):
    A, _, _ = text_like(m=600, n=80, seed=13, dtype=np.float32)
    store = store_of(A, tmp_path / "a.zarr", block_rows=90)
    options = {"init": "nndsvda", "random_state": 0, "max_iter": 4, "tol": 0}
    memory = nmf(store, K, w_storage="memory", **options)
    on_disk = nmf(store, K, w_storage="zarr", workdir=tmp_path / "w", **options)
    _same_bits(on_disk, memory)


def test_a_local_fit_leaves_distributed_config_intact():
    """A fit before distributed is imported must not drop distributed's config defaults."""
    import subprocess
    import sys

    code = (
        "import numpy as np, scipy.sparse as sp, dask, bignmf\n"
        "A = sp.random(300, 200, density=0.1, format='csr', random_state=0)\n"
        "bignmf.nmf(A, 3, max_iter=2, scheduler='threads')\n"
        "import distributed\n"
        "dask.config.get('distributed.comm.require-encryption')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plan_only_returns_the_plan_and_writes_nothing(tmp_path):
    from bignmf.plan import Plan

    A, _, _ = text_like(seed=14)
    store = store_of(A, tmp_path / "a.zarr", block_rows=60)
    run_dir = tmp_path / "run"
    options = {"scheduler": "threads", "checkpoint_dir": run_dir, "n_tasks": 2}
    memory = nmf(store, K, plan_only=True, cache_a="auto", **options)
    assert isinstance(memory, Plan)
    assert (memory.shape, memory.nnz, memory.k) == (A.shape, A.nnz, K)
    assert (memory.n_blocks, memory.blocks_per_task) == (4, 2)
    assert memory.w_storage == "memory"
    assert memory.cache_budget > 0  # a quarter of this machine's RAM
    assert not run_dir.exists()
    assert memory.describe()[0] == f"matrix: 240 x 90, {A.nnz} nonzeros, k = 4, 8-byte values"


def test_plan_only_still_checks_the_parameters(tmp_path):
    from bignmf.errors import ParameterError

    A, _, _ = text_like(seed=15)
    with pytest.raises(ParameterError, match="column"):
        nmf(A, K, beta_loss="kullback-leibler", column_chunks=2, plan_only=True)
    with pytest.raises(ParameterError):
        nmf(A, K, alpha_W=-1.0, plan_only=True)
    assert not (tmp_path / "run").exists()


def test_a_fit_logs_the_plan_it_follows(caplog):
    A, _, _ = text_like(seed=16)
    with caplog.at_level("INFO", logger="bignmf.fit.engine"):
        nmf(A, K, max_iter=2, tol=0, scheduler="sync", w_storage="zarr")
    plan_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert plan_lines[0] == f"plan: matrix: 240 x 90, {A.nnz} nonzeros, k = 4, 8-byte values"
    assert "plan: W: Zarr on disk (requested)" in plan_lines
