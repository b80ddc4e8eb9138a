"""Entries of a fitted ``W·H`` and their error on held-out entries, streamed.

What a fit on the stored entries only (``missing="zeros"``) is for: predicting the entries it
did not see. :func:`predict` gives ``(W·H)[rows, cols]`` for any (row, column) pairs, in
batches that gather only the rows of W they need; :func:`score` streams a held-out matrix
(any :class:`~bignmf.types.Source`: a ``.mtx`` of (row, column, value) triples, a store...)
slab by slab, reading only the slab's rows of W, and returns RMSE and MAE. Neither ever forms
a dense ``W·H``. W may be a NumPy array, a Zarr array (a finished run's ``W.zarr``) or a lazy
Dask array (:class:`~bignmf.fit.engine.NMFResult`'s when W was kept on disk).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bignmf.errors import InputError, ParameterError
from bignmf.kernels.products import wh_at_nonzeros
from bignmf.types import Source

__all__ = ["PREDICT_BATCH", "Score", "predict", "score"]

#: (row, column) pairs predicted at once: bounds the gathered rows of W and H.
PREDICT_BATCH = 1 << 18


class Score(NamedTuple):
    """Errors of ``W·H`` on held-out entries."""

    rmse: float
    mae: float
    n: int

    def describe(self) -> str:
        """One line, as ``bignmf score`` prints it."""
        return f"RMSE {self.rmse:.6g}  MAE {self.mae:.6g}  on {self.n:,} held-out entries"


def _rows_of(W: Any, start: int, stop: int) -> np.ndarray:
    return np.asarray(W[start:stop])


def _checked_pairs(rows, cols, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ParameterError(
            f"rows and cols must be 1-d of one length, got {rows.shape}, {cols.shape}"
        )
    for name, index, size in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        if index.size and not np.issubdtype(index.dtype, np.integer):
            raise ParameterError(f"{name} must be integers, got {index.dtype}")
        bad = (index < 0) | (index >= size)
        if bad.any():
            raise ParameterError(
                f"{name}[{int(np.argmax(bad))}] = {int(index[bad][0])} is outside 0..{size - 1}"
            )
    return rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False)


def predict(W: Any, H: np.ndarray, rows, cols, batch: int = PREDICT_BATCH) -> np.ndarray:
    """``(W·H)[rows[p], cols[p]]`` for every pair p.

    Parameters
    ----------
    W : array-like, shape (m, k)
        NumPy, Zarr or Dask: only the rows asked for are read, a batch at a time.
    H : ndarray, shape (k, n)
    rows, cols : array-like of int, shape (p,)
        Zero-based row and column of each entry.
    batch : int
        Pairs per batch.

    Returns
    -------
    ndarray, shape (p,)
        In H's dtype.

    Raises
    ------
    ParameterError
        For pairs of different lengths, non-integers, or an index outside W·H's shape (named).
    """
    H = np.asarray(H)
    rows, cols = _checked_pairs(rows, cols, (W.shape[0], H.shape[1]))
    out = np.empty(rows.size, dtype=H.dtype)
    for start in range(0, rows.size, batch):
        r, c = rows[start : start + batch], cols[start : start + batch]
        wanted, where = np.unique(r, return_inverse=True)
        W_rows = _gather(W, wanted)
        np.einsum("pk,kp->p", W_rows[where], H[:, c], out=out[start : start + batch])
    return out


def _gather(W: Any, wanted: np.ndarray) -> np.ndarray:
    """W's rows ``wanted`` (sorted, unique); a Zarr or Dask W is read by orthogonal selection."""
    if isinstance(W, np.ndarray):
        return W[wanted]
    selector = getattr(W, "get_orthogonal_selection", None)
    if selector is not None:  # a Zarr array
        return selector((wanted, slice(None)))
    return np.asarray(W[wanted])


def score(W: Any, H: np.ndarray, test: Source) -> Score:
    """RMSE and MAE of ``W·H`` on the stored entries of ``test``, streamed by row slabs.

    Parameters
    ----------
    W : array-like, shape (m, k)
        NumPy, Zarr or Dask; each slab reads its rows only.
    H : ndarray, shape (k, n)
    test : Source
        The held-out entries, of W·H's shape (its stored entries are the ones scored).

    Returns
    -------
    Score

    Raises
    ------
    InputError
        When ``test``'s shape is not ``(m, n)``, it holds no entry, or a value is not finite
        (naming the row).
    """
    H = np.asarray(H)
    shape = (W.shape[0], H.shape[1])
    if tuple(test.shape) != shape:
        raise InputError(
            f"{test.name} is {test.shape[0]} x {test.shape[1]}; W·H is {shape[0]} x {shape[1]}"
        )
    Ht = np.ascontiguousarray(H.T)
    squares = absolute = 0.0
    count = 0
    start = 0
    for slab in test.blocks():
        stop = start + slab.shape[0]
        if slab.nnz:
            values = np.asarray(slab.data, dtype=np.float64)
            if not np.isfinite(values).all():
                bad = int(np.argmax(~np.isfinite(values)))
                row = start + int(np.searchsorted(slab.indptr, bad, side="right")) - 1
                raise InputError(f"{test.name}: row {row} holds a value that is not finite")
            wh = wh_at_nonzeros(slab, _rows_of(W, start, stop).astype(Ht.dtype, copy=False), Ht)
            error = values - wh
            squares += float(np.dot(error, error))
            absolute += float(np.abs(error).sum())
            count += slab.nnz
        start = stop
    if count == 0:
        raise InputError(f"{test.name} holds no entry to score")
    return Score(rmse=float(np.sqrt(squares / count)), mae=absolute / count, n=count)
