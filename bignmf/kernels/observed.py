"""Per-block kernels of a fit on the observed entries only (``missing="zeros"``).

The objective is ``½·Σ_{(i,j) observed} (a_ij − w_i·h_j)² + penalties``: an entry that is not
stored is unknown, not zero (ratings, held-out data). Then every row of W has its own gram,
``G_i = Σ_{j observed in row i} h_j·h_jᵀ``, and every column of H its own,
``G_j = Σ_{i observed in column j} w_i·w_iᵀ``: the plain fit's one ``H·Hᵀ`` and ``WᵀW`` do
not exist. A row block computes its rows' grams from its own nonzeros (``P_i·vec(h_j h_jᵀ)``,
``P_i`` the block's pattern, :func:`pattern`, times the packed outer products of Hᵀ's rows)
and adds its share of the columns' grams to the accumulator (``P_iᵀ·vec(w_i w_iᵀ)``); the
driver then updates H's columns from the reduced grams.

A gram is symmetric: it is kept *packed*, its ``k(k+1)/2`` upper-triangle entries in
``numpy.triu_indices`` order (:func:`packed_outer`), in float64. The per-column grams of the
accumulator are ``n × k(k+1)/2`` float64 values, which the memory plan counts
(:func:`bignmf.plan.fused_task_bytes`).

The updates:

* ``cd_rows``: coordinate descent on each row's own gram, exact in each coordinate (the HALS
  step with one gram per row), ``n_inner`` sweeps; the objective never rises. A coordinate
  whose gram entry is 0 (a row or column with no observed entry) is set to 0.
* MU (β = 2): Lee & Seung's update with the mask, ``W ← W∘(P∘A)Hᵀ / (P∘(WH))Hᵀ``.

**Entry weights.** The same kernels minimise ``½·Σ c_ij (t_ij − w_i·h_j)²`` for any weights
c ≥ 0: the pattern ``P`` becomes the weights ``C`` (:func:`targets_and_weights`), A becomes
``C∘T``. A fit where every entry is seen with weight 1 except on a sparse pattern (a mask's
entries, weight 0; confidence weights on A's stored entries, Hu, Koren & Volinsky) needs no
per-entry sums over the zeros: the grams are the plain fit's ``H·Hᵀ`` and ``WᵀW`` corrected
on that pattern by the deltas ``d = c − 1`` (:func:`targets_and_deltas`),
``G_i = H·Hᵀ + Σ_j d_ij·h_j·h_jᵀ``. A block says which it is by duck typing: ``weights`` (c
on its stored entries, aligned with ``data``, which holds the targets t), ``unknown`` (a
mask's rows) — see :mod:`bignmf.store.weighted` and :mod:`bignmf.store.masked`.

Never imports Dask or Zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bignmf.kernels import products
from bignmf.kernels._util import DEFAULT_BATCH_ELEMENTS, as_csr

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = [
    "GATHER_ENTRIES",
    "IMPLICIT_F",
    "a_ht_packed",
    "cd_rows",
    "confidence",
    "observed_loss",
    "packed",
    "packed_outer",
    "packed_size",
    "pattern",
    "row_systems",
    "targets_and_deltas",
    "targets_and_weights",
]


#: Rows per batch of :func:`packed_outer` (a batch's products stay in the CPU's cache).
OUTER_BATCH_ROWS = 2048
#: Stored entries gathered at once to evaluate W·H at them (two buffers of this many × k
#: values): the default batch of 2**21 values per buffer cost 16 MB a thread in float32.
GATHER_ENTRIES = 1 << 16


#: The functions f of implicit feedback's confidence ``1 + α·f(a)``, by name.
IMPLICIT_F = {
    "linear": "f(a) = a: confidence grows with the count (Hu, Koren & Volinsky's first form)",
    "log": "f(a) = log(1 + a): confidence grows with the count's order of magnitude",
}


def confidence(values: np.ndarray, alpha: float, f: str) -> np.ndarray:
    """Implicit feedback's confidence ``1 + α·f(a)`` of stored values a, float64.

    Parameters
    ----------
    values : ndarray
        Stored values of A (non-negative).
    alpha : float
        α >= 0.
    f : {'linear', 'log'}
        See :data:`IMPLICIT_F`.

    Returns
    -------
    ndarray
    """
    a = np.asarray(values, dtype=np.float64)
    grown = a if f == "linear" else np.log1p(a)
    return 1.0 + alpha * grown


def packed_size(k: int) -> int:
    """Entries of a packed symmetric k × k gram: ``k(k+1)/2``."""
    return k * (k + 1) // 2


def packed_outer(X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Each row's outer product ``x·xᵀ``, packed: ``(r, k(k+1)/2)`` float64.

    Parameters
    ----------
    X : ndarray, shape (r, k)
    out : ndarray, shape (r, k(k+1)/2), float64, optional

    Returns
    -------
    ndarray
        ``out[:, p] = X[:, a]·X[:, b]`` for the p-th pair ``a <= b`` of ``numpy.triu_indices``.
    """
    r, k = X.shape
    X64 = np.asarray(X, dtype=np.float64)
    if out is None:
        out = np.empty((r, packed_size(k)), dtype=np.float64)
    # by batches of rows that stay in cache, and by rows of the triangle (x_a·x_b for b >= a):
    # 4-5x faster than gathering the index pairs
    for r0 in range(0, r, OUTER_BATCH_ROWS):
        x, o = X64[r0 : r0 + OUTER_BATCH_ROWS], out[r0 : r0 + OUTER_BATCH_ROWS]
        start = 0
        for a in range(k):
            np.multiply(x[:, a : a + 1], x[:, a:], out=o[:, start : start + k - a])
            start += k - a
    return out


def packed(G: np.ndarray) -> np.ndarray:
    """A symmetric k × k gram's upper triangle, packed (:func:`packed_outer` order), float64."""
    return np.asarray(G, dtype=np.float64)[np.triu_indices(G.shape[0])]


def _csr(*args, **options) -> sp.csr_matrix:
    """A plain ``csr_matrix`` (not a block's subclass); SciPy is imported here, where a block
    has loaded it already, not with this module (the CLI's help imports the solver tables)."""
    from scipy.sparse import csr_matrix

    return csr_matrix(*args, **options)


def pattern(A_i) -> sp.csr_matrix:
    """The block's sparsity pattern as a float64 CSR matrix of ones (shares A_i's indices)."""
    A_i = as_csr(A_i)
    ones = np.ones(A_i.indptr[-1], dtype=np.float64)
    return _csr((ones, A_i.indices, A_i.indptr), shape=A_i.shape)


def _with_data(A_i, data: np.ndarray) -> sp.csr_matrix:
    return _csr((data, A_i.indices, A_i.indptr), shape=A_i.shape, copy=False)


def targets_and_weights(A_i) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(C∘T, C)`` of a block fitted on its stored entries only (every other is unknown).

    Parameters
    ----------
    A_i : CSR matrix
        A row block; one with ``weights`` (c of each stored entry, float64, aligned with
        ``data``, the targets t) is weighted, any other has weight 1 on its stored entries.

    Returns
    -------
    Y : CSR matrix, A_i's dtype
        The weighted targets (``A_i`` itself without weights).
    C : CSR matrix, float64
        The weights on A_i's pattern (:func:`pattern` without weights).
    """
    weights = getattr(A_i, "weights", None)
    A_i = as_csr(A_i)
    if weights is None:
        return A_i, pattern(A_i)
    return _with_data(A_i, (weights * A_i.data).astype(A_i.dtype)), _with_data(A_i, weights)


def targets_and_deltas(A_i) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(Y, D)`` of a block whose every entry is seen with weight 1 but on a sparse pattern.

    Parameters
    ----------
    A_i : CSR matrix
        A masked block (A off the mask, with ``unknown``: the mask's rows), a weighted one
        (with ``weights``: c on its stored entries, whose ``data`` are the targets), or a plain
        one (no correction).

    Returns
    -------
    Y : CSR matrix, A_i's dtype
        The weighted targets ``C∘T`` (A off the mask for a masked block).
    D : CSR matrix, float64
        The deltas ``c − 1`` where c is not 1: −1 on the mask's entries, ``c − 1`` on a
        weighted block's stored entries, none for a plain block.
    """
    unknown = getattr(A_i, "unknown", None)
    weights = getattr(A_i, "weights", None)
    A_i = as_csr(A_i)
    if unknown is not None:
        return A_i, _with_data(unknown, np.full(unknown.indptr[-1], -1.0))
    if weights is not None:
        targets = (weights * A_i.data).astype(A_i.dtype)
        return _with_data(A_i, targets), _with_data(A_i, weights - 1.0)
    return A_i, _csr(A_i.shape, dtype=np.float64)


def row_systems(
    A_i, Ht: np.ndarray, HHt: np.ndarray | None, *, all_seen: bool
) -> tuple[sp.csr_matrix, np.ndarray]:
    """A block's weighted targets and each row's packed gram ``Σ_j c_ij·h_j·h_jᵀ``.

    Parameters
    ----------
    A_i : CSR matrix
        A row block (see :func:`targets_and_weights`, :func:`targets_and_deltas`).
    Ht : ndarray, shape (n, k)
    HHt : ndarray, shape (k, k), float64
        ``H·Hᵀ``; read only with ``all_seen``.
    all_seen : bool
        Every entry is seen (weight 1 but on the block's correction pattern) rather than the
        stored ones only.

    Returns
    -------
    Y : CSR matrix
        The block's weighted targets (the right-hand sides are ``Y·Hᵀ``).
    grams : ndarray, shape (m_i, k(k+1)/2), float64
    """
    if all_seen:
        Y, D = targets_and_deltas(A_i)
        return Y, packed(HHt)[np.newaxis, :] + a_ht_packed(D, Ht)
    Y, C = targets_and_weights(A_i)
    return Y, a_ht_packed(C, Ht)


def a_ht_packed(C: sp.csr_matrix, Ht: np.ndarray) -> np.ndarray:
    """``C·vec(h_j h_jᵀ)``: each row's weighted sum of Hᵀ's rows' packed outer products."""
    return products.a_ht(C, packed_outer(Ht))


def _unpack(packed: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    a, b = np.triu_indices(k)
    out[:, a, b] = packed
    out[:, b, a] = packed
    return out


def cd_rows(
    X: np.ndarray,
    B: np.ndarray,
    grams: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    n_sweeps: int = 1,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> np.ndarray:
    """Cyclic coordinate descent on ``½·xᵀG_r x − b_rᵀx + l1·Σx + ½·l2·‖x‖²``, x ≥ 0, per row.

    For every row r and each coordinate t in order ``0..k-1``::

        grad = G_r[t]·x − b_r[t] + l1          with G_r' = G_r + l2·I
        x[t] = max(x[t] − grad / G_r'[t, t], 0)   (0 when G_r'[t, t] == 0)

    the exact minimiser in that coordinate, so the objective never rises: with one gram for
    every row this is :func:`bignmf.kernels.hals.hals_update`'s step.

    Parameters
    ----------
    X : ndarray, shape (r, k)
        Current rows (W_i, or Hᵀ); overwritten with the update.
    B : ndarray, shape (r, k)
        Right-hand sides (``A_i·Hᵀ`` on the observed entries, or ``AᵀW``).
    grams : ndarray, shape (r, k(k+1)/2)
        Each row's packed gram (:func:`packed_outer` order), float64.
    l1, l2 : float
        Scaled penalties.
    n_sweeps : int
        Sweeps over the k coordinates.
    batch_elements : int
        Rows are processed in batches whose unpacked grams hold at most this many values.

    Returns
    -------
    ndarray
        ``X``.

    Notes
    -----
    Computed in float64 and cast back to ``X``'s dtype. Memory: one batch of unpacked grams
    (``batch_elements`` float64) and float64 copies of the batch's rows. Time
    O(n_sweeps·r·k²).
    """
    r, k = X.shape
    if B.shape != X.shape or grams.shape != (r, packed_size(k)):
        raise ValueError(
            f"shapes do not match: X {X.shape}, B {B.shape}, grams {grams.shape} "
            f"(expected ({r}, {packed_size(k)}))"
        )
    rows = max(1, batch_elements // max(k * k, 1))
    G = np.empty((min(rows, r), k, k), dtype=np.float64)
    for start in range(0, r, rows):
        stop = min(start + rows, r)
        G_b = _unpack(grams[start:stop], k, G[: stop - start])
        X[start:stop] = _cd_batch(X[start:stop], B[start:stop], G_b, l1, l2, n_sweeps)
    return X


def _cd_batch(X, B, G, l1, l2, n_sweeps):
    x = np.array(X, dtype=np.float64, order="F")
    b = np.asarray(B, dtype=np.float64)
    diag = np.diagonal(G, axis1=1, axis2=2) + l2  # (r, k), a copy
    for _ in range(n_sweeps):
        for t in range(x.shape[1]):
            grad = np.einsum("rk,rk->r", x, G[:, t, :]) + l2 * x[:, t] - b[:, t]
            if l1 != 0.0:
                grad += l1
            hess = diag[:, t]
            safe = np.where(hess > 0, hess, 1.0)
            x[:, t] = np.where(hess > 0, np.maximum(x[:, t] - grad / safe, 0.0), 0.0)
    return x


def observed_loss(a_data: np.ndarray, wh: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``½·Σ c·(a − wh)²`` over the observed entries (c = 1 without ``weights``), in float64."""
    d = np.asarray(a_data, dtype=np.float64) - np.asarray(wh, dtype=np.float64)
    return 0.5 * float(np.dot(d if weights is None else weights * d, d))
