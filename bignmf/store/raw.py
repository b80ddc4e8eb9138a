"""Zarr v3 chunk files read and written directly, bypassing zarr-python.

What it bypasses
----------------
zarr-python's codec pipeline and its synchronous API: every call waits on zarr's one shared I/O
thread, and zarr 3.1 decodes each chunk into a new buffer and copies it out. Reading A's chunks
by decoding them straight into the caller's buffers measured 2-3x faster (benchmarks/README.md),
and W's blocks through zarr cost ~0.2 thread-seconds per iteration for 40 MB on two threads.

When it is exact
----------------
A chunk file holds exactly the C-ordered bytes of its chunk (or their blosc/zstd frame), and a
missing file means a chunk of the fill value, when :func:`layout` finds all of:

* Zarr format 3, on a local directory (``LocalStore``), with no storage transformer;
* the default chunk key encoding with ``/`` separators (chunk ``(i, j)`` is ``c/i/j``);
* the ``bytes`` codec first, little-endian (or a one-byte dtype), for a plain numeric dtype that
  is little-endian in memory: the file's bytes are then the array's;
* after it, nothing, or one blosc or zstd compressor (decoded with numcodecs, whose frames are
  the ones zarr writes);
* last, optionally, zarr's ``crc32c`` codec: each file then ends in the CRC-32C of the bytes
  before it (little-endian), which :class:`DirectChunkReader` verifies before it decodes and
  :func:`chunk_checksums` reads without decoding.

The ``bytes`` codec always lays a chunk out in C order, whatever the array's ``order``, so order
is not a condition. Anything else (Zarr v2, sharding, a transpose codec, checksums, a remote
store) gets ``None`` from :func:`layout`, and its callers go through zarr. Chunks are written
here only uncompressed (:func:`write_chunk`), as whole chunks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore


@dataclass(frozen=True)
class ChunkLayout:
    """Where an array's chunk files are and how to decode them (see the module's conditions).

    Attributes
    ----------
    directory : str
        The array's directory; chunk ``(i, j)`` is the file ``directory/c/i/j``.
    shape, chunks : tuple of int
        The array's shape and chunk shape.
    dtype : numpy.dtype
        The array's dtype, whose little-endian bytes the (decoded) files hold.
    fill_value : scalar
        What a chunk whose file is missing holds.
    decoder : numcodecs codec or None
        Decompresses a file's bytes; None for uncompressed files.
    checksum : bool
        Each file ends in a CRC-32C of the bytes before it (zarr's ``crc32c`` codec).
    """

    directory: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    decoder: Any
    checksum: bool = False

    @property
    def one_chunk(self) -> bool:
        """Whether the whole array is one chunk (file ``c/0/…/0``)."""
        return self.chunks == self.shape

    def chunk_file(self, coords: tuple[int, ...]) -> str:
        """The file of chunk ``coords``."""
        return os.path.join(self.directory, "c", *map(str, coords))


def layout(array: zarr.Array) -> ChunkLayout | None:
    """``array``'s chunk layout if its chunk files can be read directly and exactly, else None.

    Every condition of the module's docstring is checked here, and only here.
    """
    import numcodecs

    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore):
        return None
    if getattr(meta, "storage_transformers", ()):
        return None
    key = meta.chunk_key_encoding
    if getattr(key, "name", None) != "default" or getattr(key, "separator", None) != "/":
        return None
    dtype = np.dtype(array.dtype)
    native_little = dtype.byteorder == "=" and sys.byteorder == "little"
    if dtype.kind not in "biufc" or not (dtype.byteorder in ("<", "|") or native_little):
        return None
    codecs = list(meta.codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    if checksum:
        codecs.pop()
    first = codecs.pop(0) if codecs else None
    if not isinstance(first, BytesCodec) or len(codecs) > 1:
        return None
    if dtype.itemsize > 1 and getattr(first.endian, "value", None) != "little":
        return None
    decoder = None
    if codecs:
        decoder = {BloscCodec: numcodecs.Blosc, ZstdCodec: numcodecs.Zstd}.get(type(codecs[0]))
        if decoder is None:
            return None
        decoder = decoder()
    return ChunkLayout(
        directory=os.path.join(str(array.store.root), array.path),
        shape=tuple(int(s) for s in array.shape),
        chunks=tuple(int(c) for c in array.chunks),
        dtype=dtype,
        fill_value=meta.fill_value,
        decoder=decoder,
        checksum=checksum,
    )


#: Bytes of the CRC-32C that zarr's ``crc32c`` codec appends to a chunk.
CHECKSUM_BYTES = 4


def verified(path: Path, data: bytes) -> bytes:
    """A chunk file's bytes before its CRC-32C, once it matches them; ValueError if not."""
    body, tail = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if len(data) < CHECKSUM_BYTES or google_crc32c.value(body) != int.from_bytes(tail, "little"):
        raise ValueError(f"chunk file {path} fails its crc32c checksum")
    return body


def chunk_checksums(found: ChunkLayout) -> bytes:
    """Every chunk's stored CRC-32C, in chunk order (4 zero bytes for a chunk never written),
    read from the files' tails without decoding: what a checksummed array's identity is."""
    if not found.checksum or len(found.shape) != 1:
        raise ValueError("chunk_checksums needs a 1-D array with the crc32c codec")
    tails = []
    for c in range(-(-found.shape[0] // found.chunks[0])):
        try:
            with open(found.chunk_file((c,)), "rb") as f:
                f.seek(-CHECKSUM_BYTES, os.SEEK_END)
                tails.append(f.read(CHECKSUM_BYTES))
        except FileNotFoundError:
            tails.append(bytes(CHECKSUM_BYTES))
        except OSError as error:  # a file shorter than its checksum
            raise ValueError(f"chunk file {found.chunk_file((c,))}: {error}") from None
    return b"".join(tails)


class DirectChunkReader:
    """Reads a range of a 1-D array by decoding its chunk files straight into the output.

    zarr 3.1 decodes every chunk into a new buffer and copies it out, which measured 2-3x slower
    than decoding in place (benchmarks/README.md). :meth:`for_array` returns None for an array
    that is not 1-D or whose :func:`layout` is None; those are read through zarr.
    """

    def __init__(
        self,
        directory: Path,
        chunk: int,
        length: int,
        dtype: np.dtype,
        decoder,
        fill_value=0,
        checksum: bool = False,
    ):
        self.directory = directory
        self.chunk = chunk
        self.length = length
        self.dtype = dtype
        self.decoder = decoder
        self.fill_value = fill_value
        self.checksum = checksum

    @classmethod
    def for_array(cls, array: zarr.Array) -> DirectChunkReader | None:
        """A reader for ``array`` if its layout is one this module reads exactly."""
        found = layout(array) if array.ndim == 1 else None
        if found is None:
            return None
        return cls(
            Path(found.directory),
            found.chunks[0],
            found.shape[0],
            found.dtype,
            found.decoder,
            found.fill_value,
            found.checksum,
        )

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements ``start:stop``, into ``out`` (a view of its head) when given."""
        out = np.empty(stop - start, self.dtype) if out is None else out[: stop - start]
        scratch = None
        for c in range(start // self.chunk, -(-stop // self.chunk)):
            lo, hi = max(start, c * self.chunk), min(stop, (c + 1) * self.chunk)
            target = out[lo - start : hi - start]
            path = self.directory / "c" / str(c)
            if not path.exists():  # never written: zarr's fill value
                target[...] = self.fill_value
            elif self.checksum:  # the whole file, verified before anything is decoded
                self._checked(path, target, lo - c * self.chunk, hi - lo)
            elif self.decoder is None:
                with open(path, "rb", buffering=0) as f:
                    f.seek((lo - c * self.chunk) * self.dtype.itemsize)
                    f.readinto(memoryview(target).cast("B"))
            elif hi - lo == self.chunk:
                self.decoder.decode(path.read_bytes(), out=target)
            else:
                if scratch is None:
                    scratch = np.empty(self.chunk, self.dtype)
                self.decoder.decode(path.read_bytes(), out=scratch)
                target[...] = scratch[lo - c * self.chunk : hi - c * self.chunk]
        return out

    def _checked(self, path: Path, target: np.ndarray, offset: int, count: int) -> None:
        body = verified(path, path.read_bytes())
        if self.decoder is None:
            values = np.frombuffer(body, self.dtype)
            if values.size != self.chunk:  # zarr writes whole chunks, the last one too
                raise ValueError(f"chunk file {path}: {values.size} values, not {self.chunk}")
            target[...] = values[offset : offset + count]
        elif count == self.chunk:
            self.decoder.decode(body, out=target)
        else:
            scratch = np.empty(self.chunk, self.dtype)
            self.decoder.decode(body, out=scratch)
            target[...] = scratch[offset : offset + count]


def read_chunk(path: str, shape: tuple[int, ...], dtype: np.dtype, fill: Any) -> np.ndarray:
    """A whole uncompressed chunk as a new C-ordered array (``fill`` if its file is missing)."""
    out = np.empty(shape, dtype)
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115
    except FileNotFoundError:  # never written (or all fill values): zarr's fill value
        out[...] = fill
        return out
    with f:
        got = f.readinto(memoryview(out).cast("B")) if out.nbytes else 0
        if got != out.nbytes or f.read(1):
            raise ValueError(f"{path}: {got} or more bytes, the block has {out.nbytes}")
    return out


def write_chunk(path: str, shape: tuple[int, ...], dtype: np.dtype, values: np.ndarray) -> None:
    """Write a whole uncompressed chunk, in place (``values`` broadcast to ``shape``).

    In place: a rerun task rewrites the same bytes, and no one reads the chunk meanwhile. An
    empty chunk writes nothing.
    """
    values = np.ascontiguousarray(np.broadcast_to(values, shape), dtype=dtype)
    if not values.nbytes:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view, done = memoryview(values).cast("B"), 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.ftruncate(fd, done)
    finally:
        os.close(fd)


__all__ = [
    "CHECKSUM_BYTES",
    "ChunkLayout",
    "DirectChunkReader",
    "chunk_checksums",
    "layout",
    "read_chunk",
    "verified",
    "write_chunk",
]
