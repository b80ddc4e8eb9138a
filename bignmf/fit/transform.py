"""Coefficients of new rows against a fixed H: scikit-learn's ``NMF.transform``, out of core.

With H fixed, the rows of W are independent problems, so :func:`transform` is one pass over A:
one fat task per run of row blocks reads each block once, solves its rows and keeps or writes
them (:func:`bignmf.fit.graph.block_pass`). Frobenius: exact non-negative least squares per row by
block principal pivoting. Other β (solver ``'mu'``): scikit-learn's W-only multiplicative
updates, iterated inside the task until each row has converged.

The module reads in two tiers: per-block NumPy functions (no dask) and the driver, which builds
the graph and computes it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bignmf.cluster.runner import Runner, scheduler_threads
from bignmf.fit.graph import WIO, block_pass
from bignmf.fit.reduction import aligned_groups
from bignmf.kernels._util import DEFAULT_BATCH_ELEMENTS, EPSILON, as_csr, dense_row_batch, scratch
from bignmf.kernels.bpp import nnls_bpp
from bignmf.kernels.mu import mu_update_w
from bignmf.kernels.products import a_ht, gram, wh_at_nonzeros
from bignmf.kernels.solvers import SolverParams, beta_loss_to_float
from bignmf.store.factors import ZarrBlocks, choose_storage
from bignmf.store.matrix import MemoryMatrix, as_block_matrix

try:  # scikit-learn is optional; its warning class lets sklearn users filter as usual
    from sklearn.exceptions import ConvergenceWarning
except ImportError:  # pragma: no cover - depends on the environment

    class ConvergenceWarning(UserWarning):
        """Some rows reached ``max_iter`` before ``tol``."""


__all__ = ["TRANSFORM_SOLVERS", "ConvergenceWarning", "transform"]

#: Solvers :func:`transform` accepts: 'bpp' and 'hals' both solve the Frobenius problem exactly.
TRANSFORM_SOLVERS = ("bpp", "hals", "mu")

#: Iterations between convergence checks of the multiplicative updates (scikit-learn's 10).
CHECK_EVERY = 10


# ------------------------------------------------------------------------ per-block kernels


@dataclass(frozen=True)
class FixedH:
    """What every block needs of the fixed H, sent once as one graph key."""

    Ht: np.ndarray
    HHt: np.ndarray
    H_sum: np.ndarray

    @classmethod
    def of(cls, H: np.ndarray, dtype: np.dtype) -> FixedH:
        """``Hᵀ`` (C-contiguous, A's dtype), ``H·Hᵀ`` (float64) and H's row sums."""
        H = np.asarray(H, dtype=dtype)
        Ht = np.ascontiguousarray(H.T)
        return cls(Ht, gram(Ht), H.sum(axis=1))  # row sums as scikit-learn: np.sum(H, axis=1)


@dataclass(frozen=True)
class TransformSpec:
    """Static description of the per-block work."""

    solver: str  # 'nnls' or 'mu'
    params: SolverParams
    dtype: np.dtype
    max_iter: int = 200
    tol: float = 1e-4
    w_init: float = 0.0


def _nnls_step(A_i, W_i, i, h: FixedH, spec: TransformSpec, work):
    """Exact NNLS of the block's rows: ``min_{w≥0} ½‖a − wH‖² + l1·Σw + ½·l2·‖w‖²``."""
    m, k = A_i.shape[0], h.Ht.shape[1]
    aht = a_ht(A_i, h.Ht, out=scratch(work, "aht", (m, k), spec.dtype))
    X = nnls_bpp(h.HHt, aht.T, l1=spec.params.l1_W, l2=spec.params.l2_W)
    return None, np.ascontiguousarray(X.T, dtype=spec.dtype)


def row_divergence(A_i, W: np.ndarray, h: FixedH, beta: float, *, aht=None, a_sq=None):
    """scikit-learn's ``_beta_divergence(A_i, W, H, beta)`` split by row (float64, length m_i).

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    W : ndarray, shape (m_i, k)
    h : FixedH
    beta : float
    aht : ndarray, shape (m_i, k), optional
        ``A_i·Hᵀ`` (β = 2; computed if omitted).
    a_sq : ndarray, shape (m_i,), optional
        Squared norms of A_i's rows (β = 2; computed if omitted).

    Returns
    -------
    ndarray, shape (m_i,)
        Summing it gives the block's divergence, with the same conventions as
        :func:`bignmf.kernels.loss.block_divergence` (β = 2: ½‖a − wH‖², clipped at 0 per row).

    Notes
    -----
    β = 2: from ``A_i·Hᵀ`` and ``H·Hᵀ``, O(m_i·k²). Otherwise ``W·H`` at the stored entries
    (a length-nnz array) plus, for β ∉ {0, 1}, dense batches of rows of ``W·H``.
    """
    m = W.shape[0]
    if beta == 2:
        if aht is None:
            aht = a_ht(A_i, h.Ht)
        if a_sq is None:
            a_sq = _row_sq_norms(A_i)
        Wd = np.asarray(W, dtype=np.float64)
        cross = np.einsum("ij,ij->i", Wd, np.asarray(aht, dtype=np.float64))
        quad = np.einsum("ij,ij->i", Wd @ h.HHt, Wd)
        return np.maximum(0.5 * (a_sq - 2.0 * cross + quad), 0.0)
    A_i = as_csr(A_i)
    rows = np.repeat(np.arange(m), np.diff(A_i.indptr))
    x = np.asarray(A_i.data, dtype=np.float64)
    y = np.asarray(wh_at_nonzeros(A_i, W, h.Ht), dtype=np.float64)
    keep = x > EPSILON  # scikit-learn leaves the other entries out of the sums
    rows, x, y = rows[keep], x[keep], y[keep]
    y[y < EPSILON] = EPSILON
    n = h.Ht.shape[0]
    if beta == 1:
        terms = x * np.log(x / y) - x
        dense = np.asarray(W, dtype=np.float64) @ np.asarray(h.H_sum, dtype=np.float64)
    elif beta == 0:
        div = x / y
        terms = div - np.log(div)
        dense = np.full(m, -float(n))
    else:
        terms = (x**beta - beta * x * y ** (beta - 1)) / (beta * (beta - 1))
        dense = np.empty(m)
        step = dense_row_batch(n, DEFAULT_BATCH_ELEMENTS)
        for r0 in range(0, m, step):
            P = np.asarray(W[r0 : r0 + step] @ h.Ht.T, dtype=np.float64)
            dense[r0 : r0 + step] = (P**beta).sum(axis=1) / beta
    return np.bincount(rows, weights=terms, minlength=m) + dense


def _row_sq_norms(A_i) -> np.ndarray:
    A_i = as_csr(A_i)
    data = np.asarray(A_i.data, dtype=np.float64)
    rows = np.repeat(np.arange(A_i.shape[0]), np.diff(A_i.indptr))
    return np.bincount(rows, weights=data * data, minlength=A_i.shape[0])


def mu_transform_block(A_i, h: FixedH, spec: TransformSpec) -> tuple[np.ndarray, int]:
    """W-only multiplicative updates of one row block, each row until it has converged.

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    h : FixedH
    spec : TransformSpec

    Returns
    -------
    W_i : ndarray, shape (m_i, k)
    n_unconverged : int
        Rows that reached ``spec.max_iter`` without meeting ``spec.tol`` (0 when ``tol == 0``).

    Notes
    -----
    scikit-learn's ``_fit_multiplicative_update(update_H=False)`` from ``W = avg`` (given as
    ``spec.w_init``), with its test every 10 iterations, ``(previous − error) / error_at_init
    < tol`` on ``error = sqrt(2·divergence)``, applied to each row's own divergence: a row stops
    when it has converged, so the result does not depend on how rows are grouped into blocks.
    Rows still running are gathered every 10 iterations (``A_i`` restricted to them).
    Memory: O(m_i·k) plus the MU temporaries of the running rows.
    """
    A_i = as_csr(A_i)
    m, k = A_i.shape[0], h.Ht.shape[1]
    params, beta, tol = spec.params, spec.params.beta_loss, spec.tol
    W = np.full((m, k), spec.w_init, dtype=spec.dtype)
    aht = a_ht(A_i, h.Ht) if beta == 2 else None
    a_sq = _row_sq_norms(A_i) if beta == 2 else None

    def error(A_a, W_a, active):
        sub = None if aht is None else aht[active]
        div = row_divergence(
            A_a, W_a, h, beta, aht=sub, a_sq=None if a_sq is None else a_sq[active]
        )
        return np.sqrt(2.0 * np.maximum(div, 0.0))

    active = np.arange(m)
    err0 = error(A_i, W, active) if tol > 0 else None
    prev = None if err0 is None else err0.copy()
    done = 0
    while done < spec.max_iter and active.size:
        A_a = A_i if active.size == m else A_i[active]
        W_a = W[active]
        aht_a = None if aht is None else aht[active]
        steps = min(CHECK_EVERY, spec.max_iter - done)
        for _ in range(steps):
            W_a = mu_update_w(
                A_a, W_a, h.Ht, beta=beta, HHt=h.HHt, H_sum=h.H_sum, l1=params.l1_W,
                l2=params.l2_W, aht=aht_a, batch_elements=params.batch_elements,
            )  # fmt: skip
        W[active] = W_a
        done += steps
        if tol > 0 and done % CHECK_EVERY == 0:
            err = error(A_a, W_a, active)
            start = err0[active]
            stop = (start == 0) | (prev[active] - err < tol * start)
            prev[active] = err
            active = active[~stop]
    return W, int(active.size) if tol > 0 else 0


def _mu_step(A_i, W_i, i, h: FixedH, spec: TransformSpec, work):
    W_new, unconverged = mu_transform_block(A_i, h, spec)
    return {"unconverged": np.array(unconverged, dtype=np.int64)}, W_new


# ------------------------------------------------------------------------ driver


def _check_h(H: Any, n: int) -> np.ndarray:
    H = np.asarray(H)
    if H.ndim != 2 or H.shape[1] != n or H.shape[0] < 1:
        raise ValueError(f"H must have shape (n_components, {n}) to match A, got {H.shape}")
    if not np.issubdtype(H.dtype, np.number) or not np.isfinite(H).all() or (H < 0).any():
        raise ValueError("H must be finite and non-negative")
    return H


def _w_store(matrix, k: int, dtype, w_storage: str, workdir) -> ZarrBlocks | None:
    """Zarr blocks for W when it goes to disk; ``None`` when it is kept in memory."""
    if w_storage == "auto" and isinstance(matrix, MemoryMatrix):
        return None  # A is in memory, so is W
    if choose_storage(matrix.shape[0], k, dtype, w_storage) == "memory":
        return None
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bignmf-transform-", dir=workdir)
    return ZarrBlocks(os.path.join(root, "W.zarr"), matrix.row_offsets, k, dtype).create()


def transform(
    A: Any,
    H: np.ndarray,
    *,
    solver: str = "bpp",
    beta_loss: float | str = "frobenius",
    alpha_W: float = 0.0,
    l1_ratio: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    w_storage: str = "auto",
    workdir: str | os.PathLike | None = None,
    n_tasks: int | None = None,
    block_nnz: int | None = None,
    split_every: int = 8,
    scheduler: Any = None,
) -> Any:
    """Non-negative coefficients W of the rows of A against fixed components H (A ≈ W·H).

    Parameters
    ----------
    A : path, CSRStore, scipy.sparse matrix or ndarray, shape (m, n)
        A store written by :func:`bignmf.convert` (or an AnnData ``.zarr``), or a matrix in
        memory.
    H : ndarray, shape (k, n)
        The components (e.g. ``NMFResult.H`` or ``NMF.components_``); cast to A's dtype.
    solver : {'bpp', 'hals', 'mu'}
        'bpp' and 'hals': the exact solution of each row's non-negative least-squares problem
        (the point HALS sweeps converge to), by block principal pivoting; Frobenius only,
        ``max_iter`` and ``tol`` unused. 'mu': scikit-learn's W-only multiplicative updates.
    beta_loss : {'frobenius', 'kullback-leibler', 'itakura-saito'} or float
        Divergence; only 'mu' supports other than Frobenius.
    alpha_W, l1_ratio : float
        Regularisation of W with scikit-learn's meaning and scaling (by n, so rows stay
        independent).
    max_iter : int
        'mu': maximum number of updates of each row.
    tol : float
        'mu': a row stops when, at a check (every 10 updates), its error ``sqrt(2·D)`` has
        decreased by less than ``tol`` times its initial error since the previous check.
    w_storage : {'auto', 'memory', 'zarr'}
        Where W goes: 'auto' keeps it in memory for in-memory A, and for a store when it fits
        easily (:func:`bignmf.store.factors.choose_storage`).
    workdir : path, optional
        Parent directory of W's Zarr blocks (a new ``bignmf-transform-*`` directory is made in
        it, or in the system's temporary directory).
    n_tasks : int, optional
        Number of fat tasks (default 4 per scheduler thread).
    block_nnz : int, optional
        Re-plan the row blocks (see :func:`bignmf.nmf`).
    split_every : int
        Fan-in of the reduction of the convergence counts.
    scheduler : optional
        Passed to ``dask.compute``; default: Dask's current scheduler.

    Returns
    -------
    W : ndarray or dask.array.Array, shape (m, k)
        NumPy when W was kept in memory; otherwise a lazy Dask array over its Zarr blocks
        (one chunk per row block). Dtype of A.

    Raises
    ------
    ValueError
        Unknown solver (the message lists the valid ones), a solver that does not support
        ``beta_loss``, H of the wrong shape, or ``beta_loss <= 0`` with zeros in A.

    Warns
    -----
    ConvergenceWarning
        ('mu', ``tol > 0``) when some rows reached ``max_iter`` before ``tol``.

    Notes
    -----
    One pass over A, one graph. Memory: each task holds one row block of A (with its read
    buffers), its rows of W, ``Hᵀ`` (n×k) and k×k grams; BPP adds O(m_i·k), MU with β ≠ 2 a
    length-nnz array and dense batch temporaries of 2**21 elements. The driver holds H and,
    when W is kept in memory, W (m×k); never A. Row results depend only on the row and H:
    neither the blocking nor the scheduler changes them beyond rounding.

    References
    ----------
    Kim & Park, "Fast nonnegative matrix factorization: an active-set-like method and
    comparisons", SIAM J. Sci. Comput. 33(6), 2011.
    Févotte & Idier, "Algorithms for nonnegative matrix factorization with the β-divergence",
    Neural Computation 23(9), 2011.
    """
    if solver not in TRANSFORM_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {list(TRANSFORM_SOLVERS)}")
    beta = beta_loss_to_float(beta_loss)
    if solver != "mu" and beta != 2:
        raise ValueError(
            f"solver {solver!r} supports only beta_loss='frobenius'; use solver 'mu' for "
            f"beta_loss={beta_loss!r}"
        )
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    matrix = as_block_matrix(A, block_nnz=block_nnz)
    m, n = matrix.shape
    H = _check_h(H, n)
    k = H.shape[0]
    if beta <= 0 and matrix.nnz < m * n:
        raise ValueError(
            "When beta_loss <= 0 and A contains zeros, the solver may diverge. Please add "
            "small values to A, or use a positive beta_loss."
        )
    dtype = matrix.dtype
    params = SolverParams.from_alpha(
        n_samples=m, n_features=n, beta_loss=beta, alpha_W=alpha_W, alpha_H=0.0,
        l1_ratio=l1_ratio,
    )  # fmt: skip
    # scikit-learn's transform starts MU from sqrt(mean(A) / k) (zeros would never move)
    w_init = float(np.sqrt(matrix.value_sum / (m * n) / k))
    spec = TransformSpec("mu" if solver == "mu" else "nnls", params, np.dtype(dtype),
                         int(max_iter), float(tol), w_init)  # fmt: skip
    step = _mu_step if spec.solver == "mu" else _nnls_step
    groups = tuple(aligned_groups(matrix.n_blocks, n_tasks or 4 * scheduler_threads(scheduler)))
    store = _w_store(matrix, k, dtype, w_storage, workdir)
    runner = Runner(scheduler)
    new_w, total = block_pass(matrix, groups, step, (FixedH.of(H, dtype), spec), None,
                              WIO(store, None, 0), split_every=split_every)  # fmt: skip
    local = scheduler is None or isinstance(scheduler, str)
    with threadpool_limits(limits=1) if local else contextlib.nullcontext():
        if store is None:
            *parts, info = runner.compute(*new_w, total)
        else:
            (info,) = runner.compute(total)
    unconverged = 0 if info is None else int(info["unconverged"])
    if unconverged:
        warnings.warn(
            f"{unconverged} of {m} rows reached max_iter={max_iter} before tol={tol}. "
            "Increase max_iter to improve convergence.",
            ConvergenceWarning,
            stacklevel=2,
        )
    if store is not None:
        return store.to_dask(0)
    return np.vstack([block for group in parts for block in group])
