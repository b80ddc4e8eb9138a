"""Callbacks of the iteration loop: progress bar, logging, metrics file, checkpoints.

What the loop calls is :class:`Callback`: ``on_start(state, max_iter)``,
``on_iteration(state, info)`` and ``on_end(state)``. Inherit from it for no-op hooks. None of
the callbacks here prints unless asked to.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from bignmf.fit.driver import FitState, IterationInfo
from bignmf.fit.rundir import RunDir

logger = logging.getLogger("bignmf")


class Callback(Protocol):
    """What the loop calls: ``on_start`` once, ``on_iteration`` after each, ``on_end`` once.

    Any object with these three methods will do; a subclass inherits no-op ones.
    """

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Before the first iteration of this run (also after a resume)."""

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """After every iteration."""

    def on_end(self, state: FitState) -> None:
        """After the last iteration, when the run finished cleanly."""


class FunctionCallback(Callback):
    """Calls ``function(info)`` after each iteration (the ``callback=`` of :func:`nmf`)."""

    def __init__(self, function: Callable[[IterationInfo], Any]):
        self.function = function

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Pass the iteration's info on."""
        self.function(info)


class ProgressBar(Callback):
    """A tqdm bar on stderr: iteration, loss, relative error, rate and ETA.

    Silent when stderr is not a terminal (``disable=None``), or when ``enabled`` is false.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Open the bar at the current iteration (after a resume, not at 0)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=max_iter,
            initial=state.iteration,
            unit="it",
            desc="nmf",
            disable=None if self.enabled else True,
        )

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Advance and show the loss."""
        self.bar.set_postfix(loss=f"{info.loss:.6g}", rel_err=f"{info.relative_error:.4g}")
        self.bar.update(1)

    def on_end(self, state: FitState) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


class LogIterations(Callback):
    """One ``logging`` record per iteration on the ``bignmf`` logger (level INFO)."""

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Log the iteration."""
        logger.info(
            "iteration %d/%d loss %.9g objective %.9g relative error %.6g (%.3fs)",
            info.iteration,
            info.max_iter,
            info.loss,
            info.objective,
            info.relative_error,
            info.seconds,
        )


class MetricsFile(Callback):
    """Appends one JSON line per iteration to the run's ``metrics.jsonl``.

    Lines: ``{"iteration", "loss", "objective", "relative_error", "seconds", "time"}`` —
    ``loss`` the divergence, ``objective`` it plus the penalties (what the stopping rule reads;
    see :class:`~bignmf.fit.driver.IterationInfo`). On resume the lines
    past the checkpoint are dropped first, so the file always describes the run's one history.
    """

    def __init__(self, run: RunDir):
        self.run = run

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Drop lines of iterations that will be redone."""
        self.run.truncate_metrics(state.iteration)

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Append the iteration's line."""
        rel = None if info.relative_error != info.relative_error else info.relative_error
        record = {
            "iteration": info.iteration,
            "loss": info.loss,
            "objective": info.objective,
            "relative_error": rel,
            "seconds": info.seconds,
            "time": time.time(),
        }
        # opened per line: no handle is left open when the loop stops on an exception
        with open(self.run.metrics_path, "a") as file:
            file.write(json.dumps(record) + "\n")


class Checkpointer(Callback):
    """Commits a checkpoint every ``every`` iterations and/or ``seconds`` seconds, and at the end.

    Parameters
    ----------
    run : RunDir
        Where checkpoints go.
    every : int, optional
        Iterations between checkpoints.
    seconds : float, optional
        Seconds between checkpoints (checked after each iteration).
    """

    def __init__(self, run: RunDir, every: int | None = None, seconds: float | None = None):
        self.run = run
        self.every = every
        self.seconds = seconds
        self.last = time.monotonic()

    def _due(self, state: FitState) -> bool:
        if self.every and state.iteration % self.every == 0:
            return True
        return bool(self.seconds) and time.monotonic() - self.last >= self.seconds

    def save(self, state: FitState) -> None:
        """Commit a checkpoint of the current state now."""
        self.run.save(
            state.iteration,
            state.history,
            state.H,
            state.save_w,
            state.final_loss(),
            objective_history=state.objective_history,
        )
        self.last = time.monotonic()
        logger.info("checkpoint of iteration %d committed in %s", state.iteration, self.run.path)

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Save when due."""
        if self._due(state):
            self.save(state)

    def on_end(self, state: FitState) -> None:
        """Save the final state unless it was just saved."""
        committed = self.run.committed()
        if not committed or int(committed[0].name[5:]) != state.iteration:
            self.save(state)
