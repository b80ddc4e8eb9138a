"""Matrix Market files (``.mtx``, ``.mm``; plain or ``.gz``/``.bz2``/``.xz``-compressed).

Owns the Matrix Market format: the banner and size line (:class:`_MtxHeader`), a parser that
reads a few MB of whole lines at a time with NumPy (:func:`_parse_chunk`, falling back to
:func:`_parse_slow` line by line to name a bad line), and :func:`from_mtx`. A file sorted by
row streams in one pass; any other order goes through the external bucket sort
(:func:`bignmf.io.coo.coo_source`). Symmetric files are mirrored, zeros of the dense
``array`` format dropped, ``pattern`` files become float32 ones.

May import: :mod:`bignmf.io.common`, :mod:`bignmf.io.coo`, :mod:`bignmf.errors`,
:mod:`bignmf.types`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from bignmf.errors import InputError
from bignmf.io.common import READ_ERRORS, check_positive
from bignmf.io.coo import DEFAULT_MEMORY_NNZ, DEFAULT_SLAB_NNZ, coo_source
from bignmf.types import Source

__all__ = ["from_mtx"]


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
            except READ_ERRORS as err:
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
        except READ_ERRORS as err:
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
    check_positive(slab_nnz=slab_nnz, memory_nnz=memory_nnz)
    if chunk_bytes is None:
        chunk_bytes = min(8 << 20, max(256 << 10, 4 * int(slab_nnz)))
    check_positive(chunk_bytes=chunk_bytes)
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
