"""The functional entry point :func:`nmf`: initialise, iterate, stop.

Each iteration builds one small graph (:func:`bignmf.graph.iteration`), persists W's new blocks
and computes the reduced partial sums, then updates H in NumPy. The graph of iteration t refers
only to the persisted results of iteration t-1, so lineage never grows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from threadpoolctl import threadpool_limits

from .factors import ZarrBlocks, choose_storage
from .graph import HState, Pass, iteration
from .init import INITS, InitSpec, custom_init, nndsvd_init, random_init
from .kernels.loss import frobenius_loss
from .kernels.products import gram
from .kernels.solvers import SOLVERS, SolverParams, beta_loss_to_float, get_solver
from .matrix import as_block_matrix


@dataclass(frozen=True)
class Runner:
    """Computes and persists Dask collections on the chosen scheduler."""

    scheduler: Any = None

    def _options(self) -> dict:
        return {} if self.scheduler is None else {"scheduler": self.scheduler}

    def compute(self, *collections):
        """``dask.compute`` on this scheduler."""
        return dask.compute(*collections, **self._options())

    def persist(self, *collections):
        """``dask.persist`` on this scheduler (results stay on the workers)."""
        return dask.persist(*collections, **self._options())


@dataclass(frozen=True)
class IterationInfo:
    """What a callback is told after each iteration.

    Attributes
    ----------
    iteration : int
        Iterations done so far (1 after the first).
    loss : float
        scikit-learn's β-divergence of ``(W_t, H_{t-1})`` (½‖A − WH‖²_F for Frobenius).
    relative_error : float
        ``sqrt(2·loss) / ‖A‖_F`` for Frobenius; ``nan`` otherwise.
    seconds : float
        Wall time of the iteration.
    """

    iteration: int
    loss: float
    relative_error: float
    seconds: float


@dataclass
class NMFResult:
    """The outcome of :func:`nmf`.

    Attributes
    ----------
    W : ndarray or dask.array.Array, shape (m, k)
        NumPy when W was kept in memory; a lazy Dask array reading the Zarr blocks otherwise.
    H : ndarray, shape (k, n)
    loss_history : list of float
        Loss after each iteration's W update (see :class:`IterationInfo`).
    reconstruction_err : float
        scikit-learn's ``reconstruction_err_`` of the final ``(W, H)``: ‖A − WH‖_F for Frobenius.
    n_iter : int
    converged : bool
        Whether ``tol`` stopped the run before ``max_iter``.
    """

    W: Any
    H: np.ndarray
    loss_history: list[float] = field(default_factory=list)
    reconstruction_err: float = float("nan")
    n_iter: int = 0
    converged: bool = False


def _scheduler_threads(scheduler: Any) -> int:
    """Threads the computation will use, to size the fat tasks."""
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return 1
    client = scheduler if hasattr(scheduler, "nthreads") else None
    if client is None and scheduler is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        return max(sum(client.nthreads().values()), 1)
    return os.cpu_count() or 1


def _seed(random_state: int | None) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(random_state, int | np.integer) and random_state >= 0:
        return int(random_state)
    raise ValueError(f"random_state must be a non-negative int or None, got {random_state!r}")


def _final_loss(acc: dict, H: np.ndarray, norm_a_sq: float, beta: float, history: list) -> float:
    """Loss of the final (W, H): exact from the last sums for Frobenius."""
    if beta != 2:
        return history[-1] if history else float("nan")
    Ht = np.ascontiguousarray(H.T)
    cross = float(np.vdot(acc["AtW"].astype(np.float64), Ht.astype(np.float64)))
    return frobenius_loss(norm_a_sq, cross, acc["WtW"], gram(Ht))


def nmf(
    A: Any,
    n_components: int,
    *,
    solver: str = "hals",
    beta_loss: float | str = "frobenius",
    init: str | None = None,
    W: np.ndarray | None = None,
    H: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 200,
    random_state: int | None = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    n_inner: int | None = None,
    w_storage: str = "auto",
    workdir: str | os.PathLike | None = None,
    n_tasks: int | None = None,
    split_every: int = 8,
    block_nnz: int | None = None,
    scheduler: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
) -> NMFResult:
    """Non-negative matrix factorization A ≈ W·H of a stored or in-memory sparse matrix.

    Parameters
    ----------
    A : path, CSRStore, scipy.sparse matrix or ndarray, shape (m, n)
        A store written by :func:`bignmf.convert` (or an AnnData ``.zarr``), or a matrix in
        memory.
    n_components : int
        Rank k.
    solver : {'hals', 'mu', 'bpp'}
        Accelerated HALS (default), multiplicative updates, or ANLS with block principal
        pivoting.
    beta_loss : {'frobenius', 'kullback-leibler', 'itakura-saito'} or float
        Divergence; only ``'mu'`` supports other than Frobenius.
    init : {None, 'random', 'nndsvd', 'nndsvda', 'nndsvdar', 'custom'}
        As scikit-learn: ``None`` is 'nndsvda' when ``k <= min(m, n)``, else 'random';
        'random' is ``sqrt(mean(A)/k)·|N(0,1)|`` seeded per row block from ``random_state``;
        the NNDSVD family comes from an out-of-core randomized SVD (a few passes over A);
        'custom' takes ``W`` and ``H``.
    W, H : ndarray, optional
        Initial factors for ``init='custom'``.
    tol : float
        Stop when the loss decreases by less than ``tol`` relative to the previous one.
    max_iter : int
        Maximum number of iterations.
    random_state : int, optional
        Seed of the random initialisation.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling.
    n_inner : int, optional
        HALS sweeps per pass over A (default 1 for 'hals'; several amortise the pass).
    w_storage : {'auto', 'memory', 'zarr'}
        Keep W's blocks in (worker) memory or on disk in ``workdir``; 'auto' keeps it in memory
        when it fits easily.
    workdir : path, optional
        Where W's Zarr blocks go when on disk (default: a new temporary directory).
    n_tasks : int, optional
        Number of fat tasks per iteration (default 4 per scheduler thread).
    split_every : int
        Fan-in of the reduction tree (a power of two).
    block_nnz : int, optional
        Re-plan the row blocks (in-memory input, or stores from other tools).
    scheduler : optional
        Passed to ``dask.compute`` (``'threads'``, ``'sync'``, a ``distributed.Client``);
        default: Dask's current scheduler.
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration.

    Returns
    -------
    NMFResult

    Notes
    -----
    Memory: the driver holds H (k×n), a few n×k partial sums and k×k grams; each task holds one
    row block of A, its rows of W and ``log2(blocks per task) + 1`` n×k partial sums. W is kept
    in memory (≈3·m·k values) or on disk. Results depend on the row blocks, never on the
    scheduler or the number of tasks: the partial sums are added in a fixed tree.
    """
    matrix = as_block_matrix(A, block_nnz=block_nnz)
    m, n = matrix.shape
    k = int(n_components)
    if k < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    if init is None:
        init = "nndsvda" if k <= min(m, n) else "random"
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
    dtype = matrix.dtype
    params = SolverParams.from_alpha(
        n_samples=m, n_features=n, beta_loss=beta_loss, alpha_W=alpha_W, alpha_H=alpha_H,
        l1_ratio=l1_ratio, n_inner=n_inner or 1,
    )  # fmt: skip
    threads = _scheduler_threads(scheduler)
    plan = Pass.plan(matrix.n_blocks, n_tasks or 4 * threads, solver, params, split_every)
    storage = choose_storage(m, k, dtype, w_storage)
    w_store = None
    if storage == "zarr":
        root = workdir if workdir is not None else tempfile.mkdtemp(prefix="bignmf-")
        w_store = ZarrBlocks(os.path.join(root, "W.zarr"), matrix.row_offsets, k, dtype).create()

    runner = Runner(scheduler)
    spec = InitSpec(k, dtype, _seed(random_state), matrix.row_offsets)
    if init == "custom":
        w_groups, H_cur = custom_init(matrix, plan.groups, spec, W, H, w_store)
    elif init == "random":
        w_groups, H_cur = random_init(matrix, plan.groups, spec, w_store)
    else:
        w_groups, H_cur = nndsvd_init(matrix, plan.groups, spec, init, runner, w_store)
    if w_store is None:
        w_groups = list(runner.persist(*w_groups))
    else:  # the tasks wrote W into its Zarr buffer 0
        runner.compute(*w_groups)
        w_groups = None

    solver_impl = get_solver(solver)
    beta = beta_loss_to_float(beta_loss)
    norm_a_sq = matrix.frobenius_sq
    history: list[float] = []
    converged, acc = False, None
    local = scheduler is None or isinstance(scheduler, str)
    with threadpool_limits(limits=1) if local else contextlib.nullcontext():
        for t in range(max_iter):
            start = time.perf_counter()
            new_w, total = iteration(matrix, plan, HState.of(H_cur), w_groups, w_store, t)
            if new_w is not None:
                *w_groups, total = runner.persist(*new_w, total)
            (acc,) = runner.compute(total)
            H_cur, loss = solver_impl.update_h(H_cur, acc, params, norm_a_sq)
            history.append(loss)
            if callback is not None:
                rel = np.sqrt(2 * max(loss, 0.0) / norm_a_sq) if beta == 2 else float("nan")
                callback(IterationInfo(t + 1, loss, rel, time.perf_counter() - start))
            if t > 0 and tol > 0 and (history[-2] - loss) < tol * abs(history[-2]):
                converged = True
                break
    final = _final_loss(acc, H_cur, norm_a_sq, beta, history) if acc is not None else np.nan
    W_out = _collect_w(w_groups, w_store, len(history), runner)
    return NMFResult(W_out, H_cur, history, float(np.sqrt(2 * max(final, 0.0))), len(history),
                     converged)  # fmt: skip


def _collect_w(w_groups, w_store: ZarrBlocks | None, n_iter: int, runner: Runner) -> Any:
    """W as NumPy (kept in memory) or a lazy Dask array over its Zarr blocks."""
    if w_store is not None:
        return w_store.to_dask(n_iter % 2)
    groups = runner.compute(*w_groups)
    return np.vstack([block for group in groups for block in group])


__all__ = ["INITS", "IterationInfo", "NMFResult", "nmf"]
