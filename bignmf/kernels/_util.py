"""Small helpers shared by the kernel modules: constants, dtypes, scratch buffers, batching."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

#: scikit-learn's ``EPSILON`` in ``sklearn/decomposition/_nmf.py`` (float32 machine epsilon),
#: used as the floor of ``W·H`` and of zero denominators in the multiplicative updates.
EPSILON = float(np.finfo(np.float32).eps)

#: Threshold below which multiplicative updates zero a factor entry (scikit-learn uses the
#: float64 machine epsilon whatever the dtype).
FLOAT64_EPS = float(np.finfo(np.float64).eps)

#: Default number of matrix elements (rows x k or rows x n) processed per batch by the
#: kernels that gather or densify: 2**21 elements, i.e. 16 MiB per float64 temporary.
DEFAULT_BATCH_ELEMENTS = 1 << 21

Work = MutableMapping[str, np.ndarray]


def factor_dtype(A: sp.spmatrix | sp.sparray | np.ndarray) -> np.dtype:
    """Dtype the factors are kept in for a block: A's dtype if float32/float64, else float64."""
    dt = np.dtype(A.dtype)
    if dt in (np.dtype(np.float32), np.dtype(np.float64)):
        return dt
    return np.dtype(np.float64)


def as_csr(A: sp.spmatrix | sp.sparray) -> sp.csr_matrix | sp.csr_array:
    """Return ``A`` as CSR whose ``data`` has exactly ``nnz`` entries (no copy if it already is)."""
    from scipy.sparse import issparse  # not at import: the CLI's help loads the kernels

    if not issparse(A):
        raise TypeError(f"expected a scipy.sparse matrix, got {type(A).__name__}")
    if A.format != "csr":
        A = A.tocsr()
    if A.data.shape[0] != A.indptr[-1]:  # over-allocated storage: trim so data[p] is entry p
        A = A.copy()
        A.prune()
    return A


def scratch(work: Work | None, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array of ``shape``/``dtype`` whose storage is reused through ``work``.

    The storage is a flat array kept in ``work[name]`` and grown when too small, so blocks of
    different sizes share one allocation. Content is undefined. With ``work=None`` a fresh
    array is returned. A ``work`` mapping must not be shared between threads.
    """
    size = int(np.prod(shape, dtype=np.int64))
    dtype = np.dtype(dtype)
    if work is None:
        return np.empty(shape, dtype=dtype)
    key = f"{name}:{dtype.str}"
    buf = work.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        work[key] = buf
    return buf[:size].reshape(shape)


def row_batches(indptr: np.ndarray, max_entries: int) -> Iterator[tuple[int, int]]:
    """Split the rows of a CSR matrix into consecutive ranges of about ``max_entries`` entries.

    Yields ``(r0, r1)`` half-open row ranges; a single row with more than ``max_entries``
    entries forms its own range. Rows with no entries are included in some range.
    """
    n_rows = len(indptr) - 1
    if n_rows <= 0:
        return
    max_entries = max(int(max_entries), 1)
    r0 = 0
    while r0 < n_rows:
        target = indptr[r0] + max_entries
        r1 = int(np.searchsorted(indptr, target, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n_rows)
        yield r0, r1
        r0 = r1


def dense_row_batch(n_cols: int, max_elements: int) -> int:
    """Number of rows per batch so that a dense ``rows x n_cols`` temporary has at most
    ``max_elements`` elements (at least one row)."""
    return max(1, int(max_elements) // max(int(n_cols), 1))


def wh_power_batches(
    W_i: np.ndarray,
    Ht: np.ndarray,
    exponent: float,
    *,
    floor: bool = False,
    dtype: np.dtype | None = None,
    batch_elements: int = DEFAULT_BATCH_ELEMENTS,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Dense batches of rows of ``(W_i·H)^exponent``: the one loop over every entry of ``W_i·H``.

    Parameters
    ----------
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)
        ``Hᵀ``.
    exponent : float
        Power each entry is raised to (in place).
    floor : bool, default False
        Raise entries below ``EPSILON`` to ``EPSILON`` before the power.
    dtype : numpy dtype, optional
        Convert each product to this dtype before flooring and the power (e.g. float64 for
        loss sums); default: the product's dtype.
    batch_elements : int
        Element budget of one batch (see :func:`dense_row_batch`).

    Yields
    ------
    rows : slice
        The batch's rows ``r0:r1`` of ``W_i``.
    P : ndarray, shape (r1 - r0, n)
        ``(max(W_i[rows] @ Ht.T, EPSILON if floor))^exponent``, a new array per batch that the
        caller may overwrite.

    Notes
    -----
    Batches are consecutive, in row order, of ``dense_row_batch(n, batch_elements)`` rows each
    (the last may be shorter), so accumulations over them keep a fixed order. Memory: one or two
    ``rows x n`` temporaries at a time; time O(m_i·n·k).
    """
    m = W_i.shape[0]
    n = Ht.shape[0]
    H = Ht.T
    step = dense_row_batch(n, batch_elements)
    for r0 in range(0, m, step):
        rows = slice(r0, min(r0 + step, m))
        P = W_i[rows] @ H
        if dtype is not None:
            P = np.asarray(P, dtype=dtype)
        if floor:
            P[P < EPSILON] = EPSILON
        P **= exponent
        yield rows, P
