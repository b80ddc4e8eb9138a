"""Where W lives between iterations: in worker memory, or on disk beside A.

W (m×k) is cut into the row blocks of A. Either its blocks stay in memory as persisted task
results (fast; the default when W fits comfortably), or each block is a Zarr array in a group
next to the run, double-buffered: iteration t reads buffer ``t % 2`` and writes the other, so a
task that is rerun (a lost worker) rewrites the same values and never reads half-updated ones.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import zarr

W_MEMORY_FRACTION = 0.25  # W kept in memory when it needs at most this share of RAM


def machine_memory_bytes() -> int:
    """Total RAM of this machine."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # psutil comes with distributed; this is only a fallback
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_storage(
    n_rows: int, k: int, dtype: np.dtype, requested: str = "auto", distributed: bool = False
) -> str:
    """``'memory'`` or ``'zarr'``: an explicit request wins, else memory if W fits easily.

    Parameters
    ----------
    n_rows, k : int
        Shape of W.
    dtype : numpy.dtype
        Dtype of W.
    requested : {'auto', 'memory', 'zarr'}
        The user's choice.
    distributed : bool
        Whether a distributed scheduler runs the tasks. There W lives on the (shared) store:
        a distributed scheduler keeps the lineage of every persisted result, so W kept as
        task results would make each iteration's graph depend on all the earlier ones, while
        W on disk makes an iteration depend only on stored blocks (a lost worker's tasks are
        rerun from them).
    """
    if requested not in ("auto", "memory", "zarr"):
        raise ValueError(f"w_storage must be 'auto', 'memory' or 'zarr', not {requested!r}")
    if distributed:
        if requested == "memory":
            raise ValueError(
                "w_storage='memory' cannot be used on a distributed scheduler: it would keep "
                "every iteration's lineage; use 'zarr' (the default there) with a workdir the "
                "workers can reach"
            )
        return "zarr"
    if requested != "auto":
        return requested
    need = n_rows * k * np.dtype(dtype).itemsize * 3  # W_t, W_t+1 and working copies
    return "memory" if need <= W_MEMORY_FRACTION * machine_memory_bytes() else "zarr"


@functools.lru_cache(maxsize=4096)
def _open_block(path: str) -> zarr.Array:
    """An opened block array, kept per process: opening re-reads and parses its metadata,
    which cost more than reading the block itself. Blocks are never resized, and each run writes
    its buffers in a directory of its own, so an opened array never goes stale."""
    return zarr.open_array(path, mode="r+")


@functools.lru_cache(maxsize=4096)
def _raw_chunk(
    path: str, shape: tuple[int, ...], dtype: np.dtype
) -> tuple[str, tuple[int, ...], np.dtype, float] | None:
    """``(chunk file, shape, dtype, fill value)`` of a block array stored as one raw chunk.

    The arrays :meth:`ZarrBlocks.create` makes — Zarr v3 on a local directory, one chunk per
    block, only the little-endian ``bytes`` codec — hold each block as a plain file of its
    C-ordered bytes, read and written here directly: through zarr's synchronous API, whose calls
    all wait on one shared I/O thread, 40 MB of W cost ~0.2 thread-seconds per iteration on two
    threads. Arrays laid out otherwise (``None``) go through zarr.
    """
    from zarr.codecs import BytesCodec

    array = _open_block(path)
    meta = array.metadata
    root = getattr(array.store, "root", None)
    codecs = list(getattr(meta, "codecs", ()))
    if getattr(meta, "zarr_format", None) != 3 or root is None or array.nchunks != 1:
        return None
    if np.dtype(array.dtype) != dtype or tuple(array.shape) != shape:
        return None
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec) or dtype.byteorder == ">":
        return None
    if dtype.itemsize > 1 and getattr(codecs[0].endian, "value", None) != "little":
        return None
    if tuple(array.chunks) != tuple(array.shape):
        return None
    chunk = os.path.join(str(root), array.path, meta.encode_chunk_key((0,) * array.ndim))
    return chunk, tuple(array.shape), dtype, float(meta.fill_value)


def _read_raw(chunk: str, shape: tuple[int, ...], dtype: np.dtype, fill: float) -> np.ndarray:
    out = np.empty(shape, dtype)
    try:
        f = open(chunk, "rb", buffering=0)  # noqa: SIM115
    except FileNotFoundError:  # never written (or all fill values): zarr's fill value
        out[...] = fill
        return out
    with f:
        got = f.readinto(memoryview(out).cast("B")) if out.nbytes else 0
        if got != out.nbytes or f.read(1):
            raise ValueError(f"{chunk}: {got} or more bytes, the block has {out.nbytes}")
    return out


def _write_raw(chunk: str, shape: tuple[int, ...], dtype: np.dtype, values: np.ndarray) -> None:
    values = np.ascontiguousarray(np.broadcast_to(values, shape), dtype=dtype)
    if not values.nbytes:
        return
    try:
        fd = os.open(chunk, os.O_WRONLY | os.O_CREAT, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(chunk), exist_ok=True)
        fd = os.open(chunk, os.O_WRONLY | os.O_CREAT, 0o666)
    try:  # in place: a rerun task rewrites the same bytes, and no one reads this buffer now
        view, done = memoryview(values).cast("B"), 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.ftruncate(fd, done)
    finally:
        os.close(fd)


class ZarrBlocks:
    """W's row blocks as Zarr arrays ``{path}/{buffer}/{block}``, in one or more buffers.

    Parameters
    ----------
    path : path
        Directory of the factor's Zarr group.
    row_offsets : array of int
        Row blocks of A (and so of W).
    k : int
        Number of components.
    dtype : numpy.dtype
        Dtype of W.
    n_buffers : int
        Two for the iterations (read one, write the other); one for a checkpoint.
    """

    def __init__(
        self, path: str | os.PathLike, row_offsets: np.ndarray, k: int, dtype, n_buffers: int = 2
    ):
        self.path = str(path)
        self.row_offsets = np.asarray(row_offsets, dtype=np.int64)
        self.k = k
        self.dtype = np.dtype(dtype)
        self.n_buffers = n_buffers

    def create(self) -> ZarrBlocks:
        """Create every buffer's arrays (one chunk per block, uncompressed: W is dense floats)."""
        root = zarr.open_group(self.path, mode="a", zarr_format=3)
        sizes = np.diff(self.row_offsets)
        for buffer in map(str, range(self.n_buffers)):
            group = root.require_group(buffer)
            for i, rows in enumerate(sizes):
                group.create_array(
                    str(i), shape=(int(rows), self.k), chunks=(max(int(rows), 1), self.k),
                    dtype=self.dtype, compressors=None, fill_value=0.0, overwrite=True,
                )  # fmt: skip
        return self

    def _path(self, buffer: int, i: int) -> str:
        return os.path.join(self.path, str(buffer % self.n_buffers), str(i))

    def _raw(self, buffer: int, i: int):
        rows = int(self.row_offsets[i + 1] - self.row_offsets[i])
        return _raw_chunk(self._path(buffer, i), (rows, self.k), self.dtype)

    def _array(self, buffer: int, i: int) -> zarr.Array:
        return _open_block(self._path(buffer, i))

    def read(self, buffer: int, i: int) -> np.ndarray:
        """Block ``i`` of W from ``buffer`` (a new array)."""
        raw = self._raw(buffer, i)
        if raw is None:
            return self._array(buffer, i)[...]
        return _read_raw(*raw)

    def write(self, buffer: int, i: int, values: np.ndarray) -> None:
        """Write block ``i`` of W into ``buffer``."""
        raw = self._raw(buffer, i)
        if raw is None:
            self._array(buffer, i)[...] = values
        else:
            _write_raw(*raw[:3], values)

    def to_dask(self, buffer: int):
        """W from ``buffer`` as a lazy Dask array, one chunk per row block."""
        import dask.array as da

        parts = [da.from_zarr(self._array(buffer, i)) for i in range(len(self.row_offsets) - 1)]
        return da.concatenate(parts, axis=0)

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-zarr-blocks", self.path, self.k, str(self.dtype), self.n_buffers)
