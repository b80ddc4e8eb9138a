"""A "speckled" test set: entries held out by a seeded hash, enumerated per row, never stored.

Cross-validating the rank (Kotliar et al.'s cNMF has no test set; RcppML and Owen & Perry's
bi-cross-validation do) needs entries the fit does not see — stored ones and zeros alike, or the
test error would only ever reward predicting zeros less. Holding out a fraction ``p`` of the
entries of an m × n matrix by testing each one's hash costs m·n hashes per pass; instead, each
row's held-out columns are a Bernoulli(p) process walked by geometric gaps: gap ``j`` of row
``r`` is ``floor(log(u)/log(1 − p))`` with ``u`` the seeded splitmix64 hash of ``(r, j)``. That
is p·m·n hashes per pass (what a stored mask would cost to read), the same columns for a row
however the matrix is cut into row blocks, and nothing written anywhere.

:func:`speckled_rows` enumerates the held-out pattern of a range of rows; :func:`held_out_sums`
scores a fit on it. NumPy only (the kernels' layer).
"""

from __future__ import annotations

import math

import numpy as np

from bignmf.kernels.products import wh_at_nonzeros

__all__ = [
    "hash_key",
    "held_out_sums",
    "speckled_rows",
    "splitmix64",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
#: Elements of a slab of gaps (rows × gaps drawn at once): bounds the temporaries at ~50 MB.
SLAB_ELEMENTS = 1 << 21


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each element of a uint64 array (arrays wrap silently, scalars warn).

    Steele, Lea and Flood's (2014) bijective 64-bit finaliser: its outputs pass BigCrush, so
    the top 53 bits are a uniform draw for each key.
    """
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_key(seed: int, domain: int) -> np.uint64:
    """The hash key of ``seed`` in ``domain`` (a constant that keeps uses of one seed apart)."""
    key = (int(seed) ^ int(domain)) & _MASK64  # seeds may be any size for numpy
    return splitmix64(np.array([key], dtype=np.uint64))[0]


def _uniform(h: np.ndarray) -> np.ndarray:
    """The top 53 bits of each hash as a float in (0, 1] (never 0: its log is taken)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


def _gaps(rows: np.ndarray, first: int, count: int, key: np.uint64, log_q: float) -> np.ndarray:
    """Gaps ``first..first+count-1`` of each row, shape (len(rows), count), int64."""
    j = np.arange(first, first + count, dtype=np.uint64)
    keys = (rows.astype(np.uint64)[:, None] << np.uint64(32)) | j[None, :]
    u = _uniform(splitmix64(keys ^ key))
    return np.floor(np.log(u) / log_q).astype(np.int64)


def _entries(rows: np.ndarray, n: int, key: np.uint64, log_q: float, per_row: int):
    """The held-out entries of ``rows`` as (local row, column) arrays in row-major order,
    drawn ``per_row`` gaps at a time (one round covers almost every row)."""
    found_rows, found_columns = [], []
    position = np.full(len(rows), -1, dtype=np.int64)
    active = np.arange(len(rows), dtype=np.int64)
    drawn = 0
    while active.size:
        gaps = _gaps(rows[active], drawn, per_row, key, log_q)
        columns = position[active, None] + np.cumsum(gaps + 1, axis=1)
        inside = columns < n
        found_rows.append(np.repeat(active, inside.sum(axis=1)))
        found_columns.append(columns[inside])  # row-major: each row's columns ascend
        position[active] = columns[:, -1]
        drawn += per_row
        active = active[position[active] < n - 1]
    if len(found_rows) == 1:
        return found_rows[0], found_columns[0]
    local, columns = np.concatenate(found_rows), np.concatenate(found_columns)
    order = np.argsort(local, kind="stable")  # later rounds hold later columns of a row
    return local[order], columns[order]


def speckled_rows(
    start: int, stop: int, n: int, fraction: float, key: np.uint64
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out pattern of rows ``start:stop`` of a matrix with ``n`` columns.

    Parameters
    ----------
    start, stop : int
        Global row range.
    n : int
        Columns of the matrix.
    fraction : float
        Probability that an entry is held out, in (0, 1).
    key : numpy.uint64
        The hash key (:func:`hash_key`).

    Returns
    -------
    indptr : ndarray of int64, shape (stop - start + 1,)
    indices : ndarray of int32 or int64
        A CSR pattern (sorted columns in each row): a function of the global row, ``n``,
        ``fraction`` and ``key`` only.
    """
    m = stop - start
    if m <= 0 or n <= 0:
        return np.zeros(max(m, 0) + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    log_q = math.log1p(-fraction)
    mean = fraction * n
    # one slab of gaps covers almost every row; the rare longer row draws another
    per_row = max(int(mean + 6.0 * math.sqrt(mean + 1.0) + 8.0), 1)
    slab = max(SLAB_ELEMENTS // per_row, 1)
    index_type = np.int32 if n < 2**31 else np.int64
    counts = np.zeros(m, dtype=np.int64)
    pieces = []
    for r0 in range(start, stop, slab):
        rows = np.arange(r0, min(r0 + slab, stop), dtype=np.int64)
        local, columns = _entries(rows, n, key, log_q, per_row)
        counts[r0 - start : r0 - start + rows.size] = np.bincount(local, minlength=rows.size)
        pieces.append(columns.astype(index_type))
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate(pieces)


def held_out_sums(A_i, indptr: np.ndarray, indices: np.ndarray, W_i: np.ndarray, Ht: np.ndarray):
    """Squared and absolute errors of ``W_i·H`` on a block's held-out entries, zeros included.

    Parameters
    ----------
    A_i : scipy.sparse CSR, shape (m_i, n)
        The block of A, every stored entry (the held-out ones too), sorted columns.
    indptr, indices : ndarray
        The block's held-out pattern (:func:`speckled_rows`, local rows).
    W_i : ndarray, shape (m_i, k)
    Ht : ndarray, shape (n, k)

    Returns
    -------
    dict
        ``sse`` (Σ (a − wh)²), ``sae`` (Σ |a − wh|), ``sst`` (Σ a²) over the held-out entries,
        and their ``count``, as float64 / int64 arrays (sums over blocks are the totals).
    """
    import scipy.sparse as sp  # on first use: the command's --help loads no SciPy

    rows = np.repeat(np.arange(A_i.shape[0], dtype=np.int64), np.diff(indptr))
    n = np.int64(A_i.shape[1])
    held = rows * n + indices
    a_rows = np.repeat(np.arange(A_i.shape[0], dtype=np.int64), np.diff(A_i.indptr))
    stored = a_rows * n + A_i.indices
    where = np.searchsorted(stored, held)
    where[where == stored.size] = 0
    values = np.zeros(held.size, dtype=np.float64)
    if stored.size:
        found = stored[where] == held
        values[found] = A_i.data[where[found]]
    pattern = sp.csr_matrix((np.ones(held.size), indices, indptr), shape=A_i.shape, copy=False)
    error = values - wh_at_nonzeros(pattern, W_i, Ht, out=np.empty(held.size))
    return {
        "sse": np.array(float(np.dot(error, error))),
        "sae": np.array(float(np.abs(error).sum())),
        "sst": np.array(float(np.dot(values, values))),
        "count": np.array(held.size, dtype=np.int64),
    }
