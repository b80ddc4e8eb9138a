"""bignmf: out-of-core, distributed non-negative matrix factorization on Dask and Zarr."""

from bignmf._version import __version__
from bignmf.cluster.config import connect
from bignmf.errors import (
    BigNMFError,
    CheckpointError,
    CheckpointWarning,
    ClusterConfigError,
    InputError,
    MissingEntriesWarning,
    MissingLauncherError,
    ObjectiveIncreaseWarning,
    ParameterError,
    StoreExistsError,
    StoreFormatError,
    WorkersLostError,
    WorkersPausedError,
)
from bignmf.fit.callbacks import Callback
from bignmf.fit.driver import IterationInfo
from bignmf.fit.engine import NMFResult, nmf, resume
from bignmf.io.convert import convert
from bignmf.store.csr import CSRStore, open_matrix, write_matrix
from bignmf.types import Source


def __getattr__(name: str):
    # the estimator needs scikit-learn (the 'sklearn' extra): imported only when asked for
    if name == "NMF":
        from bignmf.estimator import NMF

        return NMF
    if name == "ConvergenceWarning":  # scikit-learn's when installed
        from bignmf.errors import ConvergenceWarning

        return ConvergenceWarning
    raise AttributeError(f"module 'bignmf' has no attribute {name!r}")


__all__ = [
    "NMF",
    "BigNMFError",
    "CSRStore",
    "Callback",
    "CheckpointError",
    "CheckpointWarning",
    "ClusterConfigError",
    "ConvergenceWarning",
    "InputError",
    "IterationInfo",
    "MissingEntriesWarning",
    "MissingLauncherError",
    "NMFResult",
    "ObjectiveIncreaseWarning",
    "ParameterError",
    "Source",
    "StoreExistsError",
    "StoreFormatError",
    "WorkersLostError",
    "WorkersPausedError",
    "__version__",
    "connect",
    "convert",
    "nmf",
    "open_matrix",
    "resume",
    "write_matrix",
]
