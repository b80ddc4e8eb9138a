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
    """The destination store already exists and overwriting was not asked for."""


class StoreFormatError(BigNMFError, ValueError):
    """A path does not hold a sparse matrix store bignmf can read."""


class WorkersPausedError(BigNMFError, MemoryError):
    """Every Dask worker has been paused by distributed's memory manager for too long: no task
    can run, so the fit would otherwise wait forever."""
