"""Checks and canonical form of one row block before it is written.

Every message names the source, the row block, its rows and the number of offending entries,
with the first one's position, so a user can find the problem in the original file.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError

_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def source_value_dtype(dtype: np.dtype, name: str | None = None) -> np.dtype:
    """The dtype a source reports: real numbers keep theirs, bool and float16 become float32.

    The one check of value dtypes: readers call it with the source's name (for the message),
    :func:`value_dtype` on the way into the store.

    Parameters
    ----------
    dtype : numpy.dtype
        Dtype of the source's values.
    name : str, optional
        The source, named at the start of the error message.

    Returns
    -------
    numpy.dtype

    Raises
    ------
    InputError
        For complex values and values that are not numbers.
    """
    dtype = np.dtype(dtype)
    where = f"{name}: " if name else ""
    if dtype.kind == "c":
        raise InputError(f"{where}complex values ({dtype}) are not supported")
    if dtype.kind not in "biuf":
        raise InputError(f"{where}values of dtype {dtype} are not numbers")
    if dtype.kind == "b" or dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def value_dtype(source_dtype: np.dtype, requested: np.dtype | None = None) -> np.dtype:
    """The dtype values are stored in: float32/float64 kept, anything else stored as float32.

    Parameters
    ----------
    source_dtype : numpy.dtype
        Dtype of the source's values (checked by :func:`source_value_dtype`).
    requested : numpy.dtype, optional
        An explicit choice; must be float32 or float64.

    Returns
    -------
    numpy.dtype
    """
    if requested is not None:
        dtype = np.dtype(requested)
        if dtype not in _SUPPORTED_DTYPES:
            raise InputError(f"dtype must be float32 or float64, not {dtype}")
        return dtype
    dtype = source_value_dtype(source_dtype)
    return dtype if dtype in _SUPPORTED_DTYPES else np.dtype(np.float32)


def index_dtype(n_cols: int) -> np.dtype:
    """int32 column indices when they fit, int64 otherwise."""
    return np.dtype(np.int32) if n_cols <= np.iinfo(np.int32).max else np.dtype(np.int64)


def _where(block: sp.csr_matrix, positions: np.ndarray, row0: int) -> str:
    """Describe the first offending entry as 'row R, column C: value'."""
    first = int(positions[0])
    row = int(np.searchsorted(block.indptr, first, side="right")) - 1
    return f"first at row {row0 + row}, column {int(block.indices[first])}: {block.data[first]!r}"


def _label(source: str, block_index: int, row0: int, n_rows: int) -> str:
    return f"{source}: row block {block_index} (rows {row0}-{row0 + n_rows - 1})"


def check_structure(
    block: sp.csr_matrix, n_cols: int, *, source: str, block_index: int, row0: int
) -> None:
    """Raise InputError if indptr, indices or the column count are inconsistent."""
    label = _label(source, block_index, row0, block.shape[0])
    if block.shape[1] != n_cols:
        raise InputError(f"{label}: has {block.shape[1]} columns, expected {n_cols}")
    indptr = block.indptr
    if indptr[0] != 0 or indptr[-1] != block.data.size or indptr[-1] != block.indices.size:
        raise InputError(
            f"{label}: indptr runs from {indptr[0]} to {indptr[-1]} but the block holds "
            f"{block.data.size} values and {block.indices.size} indices"
        )
    drops = np.flatnonzero(np.diff(indptr) < 0)
    if drops.size:
        raise InputError(
            f"{label}: indptr decreases at {drops.size} rows (first at row {row0 + drops[0]})"
        )
    bad = np.flatnonzero((block.indices < 0) | (block.indices >= n_cols))
    if bad.size:
        raise InputError(
            f"{label}: {bad.size} column indices outside [0, {n_cols}) "
            f"(first at row {row0 + np.searchsorted(indptr, bad[0], side='right') - 1}: "
            f"{int(block.indices[bad[0]])})"
        )


def check_values(block: sp.csr_matrix, *, source: str, block_index: int, row0: int) -> None:
    """Raise InputError on NaN, ±Inf or negative values."""
    data = block.data
    label = _label(source, block_index, row0, block.shape[0])
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        raise InputError(f"{label}: {bad.size} NaN or infinite values ({_where(block, bad, row0)})")
    bad = np.flatnonzero(data < 0)
    if bad.size:
        raise InputError(
            f"{label}: {bad.size} negative values; NMF needs a non-negative matrix "
            f"({_where(block, bad, row0)})"
        )


def canonical_block(
    block: sp.csr_matrix,
    n_cols: int,
    dtype: np.dtype,
    *,
    source: str,
    block_index: int,
    row0: int,
) -> sp.csr_matrix:
    """Validate a row block and return it in canonical form.

    Canonical form: values in ``dtype``, column indices sorted within each row, duplicate
    entries summed and explicit zeros removed, so the same matrix always gives the same bytes.

    Parameters
    ----------
    block : scipy.sparse.csr_matrix
        Rows ``row0 ...`` of the matrix.
    n_cols : int
        Expected number of columns.
    dtype : numpy.dtype
        Dtype values are stored in.
    source, block_index, row0 : str, int, int
        Where the block comes from, for error messages.

    Returns
    -------
    scipy.sparse.csr_matrix

    Raises
    ------
    InputError
        On inconsistent structure, NaN/Inf or negative values.
    """
    check_structure(block, n_cols, source=source, block_index=block_index, row0=row0)
    check_values(block, source=source, block_index=block_index, row0=row0)
    out = sp.csr_matrix(
        (block.data.astype(dtype, copy=True), block.indices.copy(), block.indptr.copy()),
        shape=block.shape,
    )
    out.sum_duplicates()
    out.eliminate_zeros()
    if not np.isfinite(out.data).all():
        raise InputError(
            f"{_label(source, block_index, row0, block.shape[0])}: values overflow {dtype} "
            "(after summing duplicate entries or converting the dtype)"
        )
    return out
