"""The on-disk sparse matrix: the only module that knows its Zarr layout.

Layout
------
A matrix is a Zarr group in AnnData's ``csr_matrix`` encoding, so that the ``X`` of an AnnData
``.zarr`` store opens directly::

    matrix.zarr/                 attrs: encoding-type="csr_matrix", encoding-version="0.1.0",
                                        shape=[m, n], bignmf={...}
        data      (nnz,)   float32 | float64, chunks of ``chunk_size`` elements
        indices   (nnz,)   int32 (int64 when n > 2**31 - 1), same chunks
        indptr    (m + 1,) int64, same chunk length

The ``bignmf`` attribute records the row blocks — consecutive row ranges of about ``block_nnz``
nonzeros (by default four chunks), the unit of work of every graph — as their row and nonzero
offsets, with the squared Frobenius norm, computed once while writing. Reading block ``i``
touches only the chunks of ``data``/``indices`` that overlap ``nnz_offsets[i]:nnz_offsets[i+1]``
and the few ``indptr`` chunks of its rows. Stores written by other tools (AnnData) have no such
attribute: their row blocks are planned from ``indptr`` when opened.

Writes go to a hidden sibling directory that is renamed into place once complete, so a failed or
killed conversion never leaves a half-written store nor touches an existing one.

Validation
----------
A store is a directory anyone can edit, and SciPy's compiled kernels trust ``indptr`` and
``indices``: a column index past ``n`` writes outside their buffers (a segfault, or workers
dying and the fit hanging). So nothing the attributes say is taken on trust where a lie would
reach a kernel, and each is checked where it costs least:

* on opening (:func:`_layout`): the attributes against each other and against the arrays' own
  metadata — shape against ``indptr``'s length, ``data``'s against ``indices``', dtypes, the
  block table increasing from 0 to ``m`` rows and ``nnz`` entries, ``indptr``'s first and last
  entries (two elements read), bounds the stored norm and sum must meet;
* in :meth:`CSRStore.fingerprint`, which reads all of ``indptr`` anyway and which a fit takes
  before it computes: ``indptr`` never decreases and meets the block table at every block;
* in :meth:`CSRStore.read_block`, the one place a row block is decoded, for every block on any
  worker (:func:`bignmf.store.validate.check_stored_block`): its ``indptr`` against the block
  table, its column indices within ``[0, n)`` and its values finite and non-negative, a few
  percent of the read.

The stored ``frobenius_sq`` and ``sum`` cannot be checked without a pass over ``data``; opening
rejects values no non-negative matrix of ``nnz`` entries can have, which catches some lies and
not all. Making the rest harmless is the fit's part: it should measure ‖A‖² and ΣA in its first
pass over A, which reads every block anyway, and refuse a store whose attributes differ.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr
from zarr.buffer.cpu import NDBuffer
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from bignmf.errors import InputError, StoreExistsError, StoreFormatError
from bignmf.store.layout import DEFAULT_CHUNK_SIZE, DEFAULT_CODEC
from bignmf.store.raw import DirectChunkReader, chunk_checksums
from bignmf.store.raw import layout as chunk_layout
from bignmf.store.validate import (
    canonical_block,
    check_stored_block,
    index_dtype,
    value_dtype,
    values_ok,
)
from bignmf.types import Source

FORMAT_VERSION = 1
INDPTR_CHUNK_DIVISOR = 16  # a block's indptr is its rows, far fewer than its nonzeros
DEFAULT_BLOCK_CHUNKS = 4
_WRITE_CHUNKS = 4  # chunks buffered per write so zarr compresses several at once

#: The compressors of :data:`~bignmf.store.layout.CODEC_NAMES`, made when a store is written.
CODECS: dict[str, Callable[[], tuple]] = {
    "lz4": lambda: (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
    "zstd": lambda: (ZstdCodec(level=0),),
    "none": lambda: (),
}


def _codec(name: str) -> tuple:
    """The compressor of ``name``, then zarr's ``crc32c`` codec: every chunk of a store carries
    the CRC-32C of its bytes, checked whenever it is read (a flipped byte used to be read
    silently) and read alone for the store's identity (:meth:`CSRStore.fingerprint`)."""
    try:
        return (*CODECS[name](), Crc32cCodec())
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None


# --------------------------------------------------------------------------- row-block planning


@dataclass
class RowBlockPlanner:
    """Cuts a stream of rows into row blocks of about ``block_nnz`` nonzeros (or ``block_rows``).

    The cut depends only on the rows' nonzero counts, never on how the stream is sliced, so the
    same matrix always gets the same blocks. A row larger than the target is a block of its own.
    """

    block_nnz: int | None
    block_rows: int | None = None
    rows_in_block: int = 0
    nnz_in_block: int = 0

    def take(self, row_nnz: np.ndarray) -> tuple[int, bool]:
        """How many of these rows join the current block, and whether that closes it."""
        if row_nnz.size == 0:
            return 0, False
        if self.block_rows is not None:
            n = min(self.block_rows - self.rows_in_block, row_nnz.size)
        else:
            cum = self.nnz_in_block + np.cumsum(row_nnz, dtype=np.int64)
            n = int(np.searchsorted(cum, self.block_nnz, side="right"))
            if n == 0 and self.rows_in_block == 0:
                n = 1
        self.rows_in_block += n
        self.nnz_in_block += int(row_nnz[:n].sum())
        closes = n < row_nnz.size or self.rows_in_block == self.block_rows
        if closes:
            self.rows_in_block = self.nnz_in_block = 0
        return n, closes

    def cuts(self, row_nnz: np.ndarray) -> Iterator[tuple[int, int, bool]]:
        """Yield ``(start, stop, closes)`` row ranges of ``row_nnz`` as the blocks take them."""
        start = 0
        while start < row_nnz.size:
            n, closes = self.take(row_nnz[start:])
            yield start, start + n, closes
            start += n


# --------------------------------------------------------------------------- writing


class _ChunkedAppender:
    """Appends to a 1-D Zarr array in whole chunks (unaligned writes read-modify-write)."""

    def __init__(self, array: zarr.Array, chunk: int):
        self.array = array
        self.buf = np.empty(chunk * _WRITE_CHUNKS, dtype=array.dtype)
        self.fill = 0
        self.written = 0

    def append(self, values: np.ndarray) -> None:
        pos = 0
        while pos < values.size:
            n = min(values.size - pos, self.buf.size - self.fill)
            self.buf[self.fill : self.fill + n] = values[pos : pos + n]
            self.fill += n
            pos += n
            if self.fill == self.buf.size:
                self._flush()

    def _flush(self) -> None:
        end = self.written + self.fill
        if end > self.array.shape[0]:
            self.array.resize((max(end, 2 * self.array.shape[0]),))
        self.array[self.written : end] = self.buf[: self.fill]
        self.written, self.fill = end, 0

    def close(self) -> int:
        """Write what is buffered, trim the array to its length and return that length."""
        self.array.resize((self.written + self.fill,))
        if self.fill:
            self._flush()
        return self.written


@dataclass
class _BlockWriter:
    """Streams canonical row blocks into the three arrays and records the block offsets."""

    data: _ChunkedAppender
    indices: _ChunkedAppender
    indptr: _ChunkedAppender
    row_offsets: list[int] = field(default_factory=lambda: [0])
    nnz_offsets: list[int] = field(default_factory=lambda: [0])
    frobenius_sq: float = 0.0
    value_sum: float = 0.0

    def __post_init__(self) -> None:
        self.indptr.append(np.zeros(1, dtype=np.int64))

    def write(self, block: sp.csr_matrix) -> None:
        nnz0 = self.nnz_offsets[-1]
        self.data.append(block.data)
        self.indices.append(block.indices)
        self.indptr.append(block.indptr[1:].astype(np.int64) + nnz0)
        self.row_offsets.append(self.row_offsets[-1] + block.shape[0])
        self.nnz_offsets.append(nnz0 + block.nnz)
        sq, total = _data_stats(block.data)
        self.frobenius_sq += sq
        self.value_sum += total


def fingerprint(shape, nnz: int, dtype, read_indptr, read_data, step: int = 1 << 20) -> dict:
    """Identity of a matrix: shape, nnz, dtype, a CRC of all of indptr and of a data sample.

    ``read_indptr(start, stop)`` / ``read_data(start, stop)`` return those ranges. Reads indptr
    once (O(m)) and at most three windows of ``data``, so it is cheap for any size.
    """
    crc = 0
    for start, stop in _chunk_ranges(shape[0] + 1, step):
        crc = zlib.crc32(np.ascontiguousarray(read_indptr(start, stop), dtype="<i8"), crc)
    sample = 0
    window = 1 << 16
    for start in sorted({0, max(nnz // 2 - window // 2, 0), max(nnz - window, 0)}):
        values = read_data(start, min(start + window, nnz))
        sample = zlib.crc32(
            np.ascontiguousarray(values, dtype=f"<f{np.dtype(dtype).itemsize}"), sample
        )
    return {
        "shape": [int(x) for x in shape],
        "nnz": int(nnz),
        "dtype": str(np.dtype(dtype)),
        "indptr_crc32": crc,
        "data_sample_crc32": sample,
    }


def _data_stats(values: np.ndarray) -> tuple[float, float]:
    """Sum of squares and sum of stored values, accumulated in float64."""
    wide = values.astype(np.float64)
    return float(np.dot(wide, wide)), float(wide.sum())


def _create_arrays(group: zarr.Group, dtype: np.dtype, idx: np.dtype, chunk: int, codec: str):
    def create(name, dt, length):
        return group.create_array(
            name, shape=(0,), chunks=(length,), dtype=dt, compressors=_codec(codec), fill_value=0
        )

    indptr_chunk = max(chunk // INDPTR_CHUNK_DIVISOR, 1024)
    return (
        create("data", dtype, chunk),
        create("indices", idx, chunk),
        create("indptr", np.int64, indptr_chunk),
    )


def _slabs_in_blocks(
    source: Source, dtype: np.dtype, planner: RowBlockPlanner
) -> Iterator[sp.csr_matrix]:
    """Validate each slab of the source and regroup its rows into the planned row blocks."""
    n_rows, n_cols = source.shape
    pending: list[sp.csr_matrix] = []
    row = done = 0
    for slab in source.blocks():
        slab = sp.csr_matrix(slab)
        if row + slab.shape[0] > n_rows:
            raise InputError(f"{source.name}: yields more than the {n_rows} rows it declares")
        slab = canonical_block(slab, n_cols, dtype, source=source.name, block_index=done, row0=row)
        for start, stop, closes in planner.cuts(np.diff(slab.indptr)):
            pending.append(slab[start:stop])
            if closes:
                yield _stack(pending)
                pending, done = [], done + 1
        row += slab.shape[0]
    if row != n_rows:
        raise InputError(f"{source.name}: yields {row} rows but declares {n_rows}")
    if pending:
        yield _stack(pending)


def _stack(parts: list[sp.csr_matrix]) -> sp.csr_matrix:
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


def _hidden_sibling(dst: Path, tag: str) -> Path:
    return dst.with_name(f".{dst.name}.{tag}-{uuid.uuid4().hex[:12]}")


def _commit(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move a complete store into place; an old store is removed only after the swap."""
    if not dst.exists():
        os.rename(tmp, dst)
        return
    if not overwrite:
        raise StoreExistsError(dst)
    old = _hidden_sibling(dst, "old")
    os.rename(dst, old)
    os.rename(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def write_matrix(
    source: Source,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: np.dtype | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_nnz: int | None = None,
    block_rows: int | None = None,
    codec: str = DEFAULT_CODEC,
    progress: Callable[[int], Any] | None = None,
) -> CSRStore:
    """Write a streamed matrix to a sparse Zarr store, validating every row on the way.

    Parameters
    ----------
    source : Source
        The matrix as a stream of row slabs (see :func:`bignmf.io.registry.open_source`).
    dst : path
        Directory of the new store. Must not exist unless ``overwrite`` is true.
    overwrite : bool, default False
        Replace an existing store at ``dst`` (only once the new one is complete).
    dtype : {None, 'float32', 'float64'}
        Dtype of the stored values; by default float32/float64 sources keep theirs and any other
        (integers, booleans, float16) become float32.
    chunk_size : int, default 2**19
        Elements per Zarr chunk of ``data`` and ``indices``.
    block_nnz : int, optional
        Target nonzeros per row block; default ``4 * chunk_size``.
    block_rows : int, optional
        Fixed rows per row block instead of a nonzero target.
    codec : {'lz4', 'zstd', 'none'}
        Compression of every array (see benchmarks/README.md for the read speeds).
    progress : callable, optional
        Called with the number of rows written after each row block.

    Returns
    -------
    CSRStore
        The new store, opened.

    Raises
    ------
    InputError
        If the source is empty, has no nonzeros, or holds negative, NaN or infinite values or
        inconsistent indices (the message names the rows).
    StoreExistsError
        If ``dst`` exists and ``overwrite`` is false.

    Notes
    -----
    Memory: one source slab plus one row block (about ``block_nnz`` entries) plus four chunks per
    array, whatever the size of the matrix.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise StoreExistsError(dst)
    n_rows, n_cols = source.shape
    if n_rows <= 0 or n_cols <= 0:
        raise InputError(f"{source.name}: the matrix is empty (shape {source.shape})")
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    dtype = value_dtype(source.dtype, dtype)
    planner = RowBlockPlanner(block_nnz or DEFAULT_BLOCK_CHUNKS * chunk_size, block_rows)
    tmp = _hidden_sibling(dst, "tmp")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        arrays = _create_arrays(group, dtype, index_dtype(n_cols), chunk_size, codec)
        writer = _BlockWriter(*(_ChunkedAppender(a, a.chunks[0]) for a in arrays))
        for block in _slabs_in_blocks(source, dtype, planner):
            writer.write(block)
            if progress is not None:
                progress(block.shape[0])
        for appender in (writer.data, writer.indices, writer.indptr):
            appender.close()
        if writer.nnz_offsets[-1] == 0:
            raise InputError(f"{source.name}: the matrix has no nonzero entries")
        group.attrs.update(_attributes(source, writer, chunk_size, codec))
        _commit(tmp, dst, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_matrix(dst)


def _attributes(source: Source, writer: _BlockWriter, chunk_size: int, codec: str) -> dict:
    return {
        "encoding-type": "csr_matrix",
        "encoding-version": "0.1.0",
        "shape": list(source.shape),
        "bignmf": {
            "format_version": FORMAT_VERSION,
            "row_offsets": writer.row_offsets,
            "nnz_offsets": writer.nnz_offsets,
            "frobenius_sq": writer.frobenius_sq,
            "sum": writer.value_sum,
            "chunk_size": chunk_size,
            "codec": codec,
            "source": source.name,
        },
    }


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Layout:
    """What a handle knows about a stored matrix without reading its data."""

    shape: tuple[int, int]
    nnz: int
    dtype: np.dtype
    index_dtype: np.dtype
    row_offsets: np.ndarray
    nnz_offsets: np.ndarray
    chunk_size: int
    frobenius_sq: float | None
    value_sum: float | None


class BlockBuffers:
    """Reusable read buffers for row blocks of one store (reads into them are 2-3x faster).

    A block read into buffers is a view: it is overwritten by the next read into them.
    """

    def __init__(self, layout: Layout):
        widest = int(np.diff(layout.nnz_offsets).max())
        tallest = int(np.diff(layout.row_offsets).max())
        self.data = np.empty(widest, dtype=layout.dtype)
        self.indices = np.empty(widest, dtype=layout.index_dtype)
        self.indptr = np.empty(tallest + 1, dtype=np.int64)


def _read_into(array: zarr.Array, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return array[start:stop]
    view = out[: stop - start]
    array.get_basic_selection(slice(start, stop), out=NDBuffer.from_numpy_array(view))
    return view


_OPENED: dict[tuple[str, str | None], tuple] = {}  # (path, key) -> (signature, handles)
_OPENED_MAX = 16


def _store_signature(path: str, key: str | None) -> tuple | None:
    """Inode and mtime of the store's directories and its arrays' (None if not local files)."""
    base = os.path.join(path, key) if key else path
    names = (path, base, *(os.path.join(base, n) for n in ("data", "indices", "indptr")))
    try:
        stats = [os.stat(name) for name in names]
    except (OSError, TypeError, ValueError):
        return None
    return tuple((st.st_dev, st.st_ino, st.st_mtime_ns) for st in stats)


class CSRStore:
    """A handle on a sparse matrix stored as CSR row blocks in Zarr.

    Obtain one with :func:`open_matrix` (or from :func:`write_matrix`). The handle is small and
    picklable: Dask tasks carry it and read their row blocks straight from the store on the
    worker, so the scheduler never carries matrix data.

    Attributes
    ----------
    path : str
        The store's location.
    key : str or None
        Path of the matrix group inside the store (``"X"`` for an AnnData store).
    shape, nnz, dtype, n_blocks, row_offsets, nnz_offsets
        The matrix's shape, number of stored entries, value dtype, and its row blocks: block
        ``i`` holds rows ``row_offsets[i]:row_offsets[i+1]`` and entries
        ``nnz_offsets[i]:nnz_offsets[i+1]``.
    """

    def __init__(self, path: str, key: str | None, layout: Layout):
        self.path = path
        self.key = key
        self.layout = layout
        self._group: zarr.Group | None = None
        self._arrays: tuple[zarr.Array, zarr.Array, zarr.Array] | None = None
        self._readers: tuple | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "key": self.key, "layout": self.layout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["key"], state["layout"])

    def __repr__(self) -> str:
        m, n = self.shape
        return (
            f"<CSRStore {self.path!r}{'/' + self.key if self.key else ''}: {m}x{n}, "
            f"nnz={self.nnz}, {self.dtype}, {self.n_blocks} row blocks>"
        )

    def __dask_tokenize__(self) -> tuple:
        lay = self.layout
        return (self.path, self.key, lay.shape, lay.nnz, lay.nnz_offsets.tobytes())

    # -- properties
    shape = property(lambda self: self.layout.shape)
    nnz = property(lambda self: self.layout.nnz)
    dtype = property(lambda self: self.layout.dtype)
    row_offsets = property(lambda self: self.layout.row_offsets)
    nnz_offsets = property(lambda self: self.layout.nnz_offsets)

    @property
    def where(self) -> str:
        """The store's path, with the matrix's key inside it: what messages name."""
        return f"{self.path}/{self.key}" if self.key else self.path

    @property
    def n_blocks(self) -> int:
        """Number of row blocks."""
        return len(self.layout.row_offsets) - 1

    @property
    def group(self) -> zarr.Group:
        """The Zarr group of the matrix, opened read-only on first use."""
        if self._group is None:
            self._group = _open_group(self.path, self.key)
        return self._group

    @property
    def arrays(self) -> tuple[zarr.Array, zarr.Array, zarr.Array]:
        """``(data, indices, indptr)``, opened once: each lookup re-reads metadata."""
        if self._arrays is None:
            g = self.group
            self._arrays = (g["data"], g["indices"], g["indptr"])
        return self._arrays

    def _open_readers(self) -> tuple:
        """The chunk readers of (data, indices, indptr), opened once per process and store.

        A task on a worker gets a freshly unpickled handle; opening the group, its arrays and
        their readers again (8-10 ms of metadata reads) would be paid by every task. Handles
        are shared while the store's directories are unchanged (a rewritten store gets new ones).
        """
        where = (self.path, self.key)
        signature = _store_signature(self.path, self.key)
        hit = _OPENED.get(where) if signature is not None else None
        if hit is not None and hit[0] == signature:
            self._group, self._arrays, self._readers = hit[1]
            return self._readers
        readers = tuple(DirectChunkReader.for_array(a) for a in self.arrays)
        self._readers = readers
        if signature is not None:
            _OPENED.pop(where, None)
            while len(_OPENED) >= _OPENED_MAX:
                _OPENED.pop(next(iter(_OPENED)), None)
            _OPENED[where] = (signature, (self._group, self._arrays, readers))
        return readers

    def _read(self, which: int, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
        """Elements of data (0), indices (1) or indptr (2), decoded in place where possible."""
        readers = self._readers if self._readers is not None else self._open_readers()
        reader = readers[which]
        if reader is None:
            return _read_into(self.arrays[which], start, stop, out)
        if out is not None and out.dtype != reader.dtype:
            # the reader decodes bytes straight into ``out``: an AnnData store's int32 indptr
            # in the int64 buffer would be garbage, so it gets its own (small) array
            out = None
        return reader.read(start, stop, out)

    @property
    def frobenius_sq(self) -> float:
        """Squared Frobenius norm ‖A‖²_F (float64)."""
        return self._statistics()[0]

    @property
    def value_sum(self) -> float:
        """Sum of all entries of A (float64); ``value_sum / (m * n)`` is A's mean."""
        return self._statistics()[1]

    def _statistics(self) -> tuple[float, float]:
        """Stored at write time; for stores written elsewhere, one pass over ``data``, once."""
        lay = self.layout
        if lay.frobenius_sq is None or lay.value_sum is None:
            sq = total = 0.0
            for start, stop in _chunk_ranges(self.nnz, 4 * lay.chunk_size):
                part = self._decode(0, start, stop, None)
                if not values_ok(part):  # no norm of negative values: read_block says where
                    self._check_values_from(start)
                part_sq, part_sum = _data_stats(part)
                sq, total = sq + part_sq, total + part_sum
            object.__setattr__(lay, "frobenius_sq", sq)
            object.__setattr__(lay, "value_sum", total)
        return lay.frobenius_sq, lay.value_sum

    def _check_values_from(self, start: int) -> None:
        """Read the blocks from the one holding entry ``start`` until one fails its check."""
        first = int(np.searchsorted(self.nnz_offsets, start, side="right")) - 1
        for i in range(max(first, 0), self.n_blocks):
            self.read_block(i)  # raises, naming the row, column and value

    def fingerprint(self) -> dict:
        """Identity of the matrix (see :func:`fingerprint`), to match checkpoints to it.

        It reads all of ``indptr``, so it checks it on the way (:class:`_IndptrCheck`): a fit,
        which takes the fingerprint before it computes, finds a corrupt indptr in the client.

        Raises
        ------
        StoreFormatError
            If indptr decreases or does not meet the block table at a block boundary.
        """
        check = _IndptrCheck(self)
        found = fingerprint(
            self.shape,
            self.nnz,
            self.dtype,
            check.read,
            lambda a, b: self._decode(0, a, b, None),
        )
        return {**found, **self._contents_digest()}

    def _contents_digest(self) -> dict:
        """What covers every stored value: the CRC-32 of every chunk's CRC-32C (read from the
        chunk files' tails, nothing decoded) when the store carries them, as bignmf writes
        it; else a CRC-32 of all of ``data`` and ``indices``, one pass (AnnData's stores)."""
        layouts = [chunk_layout(array) for array in self.arrays]
        if all(found is not None and found.checksum for found in layouts):
            digest = 0
            for found in layouts:
                digest = zlib.crc32(chunk_checksums(found), digest)
            return {"chunks_crc32c_crc32": digest}
        digest = 0
        for which in (0, 1):
            for start, stop in _chunk_ranges(self.nnz, 4 * self.layout.chunk_size):
                digest = zlib.crc32(
                    np.ascontiguousarray(self._decode(which, start, stop, None)), digest
                )
        return {"contents_crc32": digest}

    def verify(self) -> dict:
        """Read the whole store as a fit would and check everything it holds.

        Every row block is read and checked (:meth:`read_block`: each chunk's CRC-32C where the
        store carries them, ``indptr``, column indices, values), and ``‖A‖²`` and ``ΣA`` are
        summed and compared with the recorded ones. One pass, a block at a time.

        Returns
        -------
        dict
            ``row_blocks``, ``nnz``, ``checksums`` (whether every chunk carries one).

        Raises
        ------
        StoreFormatError, InputError
            Naming the store, array, row block and what is wrong.
        """
        buffers = self.new_buffers()
        squares = total = 0.0
        for i in range(self.n_blocks):
            part_sq, part_sum = _data_stats(self.read_block(i, buffers).data)
            squares, total = squares + part_sq, total + part_sum
        for name, recorded, measured in (
            ("frobenius_sq", self.frobenius_sq, squares),
            ("sum", self.value_sum, total),
        ):
            if abs(recorded - measured) > 1e-6 * max(abs(recorded), abs(measured)):
                raise StoreFormatError(
                    f"{self.where}: its recorded {name} is {recorded!r}, its entries give "
                    f"{measured!r}; the store is corrupt"
                )
        layouts = [chunk_layout(array) for array in self.arrays]
        checksums = all(found is not None and found.checksum for found in layouts)
        return {"row_blocks": self.n_blocks, "nnz": self.nnz, "checksums": checksums}

    # -- reading
    def block_rows(self, i: int) -> tuple[int, int]:
        """Row range ``(start, stop)`` of block ``i``."""
        return int(self.row_offsets[i]), int(self.row_offsets[i + 1])

    def new_buffers(self) -> BlockBuffers:
        """Buffers sized for the largest row block, for :meth:`read_block`."""
        return BlockBuffers(self.layout)

    def read_block(self, i: int, buffers: BlockBuffers | None = None) -> sp.csr_matrix:
        """Read row block ``i`` as a CSR matrix.

        Parameters
        ----------
        i : int
            Block number, ``0 <= i < n_blocks``.
        buffers : BlockBuffers, optional
            Read into these instead of allocating; the result is then a view on them.

        Returns
        -------
        scipy.sparse.csr_matrix

        Raises
        ------
        StoreFormatError
            If the block's ``indptr`` or column indices contradict the store's attributes, or a
            chunk cannot be decoded: never is such a block handed to a kernel.
        InputError
            If the block holds a negative, NaN or infinite value.
        """
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"row block {i} out of range [0, {self.n_blocks})")
        r0, r1 = self.block_rows(i)
        s, e = int(self.nnz_offsets[i]), int(self.nnz_offsets[i + 1])
        indptr = self._decode(2, r0, r1 + 1, buffers.indptr if buffers else None, i)
        data = self._decode(0, s, e, buffers.data if buffers else None, i)
        indices = self._decode(1, s, e, buffers.indices if buffers else None, i)
        # the one place a block is decoded, so the one check that keeps a lying store's blocks
        # out of the kernels (SciPy's trust indptr and indices: a segfault, not an error)
        check_stored_block(
            indptr, indices, data, n_cols=self.shape[1], nnz_range=(s, e), store=self.where,
            block_index=i, row0=r0,
        )  # fmt: skip
        local = (indptr - s).astype(indices.dtype, copy=False)
        return _csr_view(data, indices, local, (r1 - r0, self.shape[1]))

    def _decode(
        self, which: int, start: int, stop: int, out: np.ndarray | None, block: int | None = None
    ) -> np.ndarray:
        """:meth:`_read`, with a chunk that fails to decode named as a damaged store.

        ``block`` is the row block read, for the message; by default the one holding element
        ``start`` (of the entries for data and indices, of the rows for indptr).
        """
        try:
            return self._read(which, start, stop, out)
        except (RuntimeError, ValueError) as err:  # numcodecs' and zarr's decoding errors
            if block is None:
                offsets = self.row_offsets if which == 2 else self.nnz_offsets
                found = int(np.searchsorted(offsets, start, side="right")) - 1
                block = min(max(found, 0), self.n_blocks - 1)
            name = ("data", "indices", "indptr")[which]
            r0, r1 = self.block_rows(block)
            raise StoreFormatError(
                f"{self.where}: {name} of row block {block} (rows {r0}-{r1 - 1}) cannot be "
                f"read: {' '.join(str(err).split()) or type(err).__name__}; the store is corrupt"
            ) from None

    def iter_blocks(self, reuse_buffers: bool = False) -> Iterator[sp.csr_matrix]:
        """Yield every row block in order (views on one set of buffers if ``reuse_buffers``)."""
        buffers = self.new_buffers() if reuse_buffers else None
        for i in range(self.n_blocks):
            yield self.read_block(i, buffers)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Read rows ``start:stop`` (any range; reads the blocks that cover it)."""
        first = int(np.searchsorted(self.row_offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.row_offsets, stop, side="left"))
        parts = [self.read_block(i) for i in range(max(first, 0), max(last, first + 1))]
        stacked = _stack(parts) if parts else sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        offset = int(self.row_offsets[max(first, 0)])
        return stacked[start - offset : stop - offset]

    def to_scipy(self) -> sp.csr_matrix:
        """The whole matrix in memory (only for matrices known to fit)."""
        return _stack(list(self.iter_blocks()))

    def to_dask(self):
        """The matrix as a Dask array with one scipy.sparse chunk per row block.

        Each task reads its block from the store on the worker.
        """
        import dask.array as da

        chunks = (tuple(int(r) for r in np.diff(self.row_offsets)), (self.shape[1],))
        meta = sp.csr_matrix((0, 0), dtype=self.dtype)
        return da.from_array(
            _DaskView(self),
            chunks=chunks,
            meta=meta,
            asarray=False,
            fancy=False,
            name=f"bignmf-read-{_token(self)}",
        )

    def to_delayed(self) -> list:
        """One ``dask.delayed`` read per row block."""
        import dask

        read = dask.delayed(_read_block, pure=True)
        return [
            read(self, i, dask_key_name=(f"bignmf-block-{_token(self)}", i))
            for i in range(self.n_blocks)
        ]

    # -- description
    def info(self) -> dict[str, Any]:
        """Shape, nnz, density, dtype, row blocks, size on disk and compression ratio."""
        m, n = self.shape
        raw = self.nnz * (self.dtype.itemsize + self.layout.index_dtype.itemsize) + (m + 1) * 8
        disk = _disk_bytes(Path(self.path) / (self.key or ""))
        block_nnz = np.diff(self.nnz_offsets)
        return {
            "path": self.path if not self.key else f"{self.path}/{self.key}",
            "shape": [m, n],
            "nnz": self.nnz,
            "density": self.nnz / (m * n),
            "dtype": str(self.dtype),
            "index_dtype": str(self.layout.index_dtype),
            "row_blocks": self.n_blocks,
            "block_nnz": {
                "min": int(block_nnz.min()),
                "median": int(np.median(block_nnz)),
                "max": int(block_nnz.max()),
            },
            "chunk_size": self.layout.chunk_size,
            "codec": _codec_name(self.arrays[0]),
            "bytes_uncompressed": raw,
            "bytes_on_disk": disk,
            "compression_ratio": raw / disk if disk else float("nan"),
            "frobenius_norm": float(np.sqrt(self.frobenius_sq)),
        }


class _IndptrCheck:
    """Checks ``indptr`` as :func:`fingerprint` reads it, in consecutive windows from row 0.

    Each window is checked not to decrease (from the previous window's last entry too) and to
    equal the block table's nnz offsets at the row offsets inside it: all of ``indptr``, once,
    at the cost of one comparison per entry on top of the read.
    """

    def __init__(self, store: CSRStore):
        self.store = store
        self.previous = 0  # indptr[-1] of the window before; the first must start at 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """``indptr[start:stop]``, checked."""
        store = self.store
        values = store._decode(2, start, stop, None)
        ptr = values.astype(np.int64, copy=False)
        # one comparison per entry, no temporary but its booleans: indptr is m + 1 long
        if ptr.size and (ptr[0] < self.previous or bool((ptr[1:] < ptr[:-1]).any())):
            steps = np.diff(ptr, prepend=self.previous)
            r = start + int(np.flatnonzero(steps < 0)[0])
            before = self.previous if r == start else int(ptr[r - start - 1])
            self._fail(r, f"decreases at row {r}, from {before} to {int(ptr[r - start])}")
        offsets = store.row_offsets
        lo, hi = np.searchsorted(offsets, [start, stop])
        at = ptr[offsets[lo:hi] - start]
        wrong = np.flatnonzero(at != store.nnz_offsets[lo:hi])
        if wrong.size:
            b = int(lo + wrong[0])
            self._fail(
                int(offsets[b]),
                f"is {int(at[wrong[0]])} at row {int(offsets[b])}, where the store's block "
                f"table says row block {b} starts at entry {int(store.nnz_offsets[b])}",
            )
        if ptr.size:
            self.previous = int(ptr[-1])
        return values

    def _fail(self, row: int, what: str) -> None:
        store = self.store
        block = min(int(np.searchsorted(store.row_offsets, row, side="right")) - 1,
                    store.n_blocks - 1)  # fmt: skip
        r0, r1 = store.block_rows(block)
        raise StoreFormatError(
            f"{store.where}: indptr of row block {block} (rows {r0}-{r1 - 1}): {what}; "
            "the store is corrupt"
        )


class _DaskView:
    """Array-like wrapper ``dask.array.from_array`` slices: one getitem is one block read."""

    def __init__(self, store: CSRStore):
        self.store = store
        self.shape = store.shape
        self.dtype = store.dtype
        self.ndim = 2

    def __getitem__(self, key: tuple[slice, slice]) -> sp.csr_matrix:
        rows, cols = key
        block = self.store.read_rows(*rows.indices(self.shape[0])[:2])
        return block if cols == slice(None) or cols == slice(0, self.shape[1]) else block[:, cols]

    def __dask_tokenize__(self) -> tuple:
        return self.store.__dask_tokenize__()


def _csr_view(data, indices, indptr, shape) -> sp.csr_matrix:
    """A CSR matrix on these arrays without copying them.

    The constructor's ``prune`` copies views shorter than half their base, which would undo the
    reuse of read buffers for every small block; the arrays are already consistent.
    """
    out = sp.csr_matrix(shape, dtype=data.dtype)
    out.data, out.indices, out.indptr = data, indices, indptr
    return out


def _read_block(store: CSRStore, i: int) -> sp.csr_matrix:
    return store.read_block(i)


def _token(store: CSRStore) -> str:
    from dask.base import tokenize

    return tokenize(store)


def _codec_name(array: zarr.Array) -> str:
    compressors = array.compressors
    if not compressors:
        return "none"
    c = compressors[0]
    return f"blosc-{c.cname.value}" if isinstance(c, BloscCodec) else type(c).__name__


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _chunk_ranges(total: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, step):
        yield start, min(start + step, total)


def _open_group(path: str, key: str | None) -> zarr.Group:
    try:
        # consolidated metadata is only an index of the same files; skipping it avoids stale
        # indexes and zarr's warning that v3 does not specify it
        root = zarr.open_group(path, mode="r", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise StoreFormatError(f"{path}: no Zarr group there ({err})") from None
    except zarr.errors.ContainsArrayError:
        raise StoreFormatError(
            f"{path}: is a dense Zarr array; run `bignmf convert` on it first"
        ) from None
    if key:
        try:
            node = root[key]
        except KeyError:
            raise StoreFormatError(f"{path}: has no {key!r}") from None
        if not isinstance(node, zarr.Group):
            raise StoreFormatError(f"{path}/{key}: is a dense array; convert it first")
        return node
    return root


def _resolve_key(path: str, key: str | None) -> str | None:
    """An AnnData store opens at its X unless another key is given."""
    if key is not None:
        return key
    attrs = _open_group(path, None).attrs
    return "X" if attrs.get("encoding-type") == "anndata" else None


def _plan_foreign(indptr: zarr.Array, block_nnz: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Plan row blocks of a store written elsewhere from its indptr, one chunk at a time.

    The plan reads all of indptr anyway, so it also checks that it never decreases: a plan made
    from a decreasing indptr would have blocks of negative size.
    """
    planner = RowBlockPlanner(block_nnz)
    rows, nnzs = [0], [0]
    step = max(indptr.chunks[0], 1 << 16)
    row, last = 0, int(indptr[0])
    for start, stop in _chunk_ranges(indptr.shape[0] - 1, step):
        ptr = indptr[start : stop + 1].astype(np.int64)
        row_nnz = np.diff(ptr)
        if row_nnz.size and row_nnz.min() < 0:
            r = start + int(np.flatnonzero(row_nnz < 0)[0]) + 1
            raise StoreFormatError(
                f"{where}: indptr decreases at row {r}, from {int(ptr[r - start - 1])} to "
                f"{int(ptr[r - start])} (while planning its row blocks); the store is corrupt"
            )
        for _, stop_local, closes in planner.cuts(row_nnz):
            if closes:
                row = start + stop_local
                rows.append(row)
                nnzs.append(int(ptr[stop_local]))
        last = int(ptr[-1])
    if rows[-1] != indptr.shape[0] - 1:
        rows.append(indptr.shape[0] - 1)
        nnzs.append(last)
    return np.asarray(rows, dtype=np.int64), np.asarray(nnzs, dtype=np.int64)


def _integer(value: Any) -> bool:
    """Whether an attribute's value is an integer (JSON's ``600``, not ``600.5`` nor ``true``)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _arrays(group: zarr.Group, where: str) -> tuple[zarr.Array, zarr.Array, zarr.Array]:
    """``(data, indices, indptr)``, each checked to be a 1-D array of a usable dtype."""
    found = []
    for name, kinds, wanted in (
        ("data", "biuf", "real numbers"),
        ("indices", "iu", "integers"),
        ("indptr", "iu", "integers"),
    ):
        try:
            array = group[name]
        except KeyError:
            raise StoreFormatError(f"{where}: csr_matrix group lacks the array {name!r}") from None
        if not isinstance(array, zarr.Array) or array.ndim != 1:
            what = "a group" if not isinstance(array, zarr.Array) else f"{array.ndim}-D"
            raise StoreFormatError(f"{where}: {name} is {what}, not a 1-D array")
        if np.dtype(array.dtype).kind not in kinds:
            raise StoreFormatError(
                f"{where}: {name} has dtype {array.dtype}; a csr_matrix's {name} are {wanted}"
            )
        found.append(array)
    return found[0], found[1], found[2]


def _shape(attrs: Any, where: str) -> tuple[int, int]:
    shape = attrs.get("shape")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 2
        or not all(_integer(x) and x >= 1 for x in shape)
    ):
        raise StoreFormatError(
            f"{where}: attribute shape is {shape!r}, not two positive integers [rows, columns]"
        )
    return int(shape[0]), int(shape[1])


def _offsets(meta: dict, name: str, where: str, end: int, what: str) -> np.ndarray:
    """A block table's ``row_offsets`` or ``nnz_offsets``: integers from 0 up to ``end``."""
    values = meta.get(name)
    if not isinstance(values, list) or len(values) < 2 or not all(map(_integer, values)):
        raise StoreFormatError(
            f"{where}: attribute bignmf.{name} is not a list of at least two integers"
        )
    offsets = np.asarray(values, dtype=np.int64)
    steps = np.diff(offsets)
    # row blocks are never empty; a block of empty rows has no nonzeros
    drops = np.flatnonzero(steps <= 0 if name == "row_offsets" else steps < 0)
    if offsets[0] != 0 or offsets[-1] != end or drops.size:
        detail = (
            f"row block {int(drops[0])} runs from {int(offsets[drops[0]])} to "
            f"{int(offsets[drops[0] + 1])}"
            if drops.size
            else f"it runs from {int(offsets[0])} to {int(offsets[-1])}"
        )
        rule = "increase" if name == "row_offsets" else "not decrease"
        raise StoreFormatError(
            f"{where}: attribute bignmf.{name} must {rule} from 0 to {end} ({what}) but "
            f"{detail}; the store is corrupt"
        )
    return offsets


def _statistic(meta: dict, name: str, where: str) -> float | None:
    value = meta.get(name)
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (math.isfinite(value) and value >= 0):
        raise StoreFormatError(
            f"{where}: attribute bignmf.{name} is {value!r}, not a non-negative number"
        )
    return float(value)


def _check_statistics(frob: float | None, total: float | None, nnz: int, where: str) -> None:
    """Bounds ‖A‖²_F and ΣA must meet for ``nnz`` non-negative entries: no read needed.

    ``(ΣA)² <= nnz·‖A‖²_F`` (Cauchy-Schwarz) and ``‖A‖²_F <= (ΣA)²`` (the entries are
    non-negative). They catch some lies (a norm scaled by 0.25 fails the first for any matrix
    whose values vary less than that of an exponential), never all: the fit is what must not
    trust them (see the module's notes).
    """
    if frob is None or total is None:
        return
    slack = 1 + 1e-9  # both are sums in float64 of the same values, in different orders
    if total * total > nnz * frob * slack or frob > total * total * slack:
        raise StoreFormatError(
            f"{where}: attributes bignmf.frobenius_sq = {frob!r} and bignmf.sum = {total!r} "
            f"cannot both hold for {nnz} non-negative entries; the store is corrupt"
        )


def _ends(indptr: zarr.Array, rows: int, where: str) -> tuple[int, int]:
    """``indptr[0]`` and ``indptr[rows]``, decoded directly where the layout allows (zarr's
    two reads took 2.8 ms of a 7.7 ms open)."""
    reader = DirectChunkReader.for_array(indptr)
    try:
        if reader is None:
            return int(indptr[0]), int(indptr[rows])
        return int(reader.read(0, 1)[0]), int(reader.read(rows, rows + 1)[0])
    except Exception as error:  # a damaged chunk: its checksum, its compressed frame
        raise StoreFormatError(f"{where}: indptr cannot be read: {error}") from None


def _layout(group: zarr.Group, where: str, block_nnz: int | None) -> Layout:
    """What the store's attributes say, checked against each other and the arrays' metadata.

    Reads metadata, two elements of ``indptr`` and, for a store without bignmf's block table,
    all of ``indptr`` (to plan its row blocks); never ``data`` or ``indices``.
    """
    attrs = group.attrs
    kind = attrs.get("encoding-type")
    if kind != "csr_matrix":
        hint = "; run `bignmf convert` on it" if kind else ""
        raise StoreFormatError(f"{where}: is not a csr_matrix group (encoding-type {kind!r}){hint}")
    data, indices, indptr = _arrays(group, where)
    shape = _shape(attrs, where)
    if indptr.shape[0] != shape[0] + 1 or data.shape != indices.shape:
        raise StoreFormatError(
            f"{where}: arrays disagree with shape {list(shape)}: indptr has {indptr.shape[0]} "
            f"entries (rows + 1 = {shape[0] + 1}), data {data.shape[0]}, indices "
            f"{indices.shape[0]}; the store is corrupt"
        )
    nnz = int(data.shape[0])
    first, last = _ends(indptr, shape[0], where)
    if first != 0 or last != nnz:
        raise StoreFormatError(
            f"{where}: indptr runs from {first} to {last}, but data and indices hold {nnz} "
            "entries; the store is corrupt"
        )
    meta = attrs.get("bignmf")
    if meta is not None and not isinstance(meta, dict):
        raise StoreFormatError(f"{where}: attribute bignmf is {type(meta).__name__}, not a map")
    chunk = int(data.chunks[0])
    if meta and block_nnz is None:
        rows = _offsets(meta, "row_offsets", where, shape[0], "the rows")
        nnzs = _offsets(meta, "nnz_offsets", where, nnz, "the entries")
        if rows.size != nnzs.size:
            raise StoreFormatError(
                f"{where}: attributes bignmf.row_offsets and bignmf.nnz_offsets list "
                f"{rows.size} and {nnzs.size} offsets; the store is corrupt"
            )
    else:
        rows, nnzs = _plan_foreign(
            indptr, block_nnz or DEFAULT_BLOCK_CHUNKS * max(chunk, 1 << 16), where
        )
    frob, total = (
        (_statistic(meta, "frobenius_sq", where), _statistic(meta, "sum", where))
        if meta
        else (None, None)
    )
    _check_statistics(frob, total, nnz, where)
    return Layout(
        shape,
        nnz,
        np.dtype(data.dtype),
        np.dtype(indices.dtype),
        rows,
        nnzs,
        chunk,
        frob,
        total,
    )


def open_matrix(
    path: str | os.PathLike | CSRStore, key: str | None = None, *, block_nnz: int | None = None
) -> CSRStore:
    """Open a sparse matrix store written by bignmf or an AnnData ``.zarr`` store.

    Parameters
    ----------
    path : path or CSRStore
        A bignmf store, an AnnData ``.zarr`` store (its ``X`` is opened unless ``key`` says
        otherwise) or any Zarr group in AnnData's ``csr_matrix`` encoding.
    key : str, optional
        Path of the matrix group inside the store, e.g. ``"layers/counts"``.
    block_nnz : int, optional
        Re-plan the row blocks to this many nonzeros each instead of the stored plan.

    Returns
    -------
    CSRStore

    Raises
    ------
    StoreFormatError
        If the path holds no csr_matrix group or its arrays are inconsistent.
    """
    if isinstance(path, CSRStore):
        return path
    path = os.fspath(path)
    if "://" not in path:  # absolute: workers open it by path from another working directory
        path = os.path.abspath(path)
    key = _resolve_key(path, key)
    group = _open_group(path, key)
    where = f"{path}/{key}" if key else path
    return CSRStore(path, key, _layout(group, where, block_nnz))
