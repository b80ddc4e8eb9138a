"""bignmf: out-of-core, distributed non-negative matrix factorization on Dask and Zarr."""

from bignmf._version import __version__
from bignmf.errors import (
    BigNMFError,
    CheckpointError,
    CheckpointWarning,
    ClusterConfigError,
    InputError,
    MissingEntriesWarning,
    MissingExtraError,
    MissingLauncherError,
    ObjectiveIncreaseWarning,
    ParameterError,
    StoreExistsError,
    StoreFormatError,
    WorkersLostError,
    WorkersPausedError,
)

#: Where each public name lives, imported when first asked for: ``import bignmf`` (and the
#: command's ``--help``) need not load dask, distributed, zarr and scipy's linear algebra
#: (1.2 s measured), and the estimator needs scikit-learn, the 'sklearn' extra.
_LAZY = {
    "connect": "bignmf.cluster.config",
    "Callback": "bignmf.fit.callbacks",
    "IterationInfo": "bignmf.fit.driver",
    "NMFResult": "bignmf.fit.engine",
    "nmf": "bignmf.fit.engine",
    "resume": "bignmf.fit.engine",
    "sweep": "bignmf.study.sweep",
    "resume_study": "bignmf.study.sweep",
    "open_study": "bignmf.study.summary",
    "convert": "bignmf.io.convert",
    "CSRStore": "bignmf.store.csr",
    "open_matrix": "bignmf.store.csr",
    "write_matrix": "bignmf.store.csr",
    "Source": "bignmf.types",
    "NMF": "bignmf.estimator",
    "ConvergenceWarning": "bignmf.errors",  # scikit-learn's when installed
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bignmf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "MissingExtraError",
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
    "open_study",
    "resume",
    "resume_study",
    "sweep",
    "write_matrix",
]
