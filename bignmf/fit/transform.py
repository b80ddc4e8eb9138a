"""Coefficients of new rows against a fixed H: scikit-learn's ``NMF.transform``, out of core.

With H fixed, the rows of W are independent problems, so :func:`transform` is one pass over A:
one fat task per run of row blocks reads each block once, solves its rows and keeps or writes
them (:func:`bignmf.fit.graph.block_pass`). Frobenius: exact non-negative least squares per row by
block principal pivoting. Other β (solver ``'mu'``): scikit-learn's W-only multiplicative
updates, iterated inside the task until each row has converged.

This module is the driver: it checks the arguments, builds the graph and computes it. The
per-block NumPy solves live in :mod:`bignmf.kernels.transform`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bignmf import registry
from bignmf.cluster.runner import Runner, scheduler_threads
from bignmf.errors import ConvergenceWarning
from bignmf.fit.graph import WIO, block_pass
from bignmf.fit.init import random_scale
from bignmf.fit.reduction import aligned_groups
from bignmf.fit.settings import IMPLICIT_ALPHA, check_implicit
from bignmf.kernels.loss import frobenius_sq
from bignmf.kernels.solvers import MASK, SolverParams
from bignmf.kernels.transform import (
    FixedH,
    TransformSpec,
    mu_transform_step,
    nnls_transform_step,
    observed_transform_step,
)
from bignmf.store.factors import ZarrBlocks, choose_storage
from bignmf.store.masked import MaskedMatrix
from bignmf.store.matrix import MemoryMatrix, as_block_matrix
from bignmf.store.weighted import weights_kind, with_weights

__all__ = ["ConvergenceWarning", "transform"]

#: Solvers :func:`transform` accepts: 'bpp' and 'hals' both solve the Frobenius problem exactly.


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
    missing: str | None = None,
    mask: Any = None,
    weights: Any = None,
    implicit_alpha: float = IMPLICIT_ALPHA,
    implicit_f: str = "linear",
    return_error: bool = False,
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
    missing : {None, 'zeros'}
        ``'zeros'``: each row is fitted to its stored entries only, as a fit with
        ``missing="zeros"`` fits them (coordinate descent on the row's own gram, ``max_iter``
        sweeps; Frobenius; solver 'bpp' or 'hals'); a row with no stored entry gets zeros.
    mask : optional
        Entries of A that are unknown (see :func:`bignmf.nmf`'s ``mask``): each row is fitted
        to every entry off the mask, zeros included, the same way. Not with ``missing``.
    weights, implicit_alpha, implicit_f : optional
        Entry weights (see :func:`bignmf.nmf`): each row is fitted to its weighted entries
        the same way, with the fit's ``weights`` (``'implicit'``, or a matrix of A's pattern)
        and α, f. Not with ``mask``.
    return_error : bool
        Also return the relative error ``‖A − WH‖_F / ‖A‖_F`` of the W found, from the same
        pass (solvers 'bpp' and 'hals', every entry observed).

    Returns
    -------
    W : ndarray or dask.array.Array, shape (m, k)
        NumPy when W was kept in memory; otherwise a lazy Dask array over its Zarr blocks
        (one chunk per row block). Dtype of A.
    relative_error : float
        With ``return_error`` only.

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
    registry.check("solver", solver)
    beta = registry.beta_value(beta_loss)
    if solver != "mu" and beta != 2:
        raise ValueError(
            f"solver {solver!r} supports only beta_loss='frobenius'; use solver 'mu' for "
            f"beta_loss={beta_loss!r}"
        )
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if missing is not None:
        registry.check("missing", missing)
    if (missing is not None or mask is not None or weights is not None) and beta != 2:
        raise ValueError(f"missing entries support only beta_loss='frobenius', got {beta_loss!r}")
    check_implicit(weights_kind(weights), missing, implicit_alpha, implicit_f)
    matrix = as_block_matrix(A, block_nnz=block_nnz)
    if weights is not None:
        if mask is not None:
            raise ValueError("give either weights= or mask=, not both")
        seen = missing is None
        matrix = with_weights(matrix, weights, alpha=implicit_alpha, f=implicit_f, zeros_seen=seen)
        missing = missing or MASK  # the kernels' entries: every one seen, or the stored
    if mask is not None:
        if missing is not None:
            raise ValueError("give either missing= or mask=, not both")
        unknown = as_block_matrix(mask)
        if unknown.nnz:
            matrix, missing = MaskedMatrix(matrix, unknown), MASK
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
        n_samples=m,
        n_features=n,
        beta_loss=beta,
        alpha_W=alpha_W,
        alpha_H=0.0,
        l1_ratio=l1_ratio,
    )
    # scikit-learn's transform starts MU from sqrt(mean(A) / k) (zeros would never move); the
    # stored entries only start from their own mean, as the fit does
    w_init = random_scale(matrix, k, observed_only=missing is not None)
    kind = "observed" if missing is not None else "mu" if solver == "mu" else "nnls"
    if return_error and kind != "nnls":
        raise ValueError(
            "return_error needs solver 'bpp' or 'hals' and every entry observed (no missing, "
            "mask or weights)"
        )
    spec = TransformSpec(
        kind,
        params,
        np.dtype(dtype),
        int(max_iter),
        float(tol),
        w_init,
        all_seen=missing is not None and missing != "zeros",
        loss=return_error,
    )
    step = {
        "mu": mu_transform_step,
        "nnls": nnls_transform_step,
        "observed": observed_transform_step,
    }[kind]
    groups = tuple(aligned_groups(matrix.n_blocks, n_tasks or 4 * scheduler_threads(scheduler)))
    store = _w_store(matrix, k, dtype, w_storage, workdir)
    runner = Runner(scheduler)
    new_w, total = block_pass(
        matrix,
        groups,
        step,
        (FixedH.of(H, dtype), spec),
        None,
        WIO(store, None, 0),
        split_every=split_every,
    )
    local = scheduler is None or isinstance(scheduler, str)
    with threadpool_limits(limits=1) if local else contextlib.nullcontext():
        if store is None:
            *parts, info = runner.compute(*new_w, total)
        else:
            (info,) = runner.compute(total)
    unconverged = 0 if info is None else int(info.get("unconverged", 0))
    if unconverged:
        warnings.warn(
            f"{unconverged} of {m} rows reached max_iter={max_iter} before tol={tol}. "
            "Increase max_iter to improve convergence.",
            ConvergenceWarning,
            stacklevel=2,
        )
    W = store.to_dask(0) if store is not None else np.vstack([b for g in parts for b in g])
    if not return_error:
        return W
    squared = frobenius_sq(info["a_sq"], info["cross"], info["WtW"], FixedH.of(H, dtype).HHt)
    norm = float(info["a_sq"])
    return W, (float(np.sqrt(squared / norm)) if norm > 0 else 0.0)
