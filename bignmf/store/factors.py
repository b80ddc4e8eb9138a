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

from bignmf import plan
from bignmf.store import raw


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

    The rule is :func:`bignmf.plan.choose_w_storage`'s; this asks for this machine's RAM
    (:func:`machine_memory_bytes`) where the rule needs it.

    Parameters
    ----------
    n_rows, k : int
        Shape of W.
    dtype : numpy.dtype
        Dtype of W.
    requested : {'auto', 'memory', 'zarr'}
        The user's choice.
    distributed : bool
        Whether a distributed scheduler runs the tasks (W then lives on the shared store).
    """
    ram = machine_memory_bytes() if requested == "auto" and not distributed else None
    itemsize = np.dtype(dtype).itemsize
    return plan.choose_w_storage(n_rows, k, itemsize, ram, requested, distributed)[0]


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

    The arrays :meth:`ZarrBlocks.create` makes — one uncompressed chunk per block, in a layout
    :func:`bignmf.store.raw.layout` reads exactly — hold each block as a plain file of its
    C-ordered bytes, read and written directly (:func:`bignmf.store.raw.read_chunk`,
    :func:`~bignmf.store.raw.write_chunk`): through zarr's synchronous API, whose calls all wait
    on one shared I/O thread, 40 MB of W cost ~0.2 thread-seconds per iteration on two threads.
    Arrays laid out otherwise (``None``) go through zarr.
    """
    found = raw.layout(_open_block(path))
    if found is None or found.decoder is not None or not found.one_chunk:
        return None
    if found.dtype != dtype or found.shape != shape:
        return None
    return found.chunk_file((0,) * len(shape)), found.shape, dtype, float(found.fill_value)


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
                    str(i),
                    shape=(int(rows), self.k),
                    chunks=(max(int(rows), 1), self.k),
                    dtype=self.dtype,
                    compressors=None,
                    fill_value=0.0,
                    overwrite=True,
                )
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
        found = self._raw(buffer, i)
        if found is None:
            return self._array(buffer, i)[...]
        return raw.read_chunk(*found)

    def write(self, buffer: int, i: int, values: np.ndarray) -> None:
        """Write block ``i`` of W into ``buffer``."""
        found = self._raw(buffer, i)
        if found is None:
            self._array(buffer, i)[...] = values
        else:
            raw.write_chunk(*found[:3], values)

    def to_dask(self, buffer: int):
        """W from ``buffer`` as a lazy Dask array, one chunk per row block."""
        import dask.array as da

        parts = [da.from_zarr(self._array(buffer, i)) for i in range(len(self.row_offsets) - 1)]
        return da.concatenate(parts, axis=0)

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-zarr-blocks", self.path, self.k, str(self.dtype), self.n_buffers)
