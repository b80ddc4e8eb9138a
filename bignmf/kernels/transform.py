"""Per-block solves of :func:`bignmf.fit.transform.transform`: the rows of W against a fixed H.

With H fixed, every row of W is its own problem, so a row block is solved from its block of A
and what it needs of H (:class:`FixedH`) alone. Frobenius: exact non-negative least squares per
row (:func:`~bignmf.kernels.bpp.nnls_bpp`, cold-started). Other β: scikit-learn's W-only
multiplicative updates (:func:`~bignmf.kernels.mu.mu_update_w`), iterated until each row has
converged on its own divergence (:func:`row_divergence`). Stored entries only
(``missing="zeros"``): coordinate descent on each row's own gram (:func:`observed_transform_step`).

:func:`nnls_transform_step` and :func:`mu_transform_step` have the signature of the graph
layer's block steps, ``step(A_i, W_i, i, h, spec, work) -> (partial or None, W_new)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bignmf.kernels._util import Work, as_csr, scratch, wh_power_batches
from bignmf.kernels.bpp import nnls_bpp
from bignmf.kernels.loss import kept_entries
from bignmf.kernels.mu import mu_update_w
from bignmf.kernels.observed import cd_rows, row_systems
from bignmf.kernels.products import a_ht, gram, inner, sq_norm, wh_at_nonzeros
from bignmf.kernels.solvers import SolverParams

__all__ = [
    "CHECK_EVERY",
    "FixedH",
    "TransformSpec",
    "frobenius_pieces",
    "mu_transform_block",
    "mu_transform_step",
    "nnls_transform_step",
    "observed_transform_step",
    "row_divergence",
    "row_sq_norms",
]

#: Iterations between convergence checks of the multiplicative updates (scikit-learn's 10).
CHECK_EVERY = 10


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

    solver: str  # 'nnls', 'mu' or 'observed'
    params: SolverParams
    dtype: np.dtype
    max_iter: int = 200
    tol: float = 1e-4
    w_init: float = 0.0
    #: 'observed': every entry is seen, weighted 1 but on the blocks' correction pattern (a
    #: mask, confidence weights), rather than the stored entries only
    all_seen: bool = False
    #: 'nnls': also return the pieces of ``‖A − WH‖²`` (:func:`frobenius_pieces`)
    loss: bool = False


def nnls_transform_step(A_i, W_i, i, h: FixedH, spec: TransformSpec, work: Work | None):
    """Exact NNLS of the block's rows: ``min_{w≥0} ½‖a − wH‖² + l1·Σw + ½·l2·‖w‖²``.

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    W_i, i
        Unused (the graph layer's step signature).
    h : FixedH
    spec : TransformSpec
    work : dict, optional
        Per-thread scratch buffers (``A_i·Hᵀ`` is written into one).

    Returns
    -------
    dict or None, ndarray of shape (m_i, k)
        The pieces of the block's error (:func:`frobenius_pieces`) with ``spec.loss``, else
        None; the block's rows of W (C-contiguous, ``spec.dtype``).
    """
    m, k = A_i.shape[0], h.Ht.shape[1]
    aht = a_ht(A_i, h.Ht, out=scratch(work, "aht", (m, k), spec.dtype))
    X = nnls_bpp(h.HHt, aht.T, l1=spec.params.l1_W, l2=spec.params.l2_W)
    W = np.ascontiguousarray(X.T, dtype=spec.dtype)
    return (frobenius_pieces(A_i, W, aht) if spec.loss else None), W


def frobenius_pieces(A_i, W: np.ndarray, aht: np.ndarray) -> dict:
    """What ``‖A − WH‖²_F`` needs of a block, summed over blocks: ``‖A_i‖²`` (``a_sq``),
    ``⟨W_i, A_i·Hᵀ⟩`` (``cross``) and ``W_iᵀW_i`` (``WtW``), in float64
    (:func:`bignmf.kernels.loss.frobenius_sq` takes them with ``H·Hᵀ``)."""
    return {
        "a_sq": np.array(sq_norm(A_i)),
        "cross": np.array(inner(W, aht)),
        "WtW": gram(W),
    }


def observed_transform_step(A_i, W_i, i, h: FixedH, spec: TransformSpec, work: Work | None):
    """The block's rows against their observed entries only, weighted: the stored ones
    (``missing="zeros"``), every entry off the mask of a masked block, or every entry with
    confidence weights on the stored ones (``spec.all_seen`` for the last two).

    Each row minimises ``½·Σ_j c_j (t_j − w·h_j)² + l1·Σw + ½·l2·‖w‖²`` on its own gram
    (:mod:`bignmf.kernels.observed`), by ``spec.max_iter`` sweeps of coordinate descent from
    ``spec.w_init``: the point the fit's half-step converges to. A row with no stored entry
    gets zeros.

    Returns
    -------
    None, ndarray of shape (m_i, k)
        No partial sums; the block's rows of W (C-contiguous, ``spec.dtype``).
    """
    m, k = A_i.shape[0], h.Ht.shape[1]
    Y, grams = row_systems(A_i, h.Ht, h.HHt, all_seen=spec.all_seen)
    aht = a_ht(Y, h.Ht, out=scratch(work, "aht", (m, k), spec.dtype))
    W = np.full((m, k), spec.w_init, dtype=np.float64)
    cd_rows(
        W,
        aht,
        grams,
        l1=spec.params.l1_W,
        l2=spec.params.l2_W,
        n_sweeps=spec.max_iter,
        batch_elements=spec.params.batch_elements,
    )
    return None, np.ascontiguousarray(W, dtype=spec.dtype)


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
            a_sq = row_sq_norms(A_i)
        Wd = np.asarray(W, dtype=np.float64)
        cross = np.einsum("ij,ij->i", Wd, np.asarray(aht, dtype=np.float64))
        quad = np.einsum("ij,ij->i", Wd @ h.HHt, Wd)
        return np.maximum(0.5 * (a_sq - 2.0 * cross + quad), 0.0)
    A_i = as_csr(A_i)
    rows = np.repeat(np.arange(m), np.diff(A_i.indptr))
    # scikit-learn leaves the entries of A not above EPSILON out of the sums
    keep, x, y = kept_entries(A_i.data, wh_at_nonzeros(A_i, W, h.Ht))
    rows = rows[keep]
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
        for batch, P in wh_power_batches(W, h.Ht, beta, dtype=np.float64):
            dense[batch] = P.sum(axis=1) / beta
    return np.bincount(rows, weights=terms, minlength=m) + dense


def row_sq_norms(A_i) -> np.ndarray:
    """Squared Euclidean norms of the rows of ``A_i`` (float64, length m_i)."""
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
    a_sq = row_sq_norms(A_i) if beta == 2 else None

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
                A_a,
                W_a,
                h.Ht,
                beta=beta,
                HHt=h.HHt,
                H_sum=h.H_sum,
                l1=params.l1_W,
                l2=params.l2_W,
                aht=aht_a,
                batch_elements=params.batch_elements,
            )
        W[active] = W_a
        done += steps
        if tol > 0 and done % CHECK_EVERY == 0:
            err = error(A_a, W_a, active)
            start = err0[active]
            stop = (start == 0) | (prev[active] - err < tol * start)
            prev[active] = err
            active = active[~stop]
    return W, int(active.size) if tol > 0 else 0


def mu_transform_step(A_i, W_i, i, h: FixedH, spec: TransformSpec, work: Work | None):
    """:func:`mu_transform_block` as a block step.

    Returns
    -------
    dict, ndarray of shape (m_i, k)
        ``{"unconverged": 0-d int64}`` (summed over blocks) and the block's rows of W.
    """
    W_new, unconverged = mu_transform_block(A_i, h, spec)
    return {"unconverged": np.array(unconverged, dtype=np.int64)}, W_new
