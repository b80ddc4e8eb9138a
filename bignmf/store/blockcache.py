"""Row blocks of a stored A kept in each process's memory between passes (opt-in).

An iteration reads every block of A once, and a fat task is placed on the same worker every
iteration (:func:`bignmf.fit.graph.placement`), so a worker rereads the same blocks. When the
cluster's memory can hold them, decoding them once instead of every pass saves the decode
(about a fifth of an iteration's CPU on this kind of machine). It is off by default: holding A
in memory is what bignmf exists to avoid, so the user asks for it with a byte budget per
process (``nmf(..., cache_a=...)``, ``bignmf fit --cache-a``). In a Dask worker with a memory
limit, a block is kept only while the worker stays below the memory at which distributed would
spill or pause it (:func:`has_room`).

The cache is only a cache: a task that runs elsewhere (a lost worker) reads the blocks from the
store, the values are the same bits, and the fit's result does not change. Blocks are kept in the
order they are first read until the budget is full, and none is evicted to make room for another:
a pass reads every block in turn, so evicting the least recently used one would evict each block
just before it is read again. A fit drops its blocks when it ends (:func:`drop`).
"""

from __future__ import annotations

import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.store.csr import CSRStore, _store_signature


@dataclass
class _Entries:
    """The cached blocks of one matrix, valid while the store and its row blocks are unchanged."""

    version: tuple
    blocks: dict[int, sp.csr_matrix] = field(default_factory=dict)
    nbytes: int = 0


_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str | None], _Entries] = {}
_TOTALS = {"bytes": 0, "reserved": 0, "hits": 0, "misses": 0, "refused": 0}


def _block_bytes(store: CSRStore, i: int) -> int:
    """Bytes a decoded block holds: values and column indices, and its local indptr."""
    nnz = int(store.nnz_offsets[i + 1] - store.nnz_offsets[i])
    rows = int(store.row_offsets[i + 1] - store.row_offsets[i])
    index = store.layout.index_dtype.itemsize
    return nnz * (store.dtype.itemsize + index) + (rows + 1) * index


def _worker_ceiling() -> int | None:
    """Bytes a Dask worker process may reach before distributed acts on its memory (the lowest
    of its target, spill and pause fractions of its limit); None outside a limited worker."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        manager = get_worker().memory_manager
    except (ValueError, AttributeError):
        return None
    limit = getattr(manager, "memory_limit", None)
    names = ("memory_target_fraction", "memory_spill_fraction", "memory_pause_fraction")
    fractions = [f for f in (getattr(manager, name, False) for name in names) if f]
    if not limit or not fractions:
        return None
    return int(min(fractions) * limit)


def has_room(size: int, ceiling: int | None = None, rss: int | None = None) -> bool:
    """Whether this process may hold ``size`` more bytes of cache.

    In a Dask worker with a memory limit the process must stay below the point where
    distributed starts spilling or pauses the worker: a paused worker runs no task, so the
    fit would never end and never release the cache.
    """
    ceiling = _worker_ceiling() if ceiling is None else ceiling
    if ceiling is None:
        return True
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return rss + size <= ceiling


def _frozen(block: sp.csr_matrix) -> sp.csr_matrix:
    """The block with read-only arrays: every task of every later pass shares it."""
    for array in (block.data, block.indices, block.indptr):
        array.flags.writeable = False
    return block


class CachedMatrix:
    """A stored matrix whose row blocks stay in the reading process's memory once decoded.

    Everything but :meth:`read_block` is the store's. The handle is small and picklable like
    the store's; the blocks themselves live in a per-process cache shared by all handles.

    Parameters
    ----------
    store : CSRStore
        The matrix.
    budget : int
        Bytes of decoded blocks each process may keep (values, indices and indptr).
    """

    def __init__(self, store: CSRStore, budget: int):
        if budget < 0:
            raise ValueError(f"the cache budget must be >= 0 bytes, got {budget}")
        self.store = store
        self.budget = int(budget)
        self._version: tuple | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("store", "budget", "_version"):
            raise AttributeError(name)
        return getattr(self.store, name)

    def __getstate__(self) -> dict:
        return {"store": self.store, "budget": self.budget}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store"], state["budget"])

    def __repr__(self) -> str:
        return f"<CachedMatrix {self.budget:,} bytes per process of {self.store!r}>"

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-cached", self.store.__dask_tokenize__(), self.budget)

    def _where(self) -> tuple[str, str | None]:
        return (self.store.path, self.store.key)

    def _current_version(self) -> tuple:
        """What the cached blocks were read from: the store's files and its row blocks."""
        if self._version is None:
            offsets = np.ascontiguousarray(self.store.row_offsets, dtype="<i8")
            signature = _store_signature(self.store.path, self.store.key)
            self._version = (signature, zlib.crc32(offsets.tobytes()), len(offsets))
        return self._version

    def read_block(self, i: int, buffers: Any = None) -> sp.csr_matrix:
        """Row block ``i``: from the cache, else from the store (and kept if it fits).

        A block that does not fit the budget is read into ``buffers`` as usual.
        """
        version = self._current_version()
        if version[0] is None:  # not local files: no way to tell a rewritten store
            return self.store.read_block(i, buffers)
        size = _block_bytes(self.store, i)
        with _LOCK:
            entries = _CACHE.get(self._where())
            if entries is not None and entries.version != version:
                _drop_locked(self._where())
                entries = None
            hit = entries.blocks.get(i) if entries is not None else None
            if hit is not None:
                _TOTALS["hits"] += 1
                return hit
            _TOTALS["misses"] += 1
            admit = _TOTALS["bytes"] + _TOTALS["reserved"] + size <= self.budget
            admit = admit and has_room(_TOTALS["reserved"] + size)
            if admit:
                _TOTALS["reserved"] += size
            else:
                _TOTALS["refused"] += 1
        if not admit:
            return self.store.read_block(i, buffers)
        try:
            block = _frozen(self.store.read_block(i))
        finally:
            with _LOCK:
                _TOTALS["reserved"] -= size
        with _LOCK:
            entries = _CACHE.setdefault(self._where(), _Entries(version))
            if entries.version == version and i not in entries.blocks:
                entries.blocks[i] = block
                entries.nbytes += size
                _TOTALS["bytes"] += size
        return block


def _drop_locked(where: tuple[str, str | None]) -> int:
    entries = _CACHE.pop(where, None)
    if entries is None:
        return 0
    _TOTALS["bytes"] -= entries.nbytes
    return entries.nbytes


def drop(path: str, key: str | None = None) -> int:
    """Forget the cached blocks of the store at ``path`` (``key``) in this process.

    Returns
    -------
    int
        Bytes released.
    """
    with _LOCK:
        return _drop_locked((path, key))


def stats() -> dict[str, int]:
    """This process's cache: ``bytes`` held, ``blocks``, ``hits``, ``misses``, ``refused``
    (misses not kept, the budget being full), counted since the process started."""
    with _LOCK:
        blocks = sum(len(entries.blocks) for entries in _CACHE.values())
        return {
            "bytes": _TOTALS["bytes"],
            "blocks": blocks,
            "hits": _TOTALS["hits"],
            "misses": _TOTALS["misses"],
            "refused": _TOTALS["refused"],
        }


def parse_budget(value: Any) -> int | str | None:
    """``cache_a`` as given: None/0 (off), a byte count, a size such as ``'4GiB'``, or
    ``'auto'``; returns bytes, ``'auto'`` or None."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(text)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"cache_a must be a size such as '4GiB', a number of bytes, 'auto' or None; "
                f"got {text!r}"
            ) from error
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"cache_a must be a non-negative number of bytes, got {value!r}")
    return int(value) or None


def cached(matrix: Any, budget: int | None) -> Any:
    """``matrix`` reading through the cache, or ``matrix`` itself.

    Parameters
    ----------
    matrix : BlockMatrix
        Only stores are cached (a matrix in memory is already there).
    budget : int or None
        Bytes per process, as the memory plan resolved them (:func:`bignmf.plan.cache_budget`:
        ``'auto'`` is :data:`bignmf.plan.CACHE_AUTO_FRACTION` of the smallest worker's limit or
        of RAM); None: no cache.
    """
    if budget is None or not isinstance(matrix, CSRStore):
        return matrix
    return CachedMatrix(matrix, budget)


__all__ = ["CachedMatrix", "cached", "drop", "has_room", "parse_budget", "stats"]
