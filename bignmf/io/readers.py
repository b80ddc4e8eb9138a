"""Streaming readers: every supported input as a :class:`~bignmf.types.Source` of row slabs.

Each reader returns at once with the shape and dtype (read from the file's header or metadata);
the data is only read when ``Source.blocks()`` is iterated, one slab of about ``slab_nnz``
nonzeros at a time, so that files larger than memory convert. Memory use is one slab plus
``O(m)`` small integers (a CSR ``indptr``, or the per-row counts of the bucket sort), except for
inputs that are already in memory.

========================  =====================================================================
Input                     How it is streamed
========================  =====================================================================
scipy.sparse, NumPy       row slices of the in-memory matrix
Dask array                one row stripe of chunks computed at a time
``.npz`` (save_npz)       CSR: ``data``/``indices`` read piecewise out of the zip file;
                          CSC, COO: through the external bucket sort (:mod:`bignmf.io.coo`)
``.mtx`` / ``.mtx.gz``    parsed a few MB at a time with NumPy; a file sorted by row is
                          streamed directly, any other order goes through the bucket sort
AnnData ``.h5ad``         CSR: slices of ``data``/``indices``; CSC: bucket sort; dense: rows
AnnData ``.zarr``         the same, zarr format 2 or 3
dense Zarr array          row slices
========================  =====================================================================

Readers check the structure (header, token counts, index ranges, ``indptr``, shapes) and raise
:class:`~bignmf.errors.InputError` naming the file and the place. Values (negative, NaN, Inf)
are checked by the writer. Integer sources keep their dtype in ``Source.dtype``; booleans and
Matrix Market ``pattern`` files become float32 ones.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import itertools
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.io.coo import (
    DEFAULT_MEMORY_NNZ,
    DEFAULT_SLAB_NNZ,
    coo_source,
    max_slab_rows,
    plan_cuts,
    slabs_from_csr,
)
from bignmf.types import Source

__all__ = [
    "DEFAULT_MEMORY_NNZ",
    "DEFAULT_SLAB_NNZ",
    "SUPPORTED_FORMATS",
    "coo_source",
    "from_anndata_zarr",
    "from_dask",
    "from_h5ad",
    "from_mtx",
    "from_npz",
    "from_numpy",
    "from_scipy",
    "from_zarr_dense",
    "open_source",
]

SUPPORTED_FORMATS = {
    "npz": "scipy.sparse.save_npz file (.npz)",
    "mtx": "Matrix Market file (.mtx, .mtx.gz, .mtx.bz2, .mtx.xz, .mm)",
    "h5ad": "AnnData HDF5 file (.h5ad)",
    "zarr": "AnnData .zarr store, Zarr csr_matrix/csc_matrix group or dense Zarr array (.zarr)",
}
"""Formats :func:`open_source` reads from a path (besides in-memory objects)."""

_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


# --------------------------------------------------------------------------- shared helpers


def _check_positive(**values: int) -> None:
    for what, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _value_dtype(dtype: Any, name: str) -> np.dtype:
    """The dtype a source reports: numbers keep theirs, bool and float16 become float32."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise InputError(f"{name}: complex values ({dtype}) are not supported")
    if dtype.kind not in "biuf":
        raise InputError(f"{name}: values of dtype {dtype} are not numbers")
    if dtype.kind == "b" or dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def _shape2(shape: Any, name: str) -> tuple[int, int]:
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{name}: shape {shape!r} is not two integers") from None
    if m < 0 or n < 0:
        raise InputError(f"{name}: negative shape {(m, n)}")
    return m, n


def _check_indptr(indptr: np.ndarray, n_ptr: int, nnz: int, name: str, axis: str = "row") -> None:
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


def _check_range(idx: np.ndarray, size: int, name: str, what: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        bad = idx[(idx < 0) | (idx >= size)]
        raise InputError(
            f"{name}: {what}: {bad.size} indices outside [0, {size}) (first: {int(bad[0])})"
        )


def _csr_blocks(
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
    _check_indptr(indptr, m, nnz, name)
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
        _check_range(indices, n, name, f"rows {a}-{b - 1}: column indices")
        if data.dtype != dtype:
            data = data.astype(dtype)
        ptr = indptr[a : b + 1].astype(np.int64) - s
        yield sp.csr_matrix((data, indices, ptr), shape=(b - a, n))


def _csc_pieces(
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


def _dense_blocks(
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


# --------------------------------------------------------------------------- in memory


def from_scipy(A: Any, *, slab_nnz: int = DEFAULT_SLAB_NNZ, name: str | None = None) -> Source:
    """A scipy.sparse matrix or array of any format, cut into row slabs.

    Formats other than CSR are converted to CSR once (in memory). Slabs are copies, so the
    caller's matrix is never modified.
    """
    _check_positive(slab_nnz=slab_nnz)
    name = name or f"<scipy.sparse {type(A).__name__}>"
    if not sp.issparse(A):
        raise InputError(f"{name}: not a scipy.sparse matrix")
    if A.ndim != 2:
        raise InputError(f"{name}: has {A.ndim} dimensions, expected 2")
    dtype = _value_dtype(A.dtype, name)
    shape = _shape2(A.shape, name)
    csr = A if A.format == "csr" else A.tocsr()
    data, indices, indptr = csr.data, csr.indices, csr.indptr

    def read(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        return data[s:e].copy(), indices[s:e].copy()

    return Source(
        name,
        shape,
        dtype,
        lambda: _csr_blocks(name, shape, dtype, indptr, read, slab_nnz, data.size),
    )


def from_numpy(a: Any, *, slab_nnz: int = DEFAULT_SLAB_NNZ, name: str | None = None) -> Source:
    """A 2-D dense NumPy array, ``slab_nnz // n_cols`` rows per slab (zeros dropped)."""
    _check_positive(slab_nnz=slab_nnz)
    name = name or "<numpy.ndarray>"
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{name}: has {a.ndim} dimensions, expected 2")
    dtype = _value_dtype(a.dtype, name)
    shape = _shape2(a.shape, name)
    return Source(
        name, shape, dtype, lambda: _dense_blocks(name, shape, dtype, lambda s, e: a[s:e], slab_nnz)
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

    _check_positive(slab_nnz=slab_nnz)
    name = name or f"<dask.array {getattr(x, 'name', '?')}>"
    if getattr(x, "ndim", None) != 2:
        raise InputError(f"{name}: has {getattr(x, 'ndim', '?')} dimensions, expected 2")
    if any(np.isnan(c) for dim in x.chunks for c in dim):
        raise InputError(f"{name}: unknown chunk sizes; call x.compute_chunk_sizes() first")
    dtype = _value_dtype(x.dtype, name)
    shape = _shape2(x.shape, name)
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
            _check_indptr(stripe.indptr, height, stripe.data.size, label)
            yield from slabs_from_csr(
                stripe.data, stripe.indices, stripe.indptr, shape[1], slab_nnz, dtype
            )
            row += height

    return Source(name, shape, dtype, blocks)


# --------------------------------------------------------------------------- .npz


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
        except (ValueError, *_READ_ERRORS) as err:
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
        except _READ_ERRORS as err:
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
    except (zipfile.BadZipFile, *_READ_ERRORS) as err:
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
    _check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
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
        shape = _shape2(_npz_small(zf, "shape.npy", name).reshape(-1), name)
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
        dtype = _value_dtype(head.dtype, name)
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
                lambda read: _csr_blocks(name, shape, dtype, indptr, read, slab_nnz, nnz)
            ),
        )

    _check_indptr(indptr, n, nnz, name, axis="column")

    def csc_pieces():
        yield from streamed(lambda read: _csc_pieces(indptr, read, slab_nnz))

    return coo_source(
        name,
        shape,
        dtype,
        csc_pieces,
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
                _check_indptr(indptr, m // r, nb, name, axis="block row")
                per = max(1, slab_nnz // (r * c))
                cuts = plan_cuts(indptr, per, max(1, max_slab_rows(slab_nnz) // r))
                for a, b in itertools.pairwise(cuts):
                    s, e = int(indptr[a]), int(indptr[b])
                    vals = data.read((e - s) * r * c).reshape(e - s, r, c)
                    idx = indices.read(e - s)
                    _check_range(idx, n // c, name, f"block rows {a}-{b - 1}: block columns")
                    ptr = indptr[a : b + 1].astype(np.int64) - s
                    slab = sp.bsr_matrix((vals, idx, ptr), shape=((b - a) * r, n)).tocsr()
                    yield from slabs_from_csr(
                        slab.data, slab.indices, slab.indptr, n, slab_nnz, dtype
                    )
            finally:
                data.close()
                indices.close()

    return Source(name, shape, dtype, blocks)


# --------------------------------------------------------------------------- Matrix Market

_MTX_FIELDS = {
    "real": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "integer": np.dtype(np.int64),
    "pattern": np.dtype(np.float32),
}
_MTX_SYMMETRIES = ("general", "symmetric", "skew-symmetric", "hermitian")
_I64 = np.iinfo(np.int64)


def _open_bytes(path: str) -> BinaryIO:
    """A binary stream of the file's bytes, decompressed if it is gzip, bzip2 or xz."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as err:
        raise InputError(f"{path}: cannot be opened ({err})") from None
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")


class _MtxHeader:
    """The banner and size line of a Matrix Market file."""

    def __init__(self, path: str):
        self.name = path
        with _open_bytes(path) as fp:
            try:
                self._parse(fp)
            except _READ_ERRORS as err:
                raise InputError(f"{path}: cannot be read ({err})") from None

    def _line(self, fp: BinaryIO) -> bytes:
        line = fp.readline(1 << 20)
        self.offset += len(line)
        self.line_no += 1
        if len(line) == 1 << 20 and not line.endswith(b"\n"):
            raise InputError(f"{self.name}, line {self.line_no}: line longer than 1 MiB")
        return line

    def _parse(self, fp: BinaryIO) -> None:
        name = self.name
        self.offset = 0
        self.line_no = 0
        banner = self._line(fp)
        tokens = banner.decode("ascii", "replace").split()
        expected = (
            "'%%MatrixMarket matrix coordinate|array real|integer|pattern "
            "general|symmetric|skew-symmetric'"
        )
        if len(tokens) != 5 or tokens[0].lower() != "%%matrixmarket":
            raise InputError(
                f"{name}, line 1: not a Matrix Market header (expected {expected}, "
                f"found {banner[:100]!r})"
            )
        obj, fmt, field, symmetry = (t.lower() for t in tokens[1:])
        if obj != "matrix":
            raise InputError(f"{name}, line 1: object {obj!r} is not supported (only 'matrix')")
        if fmt not in ("coordinate", "array"):
            raise InputError(f"{name}, line 1: unknown format {fmt!r} (coordinate or array)")
        if field == "complex":
            raise InputError(
                f"{name}, line 1: complex Matrix Market files are not supported "
                "(NMF needs real values)"
            )
        if field not in _MTX_FIELDS:
            raise InputError(
                f"{name}, line 1: unknown field {field!r} (real, integer, pattern; not complex)"
            )
        if symmetry not in _MTX_SYMMETRIES:
            raise InputError(
                f"{name}, line 1: unknown symmetry {symmetry!r} "
                "(general, symmetric or skew-symmetric)"
            )
        if fmt == "array" and field == "pattern":
            raise InputError(f"{name}, line 1: the array format cannot be 'pattern'")
        if symmetry == "skew-symmetric" and field == "pattern":
            raise InputError(f"{name}, line 1: a pattern matrix cannot be skew-symmetric")
        self.format, self.field = fmt, field
        self.symmetry = "symmetric" if symmetry == "hermitian" else symmetry  # real hermitian
        while True:
            line = self._line(fp)
            if not line:
                raise InputError(f"{name}: ends before the size line (line {self.line_no})")
            stripped = line.strip()
            if stripped and not stripped.startswith(b"%"):
                break
        want = 3 if fmt == "coordinate" else 2
        try:
            sizes = [int(t) for t in stripped.split()]
        except ValueError:
            sizes = []
        if len(sizes) != want or min(sizes) < 0:
            what = "rows columns entries" if want == 3 else "rows columns"
            raise InputError(
                f"{name}, line {self.line_no}: size line must be {want} non-negative integers "
                f"({what}), found {stripped[:100]!r}"
            )
        self.shape = (sizes[0], sizes[1])
        m, n = self.shape
        if self.symmetry != "general" and m != n:
            raise InputError(
                f"{name}, line {self.line_no}: a {self.symmetry} matrix must be square, "
                f"not {m} x {n}"
            )
        if fmt == "coordinate":
            self.entries = sizes[2]  # duplicates allowed: they are summed, so no bound by m * n
        elif self.symmetry == "general":
            self.entries = m * n
        elif self.symmetry == "symmetric":
            self.entries = n * (n + 1) // 2
        else:
            self.entries = n * (n - 1) // 2
        self.dtype = _MTX_FIELDS[field]
        self.data_line = self.line_no + 1


def _mtx_chunks(fp: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """Whole lines of the stream, about ``chunk_bytes`` at a time, each chunk ending in \\n."""
    tail = b""
    while True:
        block = fp.read(chunk_bytes)
        if not block:
            break
        buf = tail + block if tail else block
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            tail = buf
            continue
        tail = buf[cut:]
        yield buf if cut == len(buf) else buf[:cut]
    if tail:
        yield tail + b"\n"


def _parse_slow(
    buf: bytes, ncols: int, integer: bool, name: str, line0: int
) -> tuple[np.ndarray, np.ndarray]:
    """Line by line: skips blank and % lines, names the first bad line."""
    out: list[list[Any]] = []
    lines: list[int] = []
    for i, line in enumerate(buf.split(b"\n")[:-1]):
        s = line.strip()
        if not s or s.startswith(b"%"):
            continue
        tokens = s.split()
        if len(tokens) != ncols:
            raise InputError(
                f"{name}, line {line0 + i}: expected {ncols} numbers, found {len(tokens)}: "
                f"{s[:100]!r}"
            )
        try:
            row = [int(t) for t in tokens[: min(ncols, 2)]] if ncols >= 2 else []
            if ncols != 2:
                row.append(int(tokens[-1]) if integer else float(tokens[-1]))
        except ValueError:
            kind = "an integer" if integer or ncols == 2 else "a number"
            raise InputError(
                f"{name}, line {line0 + i}: not {kind} where one is expected: {s[:100]!r}"
            ) from None
        out.append(row)
        lines.append(i)
    dtype = np.int64 if integer or ncols == 2 else np.float64
    try:
        arr = np.array(out, dtype=dtype).reshape(-1, ncols)
    except OverflowError:
        last = line0 + buf.count(b"\n") - 1
        raise InputError(
            f"{name}, lines {line0}-{last}: an integer does not fit in 64 bits"
        ) from None
    return arr, np.asarray(lines, dtype=np.int64)


def _parse_chunk(
    buf: bytes, ncols: int, integer: bool, name: str, line0: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse whole lines of ``ncols`` numbers each with NumPy.

    Returns the ``(k, ncols)`` array (int64 when every token is an integer, float64 otherwise)
    and, when some lines were blank or comments, the chunk-relative line of every row.
    """
    u = np.frombuffer(buf, dtype=np.uint8)
    ws = u <= 32
    starts = ~ws
    starts[1:] &= ws[:-1]
    first = np.flatnonzero(starts)
    del ws, starts
    n_tokens = first.size
    per_line = np.searchsorted(first, np.flatnonzero(u == 10))
    del first
    per_line = np.diff(per_line, prepend=0)
    lines = None
    if not bool(np.all(per_line == ncols)):
        if not bool(np.all((per_line == ncols) | (per_line == 0))):
            return _parse_slow(buf, ncols, integer, name, line0)
        lines = np.flatnonzero(per_line == ncols)
    del per_line
    arr = None
    with contextlib.suppress(ValueError):
        arr = np.fromstring(buf, dtype=np.int64, sep=" ")
        if arr.size != n_tokens or bool(np.any((arr == _I64.max) | (arr == _I64.min))):
            arr = None
    if arr is None and not integer:
        with contextlib.suppress(ValueError):
            arr = np.fromstring(buf, dtype=np.float64, sep=" ")
            if arr.size != n_tokens:
                arr = None
    if arr is None:
        return _parse_slow(buf, ncols, integer, name, line0)
    return arr.reshape(-1, ncols), lines


def _mtx_indices(
    col: np.ndarray, size: int, what: str, name: str, line0: int, lines: np.ndarray | None
) -> np.ndarray:
    """1-based indices (int or float parsed) to 0-based int64, checked against ``size``."""
    if col.dtype.kind == "f":
        idx = col.astype(np.int64)
        bad = np.flatnonzero(idx != col)
        if bad.size:
            line = line0 + int(bad[0] if lines is None else lines[bad[0]])
            raise InputError(
                f"{name}, line {line}: {what} index {float(col[bad[0]])!r} is not an integer"
            )
    else:
        idx = col.copy()
    bad = np.flatnonzero((idx < 1) | (idx > size))
    if bad.size:
        line = line0 + int(bad[0] if lines is None else lines[bad[0]])
        raise InputError(
            f"{name}, line {line}: {what} index {int(idx[bad[0]])} is outside 1..{size}"
        )
    idx -= 1
    return idx


def _mtx_pieces(
    header: _MtxHeader, chunk_bytes: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(rows, cols, vals) pieces of a Matrix Market file, 0-based, symmetric parts mirrored."""
    name, (m, n) = header.name, header.shape
    coordinate = header.format == "coordinate"
    pattern = header.field == "pattern"
    integer = header.field == "integer"
    ncols = (2 if pattern else 3) if coordinate else 1
    sym = header.symmetry
    expected = header.entries
    if not coordinate and sym != "general":
        # first value of every column of the stored lower triangle (diagonal included or not)
        j = np.arange(n, dtype=np.int64)
        col_start = j * m - j * (j - 1) // 2 - (j if sym == "skew-symmetric" else 0)
    seen = 0
    line0 = header.data_line
    with _open_bytes(name) as fp:
        try:
            remaining = header.offset  # skip the header, read again
            while remaining > 0:
                got = fp.read(min(remaining, 1 << 20))
                if not got:
                    break
                remaining -= len(got)
            for buf in _mtx_chunks(fp, chunk_bytes):
                arr, lines = _parse_chunk(buf, ncols, integer, name, line0)
                k = arr.shape[0]
                if seen + k > expected:
                    extra = expected - seen
                    line = line0 + int(extra if lines is None else lines[extra])
                    raise InputError(
                        f"{name}, line {line}: more entries than the {expected} the header declares"
                    )
                if coordinate:
                    rows = _mtx_indices(arr[:, 0], m, "row", name, line0, lines)
                    cols = _mtx_indices(arr[:, 1], n, "column", name, line0, lines)
                    vals = None if pattern else arr[:, 2]
                else:
                    vals = arr[:, 0]
                    pos = np.arange(seen, seen + k, dtype=np.int64)
                    keep = np.flatnonzero(vals != 0)
                    pos, vals = pos[keep], vals[keep]
                    if sym == "general":
                        rows, cols = pos % m, pos // m
                    else:
                        cols = np.searchsorted(col_start, pos, side="right") - 1
                        rows = cols + (pos - col_start[cols])
                        if sym == "skew-symmetric":
                            rows += 1
                del arr
                if vals is not None:
                    vals = vals.astype(header.dtype)
                if sym != "general":
                    off = np.flatnonzero(rows != cols)
                    rows, cols = (
                        np.concatenate((rows, cols[off])),
                        np.concatenate((cols, rows[off])),
                    )
                    if vals is not None:
                        mirror = vals[off] if sym == "symmetric" else -vals[off]
                        vals = np.concatenate((vals, mirror))
                seen += k
                line0 += buf.count(b"\n")
                yield rows, cols, vals
        except _READ_ERRORS as err:
            raise InputError(f"{name}: cannot be read after line {line0} ({err})") from None
    if seen < expected:
        raise InputError(
            f"{name}: the header declares {expected} entries but the file ends after {seen} "
            f"(line {line0 - 1}); is it truncated?"
        )


def from_mtx(
    path: str | os.PathLike,
    *,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    tmpdir: str | os.PathLike | None = None,
    row_sorted: bool | None = None,
    chunk_bytes: int | None = None,
) -> Source:
    """A Matrix Market file (``coordinate`` or ``array``), plain or gzip/bzip2/xz-compressed.

    Fields ``real`` (float64), ``integer`` (int64) and ``pattern`` (float32 ones); symmetries
    ``general``, ``symmetric`` and ``skew-symmetric`` (the stored triangle is mirrored). The
    file is parsed ``chunk_bytes`` at a time (default ``4 * slab_nnz`` bytes, between 256 KiB
    and 8 MiB), never whole. A file sorted by row streams in one pass; any other order (e.g.
    10x Genomics files, sorted by column) goes through the external bucket sort
    (:func:`bignmf.io.coo.coo_source`: ``memory_nnz``, ``tmpdir``, ``row_sorted``). Zeros of the
    dense ``array`` format are dropped.

    Errors (InputError) name the line: malformed header or size line, wrong number of tokens,
    indices out of range, more or fewer entries than declared, complex fields.
    """
    _check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    if chunk_bytes is None:
        chunk_bytes = min(8 << 20, max(256 << 10, 4 * int(slab_nnz)))
    _check_positive(chunk_bytes=chunk_bytes)
    header = _MtxHeader(os.fspath(path))
    return coo_source(
        header.name,
        header.shape,
        header.dtype,
        lambda: _mtx_pieces(header, int(chunk_bytes)),
        tmpdir=tmpdir,
        memory_nnz=memory_nnz,
        slab_nnz=slab_nnz,
        row_sorted=row_sorted,
    )


# --------------------------------------------------------------------------- AnnData, Zarr


def _attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _sparse_group_source(
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
    enc = _attr_str(attrs.get("encoding-type"))
    if enc is None and "h5sparse_format" in attrs:  # anndata < 0.7
        enc = f"{_attr_str(attrs['h5sparse_format'])}_matrix"
        shape = attrs.get("h5sparse_shape")
    else:
        shape = attrs.get("shape")
    if enc not in ("csr_matrix", "csc_matrix"):
        raise InputError(
            f"{name}: group of encoding-type {enc!r}, expected csr_matrix, csc_matrix or a dense "
            "array"
        )
    shape = _shape2(shape, name)
    for k in ("data", "indices", "indptr"):
        if k not in node:
            raise InputError(f"{name}: {enc} group without its {k!r} array")
    data, indices, indptr = node["data"], node["indices"], node["indptr"]
    if len(data.shape) != 1 or data.shape != indices.shape:
        raise InputError(f"{name}: data {data.shape} and indices {indices.shape} disagree")
    dtype = _value_dtype(data.dtype, name)
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
                lambda ptr, read: _csr_blocks(name, shape, dtype, ptr, read, slab_nnz, nnz)
            ),
        )

    def csc(ptr, read):
        _check_indptr(ptr, n, nnz, name, axis="column")
        yield from _csc_pieces(ptr, read, slab_nnz)

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


def _dense_array_source(
    name: str, arr: Any, open_array: Callable[[], contextlib.AbstractContextManager], slab_nnz
) -> Source:
    if len(arr.shape) != 2:
        raise InputError(f"{name}: dense array of shape {arr.shape}, expected 2-D")
    dtype = _value_dtype(arr.dtype, name)
    shape = _shape2(arr.shape, name)
    chunks = getattr(arr, "chunks", None)
    chunk_rows = int(chunks[0]) if chunks else 1

    def blocks():
        with open_array() as a:
            yield from _dense_blocks(name, shape, dtype, lambda s, e: a[s:e], slab_nnz, chunk_rows)

    return Source(name, shape, dtype, blocks)


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

    _check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
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
            return _dense_array_source(name, node, opened, slab_nnz)
        return _sparse_group_source(name, node, opened, slab_nnz, memory_nnz, tmpdir, row_sorted)


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
        return _dense_array_source(name, node, opened, slab_nnz)
    return _sparse_group_source(name, node, opened, slab_nnz, memory_nnz, tmpdir, row_sorted)


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
    _check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
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

    _check_positive(slab_nnz=slab_nnz)
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

    return _dense_array_source(name, node, opened, slab_nnz)


# --------------------------------------------------------------------------- dispatch


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
    return open_source(matrix, slab_nnz=slab_nnz, **opts)


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
        if name.endswith((".mtx", ".mm")):
            return "mtx"
    for suffix, fmt in ((".npz", "npz"), (".mtx", "mtx"), (".mm", "mtx"), (".h5ad", "h5ad")):
        if name.endswith(suffix):
            return fmt
    if name.endswith(".zarr") or (
        path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))
    ):
        return "zarr"
    return None


def _zarr_source(path: str, key: str | None, slab_nnz: int, **opts: Any) -> Source:
    """Sniff a ``.zarr``: AnnData store, bare csr/csc group or dense array."""
    import zarr

    root = _zarr_open(path, path)
    if isinstance(root, zarr.Array):
        if key:
            raise InputError(f"{path}: is a single dense array, it has no {key!r}")
        return from_zarr_dense(path, slab_nnz=slab_nnz)
    enc = _attr_str(root.attrs.get("encoding-type"))
    if enc == "anndata":
        return from_anndata_zarr(path, key or "X", slab_nnz=slab_nnz, **opts)
    if key or enc in ("csr_matrix", "csc_matrix"):
        return _zarr_node_source(path, key, slab_nnz, **opts)
    raise InputError(
        f"{path}: a Zarr group that is neither an AnnData store (encoding-type 'anndata'), a "
        f"csr_matrix/csc_matrix group nor a dense array (encoding-type {enc!r}); "
        "give the matrix's key"
    )


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
    format : {'npz', 'mtx', 'h5ad', 'zarr'}, optional
        The file format, when the suffix does not tell.
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
    _check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    opts = {"memory_nnz": memory_nnz, "tmpdir": tmpdir, "row_sorted": row_sorted}
    if isinstance(src, Source):
        return src
    if sp.issparse(src):
        return from_scipy(src, slab_nnz=slab_nnz)
    if isinstance(src, np.ndarray):
        return from_numpy(src, slab_nnz=slab_nnz)
    if _is_dask(src):
        return from_dask(src, slab_nnz=slab_nnz)
    if type(src).__name__ == "AnnData":
        return _from_anndata_object(src, key, slab_nnz, **opts)
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
    path_s = os.fspath(path)
    if fmt == "npz":
        return from_npz(path_s, slab_nnz=slab_nnz, **opts)
    if fmt == "mtx":
        return from_mtx(path_s, slab_nnz=slab_nnz, **opts)
    if fmt == "h5ad":
        return from_h5ad(path_s, key or "X", slab_nnz=slab_nnz, **opts)
    return _zarr_source(path_s, key, slab_nnz, **opts)
