"""One interface over row-blocked matrices, stored (Zarr) or explicitly in memory.

The graph layer reads row blocks through :class:`BlockMatrix`; :class:`~bignmf.store.csr.CSRStore`
implements it for stores on disk and :class:`MemoryMatrix` for a scipy/NumPy matrix the user
already holds in memory, cut into the same nnz-balanced row blocks.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from bignmf.store.csr import (
    DEFAULT_BLOCK_CHUNKS,
    DEFAULT_CHUNK_SIZE,
    CSRStore,
    RowBlockPlanner,
    _csr_view,
    fingerprint,
)
from bignmf.store.validate import canonical_block, value_dtype


class BlockMatrix(Protocol):
    """What the engine needs of a matrix: its shape, statistics and row blocks."""

    shape: tuple[int, int]
    nnz: int
    dtype: np.dtype
    row_offsets: np.ndarray
    frobenius_sq: float
    value_sum: float

    @property
    def n_blocks(self) -> int: ...

    def new_buffers(self) -> Any: ...

    def read_block(self, i: int, buffers: Any = None) -> sp.csr_matrix: ...


class MemoryMatrix:
    """A matrix held in memory, validated and cut into row blocks.

    Parameters
    ----------
    A : scipy.sparse matrix or 2-D array
        The matrix (kept as one canonical CSR copy).
    block_nnz : int, optional
        Target nonzeros per row block (default as for stores).
    block_rows : int, optional
        Fixed rows per block instead.
    """

    def __init__(self, A: Any, *, block_nnz: int | None = None, block_rows: int | None = None):
        A = sp.csr_matrix(A)
        if A.shape[0] == 0 or A.shape[1] == 0:
            from bignmf.errors import InputError

            raise InputError(f"<in-memory matrix>: the matrix is empty (shape {A.shape})")
        dtype = value_dtype(A.dtype)
        self.matrix = canonical_block(
            A, A.shape[1], dtype, source="<in-memory matrix>", block_index=0, row0=0
        )
        self.shape = self.matrix.shape
        self.nnz = self.matrix.nnz
        self.dtype = dtype
        planner = RowBlockPlanner(
            block_nnz or DEFAULT_BLOCK_CHUNKS * DEFAULT_CHUNK_SIZE, block_rows
        )
        bounds = [0] + [
            stop for _, stop, closes in planner.cuts(np.diff(self.matrix.indptr)) if closes
        ]
        if bounds[-1] != self.shape[0]:
            bounds.append(self.shape[0])
        self.row_offsets = np.asarray(bounds, dtype=np.int64)
        self.nnz_offsets = self.matrix.indptr[self.row_offsets].astype(np.int64)
        data = self.matrix.data.astype(np.float64)
        self.frobenius_sq = float(np.dot(data, data))
        self.value_sum = float(data.sum())

    @property
    def n_blocks(self) -> int:
        """Number of row blocks."""
        return len(self.row_offsets) - 1

    def block_rows(self, i: int) -> tuple[int, int]:
        """Row range of block ``i``."""
        return int(self.row_offsets[i]), int(self.row_offsets[i + 1])

    def new_buffers(self) -> None:
        """No buffers: blocks are views on the matrix."""
        return None

    def read_block(self, i: int, buffers: Any = None) -> sp.csr_matrix:
        """Row block ``i``, a view on the matrix's arrays (slicing would copy it every time)."""
        r0, r1 = self.block_rows(i)
        A = self.matrix
        s, e = int(A.indptr[r0]), int(A.indptr[r1])
        return _csr_view(
            A.data[s:e], A.indices[s:e], A.indptr[r0 : r1 + 1] - s, (r1 - r0, A.shape[1])
        )

    def fingerprint(self) -> dict:
        """Identity of the matrix, computed as for stores so the two compare."""
        indptr, data = self.matrix.indptr, self.matrix.data
        return fingerprint(
            self.shape, self.nnz, self.dtype, lambda a, b: indptr[a:b], lambda a, b: data[a:b]
        )

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-memory-matrix", id(self.matrix), self.shape, self.nnz)


def as_block_matrix(
    A: Any, *, block_nnz: int | None = None, block_rows: int | None = None
) -> CSRStore | MemoryMatrix:
    """A stored matrix (path or handle) opens as its store; anything else is held in memory.

    Parameters
    ----------
    A : path, CSRStore, MemoryMatrix, scipy.sparse matrix or array
        The matrix to factorize.
    block_nnz, block_rows : int, optional
        Row blocking for in-memory input (or a re-planned blocking of a store, ``block_nnz``).
    """
    if isinstance(A, MemoryMatrix | CSRStore) and block_nnz is None and block_rows is None:
        return A
    if isinstance(A, MemoryMatrix):
        A = A.matrix
    if isinstance(A, str | os.PathLike | CSRStore):
        from bignmf.store.csr import open_matrix

        path = A.path if isinstance(A, CSRStore) else A
        key = A.key if isinstance(A, CSRStore) else None
        return open_matrix(path, key, block_nnz=block_nnz)
    if hasattr(A, "dask") or hasattr(A, "__dask_graph__"):
        raise TypeError(
            "Dask arrays are factorized from a store: convert it first with "
            "bignmf.convert(x, 'A.zarr') (it streams one row stripe at a time)"
        )
    return MemoryMatrix(A, block_nnz=block_nnz, block_rows=block_rows)
