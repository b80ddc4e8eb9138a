"""Which reader opens an input: format guessing and dispatch, one table entry per file format.

Owns no format itself: :data:`FORMATS` maps a format's name to its description, its file
suffixes (and a test of a directory, for formats without one) and its opener;
:func:`open_source` hands in-memory objects to :mod:`bignmf.io.memory` and paths to the
opener of the format given or guessed. A new format is one module and one entry here.

========================  =====================================================================
Input                     How it is streamed
========================  =====================================================================
scipy.sparse, NumPy       row slices of the in-memory matrix (:mod:`bignmf.io.memory`)
Dask array                one row stripe of chunks computed at a time (:mod:`bignmf.io.memory`)
``.npz`` (save_npz)       CSR: ``data``/``indices`` read piecewise out of the zip file;
                          CSC, COO: through the external bucket sort (:mod:`bignmf.io.npz`)
``.mtx`` / ``.mtx.gz``    parsed a few MB at a time with NumPy; a file sorted by row is
                          streamed directly, any other order goes through the bucket sort
                          (:mod:`bignmf.io.mtx`)
AnnData ``.h5ad``         CSR: slices of ``data``/``indices``; CSC: bucket sort; dense: rows
                          (:mod:`bignmf.io.hdf5`)
AnnData ``.zarr``         the same, zarr format 2 or 3 (:mod:`bignmf.io.zarr`)
dense Zarr array          row slices (:mod:`bignmf.io.zarr`)
========================  =====================================================================

Readers check the structure (header, token counts, index ranges, ``indptr``, shapes) and raise
:class:`~bignmf.errors.InputError` naming the file and the place. Values (negative, NaN, Inf)
are checked by the writer. Integer sources keep their dtype in ``Source.dtype``; booleans and
Matrix Market ``pattern`` files become float32 ones.

May import: the reader modules (:mod:`bignmf.io.memory`, :mod:`bignmf.io.npz`,
:mod:`bignmf.io.mtx`, :mod:`bignmf.io.hdf5`, :mod:`bignmf.io.zarr`), :mod:`bignmf.io.common`,
:mod:`bignmf.io.coo`, :mod:`bignmf.errors`, :mod:`bignmf.types`; never h5py, zarr or anndata
(the readers import them when a file of theirs is opened).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bignmf.errors import InputError
from bignmf.io.common import check_positive
from bignmf.io.coo import DEFAULT_MEMORY_NNZ, DEFAULT_SLAB_NNZ
from bignmf.io.hdf5 import from_h5ad
from bignmf.io.memory import from_object
from bignmf.io.mtx import from_mtx
from bignmf.io.npz import from_npz
from bignmf.io.zarr import from_zarr
from bignmf.types import Source

__all__ = ["COMPRESSION_SUFFIXES", "FORMATS", "SUPPORTED_FORMATS", "Format", "open_source"]

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
"""Suffixes after a format's own that :func:`_format_of` looks through (``a.mtx.gz``)."""


@dataclass(frozen=True)
class Format:
    """One file format :func:`open_source` reads."""

    description: str
    """What the format is, with its suffixes (listed in the error for an unknown format)."""
    suffixes: tuple[str, ...]
    """Lower-case file name endings that tell the format."""
    open: Callable[..., Source]
    """``open(path, key, slab_nnz, memory_nnz=, tmpdir=, row_sorted=)`` → Source."""
    compressed: bool = False
    """Whether the name is recognised first behind a compression suffix (``.mtx.gz``)."""
    sniff: Callable[[Path], bool] | None = None
    """A test of the path when no suffix matched (e.g. a directory's metadata files)."""


def _open_npz(path: str, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    return from_npz(path, slab_nnz=slab_nnz, **opts)


def _open_mtx(path: str, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    return from_mtx(path, slab_nnz=slab_nnz, **opts)


def _open_h5ad(path: str, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    return from_h5ad(path, key or "X", slab_nnz=slab_nnz, **opts)


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


FORMATS: dict[str, Format] = {
    "npz": Format("scipy.sparse.save_npz file (.npz)", (".npz",), _open_npz),
    "mtx": Format(
        "Matrix Market file (.mtx, .mtx.gz, .mtx.bz2, .mtx.xz, .mm)",
        (".mtx", ".mm"),
        _open_mtx,
        compressed=True,
    ),
    "h5ad": Format("AnnData HDF5 file (.h5ad)", (".h5ad",), _open_h5ad),
    "zarr": Format(
        "AnnData .zarr store, Zarr csr_matrix/csc_matrix group or dense Zarr array (.zarr)",
        (".zarr",),
        from_zarr,
        sniff=_is_zarr_dir,
    ),
}
"""Format name → :class:`Format`: the formats :func:`open_source` reads from a path."""

SUPPORTED_FORMATS = {name: spec.description for name, spec in FORMATS.items()}
"""Formats :func:`open_source` reads from a path (besides in-memory objects)."""


def _format_of(path: Path) -> str | None:
    """The format a path's name (or, failing that, its contents) tells; None if none does."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
        for fmt, spec in FORMATS.items():
            if spec.compressed and name.endswith(spec.suffixes):
                return fmt
    for fmt, spec in FORMATS.items():
        if name.endswith(spec.suffixes):
            return fmt
    for fmt, spec in FORMATS.items():
        if spec.sniff is not None and spec.sniff(path):
            return fmt
    return None


def open_source(
    src: Any,
    *,
    format: str | None = None,
    key: str | None = None,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    tmpdir: str | os.PathLike | None = None,
    row_sorted: bool | None = None,
) -> Source:
    """Any supported input as a :class:`~bignmf.types.Source` of row slabs.

    Parameters
    ----------
    src : Source, array or path
        A Source (returned as is), a scipy.sparse matrix or array, a 2-D NumPy array, a 2-D
        Dask array, an ``anndata.AnnData``, or a path: ``.npz`` (scipy.sparse.save_npz),
        ``.mtx``/``.mtx.gz`` (Matrix Market), ``.h5ad`` (AnnData) or ``.zarr`` (an AnnData
        store, a csr_matrix/csc_matrix group such as a bignmf store, or a dense array).
    format : str, optional
        The file format, a key of :data:`FORMATS` (``'npz'``, ``'mtx'``, ``'h5ad'``,
        ``'zarr'``), when the suffix does not tell.
    key : str, optional
        The matrix inside an AnnData file or Zarr group (default ``"X"``; e.g.
        ``"layers/counts"``).
    slab_nnz : int
        Nonzeros per slab (about): bounds the reader's memory.
    memory_nnz, tmpdir, row_sorted
        For inputs that need the external bucket sort (see :func:`bignmf.io.coo.coo_source`).

    Returns
    -------
    Source

    Raises
    ------
    InputError
        For an unknown format (the message lists the supported ones) or a malformed input.
    """
    check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    opts = {"memory_nnz": memory_nnz, "tmpdir": tmpdir, "row_sorted": row_sorted}
    if isinstance(src, Source):
        return src
    source = from_object(src, key=key, slab_nnz=slab_nnz, **opts)
    if source is not None:
        return source
    supported = "; ".join(f"{k!r}: {v}" for k, v in SUPPORTED_FORMATS.items())
    if not isinstance(src, str | os.PathLike):
        raise InputError(
            f"cannot read a {type(src).__name__}: expected a scipy.sparse matrix, NumPy or Dask "
            f"array, AnnData, Source or a path to one of: {supported}"
        )
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    fmt = format.lower().lstrip(".") if format else _format_of(path)
    if fmt not in SUPPORTED_FORMATS:
        what = f"format {format!r}" if format else "the file's format"
        raise InputError(f"{path}: cannot tell {what}; supported formats are {supported}")
    return FORMATS[fmt].open(os.fspath(path), key, slab_nnz, **opts)
