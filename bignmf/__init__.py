"""bignmf: out-of-core, distributed non-negative matrix factorization on Dask and Zarr."""

from ._version import __version__
from .cluster import connect
from .driver import IterationInfo
from .engine import NMFResult, nmf, resume
from .errors import (
    BigNMFError,
    InputError,
    ObjectiveIncreaseWarning,
    ParameterError,
    StoreExistsError,
    StoreFormatError,
    WorkersPausedError,
)
from .ingest import convert
from .storage import CSRStore, open_matrix, write_matrix
from .types import Source


def __getattr__(name: str):
    # the estimator needs scikit-learn (the 'sklearn' extra): imported only when asked for
    if name == "NMF":
        from .estimator import NMF

        return NMF
    raise AttributeError(f"module 'bignmf' has no attribute {name!r}")


__all__ = [
    "NMF",
    "BigNMFError",
    "CSRStore",
    "InputError",
    "IterationInfo",
    "NMFResult",
    "ObjectiveIncreaseWarning",
    "ParameterError",
    "Source",
    "StoreExistsError",
    "StoreFormatError",
    "WorkersPausedError",
    "__version__",
    "connect",
    "convert",
    "nmf",
    "open_matrix",
    "resume",
    "write_matrix",
]
