"""Loss (β-divergence) from reductions and per-block pieces, as scikit-learn's ``_beta_divergence``.

Conventions follow ``sklearn.decomposition._nmf._beta_divergence(X, W, H, beta,
square_root=False)``: for β = 2 the divergence is **half** the squared Frobenius norm
``½‖A − WH‖²``; β = 1 is the generalised Kullback–Leibler divergence and β = 0 Itakura–Saito.
For sparse A, entries of A that are not above ``EPSILON`` (zeros included) are left out of
the ``x·log(x/wh)``-type sums, ``W·H`` is floored at ``EPSILON`` at the kept entries, the
``Σ W·H`` term of KL is ``colsum(W)·rowsum(H)``, and Itakura–Saito subtracts the full entry
count ``m·n``. Every divergence here is a sum of per-row-block parts, so the graph layer can
add block parts in any order. Penalty terms are not included.
"""

from __future__ import annotations

import numpy as np

from bignmf.kernels._util import DEFAULT_BATCH_ELEMENTS, EPSILON, as_csr, wh_power_batches
from bignmf.kernels.products import a_ht, gram, inner, sq_norm, wh_at_nonzeros

__all__ = [
    "block_divergence",
    "dense_part",
    "frobenius_loss",
    "frobenius_sq",
    "kept_entries",
    "nonzero_part",
]

_CHUNK = 1 << 20


def frobenius_sq(norm_a_sq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """``‖A − WH‖²_F = ‖A‖² − 2⟨W, A·Hᵀ⟩ + ⟨WᵀW, H·Hᵀ⟩``, in float64, clipped at 0.

    Parameters
    ----------
    norm_a_sq : float
        ``‖A‖²_F`` (sum of the blocks' :func:`~bignmf.kernels.products.sq_norm`).
    cross : float
        ``⟨W, A·Hᵀ⟩``, i.e. the sum over blocks of ``Σ W_i∘(A_i·Hᵀ)``.
    WtW, HHt : ndarray, shape (k, k)
        Grams ``WᵀW`` (summed over blocks) and ``H·Hᵀ``.

    Notes
    -----
    O(k²) work. The expansion cancels catastrophically when the fit is very good
    (relative accuracy about ``eps·‖A‖²/‖A − WH‖²``), hence float64 and the clip at 0.
    """
    return max(frobenius_expansion(norm_a_sq, cross, WtW, HHt), 0.0)


def frobenius_expansion(norm_a_sq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """``‖A‖² − 2⟨W, A·Hᵀ⟩ + ⟨WᵀW, H·Hᵀ⟩`` in float64, not clipped: a weighted loss adds its
    corrections to it before clipping (with weights the expansion alone may be negative)."""
    return float(norm_a_sq) - 2.0 * float(cross) + inner(WtW, HHt)


def frobenius_loss(norm_a_sq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """scikit-learn's β = 2 divergence ``½‖A − WH‖²_F`` from the same reductions.

    Notes
    -----
    Half of :func:`frobenius_sq` (clipped at 0).
    """
    return 0.5 * frobenius_sq(norm_a_sq, cross, WtW, HHt)


def kept_entries(a_data: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries scikit-learn's β ≠ 2 sums keep, as float64 pairs ``(x, wh)``.

    Parameters
    ----------
    a_data : ndarray, shape (nnz,)
        Stored values of A.
    wh : ndarray, shape (nnz,)
        ``W·H`` at those entries (not modified).

    Returns
    -------
    keep : ndarray of bool, shape (nnz,)
        ``a_data > EPSILON``.
    x, y : ndarray, shape (n_kept,)
        The kept values of A and of ``W·H`` (new float64 arrays), ``y`` floored at ``EPSILON``.

    Notes
    -----
    Memory: the mask, float64 copies of the inputs when they are float32, and ``x``/``y``.
    """
    x = np.asarray(a_data, dtype=np.float64)
    y = np.asarray(wh, dtype=np.float64)
    keep = x > EPSILON
    x = x[keep]
    y = y[keep]
    y[y < EPSILON] = EPSILON
    return keep, x, y


def nonzero_part(a_data: np.ndarray, wh: np.ndarray, beta: float) -> float:
    """Part of the divergence carried by A's stored entries (float64), for β ≠ 2.

    Parameters
    ----------
    a_data : ndarray, shape (nnz,)
        Stored values of a block of A.
    wh : ndarray, shape (nnz,)
        ``W·H`` at those entries (not modified).
    beta : float

    Returns
    -------
    float
        Over the kept entries (``x > EPSILON``, with ``wh`` floored at ``EPSILON``):
        β = 1: ``Σ x·log(x/wh) − Σ x``; β = 0: ``Σ (x/wh − log(x/wh) − 1) + n_kept``;
        otherwise ``(Σ x^β − β·Σ x·wh^(β−1)) / (β(β−1))``.

    Notes
    -----
    Processed in chunks of 2**20 entries upcast to float64 (a few chunk-sized temporaries);
    time O(nnz). The β = 0 form is scikit-learn's ``Σ div − Σ log div`` rearranged so the
    large count cancels exactly (see :func:`dense_part`).
    """
    if beta == 2:
        raise ValueError("use frobenius_loss for beta_loss=2")
    total = 0.0
    for c0 in range(0, a_data.shape[0], _CHUNK):
        _, x, y = kept_entries(a_data[c0 : c0 + _CHUNK], wh[c0 : c0 + _CHUNK])
        if beta == 1:
            total += float(np.dot(x, np.log(x / y))) - float(x.sum())
        elif beta == 0:
            div = x / y
            total += float(np.sum(div - np.log(div) - 1.0)) + x.shape[0]
        else:
            total += (float((x**beta).sum()) - beta * float(np.dot(x, y ** (beta - 1)))) / (
                beta * (beta - 1)
            )
    return total


def dense_part(
    W_i: np.ndarray,
    Ht: np.ndarray,
    beta: float,
    *,
    H_sum: np.ndarray | None = None,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> float:
    """Part of the divergence that involves every entry of the block of ``W·H``, for β ≠ 2.

    Returns
    -------
    float
        β = 1: ``colsum(W_i)·rowsum(H)`` (the block's share of ``Σ W·H``); β = 0:
        ``−m_i·n`` (the block's share of scikit-learn's ``−prod(X.shape)``); otherwise
        ``Σ (W_i·H)^β / β`` (unfloored, as scikit-learn).

    Notes
    -----
    β ∈ {0, 1}: O(m_i·k + n·k). General β: dense batches of rows of ``W_i·H`` of at most
    ``batch_elements`` elements, time O(m_i·n·k).
    """
    if beta == 2:
        raise ValueError("use frobenius_loss for beta_loss=2")
    m, n = W_i.shape[0], Ht.shape[0]
    if beta == 1:
        if H_sum is None:
            H_sum = Ht.sum(axis=0, dtype=np.float64)
        return float(np.dot(W_i.sum(axis=0, dtype=np.float64), np.asarray(H_sum, np.float64)))
    if beta == 0:
        return -float(m) * float(n)
    total = 0.0
    for _, P in wh_power_batches(W_i, Ht, beta, dtype=np.float64, batch_elements=batch_elements):
        total += float(P.sum())
    return total / beta


def block_divergence(
    A_i,
    W_i: np.ndarray,
    Ht: np.ndarray,
    beta: float,
    *,
    HHt: np.ndarray | None = None,
    wh: np.ndarray | None = None,
    batch_size: int | None = None,
) -> float:
    """The block's additive part of ``_beta_divergence(A, W, H, beta)``.

    Summing this over all row blocks ``(A_i, W_i)`` gives scikit-learn's
    ``_beta_divergence(A, W, H, beta, square_root=False)`` for sparse A.

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)
    beta : float
    HHt : ndarray, shape (k, k), optional
        ``H·Hᵀ`` for β = 2 (computed if omitted).
    wh : ndarray, shape (nnz,), optional
        Precomputed ``W_i·H`` at the stored entries (β ≠ 2).
    batch_size : int, optional
        Batching of :func:`~bignmf.kernels.products.wh_at_nonzeros`.

    Returns
    -------
    float
        β = 2: ``½(‖A_i‖² − 2⟨W_i, A_i·Hᵀ⟩ + ⟨W_iᵀW_i, H·Hᵀ⟩)`` (not clipped: block parts
        may be negative); otherwise :func:`nonzero_part` + :func:`dense_part`.

    Notes
    -----
    Memory: β = 2, one ``m_i x k`` product; otherwise one length-nnz array for ``wh``.
    """
    A_i = as_csr(A_i)
    if beta == 2:
        if HHt is None:
            HHt = gram(Ht)
        cross = inner(W_i, a_ht(A_i, Ht))
        return 0.5 * (sq_norm(A_i) - 2.0 * cross + inner(gram(W_i), HHt))
    if wh is None:
        wh = wh_at_nonzeros(A_i, W_i, Ht, batch_size=batch_size)
    return nonzero_part(A_i.data, wh, beta) + dense_part(W_i, Ht, beta)
