"""The iteration loop: one graph per iteration, callbacks, checkpoints and their restoration.

The driver holds a :class:`FitState` — where W's blocks are (persisted task results or Zarr
buffers), H, the iteration count and the loss history — and advances it one iteration at a time.
Everything an iteration computes depends only on (W, H) and A's row blocks, so a state saved in
a checkpoint and restored later continues bit for bit as if never interrupted: there is no other
solver state (no random numbers are drawn after initialisation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, crash_point, crc32
from .columns import TwoPasses
from .factors import ZarrBlocks
from .graph import WIO, HState, Pass, block_pass, iteration
from .kernels.loss import frobenius_loss
from .kernels.products import gram
from .kernels.solvers import prepare_h


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
    """

    iteration: int
    loss: float
    relative_error: float
    seconds: float
    max_iter: int = 0


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
    history: list[float] = field(default_factory=list)
    acc: dict | None = None
    converged: bool = False
    two_passes: TwoPasses | None = None  # H cut into column ranges (wide matrices)
    saved_loss: float | None = None  # final_loss of the checkpoint restored, until a step

    @property
    def norm_a_sq(self) -> float:
        """‖A‖²_F."""
        return self.matrix.frobenius_sq

    @property
    def k(self) -> int:
        """Number of components."""
        return self.H.shape[0]

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
        self.H, loss = self.solver.update_h(self.H, self.acc, self.plan.params, self.norm_a_sq)
        self.history.append(loss)
        self.iteration += 1
        seconds = time.perf_counter() - start
        return IterationInfo(self.iteration, loss, self.relative_error(loss), seconds, max_iter)

    def _fused_pass(self) -> dict:
        new_w, total = iteration(
            self.matrix, self.plan, HState.of(self.H), self.w_groups, self.w_store, self.iteration
        )
        if new_w is not None:
            *self.w_groups, total = self.runner.persist(*new_w, total)
        return self.runner.compute(total)[0]

    def _two_passes(self) -> dict:
        Ht, HHt = prepare_h(self.H, self.H.dtype)
        return self.two_passes.step(self, Ht, HHt)

    def final_loss(self) -> float:
        """Loss of the current (W, H): exact from the last sums for Frobenius."""
        if self.acc is None and self.saved_loss is not None:
            return self.saved_loss
        if self.acc is None or self.beta != 2:
            return self.history[-1] if self.history else float("nan")
        Ht = np.ascontiguousarray(self.H.T, dtype=np.float64)
        cross = float(np.vdot(self.acc["AtW"].astype(np.float64), Ht))
        return frobenius_loss(self.norm_a_sq, cross, self.acc["WtW"], gram(Ht))

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
            self.matrix, self.plan.groups, _save_step, (target, self.matrix.n_blocks),
            self.w_groups, self._wio(write=False), reads_a=False,
        )  # fmt: skip
        (sums,) = self.runner.compute(total)
        return sums["crc32"]

    def restore_w(self, checkpoint: Checkpoint) -> None:
        """Read W's blocks from a checkpoint (verifying each) into where iterations keep W."""
        source = ZarrBlocks(checkpoint.w_path, self.matrix.row_offsets, self.k, self.H.dtype, 1)
        if len(checkpoint.w_crc32) != self.matrix.n_blocks:
            raise CheckpointError(
                f"{checkpoint.path}: {len(checkpoint.w_crc32)} W blocks, the matrix has "
                f"{self.matrix.n_blocks} row blocks"
            )
        self.iteration = checkpoint.iteration
        new_w, _ = block_pass(
            self.matrix, self.plan.groups, _restore_step, (source, checkpoint.w_crc32),
            None, self._wio(write=True), reads_a=False,
        )  # fmt: skip
        if self.w_store is None:
            self.w_groups = list(self.runner.persist(*new_w))
            self.runner.compute(*self.w_groups)  # surface damage now, not mid-iteration
        else:
            self.runner.compute(*new_w)
        self.H = np.ascontiguousarray(checkpoint.H, dtype=self.H.dtype)
        self.history = list(checkpoint.loss_history)
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


class Callback(Protocol):
    """What the loop calls: ``on_start`` once, ``on_iteration`` after each, ``on_end`` once."""

    def on_start(self, state: FitState, max_iter: int) -> None: ...

    def on_iteration(self, state: FitState, info: IterationInfo) -> None: ...

    def on_end(self, state: FitState) -> None: ...


def run(state: FitState, max_iter: int, tol: float, callbacks: list) -> FitState:
    """Iterate until ``max_iter`` iterations are done or the loss decrease falls under ``tol``.

    ``tol`` compares the last decrease to the previous loss: stop when
    ``loss_{t-1} - loss_t < tol · loss_{t-1}``.
    """
    state.converged = _converged(state.history, tol)  # a resumed run may already be done
    for callback in callbacks:
        callback.on_start(state, max_iter)
    while state.iteration < max_iter and not state.converged:
        info = state.step(max_iter)
        state.converged = _converged(state.history, tol)
        for callback in callbacks:
            callback.on_iteration(state, info)
    for callback in callbacks:  # only after a clean finish: a failed step leaves W ahead of H
        callback.on_end(state)
    return state


def _converged(history: list[float], tol: float) -> bool:
    return len(history) > 1 and tol > 0 and (history[-2] - history[-1]) <= tol * abs(history[-2])
