"""Callbacks of the iteration loop: progress bar, logging, metrics file, checkpoints.

What the loop calls is :class:`Callback`: ``on_start(state, max_iter)``,
``on_iteration(state, info)`` and ``on_end(state)``. Inherit from it for no-op hooks. None of
the callbacks here prints unless asked to.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bignmf.fit.driver import FitState, IterationInfo
from bignmf.fit.rundir import RunDir
from bignmf.fit.settings import AUTO_CHECKPOINTS
from bignmf.fit.stopping import decrease_ratio

logger = logging.getLogger("bignmf")


class Callback(Protocol):
    """What the loop calls: ``on_start`` once, ``on_iteration`` after each, ``on_end`` once.

    Any object with these three methods will do; a subclass inherits no-op ones. An object
    that also has ``on_phase(phase)`` is told of each :class:`Phase` of the fit as it begins
    (initialisation, its passes over A, a checkpoint's restoration).
    """

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Before the first iteration of this run (also after a resume)."""

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """After every iteration."""

    def on_end(self, state: FitState) -> None:
        """After the last iteration, when the run finished cleanly."""

    def on_phase(self, phase: Phase) -> None:
        """When a phase of the fit begins (optional: called only where defined)."""


class FunctionCallback(Callback):
    """Calls ``function(info)`` after each iteration (the ``callback=`` of :func:`nmf`)."""

    def __init__(self, function: Callable[[IterationInfo], Any]):
        self.function = function

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Pass the iteration's info on."""
        self.function(info)


@dataclass(frozen=True)
class Phase:
    """A stage of a fit beginning, as the optional hook ``on_phase(phase)`` of a callback is
    told (a callback without that method is not called).

    Attributes
    ----------
    name : str
        ``'open'``, ``'convert'``, ``'cluster'``, ``'dashboard'``, ``'init'``,
        ``'init-pass'`` (one pass over A of the initialisation), ``'restore'``, ``'iterate'``,
        ``'write'``; front ends may add their own.
    text : str
        What begins, in words (one line).
    """

    name: str
    text: str


#: Phases shown at most once per :attr:`ProgressBar.seconds` when there are many of them.
FREQUENT = frozenset({"init-pass"})


def progress_total(max_iter: int, tol: float | None) -> int | None:
    """The iterations a progress bar may count down to: ``max_iter`` when ``tol`` is 0 (the
    fit runs them all), else None — a run with a tolerance stops when its objective stops
    falling, which no count of iterations tells in advance (an ETA from ``max_iter`` said
    12 minutes for a run that ended at iteration 8)."""
    return max_iter if not tol else None


def eta_seconds(done: int, total: int | None, seconds: float, first: int = 0) -> float | None:
    """Seconds left: the mean time of the iterations run in this session times those left;
    None with no total (a tolerance, see :func:`progress_total`) or before any iteration.

    Parameters
    ----------
    done : int
        Iterations done (counting those of a resumed run's earlier sessions).
    total : int or None
        :func:`progress_total`.
    seconds : float
        Wall time of this session's iterations so far.
    first : int
        Iterations done when this session began (0, or a resumed run's checkpoint).
    """
    ran = done - first
    if total is None or ran <= 0:
        return None
    return max(total - done, 0) * seconds / ran


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar(Callback):
    """Progress on stderr: a line per phase from the first second, then the iterations.

    On a terminal the iterations are a tqdm bar (loss, relative error, and with a tolerance
    the last relative decrease of the objective against it); elsewhere (a log file, a batch
    job's output) a plain line every ``every`` iterations or ``seconds`` seconds, whichever
    comes first, and one at the end. An ETA only when the fit runs ``max_iter`` iterations
    (``tol`` 0): with a tolerance nothing tells how many it will run (:func:`progress_total`).
    Nothing at all when ``enabled`` is false.

    Parameters
    ----------
    enabled : bool
        False: silent.
    tol : float, optional
        The fit's tolerance (0: it runs ``max_iter``); :func:`bignmf.nmf` sets it from its
        own (:meth:`rule`).
    stopping : str
        The fit's stopping rule; with ``'relative'`` the decrease compared with ``tol`` is
        shown.
    every : int
        Iterations between lines when stderr is not a terminal.
    seconds : float
        Seconds between lines at most, when stderr is not a terminal.
    file : file-like, optional
        Where to write (default: ``sys.stderr`` when written).
    terminal : bool, optional
        Whether ``file`` is a terminal (default: asks it).
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        tol: float | None = None,
        stopping: str = "relative",
        every: int = 10,
        seconds: float = 10.0,
        file: Any = None,
        terminal: bool | None = None,
    ):
        self.enabled = enabled
        self.tol = tol
        self.stopping = stopping
        self.every = every
        self.seconds = seconds
        self.file = file
        self.terminal = terminal
        self.bar = None
        self.started = time.monotonic()
        self._last = (-1, float("-inf"))  # (iteration, time) of the last plain line
        self._session = (0, 0.0)  # (first iteration, seconds of iterations) of this session
        self._max_iter = 0

    def rule(self, tol: float, stopping: str) -> None:
        """Take the fit's stopping rule (what the ETA and the decrease shown depend on)."""
        self.tol, self.stopping = tol, stopping

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def _is_terminal(self) -> bool:
        if self.terminal is None:
            isatty = getattr(self._out(), "isatty", None)
            self.terminal = bool(isatty and isatty())
        return self.terminal

    def _line(self, text: str) -> None:
        out = self._out()
        print(f"[{_clock(time.monotonic() - self.started)}] {text}", file=out, flush=True)

    def phase(self, text: str, name: str = "") -> None:
        """Show that a phase begins (one line, with the time since this bar was made)."""
        self.on_phase(Phase(name, text))

    def on_phase(self, phase: Phase) -> None:
        """One line for the phase; frequent ones (:data:`FREQUENT`) once per ``seconds``."""
        if not self.enabled:
            return
        now = time.monotonic()
        if phase.name in FREQUENT:
            if now - self._last[1] < self.seconds:
                return
            self._last = (self._last[0], now)
        self._line(phase.text)

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Say what the iterations run to; open the bar at the current iteration (after a
        resume, not at 0)."""
        self._session = (state.iteration, 0.0)
        self._max_iter = max_iter
        if not self.enabled:
            return
        where = f" from iteration {state.iteration}" if state.iteration else ""
        if self.tol:
            until = f"until the objective falls by less than tol={self.tol:g} ({self.stopping})"
            self._line(f"iterating{where}: {until}, at most {max_iter}")
        else:
            self._line(f"iterating{where}: {max_iter} iterations (tol 0)")
        self._last = (state.iteration, time.monotonic())
        if self._is_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=progress_total(max_iter, self.tol),
                initial=state.iteration,
                unit="it",
                desc="nmf",
                file=self._out(),
                dynamic_ncols=True,
            )

    def _postfix(self, state: FitState, info: IterationInfo) -> dict:
        shown = {"loss": f"{info.loss:.6g}"}
        if info.relative_error == info.relative_error:  # not nan (Frobenius)
            shown["rel_err"] = f"{info.relative_error:.4g}"
        decrease = decrease_ratio(state.objective_history)
        if self.tol and self.stopping == "relative" and decrease is not None:
            shown["decrease"] = f"{decrease:.2g}/{self.tol:g}"
        return shown

    def on_iteration(self, state: FitState, info: IterationInfo) -> None:
        """Advance the bar, or write a plain line when one is due."""
        first, spent = self._session
        self._session = (first, spent + info.seconds)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(state, info), refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        last_iteration, last_time = self._last
        if (
            info.iteration - last_iteration >= self.every
            or now - last_time >= self.seconds
            or info.iteration == first + 1
        ):
            self._iteration_line(state, info)
            self._last = (info.iteration, now)

    def _iteration_line(self, state: FitState, info: IterationInfo, end: str = "") -> None:
        first, spent = self._session
        shown = " ".join(f"{name} {value}" for name, value in self._postfix(state, info).items())
        rate = spent / max(info.iteration - first, 1)
        total = progress_total(info.max_iter, self.tol)
        eta = eta_seconds(info.iteration, total, spent, first)
        left = "" if eta is None or end else f", ETA {_clock(eta)}"
        self._line(
            f"iteration {info.iteration}/{info.max_iter}{end}: {shown} ({rate:.3g} s/it{left})"
        )

    def on_end(self, state: FitState) -> None:
        """Close the bar; say where the iterations ended."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled or not state.history:
            return
        if self._last[0] != state.iteration:  # the last iteration's line, unless just written
            loss = state.history[-1]
            info = IterationInfo(
                state.iteration, loss, state.relative_error(loss), 0.0, self._max_iter
            )
            self._iteration_line(state, info, " (converged)" if state.converged else "")
        elif state.converged:
            self._line(f"converged at iteration {state.iteration}")


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


#: The cadence of ``checkpoint_every="auto"`` (:data:`~bignmf.fit.settings.AUTO_CHECKPOINTS`):
#: a checkpoint every AUTO_EVERY iterations, postponed while it would make checkpoints more than
#: AUTO_SHARE of the fit's time. On a small matrix a checkpoint (W copied, H and the manifest
#: written and synced) cost 145 ms against 50 ms iterations: every 10 iterations spent 22% of
#: the fit on them.
AUTO_EVERY, AUTO_SHARE = 10, 0.05


class Checkpointer(Callback):
    """Commits a checkpoint every ``every`` iterations and/or ``seconds`` seconds, and at the end.

    Parameters
    ----------
    run : RunDir
        Where checkpoints go.
    every : int or 'auto', optional
        Iterations between checkpoints; ``'auto'`` (:data:`AUTO_CHECKPOINTS`): every
        :data:`AUTO_EVERY` iterations, later when that would spend more than
        :data:`AUTO_SHARE` of the fit's time checkpointing.
    seconds : float, optional
        Seconds between checkpoints (checked after each iteration).
    """

    def __init__(self, run: RunDir, every: int | str | None = None, seconds: float | None = None):
        self.run = run
        self.every = every
        self.seconds = seconds
        self.last = time.monotonic()
        self.last_iteration: int | None = None
        self.cost = 0.0  # seconds the last checkpoint took

    def on_start(self, state: FitState, max_iter: int) -> None:
        """Count the iterations from where the fit starts (a resumed run: its checkpoint)."""
        self.last, self.last_iteration = time.monotonic(), state.iteration

    def _due(self, state: FitState) -> bool:
        if self.seconds and time.monotonic() - self.last >= self.seconds:
            return True
        if self.every != AUTO_CHECKPOINTS:
            return bool(self.every) and state.iteration % self.every == 0
        since = state.iteration - (self.last_iteration or 0)
        spent = time.monotonic() - self.last  # since the last checkpoint ended
        return since >= AUTO_EVERY and self.cost <= AUTO_SHARE * (spent + self.cost)

    def save(self, state: FitState) -> None:
        """Commit a checkpoint of the current state now."""
        started = time.monotonic()
        self.run.save(
            state.iteration,
            state.history,
            state.H,
            state.save_w,
            state.final_loss(),
            objective_history=state.objective_history,
        )
        now = time.monotonic()
        self.cost = now - started
        self.last, self.last_iteration = now, state.iteration
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
