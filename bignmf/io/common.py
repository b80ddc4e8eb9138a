"""What every reader shares: structural checks and the slab builders of CSR, CSC and dense data.

Owns no format. Readers (one module per input format, see :mod:`bignmf.io.registry`) return a
:class:`~bignmf.types.Source` at once, with the shape and dtype read from the header or
metadata; the data is only read when ``Source.blocks()`` is iterated, one slab of about
``slab_nnz`` nonzeros at a time, so that files larger than memory convert. Memory use is one
slab plus ``O(m)`` small integers (a CSR ``indptr``, or the per-row counts of the bucket sort),
except for inputs that are already in memory.

The checks here (shapes, ``indptr``, index ranges, entry counts) raise
:class:`~bignmf.errors.InputError` naming the source and the place; values (negative, NaN,
Inf) are checked by the writer, value dtypes by :func:`bignmf.store.validate.source_value_dtype`.
Also here: the source of an AnnData-encoded ``csr_matrix``/``csc_matrix`` group or dense array,
shared by the ``.h5ad`` (h5py) and ``.zarr`` readers, which pass their opened node.

May import: :mod:`bignmf.io.coo`, :mod:`bignmf.store.validate`, :mod:`bignmf.errors`,
:mod:`bignmf.types`; never h5py, zarr or anndata (readers hand over their opened nodes).
"""

from __future__ import annotations

import contextlib
import itertools
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.io.coo import coo_source, max_slab_rows, plan_cuts
from bignmf.store.validate import source_value_dtype
from bignmf.types import Source

__all__ = [
    "READ_ERRORS",
    "attr_str",
    "check_indptr",
    "check_positive",
    "check_range",
    "csc_pieces",
    "csr_blocks",
    "dense_array_source",
    "dense_blocks",
    "shape2",
    "sparse_group_source",
]

READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
"""Errors of reading a (compressed) file that mean it is damaged or truncated."""


def check_positive(**values: int) -> None:
    for what, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")


def shape2(shape: Any, name: str) -> tuple[int, int]:
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{name}: shape {shape!r} is not two integers") from None
    if m < 0 or n < 0:
        raise InputError(f"{name}: negative shape {(m, n)}")
    return m, n


def check_indptr(indptr: np.ndarray, n_ptr: int, nnz: int, name: str, axis: str = "row") -> None:
    """``indptr`` must have ``n_ptr + 1`` entries from 0 to ``nnz``, never decreasing."""
    if indptr.ndim != 1 or indptr.size != n_ptr + 1:
        raise InputError(
            f"{name}: indptr has {indptr.size} entries, expected {n_ptr + 1} for {n_ptr} {axis}s"
        )
    if indptr.dtype.kind not in "iu":
        raise InputError(f"{name}: indptr has dtype {indptr.dtype}, expected integers")
    if indptr[0] != 0:
        raise InputError(f"{name}: indptr starts at {indptr[0]}, expected 0")
    step = 1 << 22
    for s in range(0, n_ptr, step):
        part = indptr[s : s + step + 1]
        bad = np.flatnonzero(part[1:] < part[:-1])
        if bad.size:
            i = s + int(bad[0])
            raise InputError(
                f"{name}: indptr decreases at {axis} {i} ({indptr[i]} then {indptr[i + 1]}); "
                "it must be non-decreasing"
            )
    if indptr[-1] != nnz:
        raise InputError(
            f"{name}: indptr ends at {indptr[-1]} but there are {nnz} stored values and indices"
        )


def check_range(idx: np.ndarray, size: int, name: str, what: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        bad = idx[(idx < 0) | (idx >= size)]
        raise InputError(
            f"{name}: {what}: {bad.size} indices outside [0, {size}) (first: {int(bad[0])})"
        )


def csr_blocks(
    name: str,
    shape: tuple[int, int],
    dtype: np.dtype,
    indptr: np.ndarray,
    read: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    slab_nnz: int,
    nnz: int | None = None,
) -> Iterator[sp.csr_matrix]:
    """Slabs of a CSR matrix whose ``data``/``indices`` entries ``s:e`` come from ``read``.

    ``read`` is called on consecutive ranges, in order, so it may stream. ``nnz``, when known,
    is the length of ``data`` and ``indices``, which ``indptr`` must end at.
    """
    m, n = shape
    if nnz is None:
        nnz = int(indptr[-1]) if indptr.size else 0
    check_indptr(indptr, m, nnz, name)
    cuts = plan_cuts(indptr, slab_nnz, max_slab_rows(slab_nnz))
    for a, b in itertools.pairwise(cuts):
        s, e = int(indptr[a]), int(indptr[b])
        data, indices = read(s, e)
        data, indices = np.asarray(data).reshape(-1), np.asarray(indices).reshape(-1)
        if data.size != e - s or indices.size != e - s:
            raise InputError(
                f"{name}: rows {a}-{b - 1}: expected {e - s} entries, got {data.size} values "
                f"and {indices.size} indices (file truncated?)"
            )
        if indices.dtype.kind not in "iu":
            raise InputError(f"{name}: indices have dtype {indices.dtype}, expected integers")
        check_range(indices, n, name, f"rows {a}-{b - 1}: column indices")
        if data.dtype != dtype:
            data = data.astype(dtype)
        ptr = indptr[a : b + 1].astype(np.int64) - s
        yield sp.csr_matrix((data, indices, ptr), shape=(b - a, n))


def csc_pieces(
    indptr: np.ndarray,
    read: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    piece_nnz: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, cols, vals) pieces of a CSC matrix, column after column."""
    nnz = int(indptr[-1])
    ptr = indptr.astype(np.int64, copy=False)
    for s in range(0, nnz, piece_nnz):
        e = min(s + piece_nnz, nnz)
        vals, rows = read(s, e)
        c0 = int(np.searchsorted(ptr, s, side="right")) - 1
        c1 = int(np.searchsorted(ptr, e - 1, side="right"))  # one past the last column
        counts = np.minimum(ptr[c0 + 1 : c1 + 1], e) - np.maximum(ptr[c0:c1], s)
        cols = np.repeat(np.arange(c0, c1, dtype=np.int64), counts)
        yield np.asarray(rows).reshape(-1), cols, np.asarray(vals).reshape(-1)


def dense_blocks(
    name: str,
    shape: tuple[int, int],
    dtype: np.dtype,
    read_rows: Callable[[int, int], np.ndarray],
    slab_nnz: int,
    chunk_rows: int = 1,
) -> Iterator[sp.csr_matrix]:
    """Slabs of a dense matrix read ``slab_nnz // n`` rows (whole chunks if possible) at a time."""
    m, n = shape
    step = max(1, slab_nnz // max(n, 1))
    if chunk_rows > 1 and step >= chunk_rows:
        step -= step % chunk_rows
    for a in range(0, m, step):
        b = min(m, a + step)
        block = np.asarray(read_rows(a, b))
        if block.shape != (b - a, n):
            raise InputError(f"{name}: rows {a}-{b - 1} have shape {block.shape}, not {(b - a, n)}")
        if block.dtype != dtype:
            block = block.astype(dtype)
        yield sp.csr_matrix(block)


# --------------------------------------------------------------------------- AnnData encodings


def attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def sparse_group_source(
    name: str,
    node: Any,
    open_node: Callable[[], contextlib.AbstractContextManager],
    slab_nnz: int,
    memory_nnz: int,
    tmpdir: str | os.PathLike | None,
    row_sorted: bool | None,
) -> Source:
    """An AnnData ``csr_matrix``/``csc_matrix`` group (h5py or zarr) as a Source.

    ``node`` is the group, opened once to read the metadata; ``open_node()`` opens it again for
    each pass.
    """
    attrs = node.attrs
    enc = attr_str(attrs.get("encoding-type"))
    if enc is None and "h5sparse_format" in attrs:  # anndata < 0.7
        enc = f"{attr_str(attrs['h5sparse_format'])}_matrix"
        shape = attrs.get("h5sparse_shape")
    else:
        shape = attrs.get("shape")
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(
            f"{name}: group of encoding-type {enc!r}, expected csr_matrix, csc_matrix or a dense "
            "array"
        )
    shape = shape2(shape, name)
    for k in ("data", "indices", "indptr"):
        if k not in node:
            raise InputError(f"{name}: {enc} group without its {k!r} array")
    data, indices, indptr = node["data"], node["indices"], node["indptr"]
    if len(data.shape) != 1 or data.shape != indices.shape:
        raise InputError(f"{name}: data {data.shape} and indices {indices.shape} disagree")
    dtype = source_value_dtype(data.dtype, name)
    nnz = int(data.shape[0])
    m, n = shape
    n_ptr = m if enc == "csr_matrix" else n
    if indptr.shape != (n_ptr + 1,):
        raise InputError(f"{name}: indptr has shape {indptr.shape}, expected ({n_ptr + 1},)")

    def with_arrays(fn):
        with open_node() as g:
            d, i = g["data"], g["indices"]
            ptr = np.asarray(g["indptr"][:])
            yield from fn(ptr, lambda s, e: (d[s:e], i[s:e]))

    if enc == "csr_matrix":
        return Source(
            name,
            shape,
            dtype,
            lambda: with_arrays(
                lambda ptr, read: csr_blocks(name, shape, dtype, ptr, read, slab_nnz, nnz)
            ),
        )

    def csc(ptr, read):
        check_indptr(ptr, n, nnz, name, axis="column")
        yield from csc_pieces(ptr, read, slab_nnz)

    return coo_source(
        name,
        shape,
        dtype,
        lambda: with_arrays(csc),
        tmpdir=tmpdir,
        memory_nnz=memory_nnz,
        slab_nnz=slab_nnz,
        row_sorted=row_sorted,
    )


def dense_array_source(
    name: str, arr: Any, open_array: Callable[[], contextlib.AbstractContextManager], slab_nnz
) -> Source:
    if len(arr.shape) != 2:
        raise InputError(f"{name}: dense array of shape {arr.shape}, expected 2-D")
    dtype = source_value_dtype(arr.dtype, name)
    shape = shape2(arr.shape, name)
    chunks = getattr(arr, "chunks", None)
    chunk_rows = int(chunks[0]) if chunks else 1

    def blocks():
        with open_array() as a:
            yield from dense_blocks(name, shape, dtype, lambda s, e: a[s:e], slab_nnz, chunk_rows)

    return Source(name, shape, dtype, blocks)
