"""The two-pass iteration for wide matrices: H cut into column ranges, so no task holds all of H.

The fused pass (:mod:`bignmf.fit.graph`) gives every task Hᵀ (n×k) and ``log2(blocks per task)+1``
partial sums of ``AᵀW`` (n×k each). When n is too large for that, the columns are cut into R
ranges and one iteration becomes a short series of graphs, one range each, over the same fat
tasks (aligned groups of row blocks):

1. for r = 0..R-1: ``A_i[:, r]·H_rᵀ`` added to the running ``A_i·Hᵀ`` of each block, kept in a
   double-buffered block buffer (Zarr beside W on a cluster, this process's memory locally);
2. W's new rows from ``A_i·Hᵀ`` (the Frobenius solvers need A only through it);
3. for each r: ``A_i[:, r]ᵀ·W_i`` (``n_r×k``) and, with the first range, ``W_iᵀW_i``, reduced
   over the blocks in the fixed pairwise tree of :mod:`bignmf.fit.reduction`.

The driver joins the ranges of ``AᵀW`` and updates H as in the fused pass; the loss's cross term
``⟨W, A·Hᵀ⟩`` is computed there as ``⟨AᵀW, Hᵀ⟩``. A task holds one range of Hᵀ and partial sums
of ``n/R × k``; the driver holds H and ``AᵀW``. The price: every block of A is read ``2R`` times
per iteration. Results are bitwise identical on any scheduler and task count for a given R, and
differ from the fused pass (and from another R) only by rounding. NNDSVD's randomized SVD uses
the same range products (:meth:`TwoPasses.product`, :meth:`TwoPasses.transposed`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bignmf.fit.graph import WIO, Pass, block_pass
from bignmf.kernels.products import a_ht, accumulate_at_w, gram, sq_norm
from bignmf.kernels.solvers import get_solver
from bignmf.plan import column_bounds
from bignmf.store.factors import ZarrBlocks


@dataclass(frozen=True)
class ColumnRanges:
    """The R column ranges ``[bounds[r], bounds[r+1])`` of a two-pass iteration."""

    bounds: tuple[int, ...]

    @classmethod
    def split(cls, n: int, n_ranges: int) -> ColumnRanges:
        """``n_ranges`` ranges of (nearly) equal width over ``n`` columns."""
        return cls(column_bounds(n, n_ranges))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` per range."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def __len__(self) -> int:
        return len(self.bounds) - 1


def check_solver(solver: str, beta_loss: float) -> None:
    """Two passes need a solver that updates W from ``A·Hᵀ`` alone (Frobenius loss)."""
    if beta_loss != 2.0:
        raise ValueError(
            f"column_chunks > 1 (H cut into column ranges) supports the Frobenius loss only; "
            f"solver {solver!r} with beta_loss={beta_loss!r} needs all of H in every task"
        )


class MemoryBlocks:
    """Row blocks kept in this process, with :class:`~bignmf.store.factors.ZarrBlocks`' read/write.

    Holds running sums (of ``A·Hᵀ``, say) between the rounds over H's ranges on local
    schedulers (the tasks share the driver's memory); on a cluster they go to Zarr instead.
    """

    def __init__(self, n_buffers: int = 2):
        self.n_buffers = n_buffers
        self._blocks: dict[tuple[int, int], np.ndarray] = {}
        self._id = uuid.uuid4().hex

    def read(self, buffer: int, i: int) -> np.ndarray:
        """Block ``i`` of ``buffer``."""
        return self._blocks[buffer % self.n_buffers, i]

    def write(self, buffer: int, i: int, values: np.ndarray) -> None:
        """Keep ``values`` as block ``i`` of ``buffer``."""
        self._blocks[buffer % self.n_buffers, i] = values

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-memory-blocks", self._id)


def _product_step(A_i, before, i, c0: int, c1: int, X_r: np.ndarray, work):
    """One range of ``A_i·X``: the sum so far plus ``A_i[:, c0:c1]·X_r`` (a new array: a rerun
    task must find its input unchanged)."""
    piece = a_ht(A_i[:, c0:c1], X_r)
    return None, (piece if before is None else before + piece)


def _w_step(A_i, W_i, i, aht: WIO, HHt: np.ndarray, plan: Pass, work):
    """The W update of one block from its summed ``A·Hᵀ``."""
    solver = get_solver(plan.solver, plan.params.missing)
    return None, solver.w_from_aht(W_i, aht.store.read(aht.read, i), HHt, plan.params)


def _atw_step(A_i, W_i, i, c0: int, c1: int, with_gram: bool, work):
    """One range of ``AᵀW``: ``A_i[:, c0:c1]ᵀ·W_i`` (and ``W_iᵀW_i`` for the first range)."""
    partial = {"AtW": np.zeros((c1 - c0, W_i.shape[1]), dtype=W_i.dtype)}
    A_r = A_i[:, c0:c1]
    accumulate_at_w(A_r, W_i, partial["AtW"])
    partial["A_sq"] = np.asarray(sq_norm(A_r))  # the ranges' sum: the driver's norm check
    if with_gram:
        partial["WtW"] = gram(W_i)
    return partial, None


class TwoPasses:
    """Products with A over H's column ranges, and the two-pass iteration built from them.

    Each range is one graph (instead of one graph per iteration), which keeps a worker from
    holding more than a range of H or of ``AᵀW`` at a time; every graph reads only stored
    inputs (A, block buffers of W and of running sums) and the range's factor, so a lost
    worker's tasks are rerun from them.

    Parameters
    ----------
    ranges : ColumnRanges
    row_offsets : array of int
        A's row blocks.
    workdir : path or None
        Where block buffers go as Zarr (on a distributed scheduler, storage every worker
        reaches); None keeps them in this process (local schedulers).
    """

    def __init__(self, ranges: ColumnRanges, row_offsets: np.ndarray, workdir: str | None):
        self.ranges = ranges
        self.row_offsets = row_offsets
        self.workdir = workdir
        self._buffers: dict[str, Any] = {}

    def buffers(self, name: str, k: int, dtype) -> Any:
        """Two buffers of ``m_i × k`` blocks called ``name`` (made once)."""
        if name not in self._buffers:
            if self.workdir is None:
                self._buffers[name] = MemoryBlocks()
            else:
                path = os.path.join(self.workdir, f"{name}-buffers.zarr")
                self._buffers[name] = ZarrBlocks(path, self.row_offsets, k, dtype).create()
        return self._buffers[name]

    def product(self, runner, matrix, groups, X: np.ndarray, out: Any, split_every=8) -> WIO:
        """``A_i·X`` for every block, summed over the ranges into ``out``; where to read it.

        ``X`` (n × l) is sent one range at a time; ``groups`` are the fat tasks' blocks.
        """
        tag = uuid.uuid4().hex  # X changes every call: name its ranges instead of hashing them
        for r, (c0, c1) in enumerate(self.ranges.ranges):
            X_r = runner.share(np.ascontiguousarray(X[c0:c1]), f"bignmf-range-{tag}-{r}")
            io = WIO(out, None if r == 0 else (r - 1) % 2, r % 2)
            new, _ = block_pass(
                matrix, groups, _product_step, (c0, c1, X_r), None, io, split_every=split_every
            )
            runner.compute(*new)
        return WIO(out, (len(self.ranges) - 1) % 2, None)

    def transposed(self, runner, matrix, groups, step, w_groups, wio: WIO, split_every=8):
        """Per range r, the sums over blocks of ``step(A_i, W_i, i, c0, c1, r == 0, work)``
        (a list of dicts, in range order); ``W_i`` as ``w_groups``/``wio`` say."""
        parts = []
        for r, (c0, c1) in enumerate(self.ranges.ranges):
            _, total = block_pass(
                matrix, groups, step, (c0, c1, r == 0), w_groups, wio, split_every=split_every
            )
            parts.extend(runner.compute(total))
        return parts

    def step(self, state, Ht: np.ndarray, HHt: np.ndarray) -> dict:
        """One iteration of ``state`` (a :class:`~bignmf.fit.driver.FitState`); returns the
        reduced accumulator and leaves W's new blocks where ``state`` keeps them."""
        runner, matrix, plan = state.runner, state.matrix, state.plan
        buffers = self.buffers("AHt", Ht.shape[1], Ht.dtype)
        aht = self.product(runner, matrix, plan.groups, Ht, buffers, plan.split_every)
        parity = state.iteration % 2
        new_w, _ = block_pass(
            matrix,
            plan.groups,
            _w_step,
            (aht, HHt, plan),
            state.w_groups,
            WIO(state.w_store, parity, 1 - parity),
            reads_a=False,
            split_every=plan.split_every,
        )
        if state.w_store is None:
            state.w_groups = list(runner.persist(*new_w))
            new = WIO(None, 0, None)
        else:
            runner.compute(*new_w)
            new = WIO(state.w_store, 1 - parity, None)
        parts = self.transposed(
            runner, matrix, plan.groups, _atw_step, state.w_groups, new, plan.split_every
        )
        return self._assemble(parts, Ht)

    def _assemble(self, parts: list[dict], Ht: np.ndarray) -> dict:
        """The fused pass's reduced accumulator ``{"AtW", "WtW", "cross", "A_sq"}`` from the
        ranges' sums; ``cross = ⟨W, A·Hᵀ⟩ = ⟨AᵀW, Hᵀ⟩``, summed range by range in float64."""
        cross = sum(
            float(np.vdot(part["AtW"].astype(np.float64), Ht[c0:c1].astype(np.float64)))
            for part, (c0, c1) in zip(parts, self.ranges.ranges, strict=True)
        )
        AtW = np.concatenate([part["AtW"] for part in parts], axis=0)
        a_sq = np.float64(sum(float(part["A_sq"]) for part in parts))
        return {"AtW": AtW, "WtW": parts[0]["WtW"], "cross": np.float64(cross), "A_sq": a_sq}
