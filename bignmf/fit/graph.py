"""Lazy Dask graphs of one NMF iteration over the row blocks; nothing here computes.

One iteration is a fused single pass: a few "fat" tasks, each owning an aligned run of row
blocks, read every block of A once (into reused buffers), update its rows of W with the current
H, and sum the block's partial products (AᵀW, WᵀW, loss pieces) in the fixed tree of
:mod:`bignmf.fit.reduction`. Tree tasks merge those partial sums; the small reduced result comes
back to the driver, which updates H in NumPy. W's new blocks stay where they were made: as
persisted task results, or written to the other buffer of a
:class:`~bignmf.store.factors.ZarrBlocks`.
Fat tasks instead of one task per block: on this kind of machine one task per block with a plain
tree reduction cost 1.1-1.7x more per iteration than a hand-written loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.sizeof import sizeof

from bignmf.fit.reduction import PairwiseSum, aligned_groups, fold_stack, merge_stacks
from bignmf.kernels.solvers import SolverParams, combine, get_solver, prepare_h
from bignmf.store.blockcache import CachedMatrix
from bignmf.store.factors import ZarrBlocks


class HState:
    """What every block task needs of H, sent once per iteration and worker as one graph key.

    Only H and the k×k gram travel; ``Hᵀ`` (C-contiguous, for the sparse products) is made on
    the worker the first time a task asks for it, instead of doubling the bytes sent.

    Its graph key is a name drawn once per state, not a hash of H (hashing H cost ~4.5 ms per
    iteration): the same state always gives the same key, and a new H a new one.
    """

    def __init__(self, H: np.ndarray, HHt: np.ndarray):
        self.H = H
        self.HHt = HHt
        self._Ht: np.ndarray | None = None
        self._name = uuid.uuid4().hex

    @classmethod
    def of(cls, H: np.ndarray) -> HState:
        """Precompute ``H·Hᵀ`` once for all blocks."""
        Ht, HHt = prepare_h(H, H.dtype)
        state = cls(H, HHt)
        state._Ht = Ht
        return state

    @property
    def Ht(self) -> np.ndarray:
        """``Hᵀ`` as a C-contiguous array, made once per process."""
        if self._Ht is None:
            self._Ht = np.ascontiguousarray(self.H.T)
        return self._Ht

    def __getstate__(self) -> dict:
        return {"H": self.H, "HHt": self.HHt, "name": self._name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["H"], state["HHt"])
        self._name = state.get("name", self._name)

    def __dask_tokenize__(self) -> tuple:
        return ("bignmf-hstate", self._name)


@sizeof.register(HState)
def _sizeof_hstate(state: HState) -> int:
    # what it costs to send and hold, for the scheduler's transfer and memory accounting
    return int(state.H.nbytes + state.HHt.nbytes) + 64


@dataclass(frozen=True)
class Pass:
    """Static description of the iteration's tasks (the same every iteration)."""

    solver: str
    params: SolverParams
    groups: tuple[tuple[int, int], ...]
    split_every: int = 8

    @classmethod
    def plan(
        cls, n_blocks: int, n_tasks: int, solver: str, params: SolverParams, split_every: int = 8
    ) -> Pass:
        """Group the blocks into at most ``n_tasks`` aligned runs; ``split_every`` a power of 2."""
        if split_every < 2 or split_every & (split_every - 1):
            raise ValueError(f"split_every must be a power of two >= 2, got {split_every}")
        get_solver(solver, params.missing).check_params(params)
        return cls(solver, params, tuple(aligned_groups(n_blocks, n_tasks)), split_every)


def _copying_combine(left, right):
    """Merge tasks must not modify their inputs: a rerun task would see altered data."""
    return combine({key: value.copy() for key, value in left.items()}, right)


@dataclass(frozen=True)
class WIO:
    """Where a pass reads W's blocks from and writes them to (memory or Zarr buffers).

    ``read`` / ``write`` are Zarr buffer numbers (``None``: the pass does not read / write W).
    With no store, W's blocks come from and go to the persisted group results.
    """

    store: ZarrBlocks | None = None
    read: int | None = None
    write: int | None = None


# Read buffers and kernel scratch, kept per process between tasks and iterations: a fat task
# would otherwise allocate (and page-fault) ~32 MB of read buffers and its scratch every time.
# Each task borrows a set for its run (never two tasks at once); a few matrices are remembered.
_SCRATCH: dict[Any, list] = {}
_SCRATCH_LOCK = threading.Lock()
_SCRATCH_MATRICES = 4


def _scratch_key(matrix) -> Any:
    if isinstance(matrix, CachedMatrix):
        # the buffers are the store's: a cache (of any budget) over it shares them
        matrix = matrix.store
    token = getattr(matrix, "__dask_tokenize__", None)
    if token is None:
        return None
    # buffers are sized by the row blocks, which a store's token does not name
    key = (type(matrix).__qualname__, token(), np.asarray(matrix.row_offsets).tobytes())
    try:
        hash(key)
    except TypeError:
        return None
    return key


@contextlib.contextmanager
def _borrowed_scratch(matrix, reads_a: bool):
    """``(read buffers or None, work dict)`` for one task, returned to the pool afterwards."""
    key = _scratch_key(matrix)
    item = None
    if key is not None:
        with _SCRATCH_LOCK:
            free = _SCRATCH.pop(key, [])
            _SCRATCH[key] = free  # most recently used last
            while len(_SCRATCH) > _SCRATCH_MATRICES:
                _SCRATCH.pop(next(iter(_SCRATCH)))
            item = free.pop() if free else None
    if item is None:
        item = [None, {}]
    if reads_a and item[0] is None:
        item[0] = matrix.new_buffers()
    try:
        yield item[0] if reads_a else None, item[1]
    finally:
        if key is not None:
            with _SCRATCH_LOCK:
                _SCRATCH.setdefault(key, []).append(item)


def _group_task(matrix, start, stop, w_blocks, wio: WIO, step, step_args, reads_a=True):
    """Run ``step`` over blocks ``start:stop``; return (new W blocks or None, partial-sum stack).

    ``step(A_i, W_i, i, *step_args, work) -> (partial dict or None, new W_i or None)``.
    """
    with _borrowed_scratch(matrix, reads_a) as (buffers, work):
        return _run_group(
            matrix, start, stop, w_blocks, wio, step, step_args, reads_a, buffers, work
        )


def _run_group(matrix, start, stop, w_blocks, wio, step, step_args, reads_a, buffers, work):
    counter = PairwiseSum(combine)
    new_blocks = []
    for i in range(start, stop):
        A_i = matrix.read_block(i, buffers) if reads_a else None
        if wio.read is None:
            W_i = None
        else:
            W_i = w_blocks[i - start] if wio.store is None else wio.store.read(wio.read, i)
        partial, W_new = step(A_i, W_i, i, *step_args, work)
        if W_new is not None:
            if wio.store is None:
                new_blocks.append(W_new)
            else:
                wio.store.write(wio.write, i, W_new)
        if partial is not None:
            counter.push(partial)
    keep = wio.write is not None and wio.store is None
    return (new_blocks if keep else None), counter.stack


# On a distributed scheduler the fat tasks are placed on workers by the passes themselves: left
# to itself the scheduler put 4 of 6 on one worker every iteration (the one holding H, it
# seems). Each group goes to a worker chosen by nnz (largest first, to the least loaded worker
# per thread), the same one every iteration for the same workers, so a worker rereads the same
# blocks of A and W. Restrictions are loose: a lost worker's tasks run elsewhere.
_PLACEMENT: contextvars.ContextVar = contextvars.ContextVar("bignmf_placement", default=None)


@contextlib.contextmanager
def placement(workers: Callable[[], Mapping[str, int] | None] | Mapping[str, int] | None):
    """Place the fat tasks of the passes built inside this context on these workers.

    Parameters
    ----------
    workers : mapping of address to threads, or a callable returning one (asked once per
        pass, so that workers that come and go are followed), or None (no placement).
    """
    token = _PLACEMENT.set(workers)
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def assign_groups(weights: Sequence[float], workers: Mapping[str, int]) -> list[str]:
    """A worker for each group: largest groups first, each to the least loaded per thread."""
    names = sorted(workers)
    threads = [max(int(workers[name]), 1) for name in names]
    load = [0.0] * len(names)
    chosen: list[str] = [""] * len(weights)
    for g in sorted(range(len(weights)), key=lambda g: (-weights[g], g)):
        w = min(range(len(names)), key=lambda w: ((load[w] + weights[g]) / threads[w], w))
        load[w] += weights[g]
        chosen[g] = names[w]
    return chosen


def _group_weights(matrix, groups, reads_a: bool) -> list[float]:
    offsets = getattr(matrix, "nnz_offsets", None) if reads_a else None
    if offsets is None:
        offsets = matrix.row_offsets
    return [float(offsets[stop] - offsets[start]) + (stop - start) for start, stop in groups]


def _group_hosts(matrix, groups, reads_a: bool) -> list[str | None]:
    workers = _PLACEMENT.get()
    if callable(workers):
        workers = workers()
    if not workers or len(workers) < 2:
        return [None] * len(groups)
    return list(assign_groups(_group_weights(matrix, groups, reads_a), workers))


def _stack_of(part):
    """A partial-sum stack, or a group task's whole ``(W blocks, stack)`` output: taking the
    tuple saves the scheduler a ``getitem`` task per group on the iteration's critical path."""
    return part[1] if isinstance(part, tuple) else part


def _merge_task(stacks):
    return merge_stacks([s for s in map(_stack_of, stacks) if s], _copying_combine)


def _fold_task(stack):
    return fold_stack(stack, _copying_combine) if stack else None


def _merge_fold_task(stacks):
    """The top of the tree: merge the last stacks and fold them, in one task (one scheduler
    round trip fewer). Merging consecutive aligned stacks in any grouping gives the same nodes,
    so the sum is the one the separate merge and fold tasks gave."""
    return _fold_task(_merge_task(stacks))


def block_pass(
    matrix: Any,
    groups: tuple[tuple[int, int], ...],
    step,
    step_args: tuple,
    w_groups: list | None = None,
    wio: WIO = WIO(),
    *,
    reads_a: bool = True,
    split_every: int = 8,
) -> tuple[list | None, Any]:
    """Build (not compute) one pass of ``step`` over every row block.

    Parameters
    ----------
    matrix : BlockMatrix
        A's row blocks.
    groups : tuple of (start, stop)
        Aligned runs of blocks, one fat task each (see :func:`bignmf.fit.reduction.aligned_groups`).
    step : callable
        ``step(A_i, W_i, i, *step_args, work) -> (partial, W_new)``; partials are dicts of
        arrays summed over blocks in the fixed tree, ``W_new`` the block's new rows of W.
    step_args : tuple
        Shared arguments, sent once as graph keys.
    w_groups : list of Delayed, optional
        W's blocks per group when W is kept in memory and the pass reads it.
    wio : WIO
        Where W is read from and written to.
    reads_a : bool
        Whether the step needs A's blocks.
    split_every : int
        Fan-in of the reduction tree.

    Returns
    -------
    new_w_groups : list of Delayed or None
        W's new blocks per group (memory mode, when the pass writes W).
    total : Delayed
        The summed partials (None when the step returns none).
    """
    args = tuple(dask.delayed(a, pure=True, traverse=False) for a in step_args)
    task = dask.delayed(_group_task, nout=2, pure=True)
    outputs = []
    for g, ((start, stop), host) in enumerate(
        zip(groups, _group_hosts(matrix, groups, reads_a), strict=True)
    ):
        where = (
            dask.annotate(workers=[host], allow_other_workers=True)
            if host is not None
            else contextlib.nullcontext()
        )
        with where:
            outputs.append(
                task(
                    matrix,
                    start,
                    stop,
                    None if w_groups is None else w_groups[g],
                    wio,
                    step,
                    args,
                    reads_a,
                )
            )
    keeps_w = wio.write is not None and wio.store is None
    stacks = [stack for _, stack in outputs] if keeps_w else outputs
    merge = dask.delayed(_merge_task, pure=True)
    while len(stacks) > split_every:
        stacks = [merge(stacks[i : i + split_every]) for i in range(0, len(stacks), split_every)]
    total = dask.delayed(_merge_fold_task, pure=True)(stacks)
    new_w = [blocks for blocks, _ in outputs] if wio.write is not None else None
    return new_w, total


def _solver_step(A_i, W_i, i, h: HState, plan: Pass, work):
    solver = get_solver(plan.solver, plan.params.missing)
    acc = solver.new_accumulator(A_i.shape[1], h.H.shape[0], h.H.dtype, plan.params.beta_loss)
    W_new = solver.update_w_block(A_i, W_i, h.H, h.Ht, h.HHt, plan.params, acc, work)
    return acc, W_new


def iteration(
    matrix: Any,
    plan: Pass,
    h: HState,
    w_groups: list | None,
    w_store: ZarrBlocks | None = None,
    parity: int = 0,
) -> tuple[list | None, Any]:
    """Build (not compute) one NMF iteration: W update per block, partial sums reduced.

    Parameters
    ----------
    matrix : BlockMatrix
        A's row blocks (a store handle or an in-memory matrix).
    plan : Pass
        Solver, parameters and task grouping.
    h : HState
        The current H.
    w_groups : list of Delayed, or None
        W kept in memory: one (persisted) Delayed per group, each a list of row blocks.
    w_store : ZarrBlocks, optional
        W kept on disk instead: read from buffer ``parity``, written to the other.
    parity : int
        The iteration number (its parity selects the buffers).

    Returns
    -------
    new_w_groups : list of Delayed or None
        The new W blocks per group (memory mode).
    total : Delayed
        The reduced accumulator.
    """
    wio = WIO(w_store, parity % 2, (parity + 1) % 2)
    new_w, total = block_pass(
        matrix, plan.groups, _solver_step, (h, plan), w_groups, wio, split_every=plan.split_every
    )
    return (None if w_store is not None else new_w), total
