"""What to tell a user whose fit was stopped by their machine rather than by their input.

A scheduler lost mid-fit used to end in a 51–76-line traceback ending in
``FuturesCancelledError``, a full disk in ``OSError: [Errno 28]`` from deep in the writer; in
both cases the run's checkpoints were intact and ``bignmf resume`` finished the run bit for bit.
:func:`describe` turns such an error into the one line that says so: what was lost, at which
iteration, the last good checkpoint, and the command that goes on.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np

from bignmf.fit.rundir import RunDir
from bignmf.plan import format_bytes

__all__ = ["FAULT_STATUS", "describe"]

#: The exit status of a fit stopped by its machine (2 is the user's error; 1 a bug).
FAULT_STATUS = 3

#: Errors that mean the scheduler, or the connection to it, or its workers, went away.
_LOST = {"CancelledError", "FuturesCancelledError", "CommClosedError", "StreamClosedError",
         "KilledWorker", "WorkersLostError"}  # fmt: skip


def describe(error: BaseException, run_dir: str | os.PathLike | None, command: str) -> str | None:
    """The one line for ``error`` if the machine caused it, else None.

    Parameters
    ----------
    error : BaseException
    run_dir : path or None
        The run directory of the fit or resume that failed.
    command : str
        ``'fit'`` or ``'resume'``: what to run again when no checkpoint was committed yet.
    """
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = error.filename or run_dir or "a file"
        return f"no space left on the device writing {where}{_needs(run_dir)}; " + _go_on(
            run_dir, command, "free some space, then"
        )
    if names & _LOST:
        at = _iteration(run_dir)
        lost = f"lost the scheduler or its workers ({type(error).__name__})"
        return f"{lost}{at}; " + _go_on(run_dir, command, "start it again, then")
    return None


def _iteration(run_dir) -> str:
    """`` at iteration N`` from the metrics written so far."""
    if run_dir is None:
        return ""
    done = 0
    try:
        for line in RunDir(run_dir).metrics_path.read_text().splitlines():
            done = max(done, int(json.loads(line)["iteration"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f" at iteration {done + 1}"


def _needs(run_dir) -> str:
    """`` (a checkpoint takes about X)`` from the run's shape, k and dtype."""
    try:
        record = RunDir(run_dir).record()
        m, n = _shape(record["matrix"]["fingerprint"])
        settings = record["settings"]
        size = (m + n) * int(settings["n_components"]) * np.dtype(settings["dtype"]).itemsize
    except Exception:  # a guess to help, never a second error
        return ""
    return f" (a checkpoint takes about {format_bytes(size)})"


def _shape(fingerprint: dict) -> tuple[int, int]:
    """A matrix fingerprint's shape (a masked or weighted one nests A's)."""
    while "shape" not in fingerprint:
        fingerprint = fingerprint["matrix"]
    m, n = fingerprint["shape"]
    return int(m), int(n)


def _go_on(run_dir, command: str, first: str) -> str:
    """The last good checkpoint and the command that continues from it."""
    if run_dir is None:
        return f"{first} run the same command again"
    try:
        newest = RunDir(run_dir).newest()
    except Exception:  # the line must come out whatever the directory holds
        newest = None
    if newest is None:
        if command == "fit":
            return f"no checkpoint was written yet: {first} run the same `bignmf fit` again"
        return f"{first} run `bignmf resume {run_dir}`"
    path = Path(newest.path)
    return (
        f"the last checkpoint is iteration {newest.iteration} ({path.name}); {first} run "
        f"`bignmf resume {run_dir}`"
    )
