"""In-memory sources: scipy.sparse, NumPy and Dask arrays, and ``anndata.AnnData`` objects.

Owns no file suffix: these are the objects :func:`bignmf.io.registry.open_source` accepts
besides paths. scipy.sparse and NumPy matrices are cut into row slices (copies, so the caller's
matrix is never modified); a Dask array is computed one row stripe of chunks at a time; an
AnnData object gives its X or a layer (a backed one is read from its ``.h5ad`` file).

May import: :mod:`bignmf.io.common`, :mod:`bignmf.io.coo`, :mod:`bignmf.io.hdf5` (backed
AnnData), :mod:`bignmf.store.validate`, :mod:`bignmf.errors`, :mod:`bignmf.types`; Dask only
inside :func:`from_dask`, and :func:`bignmf.io.registry.open_source` only inside a call (for
an AnnData's matrix, which may be any in-memory kind).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.io.common import check_indptr, check_positive, csr_blocks, dense_blocks, shape2
from bignmf.io.coo import DEFAULT_SLAB_NNZ, slabs_from_csr
from bignmf.io.hdf5 import from_h5ad
from bignmf.store.validate import source_value_dtype
from bignmf.types import Source

__all__ = ["from_dask", "from_numpy", "from_object", "from_scipy"]


def from_scipy(A: Any, *, slab_nnz: int = DEFAULT_SLAB_NNZ, name: str | None = None) -> Source:
    """A scipy.sparse matrix or array of any format, cut into row slabs.

    Formats other than CSR are converted to CSR once (in memory). Slabs are copies, so the
    caller's matrix is never modified.
    """
    check_positive(slab_nnz=slab_nnz)
    name = name or f"<scipy.sparse {type(A).__name__}>"
    if not sp.issparse(A):
        raise InputError(f"{name}: not a scipy.sparse matrix")
    if A.ndim != 2:
        raise InputError(f"{name}: has {A.ndim} dimensions, expected 2")
    dtype = source_value_dtype(A.dtype, name)
    shape = shape2(A.shape, name)
    csr = A if A.format == "csr" else A.tocsr()
    data, indices, indptr = csr.data, csr.indices, csr.indptr

    def read(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        return data[s:e].copy(), indices[s:e].copy()

    return Source(
        name,
        shape,
        dtype,
        lambda: csr_blocks(name, shape, dtype, indptr, read, slab_nnz, data.size),
    )


def from_numpy(a: Any, *, slab_nnz: int = DEFAULT_SLAB_NNZ, name: str | None = None) -> Source:
    """A 2-D dense NumPy array, ``slab_nnz // n_cols`` rows per slab (zeros dropped)."""
    check_positive(slab_nnz=slab_nnz)
    name = name or "<numpy.ndarray>"
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{name}: has {a.ndim} dimensions, expected 2")
    dtype = source_value_dtype(a.dtype, name)
    shape = shape2(a.shape, name)
    return Source(
        name, shape, dtype, lambda: dense_blocks(name, shape, dtype, lambda s, e: a[s:e], slab_nnz)
    )


def _chunk_to_csr(part: Any) -> sp.csr_matrix:
    if sp.issparse(part):
        return sp.csr_matrix(part)
    if hasattr(part, "tocsr"):  # pydata/sparse and the like
        return sp.csr_matrix(part.tocsr())
    if hasattr(part, "get") and not isinstance(part, np.ndarray):  # CuPy
        part = part.get()
    return sp.csr_matrix(np.asarray(part))


def from_dask(x: Any, *, slab_nnz: int = DEFAULT_SLAB_NNZ, name: str | None = None) -> Source:
    """A 2-D Dask array with dense NumPy or scipy.sparse chunks.

    One row stripe of chunks is computed at a time (its chunks together, sharing their inputs),
    never the whole array; a stripe is then cut into slabs of about ``slab_nnz`` nonzeros. The
    chunk sizes must be known (call ``x.compute_chunk_sizes()`` first otherwise).
    """
    import dask

    check_positive(slab_nnz=slab_nnz)
    name = name or f"<dask.array {getattr(x, 'name', '?')}>"
    if getattr(x, "ndim", None) != 2:
        raise InputError(f"{name}: has {getattr(x, 'ndim', '?')} dimensions, expected 2")
    if any(np.isnan(c) for dim in x.chunks for c in dim):
        raise InputError(f"{name}: unknown chunk sizes; call x.compute_chunk_sizes() first")
    dtype = source_value_dtype(x.dtype, name)
    shape = shape2(x.shape, name)
    row_chunks, col_chunks = x.chunks

    def blocks() -> Iterator[sp.csr_matrix]:
        row = 0
        for i, height in enumerate(row_chunks):
            parts = dask.compute(*(x.blocks[i, j] for j in range(len(col_chunks))))
            csrs = []
            for j, (part, width) in enumerate(zip(parts, col_chunks, strict=True)):
                if getattr(part, "shape", None) != (height, width):
                    raise InputError(
                        f"{name}: chunk ({i}, {j}) has shape {getattr(part, 'shape', None)}, "
                        f"expected {(height, width)}"
                    )
                csrs.append(_chunk_to_csr(part))
            del parts
            if not csrs:
                stripe = sp.csr_matrix((height, 0), dtype=dtype)
            elif len(csrs) == 1:
                stripe = csrs[0]
            else:
                stripe = sp.hstack(csrs, format="csr")
            del csrs
            label = f"{name} (rows {row}-{row + height - 1})"
            check_indptr(stripe.indptr, height, stripe.data.size, label)
            yield from slabs_from_csr(
                stripe.data, stripe.indices, stripe.indptr, shape[1], slab_nnz, dtype
            )
            row += height

    return Source(name, shape, dtype, blocks)


def _is_dask(obj: Any) -> bool:
    return type(obj).__module__.startswith("dask") and hasattr(obj, "chunks")


def _from_anndata_object(adata: Any, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    """An in-memory (or backed) ``anndata.AnnData``: its X or a layer."""
    key = (key or "X").strip("/")
    if getattr(adata, "isbacked", False) and adata.filename is not None:
        return from_h5ad(adata.filename, key, slab_nnz=slab_nnz, **opts)
    if key == "X":
        matrix = adata.X
    elif key.startswith("layers/") and key[len("layers/") :] in adata.layers:
        matrix = adata.layers[key[len("layers/") :]]
    elif key in adata.layers:
        matrix = adata.layers[key]
    else:
        raise InputError(f"<AnnData>: has no {key!r} (layers: {list(adata.layers.keys())})")
    if matrix is None:
        raise InputError(f"<AnnData>: {key} is empty (None)")
    from bignmf.io.registry import open_source  # X may be any in-memory kind (or a Source)

    return open_source(matrix, slab_nnz=slab_nnz, **opts)


def from_object(src: Any, *, key: str | None, slab_nnz: int, **opts: Any) -> Source | None:
    """``src`` as a Source if it is an in-memory kind this module reads, else None.

    scipy.sparse matrices and arrays, NumPy arrays, Dask arrays and ``anndata.AnnData`` (``key``
    picks X or a layer; ``opts`` are ``memory_nnz``, ``tmpdir``, ``row_sorted`` for a backed one).
    """
    if sp.issparse(src):
        return from_scipy(src, slab_nnz=slab_nnz)
    if isinstance(src, np.ndarray):
        return from_numpy(src, slab_nnz=slab_nnz)
    if _is_dask(src):
        return from_dask(src, slab_nnz=slab_nnz)
    if type(src).__name__ == "AnnData":
        return _from_anndata_object(src, key, slab_nnz, **opts)
    return None
