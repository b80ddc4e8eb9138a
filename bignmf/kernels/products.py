"""Sparse–dense products of one row block: ``A_i·Hᵀ``, ``A_iᵀ·W_i``, grams, ``W·H`` at nonzeros.

``A_i`` is an ``m_i x n`` CSR block; ``Ht`` is ``Hᵀ`` stored C-contiguous (``n x k``) and
``W_i`` the ``m_i x k`` rows of W. Factors are kept in A's dtype (float32 CSR times float32
dense is about twice as fast as float64, and mixing dtypes is slower than either); grams and
scalar sums are accumulated in float64.

The sparse products call SciPy's compiled ``csr_matvecs``/``csc_matvecs`` kernels directly
so that they write into (and, for ``A_iᵀ·W_i``, accumulate into) caller-owned buffers; if that
private SciPy module is missing or the buffer is unsuitable, the public ``@`` operator is used
instead (same summation order, one extra temporary).
"""

from __future__ import annotations

import functools

import numpy as np

from bignmf.kernels._util import DEFAULT_BATCH_ELEMENTS, as_csr, row_batches

#: Set to False to force the public-API fallback (used by the tests).
USE_SPARSETOOLS = True

__all__ = [
    "a_ht",
    "accumulate_at_w",
    "gram",
    "inner",
    "sq_norm",
    "wh_at_nonzeros",
]


def a_ht(A_i, Ht: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Compute ``A_i @ Ht`` (the block's rows of ``A·Hᵀ``).

    Parameters
    ----------
    A_i : scipy.sparse CSR matrix or array, shape (m_i, n)
        Row block of A (other sparse formats are converted to CSR).
    Ht : ndarray, shape (n, k)
        ``Hᵀ``, preferably C-contiguous and of A's dtype. Otherwise the product is computed in
        ``result_type(A_i.dtype, Ht.dtype)`` with converted copies (slower: keep them equal).
    out : ndarray, shape (m_i, k), optional
        Buffer receiving the result (overwritten), of dtype ``result_type(A_i.dtype, Ht.dtype)``.

    Returns
    -------
    ndarray, shape (m_i, k)
        ``out`` if given, else a new array.

    Notes
    -----
    Time O(nnz(A_i)·k); memory: the ``m_i x k`` result only (written in place when ``out`` is
    given and C-contiguous). Each output row is summed over that row's stored entries in
    storage order, as SciPy's ``A @ Ht`` does.
    """
    A_i = as_csr(A_i)
    m, n = A_i.shape
    if Ht.ndim != 2 or Ht.shape[0] != n:
        raise ValueError(f"Ht must have shape ({n}, k), got {Ht.shape}")
    k = Ht.shape[1]
    dtype = np.result_type(A_i.dtype, Ht.dtype)
    Ht = np.asarray(Ht, dtype=dtype, order="C")
    if out is None:
        out = np.zeros((m, k), dtype=dtype)
    elif out.shape != (m, k) or out.dtype != dtype:
        raise ValueError(f"out must be a ({m}, {k}) {dtype} array, got {out.shape} {out.dtype}")
    else:
        out.fill(0)
    data = A_i.data if A_i.dtype == dtype else A_i.data.astype(dtype)
    if _direct_ok(data, Ht, out):
        _sparsetools().csr_matvecs(m, n, k, A_i.indptr, A_i.indices, data, Ht.ravel(), out.ravel())
    else:
        out[...] = A_i @ Ht
    return out


@functools.cache
def _sparsetools():
    """SciPy's compiled sparse kernels, or None; imported on first use, when a sparse block
    has already loaded ``scipy.sparse`` (importing this module must not: ``bignmf --help``)."""
    try:  # private but stable since SciPy 0.14; only used as a faster path with a fallback
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - depends on the SciPy build
        return None
    return _sparsetools


def _direct_ok(data: np.ndarray, dense: np.ndarray, out: np.ndarray) -> bool:
    return (
        USE_SPARSETOOLS
        and _sparsetools() is not None
        and data.dtype == dense.dtype == out.dtype
        and dense.flags.c_contiguous
        and out.flags.c_contiguous
        and out.flags.writeable
    )


def accumulate_at_w(A_i, W_i: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Accumulate ``out += A_iᵀ @ W_i`` (the block's partial of ``(Wᵀ·A)ᵀ``), in place.

    Parameters
    ----------
    A_i : scipy.sparse CSR matrix or array, shape (m_i, n)
        Row block of A.
    W_i : ndarray, shape (m_i, k)
        The block's rows of W (converted to ``out``'s dtype if needed).
    out : ndarray, shape (n, k)
        Accumulator, updated in place (typically of A's dtype).

    Returns
    -------
    ndarray
        ``out``.

    Notes
    -----
    Uses the CSC-scatter form: ``A_iᵀ`` is the CSC view of the CSR block (same ``indptr``,
    ``indices``, ``data``, no transposed copy, which measured several times slower), and each
    stored entry ``a_ij`` adds ``a_ij·W_i[i]`` to ``out[j]``. Time O(nnz(A_i)·k); no memory
    beyond ``out`` on the direct path (the fallback allocates one ``n x k`` temporary).
    """
    A_i = as_csr(A_i)
    m, n = A_i.shape
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"out must have shape ({n}, k), got {out.shape}")
    k = out.shape[1]
    if W_i.shape != (m, k):
        raise ValueError(f"W_i must have shape ({m}, {k}), got {W_i.shape}")
    W_i = np.asarray(W_i, dtype=out.dtype, order="C")
    data = A_i.data if A_i.dtype == out.dtype else A_i.data.astype(out.dtype)
    if _direct_ok(data, W_i, out):
        _sparsetools().csc_matvecs(n, m, k, A_i.indptr, A_i.indices, data, W_i.ravel(), out.ravel())
    else:
        out += A_i.T @ W_i
    return out


def gram(X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float64 gram ``Xᵀ·X``, optionally accumulated: ``out += Xᵀ·X``.

    Parameters
    ----------
    X : ndarray, shape (r, k)
        Rows of a factor (``W_i`` for ``WᵀW``, ``Hᵀ`` for ``H·Hᵀ``).
    out : ndarray, shape (k, k), float64, optional
        Accumulator updated in place.

    Returns
    -------
    ndarray, shape (k, k), float64
        ``out`` if given, else a new array.

    Notes
    -----
    Float32 input is upcast to float64 first (an ``r x k`` float64 temporary) so that the
    sums over many rows keep float64 accuracy; time O(r·k²).
    """
    X = np.asarray(X)
    Xd = X if X.dtype == np.float64 else X.astype(np.float64)
    G = Xd.T @ Xd
    if out is None:
        return G
    out += G
    return out


def inner(X: np.ndarray, Y: np.ndarray) -> float:
    """Frobenius inner product ``Σ X∘Y`` summed in float64.

    Parameters
    ----------
    X, Y : ndarray
        Arrays of the same shape (e.g. ``W_i`` and ``A_i·Hᵀ``, or two grams).

    Returns
    -------
    float

    Notes
    -----
    Float32 inputs are upcast to float64 (two temporaries of the inputs' size).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"shape mismatch: {X.shape} vs {Y.shape}")
    return float(np.dot(X.ravel(), Y.ravel()))


def sq_norm(A_i) -> float:
    """Squared Frobenius norm of a sparse block (sum of its stored values squared), float64.

    Parameters
    ----------
    A_i : scipy.sparse matrix or array
        A block of A.

    Returns
    -------
    float
        ``‖A_i‖²_F``; the blocks' values add up to the ``norm_a_sq`` of
        :meth:`bignmf.kernels.solvers.Solver.update_h`.

    Notes
    -----
    Time O(nnz(A_i)); for float32 data a float64 copy of ``A_i.data`` is made.
    """
    data = np.asarray(as_csr(A_i).data, dtype=np.float64)
    return float(np.dot(data, data))


def wh_at_nonzeros(
    A_i,
    W_i: np.ndarray,
    Ht: np.ndarray,
    out: np.ndarray | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """``(W_i·H)`` at the stored entries of ``A_i``, aligned with ``A_i.data``.

    Parameters
    ----------
    A_i : scipy.sparse CSR matrix or array, shape (m_i, n)
        Row block of A; only its sparsity pattern is used.
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)
    out : ndarray, shape (nnz,), optional
        Buffer receiving the values (its dtype is used for the products).
    batch_size : int, optional
        Number of stored entries processed at once; default about
        ``DEFAULT_BATCH_ELEMENTS / k``.

    Returns
    -------
    ndarray, shape (nnz,)
        ``out[p] = Σ_t W_i[row(p), t]·Ht[col(p), t]``, computed as scikit-learn's
        ``_special_sparse_dot`` does (elementwise product of gathered rows, then a row sum,
        here by a BLAS product with a vector of ones; only the summation order differs).

    Notes
    -----
    Never forms an ``nnz x k`` array nor the dense ``W_i·H``: entries are processed in row
    ranges of about ``batch_size`` entries, with two ``batch_size x k`` gather buffers and a
    ``batch_size`` row-index array. Time O(nnz·k).
    """
    A_i = as_csr(A_i)
    m, n = A_i.shape
    k = W_i.shape[1]
    if W_i.shape[0] != m or Ht.shape != (n, k):
        raise ValueError(f"shapes do not match: A_i {A_i.shape}, W_i {W_i.shape}, Ht {Ht.shape}")
    nnz = A_i.indptr[-1]
    dtype = out.dtype if out is not None else np.result_type(W_i.dtype, Ht.dtype)
    if out is None:
        out = np.empty(nnz, dtype=dtype)
    elif out.shape != (nnz,):
        raise ValueError(f"out must have shape ({nnz},), got {out.shape}")
    W_i = np.asarray(W_i, dtype=dtype)
    Ht = np.asarray(Ht, dtype=dtype)
    if batch_size is None:
        batch_size = max(1024, DEFAULT_BATCH_ELEMENTS // max(k, 1))
    indptr = A_i.indptr
    cap = 0
    wbuf = hbuf = None
    ones = np.ones(k, dtype=dtype)
    for r0, r1 in row_batches(indptr, batch_size):
        p0, p1 = indptr[r0], indptr[r1]
        cnt = p1 - p0
        if cnt == 0:
            continue
        if cnt > cap:
            cap = cnt
            wbuf = np.empty((cap, k), dtype=dtype)
            hbuf = np.empty((cap, k), dtype=dtype)
        rows = np.repeat(np.arange(r0, r1), np.diff(indptr[r0 : r1 + 1]))
        wb = wbuf[:cnt]
        hb = hbuf[:cnt]
        np.take(W_i, rows, axis=0, out=wb)
        np.take(Ht, A_i.indices[p0:p1], axis=0, out=hb)
        np.multiply(wb, hb, out=wb)
        np.dot(wb, ones, out=out[p0:p1])  # row sums by BLAS: ~20x faster than .sum(axis=1)
    return out
