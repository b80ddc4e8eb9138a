"""bignmf: out-of-core, distributed non-negative matrix factorization on Dask and Zarr."""

from importlib.metadata import PackageNotFoundError, version

from .cluster import connect
from .driver import IterationInfo
from .engine import NMFResult, nmf, resume
from .errors import (
    BigNMFError,
    InputError,
    ParameterError,
    StoreExistsError,
    StoreFormatError,
    WorkersPausedError,
)
from .ingest import convert
from .storage import CSRStore, open_matrix, write_matrix
from .types import Source

try:
    __version__ = version("bignmf")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


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
