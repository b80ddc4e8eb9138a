"""AnnData HDF5 files (suffix ``.h5ad``), read with h5py.

Owns the ``.h5ad`` format: :func:`from_h5ad` opens the file, finds the matrix (``X``, a layer,
``raw/X``) and hands the node to the AnnData-encoding sources of :mod:`bignmf.io.common`
(a CSR group streams ``data``/``indices`` slices, a CSC group goes through the bucket sort, a
dense dataset is read by rows); :func:`_h5_node` reopens the file for every pass.

May import: :mod:`bignmf.io.common`, :mod:`bignmf.io.coo`, :mod:`bignmf.errors`,
:mod:`bignmf.types`; h5py (optional, the ``readers`` extra) only inside the functions.
"""

from __future__ import annotations

import contextlib
import os

from bignmf.errors import InputError
from bignmf.io.common import check_positive, dense_array_source, sparse_group_source
from bignmf.io.coo import DEFAULT_MEMORY_NNZ, DEFAULT_SLAB_NNZ
from bignmf.types import Source

__all__ = ["from_h5ad"]


def _h5_node(path: str, key: str):
    import h5py

    @contextlib.contextmanager
    def opened():
        with h5py.File(path, "r") as f:
            yield f[key]

    return opened


def from_h5ad(
    path: str | os.PathLike,
    key: str = "X",
    *,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    tmpdir: str | os.PathLike | None = None,
    row_sorted: bool | None = None,
) -> Source:
    """A matrix of an AnnData ``.h5ad`` file, read with h5py.

    ``key`` is the matrix's path in the file: ``"X"`` (default), ``"layers/counts"``,
    ``"raw/X"``... CSR groups stream ``data``/``indices`` slices after reading ``indptr``; CSC
    groups go through the external bucket sort; dense datasets are read by rows.
    """
    import h5py

    check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    path = os.fspath(path)
    key = key.strip("/") or "X"
    name = f"{path}[{key}]"
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 (.h5ad) file ({err})") from None
    with f:
        if key not in f:
            raise InputError(f"{path}: has no {key!r} (top level: {sorted(f.keys())})")
        node = f[key]
        opened = _h5_node(path, key)
        if isinstance(node, h5py.Dataset):
            return dense_array_source(name, node, opened, slab_nnz)
        return sparse_group_source(name, node, opened, slab_nnz, memory_nnz, tmpdir, row_sorted)
