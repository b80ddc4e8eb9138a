"""Multiplicative updates (MU) for the β-divergence, mirroring scikit-learn's arithmetic.

The functions reproduce ``_multiplicative_update_w``, ``_multiplicative_update_h`` and the
loop of ``_fit_multiplicative_update`` in ``sklearn/decomposition/_nmf.py`` (scikit-learn
1.9): the same ``EPSILON`` floors, the same order of floating-point operations for the
elementwise steps, the exponent ``gamma`` of Févotte & Idier (2011) and the zeroing of tiny
entries for β < 1 (W) and β ≤ 1 (H). In float64 a multi-block loop of these kernels agrees
with ``NMF(solver="mu")`` iterate for iterate up to summation order.

Layout: the W side works on a row block ``W_i`` (``m_i x k``); the H side works on ``Hᵀ``
(``n x k``) from numerators/denominators reduced over blocks (see :mod:`bignmf.kernels.solvers`).
The elementwise formulas are layout-independent, so transposing H changes no rounding.

For β ≠ 2 the ratio ``A∘(WH)^(β-2)`` is needed only at A's stored entries and is computed in
batches (:func:`bignmf.kernels.products.wh_at_nonzeros`). For β ∉ {1, 2} (Itakura–Saito and
the general case) the denominators ``(WH)^(β-1)·Hᵀ`` and ``Wᵀ·(WH)^(β-1)`` involve every entry
of ``W·H``: they are computed from dense batches of rows of ``W_i·H`` (never the whole block).
"""

from __future__ import annotations

import numpy as np

from bignmf.kernels._util import (
    DEFAULT_BATCH_ELEMENTS,
    EPSILON,
    FLOAT64_EPS,
    as_csr,
    wh_power_batches,
)
from bignmf.kernels.products import a_ht, wh_at_nonzeros

__all__ = [
    "accumulate_h_denominator_dense",
    "beta_ratio",
    "mu_gamma",
    "mu_step",
    "mu_update_h",
    "mu_update_w",
    "ratio_at_nonzeros",
    "w_denominator",
]


def mu_gamma(beta: float) -> float:
    """Exponent applied to the MU ratio (Févotte & Idier 2011), as scikit-learn.

    Parameters
    ----------
    beta : float

    Returns
    -------
    float
        ``1/(2-β)`` for β < 1, ``1/(β-1)`` for β > 2, else 1.
    """
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def beta_ratio(a_data: np.ndarray, wh: np.ndarray, beta: float) -> np.ndarray:
    """Turn ``wh`` (``W·H`` at A's stored entries) into ``A∘(WH)^(β-2)``, in place.

    Parameters
    ----------
    a_data : ndarray, shape (nnz,)
        Stored values of A (``A_i.data``).
    wh : ndarray, shape (nnz,)
        ``W·H`` at the same entries; overwritten.
    beta : float
        β of the divergence (β ≠ 2).

    Returns
    -------
    ndarray
        ``wh``.

    Notes
    -----
    Same steps as scikit-learn: for β < 2 values below ``EPSILON`` are first raised to
    ``EPSILON``; β = 1 divides, β = 0 takes ``(1/wh)²`` by two in-place powers, others
    ``wh**(β-2)``. Memory: none beyond ``wh``.
    """
    if beta - 2.0 < 0:
        wh[wh < EPSILON] = EPSILON
    if beta == 1:
        np.divide(a_data, wh, out=wh)
    elif beta == 0:
        wh **= -1
        wh **= 2
        wh *= a_data
    else:
        wh **= beta - 2
        wh *= a_data
    return wh


def ratio_at_nonzeros(
    A_i,
    W_i: np.ndarray,
    Ht: np.ndarray,
    beta: float,
    out: np.ndarray | None = None,
    batch_size: int | None = None,
):
    """The sparse matrix ``A_i∘(W_i·H)^(β-2)`` (same pattern as ``A_i``).

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)
    beta : float
        β ≠ 2.
    out : ndarray, shape (nnz,), optional
        Buffer for the values (becomes the returned matrix's ``data``).
    batch_size : int, optional
        See :func:`~bignmf.kernels.products.wh_at_nonzeros`.

    Returns
    -------
    scipy.sparse CSR, shape (m_i, n)
        Shares ``indices``/``indptr`` with ``A_i``.

    Notes
    -----
    Memory: one length-nnz array (the returned matrix's data, ``out`` if given) plus the
    batch buffers of :func:`~bignmf.kernels.products.wh_at_nonzeros`. Time O(nnz·k).
    """
    A_i = as_csr(A_i)
    wh = wh_at_nonzeros(A_i, W_i, Ht, out=out, batch_size=batch_size)
    beta_ratio(A_i.data, wh, beta)
    return csr_with_data(A_i, wh)


def csr_with_data(A_i, data: np.ndarray):
    """A CSR matrix with ``A_i``'s pattern (shared index arrays, no copy) and ``data``.

    Parameters
    ----------
    A_i : scipy.sparse CSR matrix or array
    data : ndarray, shape (nnz,)
        Values aligned with ``A_i.data``.

    Returns
    -------
    scipy.sparse CSR, same class and shape as ``A_i``

    Notes
    -----
    O(1) memory: only a new matrix header.
    """
    return type(A_i)((data, A_i.indices, A_i.indptr), shape=A_i.shape, copy=False)


def w_denominator(
    W_i: np.ndarray,
    Ht: np.ndarray,
    beta: float,
    *,
    HHt: np.ndarray | None = None,
    H_sum: np.ndarray | None = None,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> np.ndarray:
    """Denominator of the W-side MU step (before penalties), as scikit-learn builds it.

    Parameters
    ----------
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)
        ``Hᵀ``.
    beta : float
    HHt : ndarray, shape (k, k), optional
        ``H·Hᵀ`` (required for β = 2).
    H_sum : ndarray, shape (k,), optional
        Row sums of H (used for β = 1; computed from ``Ht`` when omitted).
    batch_elements : int
        Budget of elements of the dense ``rows x n`` temporary for β ∉ {1, 2}.

    Returns
    -------
    ndarray
        β = 2: ``W_i @ HHt`` (``m_i x k``); β = 1: ``H_sum[np.newaxis, :]`` (``1 x k``);
        otherwise ``max(W_i·H, EPSILON if β < 1)^(β-1) @ Hᵀ`` (``m_i x k``).

    Notes
    -----
    For β ∉ {1, 2} the rows of ``W_i·H`` are formed in dense batches of at most
    ``batch_elements`` elements; time O(m_i·n·k).
    """
    dtype = W_i.dtype
    if beta == 2:
        if HHt is None:
            raise ValueError("HHt is required for beta_loss=2")
        return W_i @ np.asarray(HHt, dtype=dtype)
    if beta == 1:
        if H_sum is None:
            H_sum = Ht.sum(axis=0)
        return np.array(H_sum, dtype=dtype)[np.newaxis, :]
    out = np.empty(W_i.shape, dtype=dtype)
    for rows, P in wh_power_batches(
        W_i, Ht, beta - 1, floor=beta - 1 < 0, batch_elements=batch_elements
    ):
        np.dot(P, Ht, out=out[rows])
    return out


def accumulate_h_denominator_dense(
    W_i: np.ndarray,
    Ht: np.ndarray,
    beta: float,
    out: np.ndarray,
    *,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> np.ndarray:
    """Accumulate the block's part of the H-side denominator for β ∉ {1, 2}, in place.

    ``out += (max(W_i·H, EPSILON if β < 1)^(β-1))ᵀ @ W_i``, i.e. the transpose of
    scikit-learn's ``WtWH = Wᵀ·(WH)^(β-1)`` restricted to the block's rows.

    Parameters
    ----------
    W_i : ndarray, shape (m_i, k)
        The block's rows of the updated W.
    Ht : ndarray, shape (n, k)
    beta : float
    out : ndarray, shape (n, k)
        Accumulator.

    Notes
    -----
    Dense batches of rows of ``W_i·H`` of at most ``batch_elements`` elements, plus one
    ``n x k`` temporary per batch; time O(m_i·n·k).
    """
    for rows, P in wh_power_batches(
        W_i, Ht, beta - 1, floor=beta - 1 < 0, batch_elements=batch_elements
    ):
        out += P.T @ W_i[rows]
    return out


def mu_step(
    X: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    gamma: float = 1.0,
    keep_numerator: bool = False,
) -> np.ndarray:
    """Apply ``X *= (numerator / (denominator + l1 + l2·X))**gamma`` in place.

    Parameters
    ----------
    X : ndarray, shape (r, k)
        Factor rows (W_i, or Hᵀ), updated in place.
    numerator : ndarray, shape (r, k)
        Overwritten with the ratio unless ``keep_numerator``.
    denominator : ndarray, shape (r, k) or (1, k)
        May be overwritten (zeros replaced by ``EPSILON``) when no penalty applies.
    l1, l2 : float
        Penalties; applied only when > 0, as scikit-learn does.
    gamma : float
        Exponent from :func:`mu_gamma`.
    keep_numerator : bool, default False
        Write the ratio into a new array instead of ``numerator``.

    Returns
    -------
    ndarray
        ``X``.

    Notes
    -----
    Exactly scikit-learn's sequence: ``den += l1``; ``den = den + l2·X``;
    ``den[den == 0] = EPSILON``; ``num /= den``; ``num **= gamma`` (if gamma ≠ 1);
    ``X *= num``. Memory: at most one ``r x k`` temporary (two with ``keep_numerator``).
    """
    den = np.asarray(denominator, dtype=X.dtype)
    if l1 > 0:
        den = den + l1
    if l2 > 0:
        den = den + l2 * X
    den[den == 0] = EPSILON
    if keep_numerator:
        delta = np.divide(numerator, den, dtype=X.dtype)
    else:
        delta = np.divide(numerator, den, out=numerator)
    if gamma != 1:
        delta **= gamma
    X *= delta
    return X


def mu_update_w(
    A_i,
    W_i: np.ndarray,
    Ht: np.ndarray,
    *,
    beta: float,
    HHt: np.ndarray | None = None,
    H_sum: np.ndarray | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    aht: np.ndarray | None = None,
    ratio_out: np.ndarray | None = None,
    batch_size: int | None = None,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> np.ndarray:
    """One MU step for a row block of W; returns the new ``W_i`` (input left untouched).

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
    W_i : ndarray, shape (m_i, k)
        Current rows of W, in A's dtype.
    Ht : ndarray, shape (n, k)
        ``Hᵀ`` (current H), C-contiguous, in A's dtype.
    beta : float
        β of the divergence.
    HHt : ndarray, shape (k, k), optional
        ``H·Hᵀ``; required for β = 2.
    H_sum : ndarray, shape (k,), optional
        Row sums of H for β = 1 (``H.sum(axis=1)`` reproduces scikit-learn's rounding);
        computed from ``Ht`` if omitted.
    l1, l2 : float
        Scaled penalties on W.
    aht : ndarray, shape (m_i, k), optional
        Precomputed ``A_i @ Ht`` (β = 2); not modified.
    ratio_out : ndarray, shape (nnz,), optional
        Scratch buffer for the ratio at A's stored entries (β ≠ 2).
    batch_size, batch_elements : int, optional
        Batching of the sparse ``W·H`` evaluation and of the dense passes.

    Returns
    -------
    ndarray, shape (m_i, k)
        New ``W_i``; entries below float64 eps are zeroed when β < 1 (scikit-learn's loop).

    Notes
    -----
    β = 2: numerator ``A_i·Hᵀ``, denominator ``W_i·HHᵀ``; memory O(m_i·k). β = 1: numerator
    ``(A_i/(W_i·H))·Hᵀ`` from a length-nnz ratio; denominator the row sums of H. Other β add
    the dense denominator pass (time O(m_i·n·k), memory ``batch_elements``).
    """
    gamma = mu_gamma(beta)
    W_new = np.array(W_i, order="C", copy=True)
    if beta == 2:
        numerator = a_ht(A_i, Ht) if aht is None else aht
        denominator = w_denominator(W_i, Ht, beta, HHt=HHt)
        mu_step(W_new, numerator, denominator, l1=l1, l2=l2, gamma=gamma, keep_numerator=True)
    else:
        R = ratio_at_nonzeros(A_i, W_i, Ht, beta, out=ratio_out, batch_size=batch_size)
        numerator = a_ht(R, Ht)
        denominator = w_denominator(W_i, Ht, beta, H_sum=H_sum, batch_elements=batch_elements)
        mu_step(W_new, numerator, denominator, l1=l1, l2=l2, gamma=gamma)
    if beta < 1:
        W_new[W_new < FLOAT64_EPS] = 0.0
    return W_new


def mu_update_h(
    Ht: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    beta: float,
    l1: float = 0.0,
    l2: float = 0.0,
) -> np.ndarray:
    """One MU step for H, in transposed layout; returns the new ``Hᵀ`` (inputs untouched).

    Parameters
    ----------
    Ht : ndarray, shape (n, k)
        Current ``Hᵀ``.
    numerator : ndarray, shape (n, k)
        ``(Wᵀ·(A∘(WH)^(β-2)))ᵀ`` reduced over all blocks (``AᵀW`` for β = 2).
    denominator : ndarray, shape (n, k) or (1, k)
        β = 2: ``Hᵀ·WᵀW``; β = 1: column sums of W with zeros replaced by 1, as a row;
        otherwise ``((WH)^(β-1))ᵀ·W`` reduced over blocks. May be overwritten.
    beta : float
    l1, l2 : float
        Scaled penalties on H.

    Returns
    -------
    ndarray, shape (n, k)
        New ``Hᵀ``; entries below float64 eps are zeroed when β ≤ 1 (scikit-learn's loop).

    Notes
    -----
    Memory: the new ``n x k`` factor and one ``n x k`` temporary (two with L2).
    """
    Ht_new = np.array(Ht, order="C", copy=True)
    mu_step(
        Ht_new,
        numerator,
        denominator,
        l1=l1,
        l2=l2,
        gamma=mu_gamma(beta),
        keep_numerator=True,
    )
    if beta <= 1:
        Ht_new[Ht_new < FLOAT64_EPS] = 0.0
    return Ht_new
