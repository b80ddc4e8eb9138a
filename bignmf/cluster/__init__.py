"""Where a fit runs: clusters from YAML (:mod:`.config`) and the scheduler a fit submits to
(:mod:`.runner`).

Launchers (dask-jobqueue, dask-kubernetes, asyncssh) are imported only when their kind is asked
for. May import: :mod:`bignmf.errors`, :mod:`bignmf.plan`, dask, distributed.
"""

from bignmf.cluster.config import connect, scheduler_for

__all__ = ["connect", "scheduler_for"]
