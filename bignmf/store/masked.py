"""A matrix with a mask of unknown entries, read as row blocks like any other.

``mask`` lists entries of A that are unknown whatever A holds there (a held-out set, the NaNs
of a dense array): a fit sees every other entry, its zeros included. :class:`MaskedMatrix`
gives the engine A's row blocks with the masked entries removed (A' = A off the mask) and each
block's mask rows beside them (:class:`MaskedBlock`, a CSR matrix carrying ``unknown``), so
that every pass — initialisations included — reads A' and nothing under the mask leaks in.
The mask may be cut into other row blocks than A: a block's mask rows are sliced from the
mask blocks that overlap it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import ParameterError

__all__ = ["MaskedBlock", "MaskedMatrix", "matrix_token", "rows_of"]


class MaskedBlock(sp.csr_matrix):
    """A row block of A' (A off the mask) with ``unknown``: the block's mask rows, a CSR
    pattern of float64 ones of the same shape."""

    unknown: sp.csr_matrix


def rows_of(matrix: Any, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a row-blocked matrix, from the blocks that overlap them."""
    offsets = np.asarray(matrix.row_offsets)
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    pieces = []
    i = first
    while i < matrix.n_blocks and offsets[i] < stop:
        block = matrix.read_block(i)
        r0 = int(offsets[i])
        pieces.append(block[max(start - r0, 0) : min(stop, int(offsets[i + 1])) - r0])
        i += 1
    if not pieces:
        return sp.csr_matrix((stop - start, matrix.shape[1]))
    return sp.vstack(pieces, format="csr") if len(pieces) > 1 else sp.csr_matrix(pieces[0])


def _keys(M: sp.csr_matrix) -> np.ndarray:
    """``row·n + column`` of every stored entry, in storage order (int64)."""
    rows = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr))
    return rows * M.shape[1] + M.indices


def _pattern(M: sp.csr_matrix) -> sp.csr_matrix:
    M = sp.csr_matrix(M, copy=True)
    M.sum_duplicates()
    M.data = np.ones(M.nnz, dtype=np.float64)
    return M


class MaskedMatrix:
    """A block matrix whose blocks are A off the mask, each carrying its mask rows.

    Parameters
    ----------
    matrix : BlockMatrix
        A (a store or an in-memory matrix).
    mask : BlockMatrix
        The unknown entries: its pattern (stored entries, whatever their values) of A's shape.

    Raises
    ------
    ParameterError
        When the mask's shape is not A's.

    Notes
    -----
    ``nnz``, ``frobenius_sq`` and ``value_sum`` are A''s: one pass over A's and the mask's
    blocks when the matrix is made, in this process, a block at a time.
    """

    def __init__(self, matrix: Any, mask: Any):
        if tuple(mask.shape) != tuple(matrix.shape):
            raise ParameterError(
                f"the mask is {mask.shape[0]} x {mask.shape[1]}; A is "
                f"{matrix.shape[0]} x {matrix.shape[1]}"
            )
        self.matrix, self.mask = matrix, mask
        self.shape, self.dtype = matrix.shape, matrix.dtype
        self.row_offsets = matrix.row_offsets
        self.path = getattr(matrix, "path", None)
        nnz = unknown = 0
        squares = total = 0.0
        buffers = matrix.new_buffers()  # one set for the pass: a block at a time, reused
        for i in range(matrix.n_blocks):
            block = self.read_block(i, buffers)
            data = block.data.astype(np.float64)
            nnz, unknown = nnz + block.nnz, unknown + block.unknown.nnz
            squares, total = squares + float(np.dot(data, data)), total + float(data.sum())
        self.nnz, self.unknown, self.frobenius_sq, self.value_sum = nnz, unknown, squares, total

    @property
    def n_blocks(self) -> int:
        """Number of row blocks (A's)."""
        return self.matrix.n_blocks

    @property
    def observed(self) -> int:
        """Entries the fit sees: every entry of A off the mask."""
        return self.shape[0] * self.shape[1] - self.unknown

    def block_rows(self, i: int) -> tuple[int, int]:
        """Row range of block ``i``."""
        return int(self.row_offsets[i]), int(self.row_offsets[i + 1])

    def new_buffers(self) -> Any:
        """A's read buffers."""
        return self.matrix.new_buffers()

    def read_block(self, i: int, buffers: Any = None) -> MaskedBlock:
        """Block ``i`` of A with the masked entries removed, carrying its mask rows."""
        r0, r1 = self.block_rows(i)
        A_i = self.matrix.read_block(i, buffers)
        M_i = _pattern(rows_of(self.mask, r0, r1))
        # A': the stored entries the mask does not list, values and order untouched
        masked = np.isin(_keys(A_i), _keys(M_i), assume_unique=True)
        keep = ~masked
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # per entry
        indptr = kept_before[A_i.indptr].astype(A_i.indptr.dtype)
        block = MaskedBlock(
            (A_i.data[keep], A_i.indices[keep], indptr), shape=A_i.shape, copy=False
        )
        block.unknown = M_i
        return block

    def fingerprint(self) -> dict:
        """A's and the mask's identities."""
        return {"matrix": self.matrix.fingerprint(), "mask": self.mask.fingerprint()}

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-masked-matrix", matrix_token(self.matrix), matrix_token(self.mask))


def matrix_token(matrix: Any) -> Any:
    """A block matrix's dask token (its own, else its identity)."""
    tokenize = getattr(matrix, "__dask_tokenize__", None)
    return tokenize() if tokenize is not None else id(matrix)
