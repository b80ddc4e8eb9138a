"""The two-pass iteration for wide matrices: H cut into column ranges, so no task holds all of H.

The fused pass (:mod:`bignmf.graph`) gives every task Hᵀ (n×k) and ``log2(blocks per task)+1``
partial sums of ``AᵀW`` (n×k each). When n is too large for that, the columns are cut into R
ranges and one iteration makes two passes over A's row blocks, each task handling one group of
row blocks and one column range ``r``:

1. task (g, r) computes ``A_g[:, r]·H_rᵀ`` for its blocks; the W task of group g sums the R
   pieces in range order and updates W_g (the Frobenius solvers need A only through ``A·Hᵀ``);
2. task (g, r) accumulates ``A_g[:, r]ᵀ·W_g`` (``n_r×k``) and, for r = 0, ``W_gᵀW_g``; each
   range is reduced over the groups in the fixed pairwise tree of :mod:`bignmf.reduction`.

The driver joins the ranges of ``AᵀW`` and updates H as in the fused pass; the loss's cross term
``⟨W, A·Hᵀ⟩`` is computed there as ``⟨AᵀW, Hᵀ⟩``. A task holds one range of Hᵀ and partial sums
of ``n/R × k``; the driver holds H and ``AᵀW``. The price: every block of A is read ``2R`` times
per iteration. Results are bitwise identical on any scheduler and task count for a given R, and
differ from the fused pass (and from another R) only by rounding.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph import WIO, Pass, block_pass
from .kernels.products import a_ht, accumulate_at_w, gram
from .kernels.solvers import get_solver

#: share of a worker thread's memory one task may use before the columns are cut into ranges
TASK_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class ColumnRanges:
    """The R column ranges ``[bounds[r], bounds[r+1])`` of a two-pass iteration."""

    bounds: tuple[int, ...]

    @classmethod
    def split(cls, n: int, n_ranges: int) -> ColumnRanges:
        """``n_ranges`` ranges of (nearly) equal width over ``n`` columns."""
        if not 1 <= n_ranges <= max(n, 1):
            raise ValueError(f"column_chunks must be between 1 and n = {n}, got {n_ranges}")
        return cls(tuple(int(b) for b in np.linspace(0, n, n_ranges + 1).round()))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` per range."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def __len__(self) -> int:
        return len(self.bounds) - 1


def fused_task_bytes(n: int, k: int, itemsize: int, blocks_per_task: int) -> int:
    """Memory one fused-pass task needs for H: Hᵀ, H·Hᵀ and its n×k partial sums.

    H and Hᵀ (2), ``log2(blocks per task) + 1`` partial sums, and the copies a merge task makes
    of two stacks' sums (2).
    """
    depth = math.ceil(math.log2(max(blocks_per_task, 1))) + 1
    return (depth + 4) * n * k * itemsize


def choose_column_chunks(
    n: int, k: int, itemsize: int, blocks_per_task: int, task_memory: int
) -> int:
    """Fewest column ranges that keep a task's share of H within ``TASK_MEMORY_FRACTION``.

    Parameters
    ----------
    n, k : int
        Columns of A and rank.
    itemsize : int
        Bytes per value of the factors (A's dtype).
    blocks_per_task : int
        Row blocks per fused task.
    task_memory : int
        Bytes one task may use (a worker's memory limit divided by its threads).

    Returns
    -------
    int
        1 (the fused single pass) when H fits, else the number of column ranges.
    """
    need = fused_task_bytes(n, k, itemsize, blocks_per_task)
    budget = TASK_MEMORY_FRACTION * task_memory
    if need <= budget:
        return 1
    return min(max(2, math.ceil(need / budget)), n)


def check_solver(solver: str, beta_loss: float) -> None:
    """Two passes need a solver that updates W from ``A·Hᵀ`` alone (Frobenius loss)."""
    if beta_loss != 2.0:
        raise ValueError(
            f"column_chunks > 1 (H cut into column ranges) supports the Frobenius loss only; "
            f"solver {solver!r} with beta_loss={beta_loss!r} needs all of H in every task"
        )


class MemoryBlocks:
    """Row blocks kept in this process, with :class:`~bignmf.factors.ZarrBlocks`' read/write.

    Holds the running sums of ``A·Hᵀ`` between the rounds of pass 1 on local schedulers (the
    tasks share the driver's memory); on a cluster they go to Zarr instead.
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


def _aht_step(A_i, before, i, c0: int, c1: int, Ht_r: np.ndarray, work):
    """Pass 1, one range: ``A_i·Hᵀ`` summed so far plus ``A_i[:, c0:c1]·H_rᵀ`` (a new array:
    a rerun task must find its input unchanged)."""
    piece = a_ht(A_i[:, c0:c1], Ht_r)
    return None, (piece if before is None else before + piece)


def _w_step(A_i, W_i, i, aht: WIO, HHt: np.ndarray, plan: Pass, work):
    """The W update of one block from its summed ``A·Hᵀ``."""
    solver = get_solver(plan.solver)
    return None, solver.w_from_aht(W_i, aht.store.read(aht.read, i), HHt, plan.params)


def _atw_step(A_i, W_i, i, c0: int, c1: int, with_gram: bool, work):
    """Pass 2, one range: ``A_i[:, c0:c1]ᵀ·W_i`` (and ``W_iᵀW_i`` for the first range)."""
    partial = {"AtW": np.zeros((c1 - c0, W_i.shape[1]), dtype=W_i.dtype)}
    accumulate_at_w(A_i[:, c0:c1], W_i, partial["AtW"])
    if with_gram:
        partial["WtW"] = gram(W_i)
    return partial, None


@dataclass(frozen=True)
class TwoPasses:
    """Runs two-pass iterations: each is a short sequence of graphs, one column range each.

    One graph per range (instead of one graph per iteration) keeps a worker from holding more
    than a range of H or of ``AᵀW`` at a time; every graph reads only stored inputs (A, the
    buffers of W and of the running ``A·Hᵀ``) and H's range, so a lost worker's tasks are
    rerun from them.

    Parameters
    ----------
    ranges : ColumnRanges
    aht : ZarrBlocks or MemoryBlocks
        Two buffers for the running sums of ``A·Hᵀ`` (Zarr on a distributed scheduler).
    """

    ranges: ColumnRanges
    aht: Any

    def step(self, state, Ht: np.ndarray, HHt: np.ndarray) -> dict:
        """One iteration of ``state`` (a :class:`~bignmf.driver.FitState`); returns the
        reduced accumulator and leaves W's new blocks where ``state`` keeps them."""
        self._pass_one(state, Ht)
        self._update_w(state, HHt)
        return assemble(self._pass_two(state), Ht)

    def _pass_one(self, state, Ht: np.ndarray) -> None:
        tag = uuid.uuid4().hex  # H changes every iteration: name its ranges, don't hash them
        for r, (c0, c1) in enumerate(self.ranges.ranges):
            ht = state.runner.share(Ht[c0:c1], f"bignmf-ht-{tag}-{r}")
            io = WIO(self.aht, None if r == 0 else (r - 1) % 2, r % 2)
            new, _ = block_pass(
                state.matrix, state.plan.groups, _aht_step, (c0, c1, ht), None, io,
                split_every=state.plan.split_every,
            )  # fmt: skip
            state.runner.compute(*new)

    def _update_w(self, state, HHt: np.ndarray) -> None:
        aht = WIO(self.aht, (len(self.ranges) - 1) % 2, None)
        parity = state.iteration % 2
        wio = WIO(state.w_store, parity, 1 - parity)
        new_w, _ = block_pass(
            state.matrix, state.plan.groups, _w_step, (aht, HHt, state.plan), state.w_groups,
            wio, reads_a=False, split_every=state.plan.split_every,
        )  # fmt: skip
        if state.w_store is None:
            state.w_groups = list(state.runner.persist(*new_w))
        else:
            state.runner.compute(*new_w)

    def _pass_two(self, state) -> list[dict]:
        parity = (state.iteration + 1) % 2  # W's new blocks
        wio = WIO(state.w_store, parity if state.w_store is not None else 0, None)
        parts = []
        for r, (c0, c1) in enumerate(self.ranges.ranges):
            _, total = block_pass(
                state.matrix, state.plan.groups, _atw_step, (c0, c1, r == 0), state.w_groups,
                wio, split_every=state.plan.split_every,
            )  # fmt: skip
            parts.extend(state.runner.compute(total))
        return parts


def assemble(parts: list[dict], Ht: np.ndarray) -> dict:
    """The fused pass's reduced accumulator from the column ranges' sums.

    Parameters
    ----------
    parts : list of dict
        Computed ``parts`` of :func:`iteration`, in range order.
    Ht : ndarray, shape (n, k)
        ``Hᵀ`` of the H the W blocks were updated with.

    Returns
    -------
    dict
        ``{"AtW", "WtW", "cross"}`` as :meth:`bignmf.kernels.solvers.Solver.update_h` expects;
        ``cross = ⟨W, A·Hᵀ⟩ = ⟨AᵀW, Hᵀ⟩``, summed in float64.
    """
    AtW = np.concatenate([part["AtW"] for part in parts], axis=0)
    cross = sum(
        float(np.vdot(part["AtW"].astype(np.float64), Ht[c0:c1].astype(np.float64)))
        for part, (c0, c1) in zip(parts, _offsets(parts), strict=True)
    )
    return {"AtW": AtW, "WtW": parts[0]["WtW"], "cross": np.float64(cross)}


def _offsets(parts: list[dict]) -> list[tuple[int, int]]:
    stops = np.cumsum([part["AtW"].shape[0] for part in parts])
    return list(zip([0, *stops[:-1]], stops, strict=True))
