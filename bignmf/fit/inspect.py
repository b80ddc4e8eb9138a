"""Reading a run's factors back for people: H, and W streamed by row slabs, from the finished
outputs (``W.zarr``, ``H.zarr``) or, for a run that was stopped, from its newest checkpoint.

W may have 10^8 rows: nothing here holds more of it than one slab (:data:`ROWS_PER_SLAB` rows
by default). :func:`scan_rows` makes, in one pass over those slabs, each component's top rows
(a running top-n) and how the rows use the components.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from bignmf.errors import CheckpointError
from bignmf.fit.outputs import ROWS_PER_CHUNK, read_summary
from bignmf.fit.rundir import PREFIX, RunDir

ROWS_PER_SLAB = ROWS_PER_CHUNK  # W.zarr's chunk rows: a slab decodes whole chunks only
USAGE_BINS = 20  # bins of the histogram of each row's dominant share, over [0, 1]


@dataclass(frozen=True)
class RunFactors:
    """A run's H and where to stream W from.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run directory.
    H : ndarray of shape (k, n)
    n_rows : int
        Rows of W (m).
    origin : str
        ``"W.zarr"`` for a finished run, else the checkpoint's name (``"ckpt-000010"``).
    iteration : int or None
        The checkpoint's iteration; None for a finished run.
    """

    run_dir: Path
    H: np.ndarray
    n_rows: int
    origin: str
    iteration: int | None
    _blocks: tuple[Path, ...]  # W.zarr alone, or the checkpoint's W blocks in row order
    _crc32: tuple[int, ...] | None  # the checkpoint's CRC-32 of each block

    @property
    def finished(self) -> bool:
        """Whether these are the finished run's ``W.zarr`` and ``H.zarr``."""
        return self.iteration is None

    def row_slabs(self, rows: int = ROWS_PER_SLAB) -> Iterator[tuple[int, np.ndarray]]:
        """W's rows in order, ``rows`` at a time, as ``(first row, slab)``.

        Parameters
        ----------
        rows : int
            Rows per slab (the last of each block may be shorter).

        Yields
        ------
        start : int
            Row of W of the slab's first row.
        slab : ndarray of shape (at most rows, k)

        Raises
        ------
        CheckpointError
            When a checkpoint's W block fails its CRC-32 (after its slabs were yielded: a
            caller keeps nothing it made of them).
        """
        start = 0
        for i, path in enumerate(self._blocks):
            block = zarr.open_array(path, mode="r")
            crc = 0
            for offset in range(0, block.shape[0], rows):
                slab = np.ascontiguousarray(block[offset : offset + rows])
                crc = zlib.crc32(slab.view(np.uint8), crc)  # the block's CRC, slab by slab
                yield start + offset, slab
            if self._crc32 is not None and crc != self._crc32[i]:
                raise CheckpointError(f"{path}: W block {i} fails its checksum")
            start += block.shape[0]


def open_factors(run_dir: str | os.PathLike) -> RunFactors:
    """The factors of a run: the finished ``W.zarr`` and ``H.zarr``, else (a run stopped,
    or started from Python without writing them) its newest intact checkpoint.

    Parameters
    ----------
    run_dir : str or path-like

    Returns
    -------
    RunFactors

    Raises
    ------
    CheckpointError
        When ``run_dir`` holds no run, or the run has neither its outputs nor a checkpoint.
    """
    run = RunDir(run_dir)
    run.record()  # no run there: one line saying what is there instead
    w_path, h_path = run.factor_paths
    if w_path.is_dir() and h_path.is_dir():
        summary = read_summary(run.path)
        done = None if summary is None else summary.get("n_iter")
        committed = run.committed()  # by name only: a checkpoint's H may be large
        newest = int(committed[0].name[len(PREFIX) :]) if committed else None
        # a resume running after the run finished once has newer factors in its checkpoints
        if newest is None or done is None or newest <= done:
            H = zarr.open_array(h_path, mode="r")[...]
            rows = zarr.open_array(w_path, mode="r").shape[0]
            return RunFactors(run.path, H, rows, w_path.name, None, (w_path,), None)
    checkpoint = run.newest()
    if checkpoint is None:
        raise CheckpointError(f"{run.path} has neither W.zarr and H.zarr nor a checkpoint yet")
    # the checkpoint layout of bignmf.store.factors.ZarrBlocks, one buffer: W/0/<block>
    blocks = tuple(checkpoint.w_path / "0" / str(i) for i in range(len(checkpoint.w_crc32)))
    rows = sum(zarr.open_array(path, mode="r").shape[0] for path in blocks)
    crcs = tuple(int(x) for x in checkpoint.w_crc32)
    return RunFactors(
        run.path, checkpoint.H, rows, checkpoint.path.name, checkpoint.iteration, blocks, crcs
    )


class TopRows:
    """A running top-n per column of a tall matrix fed by row slabs; it holds at most
    ``n`` rows per column between slabs.

    Parameters
    ----------
    k : int
        Columns (components).
    n : int
        Rows kept per column: the largest positive values, ties to the lower row.
    """

    def __init__(self, k: int, n: int):
        self.k, self.n = k, n
        # flat (column, row, value) candidates, at most n per column
        self._cols = np.empty(0, dtype=np.int64)
        self._rows = np.empty(0, dtype=np.int64)
        self._vals = np.empty(0, dtype=np.float64)

    def add(self, start: int, slab: np.ndarray) -> None:
        """Merge the rows ``start, start + 1, ...`` of ``slab`` (rows × k)."""
        if self.n == 0:
            return
        slab = np.asarray(slab, dtype=np.float64)
        r = slab.shape[0]
        keep = slab > 0
        if r > self.n:  # only what reaches the slab's own n-th largest value can be kept
            keep &= slab >= np.partition(slab, r - self.n, axis=0)[r - self.n]
        rows, cols = np.nonzero(keep)
        cols = np.concatenate([self._cols, cols])
        rows = np.concatenate([self._rows, rows + start])
        vals = np.concatenate([self._vals, slab[keep]])
        order = np.lexsort((rows, -vals, cols))  # per column: largest first, ties to lower row
        cols, rows, vals = cols[order], rows[order], vals[order]
        first = np.searchsorted(cols, np.arange(self.k))  # where each column's run begins
        rank = np.arange(cols.size) - first[cols]
        kept = rank < self.n
        self._cols, self._rows, self._vals = cols[kept], rows[kept], vals[kept]

    def result(self) -> list[list[tuple[int, float]]]:
        """Per column, its top rows as ``(row, value)``, largest first."""
        top: list[list[tuple[int, float]]] = [[] for _ in range(self.k)]
        for c, i, v in zip(self._cols, self._rows, self._vals, strict=True):
            top[int(c)].append((int(i), float(v)))
        return top


@dataclass(frozen=True)
class RowScan:
    """What one pass over W's rows found.

    The components are weighed by H, so that the figures do not depend on how W and H share
    each component's scale (W·H is unchanged when a column of W is multiplied by s and the row
    of H divided by it): the *usage* of component c by row i is ``W[i, c] * H[c].sum()``, its
    share of the row's total ``(W·H)[i].sum()``.

    Attributes
    ----------
    n_rows : int
    top : list of list of (int, float)
        Per component, its top rows ``(row, W[row, c])``, largest first, ties to the lower
        row; only rows with a positive weight.
    mass_share : ndarray of shape (k,)
        Each component's share of ``(W·H).sum()``; zeros when it is 0.
    dominant : ndarray of int of shape (k,)
        Rows whose largest usage is component c (the lower c on a tie).
    empty_rows : int
        Rows whose usage is zero for every component (an empty row of A, typically).
    dominant_share : ndarray of int of shape (USAGE_BINS,)
        Histogram of each non-empty row's largest usage share, ``USAGE_BINS`` equal bins over
        [0, 1]: near 1 a row is one component's, near 1/k an even mixture.
    """

    n_rows: int
    top: list[list[tuple[int, float]]]
    mass_share: np.ndarray
    dominant: np.ndarray
    empty_rows: int
    dominant_share: np.ndarray


def scan_rows(factors: RunFactors, n: int = 10, rows: int = ROWS_PER_SLAB) -> RowScan:
    """Each component's top ``n`` rows and the rows' usage of the components, in one pass over
    W by slabs of ``rows`` rows.

    Parameters
    ----------
    factors : RunFactors
    n : int
        Top rows kept per component.
    rows : int
        Rows of W read at a time.

    Returns
    -------
    RowScan

    Notes
    -----
    Memory: one slab of W (``rows × k``), ``n × k`` kept candidates and O(k) sums, whatever
    the number of rows; one read of W.
    """
    k = factors.H.shape[0]
    scale = np.asarray(factors.H, dtype=np.float64).sum(axis=1)  # Σ_j H[c, j]
    top = TopRows(k, n)
    mass = np.zeros(k)
    dominant = np.zeros(k, dtype=np.int64)
    shares = np.zeros(USAGE_BINS, dtype=np.int64)
    empty = 0
    for start, slab in factors.row_slabs(rows):
        top.add(start, slab)
        usage = slab.astype(np.float64) * scale
        mass += usage.sum(axis=0)
        total = usage.sum(axis=1)
        used = total > 0
        empty += int(np.count_nonzero(~used))
        usage, total = usage[used], total[used]
        dominant += np.bincount(np.argmax(usage, axis=1), minlength=k)
        share = usage.max(axis=1) / total
        shares += np.histogram(share, bins=USAGE_BINS, range=(0.0, 1.0))[0]
    whole = mass.sum()
    return RowScan(
        factors.n_rows,
        top.result(),
        mass / whole if whole > 0 else mass,
        dominant,
        empty,
        shares,
    )


__all__ = [
    "ROWS_PER_SLAB",
    "USAGE_BINS",
    "RowScan",
    "RunFactors",
    "TopRows",
    "open_factors",
    "scan_rows",
]
