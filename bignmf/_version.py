"""The distribution's name and version (the import name and the command are ``bignmf``; the
name ``bignmf`` on the package index belongs to an unrelated project)."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "bignmf-dask"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
