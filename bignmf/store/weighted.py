"""A matrix with entry weights, read as row blocks like any other.

A fit with weights minimises ``½·Σ_ij c_ij·(t_ij − (WH)_ij)²``. :class:`WeightedMatrix` gives
the engine row blocks whose ``data`` are the targets t on A's stored entries and whose
``weights`` are their c (:class:`WeightedBlock`); every entry that is not stored has target 0
and weight 1 (``zeros_seen``) or is unknown (weight 0, ``missing="zeros"``). The weights are:

* **implicit feedback** (Hu, Koren & Volinsky, 2008): a stored value a (a count, a play time)
  says the user likes the item (target 1) with confidence ``c = 1 + α·f(a)``; the zeros are
  "not liked" with confidence 1 (:data:`bignmf.kernels.observed.IMPLICIT_F` names f);
* **given**: a matrix of A's shape and sparsity pattern whose values are the weights of A's
  stored entries, the targets being A's values.

Every pass, initialisation included, reads the targets. The statistics (``frobenius_sq``:
``Σ c·t²``, the norm the weighted relative error divides by) take one pass over A (and the
weights) when the matrix is made, in this process, a block at a time; that pass also checks
the weights: finite, non-negative, on A's pattern.

References
----------
Hu, Koren & Volinsky, "Collaborative filtering for implicit feedback datasets", ICDM 2008.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError, ParameterError
from bignmf.kernels.observed import confidence
from bignmf.store.masked import matrix_token, rows_of
from bignmf.store.matrix import as_block_matrix

__all__ = [
    "WeightedBlock",
    "WeightedMatrix",
    "weights_kind",
    "with_weights",
]


class WeightedBlock(sp.csr_matrix):
    """A row block of the targets carrying ``weights``: each stored entry's weight c
    (float64, aligned with ``data``)."""

    weights: np.ndarray


class WeightedMatrix:
    """A block matrix whose blocks are targets carrying their weights.

    Parameters
    ----------
    matrix : BlockMatrix
        A (a store or an in-memory matrix).
    weights : BlockMatrix, optional
        Given weights: A's shape and stored pattern, non-negative finite values. Without it,
        implicit feedback's confidence from A's values (``alpha``, ``f``).
    alpha : float, optional
        Implicit feedback's α (>= 0); only without ``weights``.
    f : {'linear', 'log'}, optional
        Implicit feedback's f; only without ``weights``.
    zeros_seen : bool, default True
        Whether the entries that are not stored are seen (target 0, weight 1) or unknown.

    Raises
    ------
    ParameterError
        When the weights' shape or pattern is not A's, or a weight (or, for implicit
        feedback, a value of A) is negative or not finite: naming the row block, row and
        column.
    """

    def __init__(
        self,
        matrix: Any,
        weights: Any = None,
        *,
        alpha: float | None = None,
        f: str | None = None,
        zeros_seen: bool = True,
    ):
        if weights is not None and tuple(weights.shape) != tuple(matrix.shape):
            raise ParameterError(
                f"the weights are {weights.shape[0]} x {weights.shape[1]}; A is "
                f"{matrix.shape[0]} x {matrix.shape[1]}"
            )
        self.matrix, self.weights = matrix, weights
        self.alpha, self.f, self.zeros_seen = alpha, f, zeros_seen
        self.shape, self.dtype = matrix.shape, matrix.dtype
        self.row_offsets = matrix.row_offsets
        self.path = getattr(matrix, "path", None)
        squares = total = 0.0
        nnz = 0
        buffers = matrix.new_buffers()  # one set for the pass: a block at a time, reused
        for i in range(matrix.n_blocks):
            block = self._read(i, buffers, check=True)
            t = block.data.astype(np.float64)
            nnz += block.nnz
            squares += float(np.dot(block.weights * t, t))
            total += float(t.sum())
        self.nnz, self.frobenius_sq, self.value_sum = nnz, squares, total

    @property
    def n_blocks(self) -> int:
        """Number of row blocks (A's)."""
        return self.matrix.n_blocks

    @property
    def observed(self) -> int:
        """Entries the fit sees: all of them, or the stored ones (not ``zeros_seen``)."""
        return self.shape[0] * self.shape[1] if self.zeros_seen else self.nnz

    def block_rows(self, i: int) -> tuple[int, int]:
        """Row range of block ``i``."""
        return int(self.row_offsets[i]), int(self.row_offsets[i + 1])

    def new_buffers(self) -> Any:
        """A's read buffers."""
        return self.matrix.new_buffers()

    def read_block(self, i: int, buffers: Any = None) -> WeightedBlock:
        """Block ``i``: the targets on A's stored entries, carrying their weights."""
        return self._read(i, buffers, check=False)

    def _read(self, i: int, buffers: Any, check: bool) -> WeightedBlock:
        r0, r1 = self.block_rows(i)
        A_i = sp.csr_matrix(self.matrix.read_block(i, buffers))
        if self.weights is None:
            if check:
                _check_values(A_i, i, r0, "A's values (implicit feedback counts)")
            weights = confidence(A_i.data, self.alpha, self.f)
            targets = np.ones(A_i.nnz, dtype=A_i.dtype)
        else:
            C_i = sp.csr_matrix(rows_of(self.weights, r0, r1))
            _check_pattern(A_i, C_i, i, r0)
            if check:
                _check_values(C_i, i, r0, "the weights")
            weights, targets = C_i.data.astype(np.float64), A_i.data
        block = WeightedBlock((targets, A_i.indices, A_i.indptr), shape=A_i.shape, copy=False)
        block.weights = weights
        return block

    def fingerprint(self) -> dict:
        """A's identity, and the weights' (implicit feedback's α and f are the run's settings,
        compared with them)."""
        if self.weights is None:
            return {"matrix": self.matrix.fingerprint(), "implicit": True}
        return {"matrix": self.matrix.fingerprint(), "weights": self.weights.fingerprint()}

    def __dask_tokenize__(self) -> tuple:
        source = matrix_token(self.weights) if self.weights is not None else (self.alpha, self.f)
        return ("bignmf-weighted-matrix", matrix_token(self.matrix), source, self.zeros_seen)


def _check_pattern(A_i: sp.csr_matrix, C_i: sp.csr_matrix, i: int, r0: int) -> None:
    if np.array_equal(A_i.indptr, C_i.indptr) and np.array_equal(A_i.indices, C_i.indices):
        return
    counts_a, counts_c = np.diff(A_i.indptr), np.diff(C_i.indptr)
    rows = np.flatnonzero(counts_a != counts_c)
    if rows.size:
        r = int(rows[0])
        raise ParameterError(
            f"the weights do not have A's sparsity pattern: row {r0 + r} (row block {i}) has "
            f"{counts_c[r]} entries there, A {counts_a[r]}"
        )
    p = int(np.flatnonzero(A_i.indices != C_i.indices)[0])
    r = int(np.searchsorted(A_i.indptr, p, side="right")) - 1
    raise ParameterError(
        f"the weights do not have A's sparsity pattern: row {r0 + r} (row block {i}) has an "
        f"entry in column {int(C_i.indices[p])} where A stores column {int(A_i.indices[p])}"
    )


def _check_values(M: sp.csr_matrix, i: int, r0: int, what: str) -> None:
    bad = np.flatnonzero(~(np.isfinite(M.data) & (M.data >= 0)))
    if bad.size == 0:
        return
    p = int(bad[0])
    r = int(np.searchsorted(M.indptr, p, side="right")) - 1
    raise ParameterError(
        f"{what} must be finite and >= 0: row {r0 + r}, column {int(M.indices[p])} (row block "
        f"{i}) holds {M.data[p]!r}"
    )


def weights_kind(weights: Any) -> str | None:
    """What ``weights=`` is: 'implicit', 'given' (a matrix, a store, a path) or None."""
    if weights is None or (isinstance(weights, str) and weights == "implicit"):
        return weights
    return "given"


def with_weights(
    matrix: Any, weights: Any, *, alpha: float | None, f: str | None, zeros_seen: bool
) -> WeightedMatrix:
    """``matrix`` carrying ``weights``: ``'implicit'`` (with ``alpha``, ``f``) or a matrix
    of weights (anything :func:`bignmf.store.matrix.as_block_matrix` opens)."""
    if weights_kind(weights) == "implicit":
        return WeightedMatrix(matrix, alpha=alpha, f=f, zeros_seen=zeros_seen)
    try:
        given = as_block_matrix(weights)
    except InputError as error:  # its reader's words, said of the weights
        raise InputError(f"the weights: {error}") from None
    return WeightedMatrix(matrix, given, zeros_seen=zeros_seen)
