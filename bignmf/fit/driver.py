"""The iteration loop: one graph per iteration, callbacks, checkpoints and their restoration.

The driver holds a :class:`FitState` — where W's blocks are (persisted task results or Zarr
buffers), H, the iteration count and the loss and objective histories — and advances it one
iteration at a time. Everything an iteration computes depends only on (W, H) and A's row blocks,
and whether to stop only on the objective history, so a state saved in a checkpoint and restored
later continues bit for bit, and stops at the same iteration, as if never interrupted: there is
no other solver state (no random numbers are drawn after initialisation).

The objective is what the solvers minimise: the β-divergence (the *loss*) plus the penalties
``l1_W·ΣW + ½·l2_W·‖W‖²_F + l1_H·ΣH + ½·l2_H·‖H‖²_F`` (scikit-learn's scaling, see
:func:`bignmf.kernels.solvers.regularization`), both of the iterate ``(W_t, H_{t-1})``. The
stopping rules (:mod:`bignmf.fit.stopping`) read the objective, never the loss alone: with
penalties the loss may rise while the objective falls.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bignmf.errors import ObjectiveIncreaseWarning, StoreFormatError
from bignmf.fit.columns import TwoPasses
from bignmf.fit.graph import WIO, HState, Pass, block_pass, iteration
from bignmf.fit.rundir import Checkpoint, CheckpointError, crash_point, crc32
from bignmf.fit.stopping import get_stopping
from bignmf.kernels.solvers import penalty, penalty_sums, prepare_h
from bignmf.store.factors import ZarrBlocks
from bignmf.store.weighted import WeightedMatrix


@dataclass(frozen=True)
class IterationInfo:
    """What callbacks are told after each iteration.

    Attributes
    ----------
    iteration : int
        Iterations done so far (1 after the first).
    loss : float
        scikit-learn's β-divergence of ``(W_t, H_{t-1})`` (½‖A − WH‖²_F for Frobenius).
    relative_error : float
        ``‖A − WH‖_F / ‖A‖_F`` for Frobenius; ``nan`` for other losses.
    seconds : float
        Wall time of the iteration.
    max_iter : int
        The iteration limit of this run.
    objective : float
        The objective minimised, of the same ``(W_t, H_{t-1})``: ``loss`` plus the penalties
        (equal to ``loss`` without regularisation). The stopping rule reads it.
    """

    iteration: int
    loss: float
    relative_error: float
    seconds: float
    max_iter: int = 0
    objective: float = float("nan")


@dataclass
class FitState:
    """Everything the loop advances; see the module docstring."""

    matrix: Any
    plan: Pass
    runner: Any
    solver: Any
    beta: float
    w_groups: list | None
    w_store: ZarrBlocks | None
    H: np.ndarray
    iteration: int = 0
    history: list[float] = field(default_factory=list)  # the loss (divergence) per iteration
    objective_history: list[float] = field(default_factory=list)  # loss + penalties
    acc: dict | None = None
    converged: bool = False
    two_passes: TwoPasses | None = None  # H cut into column ranges (wide matrices)
    saved_loss: float | None = None  # final_loss of the checkpoint restored, until a step
    norm_checked: bool = False  # the recorded ‖A‖² against the first pass's, once a process

    @property
    def norm_a_sq(self) -> float:
        """‖A‖²_F."""
        return self.matrix.frobenius_sq

    @property
    def k(self) -> int:
        """Number of components."""
        return self.H.shape[0]

    def rounding(self) -> float:
        """How far rounding alone may move the computed objective: ``ROUNDING·eps·S``.

        ``eps`` is that of the factors' dtype and ``S`` the size of the terms the objective is
        summed from: the larger of the first iteration's objective (the largest, the solvers
        decreasing it) and ``½‖A‖²_F`` (β = 2: the loss is ``½(‖A‖² − 2⟨W, AHᵀ⟩ + ⟨WᵀW,
        HHᵀ⟩)``, which cancels) or ``ΣA`` (other β). It depends on the run alone, so a
        resumed run uses the same.
        """
        return rounding(self.objective_history, self.beta, self.matrix, self.H.dtype)

    def relative_error(self, loss: float) -> float:
        """``sqrt(2·loss) / ‖A‖_F`` for Frobenius, else nan."""
        if self.beta != 2:
            return float("nan")
        return float(np.sqrt(2 * max(loss, 0.0) / self.norm_a_sq))

    def step(self, max_iter: int) -> IterationInfo:
        """Run one iteration: update every W block, reduce, update H."""
        start = time.perf_counter()
        if self.two_passes is None:
            self.acc = self._fused_pass()
        else:
            self.acc = self._two_passes()
        crash_point("iteration-before-h", self.iteration + 1)
        if not self.norm_checked:
            check_norm(self.matrix, self.acc)
            self.norm_checked = True
        params = self.plan.params
        # the penalties of the iterate the loss is of: the new W (its sums) and the old H
        penalties = penalty(self.acc, self.H, params)
        self.H, loss = self.solver.update_h(self.H, self.acc, params, self.norm_a_sq)
        objective = loss + penalties
        self.history.append(loss)
        self.objective_history.append(objective)
        self.iteration += 1
        seconds = time.perf_counter() - start
        return IterationInfo(
            self.iteration, loss, self.relative_error(loss), seconds, max_iter, objective
        )

    def _fused_pass(self) -> dict:
        new_w, total = iteration(
            self.matrix, self.plan, HState.of(self.H), self.w_groups, self.w_store, self.iteration
        )
        if new_w is None:
            return self.runner.compute(total)[0]
        self.w_groups, acc = self.runner.persist_and_compute(*new_w, total)
        return acc

    def _two_passes(self) -> dict:
        Ht, HHt = prepare_h(self.H, self.H.dtype)
        acc = self.two_passes.step(self, Ht, HHt)
        if self.plan.params.l1_W and "W_l1" not in acc:
            # the range passes reduce AᵀW and WᵀW only; ΣW of the new W takes one more pass
            # over W's blocks (not A's), reduced in the same tree
            acc.update(self._w_sums(self.iteration + 1))
        return acc

    def _w_sums(self, parity: int) -> dict:
        wio = WIO(self.w_store, 0 if self.w_store is None else parity % 2, None)
        _, total = block_pass(
            self.matrix,
            self.plan.groups,
            _w_sums_step,
            (),
            self.w_groups,
            wio,
            reads_a=False,
            split_every=self.plan.split_every,
        )
        return self.runner.compute(total)[0]

    def final_loss(self) -> float:
        """Loss of the current (W, H): exact from the last sums where the solver can give it
        (:meth:`~bignmf.kernels.solvers.Solver.loss_after_h`), else the last iteration's."""
        if self.acc is None and self.saved_loss is not None:
            return self.saved_loss
        exact = None
        if self.acc is not None and self.beta == 2:
            exact = self.solver.loss_after_h(self.acc, self.H, self.norm_a_sq)
        if exact is None:
            return self.history[-1] if self.history else float("nan")
        return exact

    # -- W in and out of checkpoints
    def _wio(self, write: bool) -> WIO:
        parity = self.iteration % 2
        if self.w_store is None:
            return WIO(None, None if write else 0, 0 if write else None)
        return WIO(self.w_store, None if write else parity, parity if write else None)

    def save_w(self, directory: Path) -> np.ndarray:
        """Write W's blocks under ``directory``; return their CRC-32s."""
        target = ZarrBlocks(directory, self.matrix.row_offsets, self.k, self.H.dtype, 1).create()
        _, total = block_pass(
            self.matrix,
            self.plan.groups,
            _save_step,
            (target, self.matrix.n_blocks),
            self.w_groups,
            self._wio(write=False),
            reads_a=False,
        )
        (sums,) = self.runner.compute(total)
        return sums["crc32"]

    def restore_w(self, checkpoint: Checkpoint) -> None:
        """Read W's blocks from a checkpoint (verifying each) into where iterations keep W.

        The checkpoint's objective history comes back with its loss history: the stopping rule
        reads it, so a resumed run stops where the uninterrupted one does. A checkpoint older
        than the objective history has only the loss, which is the objective when every
        penalty is 0; with penalties it cannot be resumed exactly (CheckpointError).
        """
        objective = checkpoint.objective_history
        if objective is None:
            if any(getattr(self.plan.params, name) for name in _PENALTIES):
                raise CheckpointError(
                    f"{checkpoint.path}: written before checkpoints recorded the objective "
                    "(loss + penalties), which this regularised run stops on; start the run "
                    "again"
                )
            objective = checkpoint.loss_history
        source = ZarrBlocks(checkpoint.w_path, self.matrix.row_offsets, self.k, self.H.dtype, 1)
        if len(checkpoint.w_crc32) != self.matrix.n_blocks:
            raise CheckpointError(
                f"{checkpoint.path}: {len(checkpoint.w_crc32)} W blocks, the matrix has "
                f"{self.matrix.n_blocks} row blocks"
            )
        self.iteration = checkpoint.iteration
        new_w, _ = block_pass(
            self.matrix,
            self.plan.groups,
            _restore_step,
            (source, checkpoint.w_crc32),
            None,
            self._wio(write=True),
            reads_a=False,
        )
        if self.w_store is None:
            self.w_groups = list(self.runner.persist(*new_w))
            self.runner.compute(*self.w_groups)  # surface damage now, not mid-iteration
        else:
            self.runner.compute(*new_w)
        self.H = np.ascontiguousarray(checkpoint.H, dtype=self.H.dtype)
        self.history = list(checkpoint.loss_history)
        self.objective_history = list(objective)
        self.acc = None
        self.saved_loss = checkpoint.final_loss

    def w_blocks(self):
        """Yield W's row blocks in order (one group in memory at a time)."""
        if self.w_store is not None:
            for i in range(self.matrix.n_blocks):
                yield self.w_store.read(self.iteration % 2, i)
            return
        for group in self.w_groups:
            (blocks,) = self.runner.compute(group)
            yield from blocks


def _w_sums_step(A_i, W_i, i, work):
    return penalty_sums(W_i, squares=False), None


def _save_step(A_i, W_i, i, target: ZarrBlocks, n_blocks: int, work):
    target.write(0, i, W_i)
    crcs = np.zeros(n_blocks, dtype=np.int64)
    crcs[i] = crc32(W_i)
    return {"crc32": crcs}, None


def _restore_step(A_i, W_i, i, source: ZarrBlocks, expected: np.ndarray, work):
    try:
        block = source.read(0, i)
    except Exception as err:  # a truncated or missing chunk: the checkpoint is damaged
        raise CheckpointError(f"{source.path}: W block {i} unreadable ({err})") from None
    if crc32(block) != int(expected[i]):
        raise CheckpointError(f"{source.path}: W block {i} fails its checksum")
    return None, block


_PENALTIES = ("l1_W", "l2_W", "l1_H", "l2_H")

#: Rounding alone moved the computed objective by at most 3.4·eps·S between iterations of
#: converged fits (S: see :meth:`FitState.rounding`; 20×10 to 2000×500, sparse and nearly
#: exact low-rank, every solver, β ∈ {2, 1, 0.5}, float32 and float64; measured): changes
#: under this many eps·S are rounding, neither a decrease nor a rise.
ROUNDING = 64


def rounding(objective: Sequence[float], beta: float, matrix: Any, dtype) -> float:
    """How far rounding alone may move the objective of a fit of ``matrix`` (a store or block
    matrix: its ``frobenius_sq`` and ``value_sum``) in ``dtype``; see
    :meth:`FitState.rounding`."""
    if not objective:
        return 0.0
    scale = 0.5 * matrix.frobenius_sq if beta == 2 else matrix.value_sum
    return ROUNDING * float(np.finfo(dtype).eps) * max(abs(objective[0]), scale)


#: How far a recorded ‖A‖² may be from the sum of the blocks' squares: summation order only.
NORM_RTOL = 1e-6


def check_norm(matrix: Any, acc: dict) -> None:
    """Refuse a matrix whose recorded ‖A‖²_F is not what its blocks hold (a store's attribute
    edited: every loss and relative error would be wrong, silently), from the first pass's
    ``A_sq``; weighted matrices' norms are Σ c·t², which the pass does not sum."""
    if "A_sq" not in acc or isinstance(matrix, WeightedMatrix):
        return
    recorded, measured = float(matrix.frobenius_sq), float(acc["A_sq"])
    if abs(recorded - measured) <= NORM_RTOL * max(abs(measured), abs(recorded)):
        return
    where = getattr(matrix, "path", None) or "the matrix"
    raise StoreFormatError(
        f"{where}: its recorded frobenius_sq is {recorded!r}, its entries give {measured!r}: "
        "the store is corrupt (write it again with `bignmf convert`)"
    )


def run(
    state: FitState, max_iter: int, tol: float, callbacks: list, stopping: str = "relative"
) -> FitState:
    """Iterate until ``max_iter`` iterations are done or the stopping rule says stop.

    Parameters
    ----------
    state : FitState
        Initialised or restored; advanced in place.
    max_iter : int
        Total iterations (a restored state counts those done before).
    tol : float
        Tolerance of the rule; 0 runs ``max_iter`` iterations.
    callbacks : list
        Objects with ``on_start``, ``on_iteration``, ``on_end``
        (:class:`bignmf.fit.callbacks.Callback`).
    stopping : str
        A rule of :mod:`bignmf.fit.stopping`, read on ``state.objective_history``:
        ``"relative"`` (every iteration, its ``relative_decrease``) or ``"sklearn"`` (every
        10, its ``sklearn_decrease``).

    Returns
    -------
    FitState
        ``state``; ``state.converged`` says whether the rule stopped it.

    Warns
    -----
    ObjectiveIncreaseWarning
        The first time (per call) that the objective rises from one iteration to the next by
        more than rounding, while ``tol > 0``; the fit goes on (a rise is never convergence).
    """
    rule = get_stopping(stopping)

    def stop() -> bool:
        return rule(state.objective_history, tol, state.rounding())

    state.converged = stop()  # a resumed run may already be done
    for callback in callbacks:
        callback.on_start(state, max_iter)
    warned = False
    while state.iteration < max_iter and not state.converged:
        info = state.step(max_iter)
        state.converged = stop()
        if not warned and tol > 0:
            warned = _warn_on_rise(state.objective_history, state.iteration, state.rounding())
        for callback in callbacks:
            callback.on_iteration(state, info)
    for callback in callbacks:  # only after a clean finish: a failed step leaves W ahead of H
        callback.on_end(state)
    return state


def _warn_on_rise(objective: Sequence[float], iteration: int, noise: float) -> bool:
    """Warn if the last iteration raised the objective by more than ``noise``; return whether
    it did."""
    if len(objective) < 2 or not objective[-1] - objective[-2] > noise:
        return False
    warnings.warn(
        f"the objective rose at iteration {iteration}: {objective[-2]:.17g} after iteration "
        f"{iteration - 1}, {objective[-1]:.17g} after it; not taken as convergence, the fit "
        "goes on (warned once per run)",
        ObjectiveIncreaseWarning,
        stacklevel=3,
    )
    return True
