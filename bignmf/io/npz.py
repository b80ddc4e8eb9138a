"""``scipy.sparse.save_npz`` files (suffix ``.npz``, compressed or not), streamed out of the zip.

Owns the ``.npz`` format: CSR files stream their ``data``/``indices`` members piecewise
(:class:`_NpyStream` reads a ``.npy`` member a few elements at a time, never whole); CSC and
COO files go through the external bucket sort (:func:`bignmf.io.coo.coo_source`); BSR files
stream by block rows; DIA files and BSR files saved in Fortran order are loaded whole.

May import: :mod:`bignmf.io.common`, :mod:`bignmf.io.coo`, :mod:`bignmf.io.memory` (the
in-memory fallback), :mod:`bignmf.store.validate`, :mod:`bignmf.errors`, :mod:`bignmf.types`.
"""

from __future__ import annotations

import itertools
import os
import zipfile

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.io.common import (
    READ_ERRORS,
    check_indptr,
    check_positive,
    check_range,
    csc_pieces,
    csr_blocks,
    shape2,
)
from bignmf.io.coo import (
    DEFAULT_MEMORY_NNZ,
    DEFAULT_SLAB_NNZ,
    coo_source,
    max_slab_rows,
    plan_cuts,
    slabs_from_csr,
)
from bignmf.io.memory import from_scipy
from bignmf.store.validate import source_value_dtype
from bignmf.types import Source

__all__ = ["from_npz"]


class _NpyStream:
    """The ``.npy`` member of a zip file, read sequentially a few elements at a time."""

    def __init__(self, zf: zipfile.ZipFile, member: str, name: str):
        self.name = f"{name}[{member}]"
        self.fp = zf.open(member)
        try:
            version = np.lib.format.read_magic(self.fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.fp)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.fp)
        except (ValueError, *READ_ERRORS) as err:
            self.fp.close()
            raise InputError(f"{self.name}: not a readable .npy array ({err})") from None
        if dtype.hasobject:
            self.fp.close()
            raise InputError(f"{self.name}: holds Python objects, not numbers")
        self.shape, self.dtype = shape, dtype
        self.size = int(np.prod(shape, dtype=np.int64))
        self.fortran = bool(fortran) and len(shape) > 1  # elements not in C order

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` elements (writable, native byte order)."""
        nbytes = count * self.dtype.itemsize
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nbytes:
                k = self.fp.readinto(view[got:])
                if not k:
                    raise InputError(
                        f"{self.name}: ends after {got // self.dtype.itemsize} of the "
                        f"{count} elements asked for (file truncated?)"
                    )
                got += k
        except READ_ERRORS as err:
            raise InputError(f"{self.name}: cannot be read ({err})") from None
        arr = np.frombuffer(buf, dtype=self.dtype)
        if not self.dtype.isnative:
            arr = arr.astype(self.dtype.newbyteorder("="))
        return arr

    def close(self) -> None:
        self.fp.close()


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, *READ_ERRORS) as err:
        raise InputError(f"{path}: not a readable .npz (zip) file ({err})") from None


def _npz_small(zf: zipfile.ZipFile, member: str, name: str) -> np.ndarray:
    stream = _NpyStream(zf, member, name)
    try:
        return stream.read(stream.size).reshape(stream.shape)
    finally:
        stream.close()


def from_npz(
    path: str | os.PathLike,
    *,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    tmpdir: str | os.PathLike | None = None,
    row_sorted: bool | None = None,
) -> Source:
    """A ``scipy.sparse.save_npz`` file (compressed or not).

    CSR files stream their ``data``/``indices`` members directly out of the zip file; CSC and
    COO files go through the external bucket sort (see :func:`bignmf.io.coo.coo_source` for
    ``memory_nnz``, ``tmpdir`` and ``row_sorted``); BSR files stream by block rows. DIA files
    (rare, and as large as their diagonals) and BSR files saved in Fortran order are loaded
    whole.
    """
    check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    name = os.fspath(path)
    with _open_zip(name) as zf:
        members = set(zf.namelist())
        if not {"format.npy", "shape.npy"} <= members:
            raise InputError(
                f"{name}: not written by scipy.sparse.save_npz (no 'format'/'shape' arrays; "
                f"it holds {sorted(m.removesuffix('.npy') for m in members)})"
            )
        fmt = _npz_small(zf, "format.npy", name).reshape(-1)
        fmt = fmt[0] if fmt.size == 1 else b"?"
        fmt = fmt.decode("ascii", "replace") if isinstance(fmt, bytes) else str(fmt)
        shape = shape2(_npz_small(zf, "shape.npy", name).reshape(-1), name)
        wanted = {
            "csr": ("data", "indices", "indptr"),
            "csc": ("data", "indices", "indptr"),
            "bsr": ("data", "indices", "indptr"),
            "coo": ("data", "row", "col"),
            "dia": ("data", "offsets"),
        }
        if fmt not in wanted:
            raise InputError(f"{name}: sparse format {fmt!r} is not supported")
        missing = [k for k in wanted[fmt] if f"{k}.npy" not in members]
        if missing:
            raise InputError(f"{name}: {fmt} matrix without its {missing} arrays")
        head = _NpyStream(zf, "data.npy", name)
        head.close()
        dtype = source_value_dtype(head.dtype, name)
        nnz = head.size
        if fmt in ("csr", "csc", "bsr"):
            indptr = _npz_small(zf, "indptr.npy", name).reshape(-1)
            idx = _NpyStream(zf, "indices.npy", name)
            idx.close()
            n_idx = idx.size
    n = shape[1]

    if fmt == "dia" or head.fortran:  # rare: diagonals, or BSR blocks in Fortran order
        return from_scipy(sp.load_npz(name), slab_nnz=slab_nnz, name=name)

    if fmt == "coo":

        def coo_pieces():
            with _open_zip(name) as zf:
                streams = [_NpyStream(zf, f"{k}.npy", name) for k in ("row", "col", "data")]
                try:
                    sizes = {s.size for s in streams}
                    if len(sizes) != 1:
                        raise InputError(
                            f"{name}: row, col and data have {[s.size for s in streams]} entries"
                        )
                    for s in range(0, nnz, slab_nnz):
                        k = min(slab_nnz, nnz - s)
                        rows, cols, vals = (st.read(k) for st in streams)
                        yield rows, cols, vals
                finally:
                    for st in streams:
                        st.close()

        return coo_source(
            name,
            shape,
            dtype,
            coo_pieces,
            tmpdir=tmpdir,
            memory_nnz=memory_nnz,
            slab_nnz=slab_nnz,
            row_sorted=row_sorted,
        )

    if fmt == "bsr":
        return _npz_bsr(name, shape, dtype, indptr, nnz, n_idx, slab_nnz)

    if n_idx != nnz:
        raise InputError(f"{name}: {nnz} values but {n_idx} indices")

    def streamed(s_fn):
        """Run ``s_fn(read)`` with a reader of consecutive data/indices ranges."""
        with _open_zip(name) as zf:
            data = _NpyStream(zf, "data.npy", name)
            indices = _NpyStream(zf, "indices.npy", name)
            try:
                yield from s_fn(lambda s, e: (data.read(e - s), indices.read(e - s)))
            finally:
                data.close()
                indices.close()

    if fmt == "csr":
        return Source(
            name,
            shape,
            dtype,
            lambda: streamed(
                lambda read: csr_blocks(name, shape, dtype, indptr, read, slab_nnz, nnz)
            ),
        )

    check_indptr(indptr, n, nnz, name, axis="column")

    def column_pieces():
        yield from streamed(lambda read: csc_pieces(indptr, read, slab_nnz))

    return coo_source(
        name,
        shape,
        dtype,
        column_pieces,
        tmpdir=tmpdir,
        memory_nnz=memory_nnz,
        slab_nnz=slab_nnz,
        row_sorted=row_sorted,
    )


def _npz_bsr(name, shape, dtype, indptr, nnz, n_idx, slab_nnz) -> Source:
    """A BSR ``.npz``: slabs of whole block rows."""
    m, n = shape

    def blocks():
        with _open_zip(name) as zf:
            data = _NpyStream(zf, "data.npy", name)
            indices = _NpyStream(zf, "indices.npy", name)
            try:
                if len(data.shape) != 3:
                    raise InputError(f"{name}: BSR data has shape {data.shape}, expected 3-D")
                nb, r, c = data.shape
                if r < 1 or c < 1 or m % r or n % c or n_idx != nb:
                    raise InputError(f"{name}: BSR blocks {data.shape} do not fit shape {shape}")
                check_indptr(indptr, m // r, nb, name, axis="block row")
                per = max(1, slab_nnz // (r * c))
                cuts = plan_cuts(indptr, per, max(1, max_slab_rows(slab_nnz) // r))
                for a, b in itertools.pairwise(cuts):
                    s, e = int(indptr[a]), int(indptr[b])
                    vals = data.read((e - s) * r * c).reshape(e - s, r, c)
                    idx = indices.read(e - s)
                    check_range(idx, n // c, name, f"block rows {a}-{b - 1}: block columns")
                    ptr = indptr[a : b + 1].astype(np.int64) - s
                    slab = sp.bsr_matrix((vals, idx, ptr), shape=((b - a) * r, n)).tocsr()
                    yield from slabs_from_csr(
                        slab.data, slab.indices, slab.indptr, n, slab_nnz, dtype
                    )
            finally:
                data.close()
                indices.close()

    return Source(name, shape, dtype, blocks)
