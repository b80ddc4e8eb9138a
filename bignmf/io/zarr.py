"""Zarr inputs (suffix ``.zarr``, or a directory with Zarr metadata), zarr format 2 or 3.

Owns the ``.zarr`` format: AnnData stores (:func:`from_anndata_zarr`), bare
``csr_matrix``/``csc_matrix`` groups such as a bignmf store, and dense 2-D arrays
(:func:`from_zarr_dense`); :func:`from_zarr` tells them apart for
:func:`bignmf.io.registry.open_source`. Encoded groups go to the AnnData-encoding sources of
:mod:`bignmf.io.common`.

May import: :mod:`bignmf.io.common`, :mod:`bignmf.io.coo`, :mod:`bignmf.errors`,
:mod:`bignmf.types`; the zarr library only inside the functions (absolute imports: ``import
zarr`` here is the library, not this module).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from bignmf.errors import InputError
from bignmf.io.common import attr_str, check_positive, dense_array_source, sparse_group_source
from bignmf.io.coo import DEFAULT_MEMORY_NNZ, DEFAULT_SLAB_NNZ
from bignmf.types import Source

__all__ = ["from_anndata_zarr", "from_zarr", "from_zarr_dense"]


def _zarr_open(path: str, name: str):
    import zarr

    try:
        # consolidated metadata is only an index of the same files; reading the files avoids
        # stale indexes and zarr's warning that format 3 does not specify it
        return zarr.open(path, mode="r", use_consolidated=False)
    except (FileNotFoundError, KeyError, ValueError, TypeError, OSError) as err:
        raise InputError(
            f"{name}: not a readable Zarr store ({type(err).__name__}: {err})"
        ) from None
    except Exception as err:  # zarr.errors.* (NodeNotFoundError and friends)
        if type(err).__module__.startswith("zarr"):
            raise InputError(f"{name}: not a readable Zarr store ({err})") from None
        raise


def _zarr_node_source(
    path: str,
    key: str | None,
    slab_nnz: int,
    memory_nnz: int,
    tmpdir: str | os.PathLike | None,
    row_sorted: bool | None,
) -> Source:
    import zarr

    name = f"{path}[{key}]" if key else path
    root = _zarr_open(path, name)
    node = root
    if key:
        if not isinstance(root, zarr.Group):
            raise InputError(f"{path}: is a single array, it has no {key!r}")
        try:
            node = root[key]
        except KeyError:
            raise InputError(f"{path}: has no {key!r} (top level: {sorted(root.keys())})") from None

    @contextlib.contextmanager
    def opened():
        yield node

    if isinstance(node, zarr.Array):
        return dense_array_source(name, node, opened, slab_nnz)
    return sparse_group_source(name, node, opened, slab_nnz, memory_nnz, tmpdir, row_sorted)


def from_anndata_zarr(
    path: str | os.PathLike,
    key: str = "X",
    *,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    tmpdir: str | os.PathLike | None = None,
    row_sorted: bool | None = None,
) -> Source:
    """A matrix of an AnnData ``.zarr`` store (zarr format 2 or 3).

    The same encodings as :func:`from_h5ad` (CSR group, CSC group, dense array), ``key`` the
    same (``"X"``, ``"layers/counts"``...). Also reads a bare ``csr_matrix``/``csc_matrix``
    group (a bignmf store, for one) with ``key=""``.
    """
    check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    return _zarr_node_source(
        os.fspath(path), key.strip("/"), slab_nnz, memory_nnz, tmpdir, row_sorted
    )


def from_zarr_dense(
    path: str | os.PathLike, key: str | None = None, *, slab_nnz: int = DEFAULT_SLAB_NNZ
) -> Source:
    """A 2-D dense Zarr array (format 2 or 3), read by rows (whole chunks of rows if possible).

    ``key`` is the array's path when ``path`` is a group.
    """
    import zarr

    check_positive(slab_nnz=slab_nnz)
    path = os.fspath(path)
    name = f"{path}[{key}]" if key else path
    node = _zarr_open(path, name)
    if key:
        if not isinstance(node, zarr.Group) or key.strip("/") not in node:
            raise InputError(f"{path}: has no array {key!r}")
        node = node[key.strip("/")]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{name}: is a Zarr group, not an array (give the array's key)")

    @contextlib.contextmanager
    def opened():
        yield node

    return dense_array_source(name, node, opened, slab_nnz)


def from_zarr(path: str, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    """Sniff a ``.zarr``: AnnData store, bare csr/csc group or dense array."""
    import zarr

    root = _zarr_open(path, path)
    if isinstance(root, zarr.Array):
        if key:
            raise InputError(f"{path}: is a single dense array, it has no {key!r}")
        return from_zarr_dense(path, slab_nnz=slab_nnz)
    enc = attr_str(root.attrs.get("encoding-type"))
    if enc == "anndata":
        return from_anndata_zarr(path, key or "X", slab_nnz=slab_nnz, **opts)
    if key or enc in ("csr_matrix", "csc_matrix"):
        return _zarr_node_source(path, key, slab_nnz, **opts)
    raise InputError(
        f"{path}: a Zarr group that is neither an AnnData store (encoding-type 'anndata'), a "
        f"csr_matrix/csc_matrix group nor a dense array (encoding-type {enc!r}); "
        "give the matrix's key"
    )
