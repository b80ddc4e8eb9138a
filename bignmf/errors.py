"""Exceptions raised by bignmf.

Every error about user data names where the problem is (the source, the row block and the
offending count or value) so that a user can find it in a file of billions of entries.
"""

from __future__ import annotations


class BigNMFError(Exception):
    """Base class of every error bignmf raises on purpose."""


class InputError(BigNMFError, ValueError):
    """The input matrix is malformed: bad values, bad shape, bad indices or a bad file."""


class ParameterError(BigNMFError, ValueError):
    """A parameter of a fit is out of range or inconsistent; raised before anything is
    written."""


class StoreExistsError(BigNMFError, FileExistsError):
    """The destination store already exists and overwriting was not asked for.

    Parameters
    ----------
    path : path
        The destination.
    """

    def __init__(self, path):
        self.path = path
        super().__init__(self.message("overwrite=True"))

    def message(self, option: str) -> str:
        """The error in the words of a front end whose way to overwrite is ``option``."""
        return f"{self.path} already exists (pass {option} to replace it)"


class StoreFormatError(BigNMFError, ValueError):
    """A path does not hold a sparse matrix store bignmf can read."""


class WorkersPausedError(BigNMFError, MemoryError):
    """Every Dask worker has been paused by distributed's memory manager for too long: no task
    can run, so the fit would otherwise wait forever."""


class ObjectiveIncreaseWarning(RuntimeWarning):
    """The objective (loss + penalties) rose from one iteration to the next.

    MU, HALS and BPP never raise it but by rounding, so a rise means rounding noise at
    convergence or a numerical problem; it is not taken as convergence and the fit goes on.
    Issued at most once per run, naming the iteration and both values.
    """
