"""Every exception and warning bignmf raises on purpose, all exported from :mod:`bignmf`.

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


class WorkersLostError(RuntimeError):
    """Every Dask worker left the cluster mid-compute and none came back: the fit would
    otherwise wait forever. A fault of the machine, not of the input (the CLI exits 3)."""


class CheckpointError(BigNMFError):
    """A checkpoint or run directory is missing, damaged, or belongs to another run."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


class MissingEntriesWarning(UserWarning):
    """A fit on the stored entries only found rows or columns with no stored entry (they get
    zeros) or too few to determine their factors without an L2 penalty."""


class ClusterConfigError(BigNMFError, ValueError):
    """A cluster configuration is malformed; the message names the file and the key."""


class MissingLauncherError(BigNMFError, ImportError):
    """The package that launches a kind of cluster is not installed; names the extra."""


class MissingExtraError(BigNMFError, ImportError):
    """An optional package a feature needs is not installed; the message names the package
    and bignmf's extra that installs it (e.g. anndata: the ``readers`` extra)."""


class ObjectiveIncreaseWarning(RuntimeWarning):
    """The objective (loss + penalties) rose from one iteration to the next.

    MU, HALS and BPP never raise it but by rounding, so a rise means rounding noise at
    convergence or a numerical problem; it is not taken as convergence and the fit goes on.
    Issued at most once per run, naming the iteration and both values.
    """


def _convergence_warning() -> type[Warning]:
    try:  # scikit-learn is optional; its warning class lets sklearn users filter as usual
        from sklearn.exceptions import ConvergenceWarning
    except ImportError:  # pragma: no cover - depends on the environment

        class ConvergenceWarning(UserWarning):
            """Some rows reached ``max_iter`` before ``tol``."""

    return ConvergenceWarning


def __getattr__(name: str):
    # ConvergenceWarning is scikit-learn's when it is installed: imported only when asked for
    if name == "ConvergenceWarning":
        globals()[name] = _convergence_warning()
        return globals()[name]
    raise AttributeError(f"module 'bignmf.errors' has no attribute {name!r}")
