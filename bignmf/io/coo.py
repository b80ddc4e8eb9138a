"""Row slabs from a stream of coordinate entries in any order: an external bucket sort.

Readers of formats whose entries are not stored row by row (Matrix Market files, which are
often sorted by column, CSC and COO arrays) hand :func:`coo_source` a function that yields the
entries as ``(rows, cols, vals)`` pieces in file order. Each pass over the stream calls it again.

* A stream sorted by row is turned into CSR slabs in a single pass. This is tried first,
  optimistically; the first entry out of row order switches to the scheme below.
* Otherwise, two passes: pass 1 counts the entries of every row (``m`` int64 integers), which
  cuts the rows into buckets of at most ``memory_nnz`` entries; pass 2 appends every entry to its
  bucket's temporary file (raw records, buffered, a bounded number of files open at once). Each
  bucket is then loaded, sorted by (row, column) and cut into slabs. Streams of at most
  ``memory_nnz`` entries are sorted in memory without temporary files.

Memory stays ``O(memory_nnz + slab_nnz + m)`` whatever the number of entries; the temporary
files (about 16 bytes an entry) are the only thing as large as the matrix. They are removed when
the stream ends, fails or is closed. Duplicate entries are kept (the writer sums them).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.types import Source

DEFAULT_SLAB_NNZ = 1_000_000
"""Nonzeros per slab a reader yields (about; a single row is never split)."""

DEFAULT_MEMORY_NNZ = 4_000_000
"""Entries the bucket sort holds in memory at once (about 50 bytes each at the peak)."""

MAX_OPEN_FILES = 128
"""Bucket files kept open at once while distributing entries."""

Piece = tuple[np.ndarray, np.ndarray, np.ndarray | None]

__all__ = [
    "DEFAULT_MEMORY_NNZ",
    "DEFAULT_SLAB_NNZ",
    "coo_source",
    "max_slab_rows",
    "plan_cuts",
    "slabs_from_csr",
]


def max_slab_rows(slab_nnz: int) -> int:
    """Most rows in one slab, so that runs of empty rows do not make huge ``indptr`` arrays."""
    return max(int(slab_nnz), 1 << 16)


def plan_cuts(cum: np.ndarray, limit: int, max_rows: int | None = None) -> list[int]:
    """Cut rows into consecutive ranges of at most ``limit`` entries each.

    Parameters
    ----------
    cum : numpy.ndarray
        Cumulative entry counts, ``len(rows) + 1`` non-decreasing integers (an ``indptr``).
    limit : int
        Most entries a range may hold; a single row holding more forms a range by itself.
    max_rows : int, optional
        Most rows a range may hold.

    Returns
    -------
    list of int
        Row boundaries ``[0, b1, ..., len(cum) - 1]`` (just ``[0]`` when there are no rows).
    """
    n = len(cum) - 1
    cuts = [0]
    a = 0
    limit = max(int(limit), 1)
    while a < n:
        b = int(np.searchsorted(cum, cum[a] + limit, side="right")) - 1
        b = max(b, a + 1)
        if max_rows is not None:
            b = min(b, a + max_rows)
        b = min(b, n)
        cuts.append(b)
        a = b
    return cuts


def slabs_from_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    n_cols: int,
    slab_nnz: int,
    dtype: np.dtype | None = None,
    copy_last: bool = False,
) -> Iterator[sp.csr_matrix]:
    """Cut an in-memory CSR triple into slabs of about ``slab_nnz`` entries (views, no copy).

    ``indptr`` must start at 0 and index into ``data``/``indices``. With ``copy_last`` the last
    slab is a copy, so that a consumer holding on to it does not keep the whole arrays alive.
    """
    cuts = plan_cuts(indptr, slab_nnz, max_slab_rows(slab_nnz))
    for a, b in itertools.pairwise(cuts):
        s, e = int(indptr[a]), int(indptr[b])
        vals, cols = data[s:e], indices[s:e]
        if dtype is not None and vals.dtype != dtype:
            vals = vals.astype(dtype)
        elif copy_last and b == cuts[-1]:
            vals, cols = vals.copy(), cols.copy()
        yield sp.csr_matrix((vals, cols, indptr[a : b + 1] - indptr[a]), shape=(b - a, n_cols))


def _index_dtype(size: int) -> np.dtype:
    return np.dtype(np.int32) if size <= np.iinfo(np.int32).max else np.dtype(np.int64)


def _add_counts(counts: np.ndarray, rows: np.ndarray) -> None:
    """``counts[r] += 1`` for every r in ``rows`` without an ``m``-sized temporary per piece."""
    if rows.size == 0:
        return
    lo, hi = int(rows.min()), int(rows.max())
    if hi - lo < 4 * rows.size:
        counts[lo : hi + 1] += np.bincount(rows - lo, minlength=hi - lo + 1)
    else:
        uniq, cnt = np.unique(rows, return_counts=True)
        counts[uniq] += cnt


class _BucketFiles:
    """Per-bucket append-only files of raw records, buffered in memory up to ``flush_nnz``."""

    def __init__(self, directory: str, n_buckets: int, flush_nnz: int):
        self.directory = directory
        self.flush_nnz = flush_nnz
        self.buffers: list[list[np.ndarray]] = [[] for _ in range(n_buckets)]
        self.buffered = 0
        self.handles: dict[int, BinaryIO] = {}

    def path(self, b: int) -> str:
        return os.path.join(self.directory, f"bucket-{b:06d}.bin")

    def add(self, b: int, records: np.ndarray) -> None:
        self.buffers[b].append(records)
        self.buffered += records.size
        if self.buffered >= self.flush_nnz:
            self.flush()

    def flush(self) -> None:
        for b, parts in enumerate(self.buffers):
            if not parts:
                continue
            fh = self.handles.get(b)
            if fh is None:
                if len(self.handles) >= MAX_OPEN_FILES:
                    oldest = next(iter(self.handles))
                    self.handles.pop(oldest).close()
                fh = self.handles[b] = open(self.path(b), "ab")  # noqa: SIM115 (closed in close())
            for part in parts:
                fh.write(memoryview(np.ascontiguousarray(part)).cast("B"))
            parts.clear()
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        while self.handles:
            self.handles.popitem()[1].close()

    def abort(self) -> None:
        while self.handles:
            self.handles.popitem()[1].close()


class _CooStream:
    """The state shared by the passes over one entry stream (see :func:`coo_source`)."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, int],
        dtype: np.dtype,
        pieces: Callable[[], Iterable[Piece]],
        tmpdir: str | os.PathLike | None,
        memory_nnz: int,
        slab_nnz: int,
        row_sorted: bool | None,
    ):
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.pieces = pieces
        self.tmpdir = tmpdir
        self.memory_nnz = memory_nnz
        self.slab_nnz = slab_nnz
        self.max_rows = max_slab_rows(slab_nnz)
        self.row_sorted = row_sorted
        self.row_dtype = _index_dtype(shape[0])
        self.col_dtype = _index_dtype(shape[1])

    # ------------------------------------------------------------------ the entries

    def entries(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pass over the stream: validated int64 indices and values in ``dtype``."""
        m, n = self.shape
        for k, piece in enumerate(self.pieces()):
            try:
                rows, cols, vals = piece
            except (TypeError, ValueError):
                raise InputError(
                    f"{self.name}: piece {k} is not a (rows, cols, vals) triple"
                ) from None
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            cols = np.asarray(cols, dtype=np.int64).reshape(-1)
            if vals is None:
                vals = np.ones(rows.size, dtype=self.dtype)
            else:
                vals = np.asarray(vals).reshape(-1)
                if vals.dtype != self.dtype:
                    vals = vals.astype(self.dtype)
            if not rows.size == cols.size == vals.size:
                raise InputError(
                    f"{self.name}: piece {k} has {rows.size} rows, {cols.size} columns and "
                    f"{vals.size} values"
                )
            if rows.size == 0:
                continue
            for what, idx, size in (("row", rows, m), ("column", cols, n)):
                lo, hi = int(idx.min()), int(idx.max())
                if lo < 0 or hi >= size:
                    bad = idx[(idx < 0) | (idx >= size)][0]
                    raise InputError(
                        f"{self.name}: piece {k}: {what} index {int(bad)} outside [0, {size})"
                    )
            yield rows, cols, vals

    # ------------------------------------------------------------------ slabs

    def slabs(
        self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, row0: int, row1: int
    ) -> Iterator[sp.csr_matrix]:
        """Slabs of rows ``row0 <= r < row1`` from entries sorted by row, all in that range."""
        counts = np.bincount(rows - row0, minlength=row1 - row0)
        indptr = np.zeros(row1 - row0 + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        yield from slabs_from_csr(vals, cols, indptr, self.shape[1], self.slab_nnz, copy_last=True)

    def sorted_slabs(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        vals: np.ndarray,
        row0: int,
        row1: int,
        indptr: np.ndarray | None = None,
    ) -> Iterator[sp.csr_matrix]:
        """Sort entries of rows ``[row0, row1)`` by (row, column) and cut them into slabs.

        ``indptr`` (the entries per row, cumulated from 0), when known, saves recounting them.
        """
        n = self.shape[1]
        if (row1 - row0) * max(n, 1) < np.iinfo(np.int64).max:
            key = rows.astype(np.int64)
            key -= row0
            key *= n
            key += cols
            order = np.argsort(key)
            del key
        else:
            order = np.lexsort((cols, rows))
        if indptr is None:
            counts = np.bincount(rows - row0, minlength=row1 - row0)
            indptr = np.zeros(row1 - row0 + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            del counts
        del rows
        cols = cols[order].astype(self.col_dtype, copy=False)
        vals = vals[order]
        del order
        yield from slabs_from_csr(vals, cols, indptr, n, self.slab_nnz, copy_last=True)

    # ------------------------------------------------------------------ the passes

    def blocks(self) -> Iterator[sp.csr_matrix]:
        m = self.shape[0]
        it = iter(self.entries())
        if self.row_sorted is False:
            yield from self.two_pass(it, [], 0)
            return
        buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        nbuf = 0
        last = 0  # largest row seen so far
        frontier = 0  # rows below this have been yielded
        hold = 0 if self.row_sorted else self.memory_nnz
        for piece in it:
            rows = piece[0]
            if rows[0] < last or (rows.size > 1 and bool(np.any(rows[1:] < rows[:-1]))):
                if self.row_sorted:
                    where = int(np.flatnonzero(np.diff(np.r_[last, rows]) < 0)[0])
                    raise InputError(
                        f"{self.name}: entries are not sorted by row (row {int(rows[where])} "
                        f"comes after row {last if where == 0 else int(rows[where - 1])}); "
                        "read it with row_sorted=None or False"
                    )
                buf.append(piece)
                yield from self.two_pass(it, buf, frontier)
                return
            buf.append(piece)
            nbuf += rows.size
            last = int(rows[-1])
            if nbuf >= max(self.slab_nnz, hold if frontier == 0 else 0) and buf[0][0][0] < last:
                r, c, v = (np.concatenate(x) for x in zip(*buf, strict=True))
                buf.clear()
                k = int(np.searchsorted(r, last, side="left"))
                yield from self.slabs(r[:k], c[:k], v[:k], frontier, last)
                frontier = last
                buf.append((r[k:].copy(), c[k:].copy(), v[k:].copy()))
                nbuf = r.size - k
                del r, c, v
        if buf:
            r, c, v = (np.concatenate(x) for x in zip(*buf, strict=True))
            buf.clear()
        else:
            r = c = np.zeros(0, dtype=np.int64)
            v = np.zeros(0, dtype=self.dtype)
        yield from self.slabs(r, c, v, frontier, m)

    def two_pass(
        self,
        it: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
        head: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        row_lo: int,
    ) -> Iterator[sp.csr_matrix]:
        """Rows ``row_lo:`` of the stream, sorted: ``head`` and ``it`` are the rest of pass 1."""
        m = self.shape[0]
        # pass 1: entries per row
        counts = np.zeros(m - row_lo, dtype=np.int64)
        for source in (head, it):
            for rows, _, _ in source:
                if row_lo and int(rows.min()) < row_lo:
                    bad = int(rows[rows < row_lo][0])
                    raise InputError(
                        f"{self.name}: entries are only partly sorted by row: an entry of row "
                        f"{bad} comes after rows up to {row_lo - 1} were already streamed; "
                        "read it again with row_sorted=False"
                    )
                _add_counts(counts, rows - row_lo if row_lo else rows)
            if source is head:
                head.clear()
        cum = np.zeros(m - row_lo + 1, dtype=np.int64)
        np.cumsum(counts, out=cum[1:])
        del counts
        total = int(cum[-1])
        if total <= self.memory_nnz:
            yield from self.in_memory(row_lo, total)
            return
        cuts = plan_cuts(cum, self.memory_nnz)
        starts = np.asarray(cuts[:-1], dtype=np.int64) + row_lo
        if self.tmpdir is not None:
            os.makedirs(self.tmpdir, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="bignmf-sort-", dir=self.tmpdir)
        try:
            files = self.distribute(directory, starts, row_lo)
            rec = self.record_dtype()
            for b, (a, e) in enumerate(itertools.pairwise(cuts)):
                expected = int(cum[e] - cum[a])
                path = files.path(b)
                if os.path.exists(path):
                    records = np.fromfile(path, dtype=rec)
                    os.remove(path)
                else:
                    records = np.zeros(0, dtype=rec)
                if records.size != expected:
                    raise InputError(
                        f"{self.name}: the stream changed between passes (rows {row_lo + a}-"
                        f"{row_lo + e - 1}: {expected} entries counted, {records.size} read)"
                    )
                slabs = self.sorted_slabs(
                    records["r"],
                    records["c"],
                    records["v"],
                    row_lo + a,
                    row_lo + e,
                    cum[a : e + 1] - cum[a],
                )
                del records  # sorted_slabs lets go of it once sorted
                yield from slabs
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def record_dtype(self) -> np.dtype:
        return np.dtype([("r", self.row_dtype), ("c", self.col_dtype), ("v", self.dtype)])

    def distribute(self, directory: str, starts: np.ndarray, row_lo: int) -> _BucketFiles:
        """Pass 2: append every entry of row ``>= row_lo`` to its bucket's file."""
        rec = self.record_dtype()
        files = _BucketFiles(directory, len(starts), max(self.memory_nnz // 2, 1 << 12))
        try:
            for rows, cols, vals in self.entries():
                if row_lo:
                    keep = rows >= row_lo
                    if not keep.all():
                        rows, cols, vals = rows[keep], cols[keep], vals[keep]
                    if rows.size == 0:
                        continue
                bucket = np.searchsorted(starts, rows, side="right") - 1
                if len(starts) <= np.iinfo(np.uint16).max:
                    bucket = bucket.astype(np.uint16)  # a radix sort below
                order = np.argsort(bucket, kind="stable")
                bucket = bucket[order]
                records = np.empty(rows.size, dtype=rec)
                records["r"] = rows[order]
                records["c"] = cols[order]
                records["v"] = vals[order]
                del order
                edges = np.flatnonzero(np.diff(bucket)) + 1
                for s, e in zip(np.r_[0, edges], np.r_[edges, rows.size], strict=True):
                    files.add(int(bucket[s]), records[s:e])
                del records, bucket
            files.close()
        except BaseException:
            files.abort()
            raise
        return files

    def in_memory(self, row_lo: int, total: int) -> Iterator[sp.csr_matrix]:
        """Pass 2 for a stream that fits in ``memory_nnz``: gather, sort, cut."""
        rows = np.empty(total, dtype=np.int64)
        cols = np.empty(total, dtype=np.int64)
        vals = np.empty(total, dtype=self.dtype)
        at = 0
        for r, c, v in self.entries():
            if row_lo:
                keep = r >= row_lo
                r, c, v = r[keep], c[keep], v[keep]
            if at + r.size > total:
                raise InputError(
                    f"{self.name}: the stream changed between passes (more than the {total} "
                    "entries counted)"
                )
            rows[at : at + r.size], cols[at : at + r.size], vals[at : at + r.size] = r, c, v
            at += r.size
        if at != total:
            raise InputError(
                f"{self.name}: the stream changed between passes ({total} entries counted, "
                f"{at} read)"
            )
        slabs = self.sorted_slabs(rows, cols, vals, row_lo, self.shape[0])
        del rows, cols, vals
        yield from slabs


def coo_source(
    name: str,
    shape: tuple[int, int],
    dtype: np.dtype | type | str,
    pieces: Callable[[], Iterable[Piece]],
    *,
    tmpdir: str | os.PathLike | None = None,
    memory_nnz: int = DEFAULT_MEMORY_NNZ,
    slab_nnz: int = DEFAULT_SLAB_NNZ,
    row_sorted: bool | None = None,
) -> Source:
    """A :class:`~bignmf.types.Source` of CSR row slabs from coordinate entries in any order.

    Parameters
    ----------
    name : str
        What to call the source in messages.
    shape : tuple of int
        ``(n_rows, n_cols)``.
    dtype : numpy.dtype
        Dtype of the values; the slabs' values are cast to it.
    pieces : callable
        Returns a fresh iterable of ``(rows, cols, vals)`` NumPy triples (0-based indices), in
        the same order every time it is called; ``vals`` may be None for entries equal to one.
    tmpdir : path, optional
        Where the temporary bucket files go (default :func:`tempfile.gettempdir`). They take
        about ``4-8 + 4-8 + itemsize`` bytes per entry and are removed once read.
    memory_nnz : int
        Entries held in memory at once by the sort (a bucket, the write buffers).
    slab_nnz : int
        Nonzeros per yielded slab (about; a row is never split).
    row_sorted : bool or None
        None (default): try a single pass and fall back to the two-pass sort at the first entry
        out of row order. False: go straight to the two-pass sort. True: the entries must be
        sorted by row (InputError otherwise).

    Returns
    -------
    Source

    Notes
    -----
    The single pass yields nothing before ``memory_nnz`` entries were seen in row order, so a
    stream found unsorted within its first ``memory_nnz`` entries falls back at no cost. One
    that turns out unsorted later is still handled if its late entries belong to rows not yet
    yielded; if not, InputError asks for ``row_sorted=False``.
    """
    if memory_nnz < 1 or slab_nnz < 1:
        raise ValueError(f"memory_nnz and slab_nnz must be positive ({memory_nnz}, {slab_nnz})")
    m, n = (int(s) for s in shape)
    if m < 0 or n < 0:
        raise InputError(f"{name}: negative shape {shape}")
    stream = _CooStream(
        name, (m, n), np.dtype(dtype), pieces, tmpdir, int(memory_nnz), int(slab_nnz), row_sorted
    )
    return Source(name, (m, n), np.dtype(dtype), stream.blocks)
