"""Getting a matrix into a store: any supported source, one streamed writer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bignmf.io.vocabulary import var_names, write_vocabulary
from bignmf.store.csr import CSRStore, write_matrix


def convert(
    src: Any,
    dst: str | os.PathLike,
    *,
    format: str | None = None,
    key: str | None = None,
    slab_nnz: int | None = None,
    memory_nnz: int | None = None,
    tmpdir: str | os.PathLike | None = None,
    **write_options: Any,
) -> CSRStore:
    """Convert a matrix from any supported source into a bignmf sparse store.

    Parameters
    ----------
    src : path or array-like
        A scipy.sparse matrix, NumPy array, Dask array, or a path to an ``.npz``
        (``scipy.sparse.save_npz``), Matrix Market ``.mtx``/``.mtx.gz``, AnnData ``.h5ad`` or
        ``.zarr`` store, or dense Zarr array.
    dst : path
        Directory of the new store.
    format : str, optional
        Force the source format instead of guessing it from the suffix.
    key : str, optional
        The matrix inside an AnnData file (default ``"X"``; e.g. ``"layers/counts"``).
    slab_nnz : int, optional
        Nonzeros read from the source at a time (bounds the reader's memory).
    memory_nnz : int, optional
        Entries the external sort of unsorted coordinate files holds in memory (default 4M,
        about 200 MB).
    tmpdir : path, optional
        Where the external sort's temporary files go (default: beside ``dst``, which has room
        for the matrix; they are removed afterwards).
    **write_options
        Passed to :func:`bignmf.store.csr.write_matrix` (``overwrite``, ``dtype``, ``chunk_size``,
        ``block_nnz``, ``block_rows``, ``codec``, ``progress``).

    Returns
    -------
    CSRStore
        The new store.

    Notes
    -----
    An AnnData source's ``var_names`` are written beside the store as its vocabulary file,
    ``<dst>.vocab.txt`` (see :mod:`bignmf.io.vocabulary`).

    Memory is bounded by the reader's slab and the writer's row block, not by the matrix:
    files larger than RAM convert. Matrix Market files not sorted by row go through an external
    bucket sort whose temporary files are as large as the matrix.
    """
    from bignmf.io.registry import open_source

    options = {"slab_nnz": slab_nnz, "memory_nnz": memory_nnz}
    options = {name: value for name, value in options.items() if value is not None}
    tmpdir = Path(tmpdir) if tmpdir is not None else Path(dst).absolute().parent
    source = open_source(src, format=format, key=key, tmpdir=tmpdir, **options)
    store = write_matrix(source, dst, **write_options)
    _keep_var_names(src, key, store)
    return store


def _keep_var_names(src: Any, key: str | None, store: CSRStore) -> None:
    """An AnnData source's ``var_names`` become the store's vocabulary file (X and layers
    have one column per var)."""
    if not isinstance(src, str | os.PathLike) or (key or "X").split("/")[0] not in ("X", "layers"):
        return
    names = var_names(src)
    if names is not None and len(names) == store.shape[1]:
        write_vocabulary(names, store.path)
