"""A held-out test set that is a seed, not a file: the speckled mask of cross-validation.

:class:`SpeckledMask` is a mask (:class:`~bignmf.store.masked.MaskedMatrix`) whose entries are
a fraction of all of A's entries, stored ones and zeros alike, chosen per row by a seeded hash
(:mod:`bignmf.kernels.speckle`): a fit given it as ``mask=`` never sees them, and
:func:`bignmf.kernels.speckle.held_out_sums` scores the fit on them afterwards. It is cut into
A's row blocks, generated when a block is read, and kept (a few bytes per held-out entry) in a
small per-process cache, so that the fits of a study that share it make it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from bignmf.errors import ParameterError
from bignmf.kernels.speckle import hash_key, speckled_rows

__all__ = ["CACHE_BYTES", "SpeckledMask", "speckled_from_record"]

#: Keeps the held-out pattern apart from other uses of the same seed.
SPECKLE_DOMAIN = 0x5BECC1ED
#: Bytes of generated patterns each process keeps (least recently used dropped first).
CACHE_BYTES = 64 << 20

_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_cache_lock = threading.Lock()


def _cached_rows(shape, fraction: float, seed: int, start: int, stop: int):
    wanted = (tuple(shape), fraction, seed, start, stop)
    with _cache_lock:
        found = _cache.get(wanted)
        if found is not None:
            _cache.move_to_end(wanted)
            return found
    made = speckled_rows(start, stop, shape[1], fraction, hash_key(seed, SPECKLE_DOMAIN))
    size = made[0].nbytes + made[1].nbytes
    with _cache_lock:
        if size <= CACHE_BYTES:
            _cache[wanted] = made
            while sum(a.nbytes + b.nbytes for a, b in _cache.values()) > CACHE_BYTES:
                _cache.popitem(last=False)
    return made


class SpeckledMask:
    """A fraction of every entry of an m × n matrix, held out by a seeded hash.

    Parameters
    ----------
    shape : (int, int)
        A's shape.
    row_offsets : array of int
        A's row blocks (the mask is read in the same blocks; the entries do not depend on them).
    fraction : float
        Probability that an entry is held out, in (0, 1).
    seed : int
        Non-negative seed: the same seed and fraction hold out the same entries.

    Notes
    -----
    A row block of the mask costs about ``fraction·n`` hashes per row to make (no pass over A),
    and ``nnz`` one pass over the blocks when first asked for.
    """

    dtype = np.dtype(np.float64)
    path = None

    def __init__(self, shape, row_offsets, fraction: float, seed: int):
        if not 0.0 < float(fraction) < 1.0:
            raise ParameterError(f"the held-out fraction must be in (0, 1), got {fraction!r}")
        if int(seed) != seed or seed < 0:
            raise ParameterError(f"the held-out seed must be an integer >= 0, got {seed!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.row_offsets = np.asarray(row_offsets, dtype=np.int64)
        self.fraction, self.seed = float(fraction), int(seed)
        self._nnz: int | None = None

    @property
    def n_blocks(self) -> int:
        """Number of row blocks (A's)."""
        return len(self.row_offsets) - 1

    @property
    def nnz(self) -> int:
        """Held-out entries (counted once, a block at a time)."""
        if self._nnz is None:
            self._nnz = sum(int(self.pattern(i)[0][-1]) for i in range(self.n_blocks))
        return self._nnz

    def pattern(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``i``'s held-out entries as a CSR ``(indptr, indices)`` of local rows."""
        start, stop = int(self.row_offsets[i]), int(self.row_offsets[i + 1])
        return _cached_rows(self.shape, self.fraction, self.seed, start, stop)

    def new_buffers(self) -> Any:
        """No read buffers: nothing is read."""
        return None

    def read_block(self, i: int, buffers: Any = None):
        """Block ``i`` as a CSR pattern of float64 ones."""
        import scipy.sparse as sp

        indptr, indices = self.pattern(i)
        rows = int(self.row_offsets[i + 1] - self.row_offsets[i])
        data = np.ones(indices.size, dtype=self.dtype)
        return sp.csr_matrix((data, indices, indptr), shape=(rows, self.shape[1]), copy=False)

    def to_record(self) -> dict:
        """What makes the mask again (:func:`speckled_from_record`), as run.json keeps it."""
        return {"speckled": {"fraction": self.fraction, "seed": self.seed}}

    def fingerprint(self) -> dict:
        """The mask's identity: its shape, fraction and seed."""
        return {"shape": list(self.shape), **self.to_record()}

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-speckled-mask", self.shape, self.fraction, self.seed)


def speckled_from_record(record: dict, matrix: Any) -> SpeckledMask | None:
    """The speckled mask a run recorded (:meth:`SpeckledMask.to_record`) for ``matrix``; None
    when the record names another kind of mask."""
    spec = record.get("speckled") if isinstance(record, dict) else None
    if spec is None:
        return None
    return SpeckledMask(matrix.shape, matrix.row_offsets, spec["fraction"], spec["seed"])
