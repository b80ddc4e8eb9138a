"""Running graphs on the chosen scheduler, and what that scheduler is."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask

from bignmf.errors import BigNMFError, WorkersLostError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runner:
    """Computes and persists Dask collections on the chosen scheduler."""

    scheduler: Any = None

    def _options(self) -> dict:
        return {} if self.scheduler is None else {"scheduler": self.scheduler}

    def compute(self, *collections):
        """``dask.compute`` on this scheduler.

        Raises
        ------
        WorkersPausedError
            On a distributed scheduler, when every worker has stayed paused by distributed's
            memory manager for ``bignmf.paused-timeout`` seconds of Dask's configuration
            (default :data:`PAUSED_TIMEOUT`); nothing could run, the compute would never end.
        """
        with _inputs_in_graph():
            client = client_of(self.scheduler)
            if client is None:
                return dask.compute(*collections, **self._options())
            return _watched_compute(client, collections)

    def persist(self, *collections):
        """``dask.persist`` on a distributed scheduler (results stay on the workers); on one in
        this process, the values computed and held as graph inputs (:meth:`share`).

        Dask's own persist on a local scheduler gave collections that cost 0.8 ms each to put
        in the next graph (dask's expression layer), and the fit takes one per group every
        iteration: 17 ms an iteration of a small matrix on threads, against 6 ms with W on
        disk.
        """
        with _inputs_in_graph():
            if client_of(self.scheduler) is not None:
                return dask.persist(*collections, **self._options())
            values = dask.compute(*collections, **self._options())
        return _held(values)

    def persist_and_compute(self, *collections):
        """``persist`` every collection but the last, and return them with the last one's
        value: on a scheduler in this process, one compute where ``persist`` then ``compute``
        took two.

        Raises
        ------
        WorkersPausedError
            As :meth:`compute`.
        """
        if client_of(self.scheduler) is None:
            *kept, last = self.compute(*collections)
            return list(_held(kept)), last
        *kept, last = self.persist(*collections)
        return kept, self.compute(last)[0]

    @staticmethod
    def share(value: Any, name: str):
        """``value`` as a graph input named ``name`` (no hash of it is computed).

        Inputs stay inside the graph rather than being scattered to the workers: the scheduler
        can then resend them to whichever worker reruns a task after a loss. Scattered data
        cannot be recomputed, and distributed's memory manager keeps a single replica of it;
        scattering H made the fit fail or hang in 2 of 6 runs of the worker-kill test.
        """
        return dask.delayed(value, name=name)

    def everywhere(self, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` in this process and, on a distributed scheduler, in every
        worker (best effort: a worker that is gone has nothing to clean up)."""
        function(*args)
        client = client_of(self.scheduler)
        if client is not None:
            try:
                client.run(function, *args)
            except Exception as error:  # cleaning up must not fail a finished fit
                logger.warning("could not run %s on every worker: %s", function.__name__, error)

    def check_visible(self, paths: list) -> None:
        """Raise :class:`~bignmf.errors.BigNMFError` naming the first worker of a distributed
        scheduler that cannot see one of ``paths`` (None entries are skipped)."""
        client = client_of(self.scheduler)
        paths = [os.fspath(p) for p in paths if p is not None and "://" not in os.fspath(p)]
        if client is None or not paths:
            return
        for worker, missing in sorted(client.run(_missing, paths).items()):
            if missing:
                raise BigNMFError(
                    f"worker {worker} cannot see {missing[0]}: the store and the run directory "
                    "must be on storage every worker reaches, under the same path"
                )

    def workers(self) -> dict[str, int] | None:
        """Threads of each worker of a distributed scheduler (None on a local one)."""
        client = client_of(self.scheduler)
        if client is None:
            return None
        try:
            return dict(client.nthreads())
        except Exception:  # no placement is better than a failed iteration
            return None


PAUSED_TIMEOUT = 300.0  # seconds every worker may stay paused before a compute gives up
#: Seconds a compute waits with no worker at all, after it had some: long enough for a
#: restarted worker (a nanny, a resubmitted job) to come back.
NO_WORKERS_TIMEOUT = 120.0
_POLL_SECONDS = 5.0


def _watched_compute(client: Any, collections: tuple) -> tuple:
    """Compute on a distributed client, checking the workers while waiting: a worker paused
    for memory runs nothing, and if all of them stay paused the results never come."""
    from distributed import TimeoutError as DistributedTimeout
    from distributed import wait

    futures = client.compute(list(collections))
    try:
        paused_since = gone_since = None
        had_workers = _n_workers(client) != 0  # a cluster still starting has none yet
        while True:
            try:
                wait(futures, timeout=_POLL_SECONDS)
                return tuple(client.gather(futures))
            except ValueError:  # `wait` found no client: ours gave up on a lost scheduler
                if client.status not in ("closing", "closed"):
                    raise
                raise WorkersLostError(
                    "the scheduler went away and did not come back while the client tried to "
                    "reconnect"
                ) from None
            except DistributedTimeout:
                paused = _all_paused(client)
                paused_since = None if paused is None else (paused_since or time.monotonic())
                limit = float(dask.config.get("bignmf.paused-timeout", PAUSED_TIMEOUT))
                if paused_since is not None and time.monotonic() - paused_since >= limit:
                    raise _paused_error(paused, limit) from None
                gone = had_workers and _n_workers(client) == 0
                gone_since = (gone_since or time.monotonic()) if gone else None
                limit = float(dask.config.get("bignmf.no-workers-timeout", NO_WORKERS_TIMEOUT))
                if gone_since is not None and time.monotonic() - gone_since >= limit:
                    raise WorkersLostError(
                        f"every worker left the cluster and none came back in {limit:g} s "
                        "(Dask's config key bignmf.no-workers-timeout)"
                    ) from None
    except BaseException:
        if client.status == "running":  # a closed client cannot send the cancellation
            client.cancel(futures)
        raise


def _held(values) -> tuple:
    """Values computed in this process, as graph inputs of the passes that read them."""
    return tuple(Runner.share(value, f"held-{uuid.uuid4().hex}") for value in values)


def _n_workers(client: Any) -> int | None:
    """How many workers the scheduler has (None when it cannot answer now)."""
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except Exception:  # a scheduler that cannot answer now is not evidence of no workers
        return None


def _all_paused(client: Any) -> dict | None:
    """The workers (address: info) if there are some and every one of them is paused."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # a scheduler that cannot answer now is not evidence of a pause
        return None
    if workers and all(info.get("status") == "paused" for info in workers.values()):
        return workers
    return None


def _paused_error(workers: dict, seconds: float) -> Exception:
    from dask.utils import format_bytes

    from bignmf.errors import WorkersPausedError

    def describe(address: str, info: dict) -> str:
        used = (info.get("metrics") or {}).get("memory")
        limit = info.get("memory_limit")
        if used is None or not limit:
            return address
        return f"{address} ({format_bytes(used)} of its {format_bytes(limit)} limit)"

    listed = "; ".join(describe(address, info) for address, info in sorted(workers.items()))
    return WorkersPausedError(
        f"every worker has been paused by distributed's memory manager for {seconds:g} s, so "
        f"no task can run: {listed}. Give the workers more memory, use more tasks per pass "
        f"(n_tasks / --n-tasks) so that each holds less, or column chunks (--column-chunks) "
        f"for a very wide matrix; a checkpointed run resumes from its last checkpoint. "
        f"(The wait is set by Dask's config key bignmf.paused-timeout.)"
    )


def _inputs_in_graph():
    """Silence distributed's "large graph" warning for bignmf's graphs: they carry H (or a
    range of it, or the SVD's sketch) on purpose, see :meth:`Runner.share`."""
    key = "distributed.admin.large-graph-warning-threshold"
    if "distributed" not in sys.modules or dask.config.get(key, None) is None:
        # no distributed client, no warning; and setting a key of a config that distributed
        # has not loaded yet would drop its defaults when the setting is undone (distributed
        # is in sys.modules while another thread imports it, before its defaults are loaded:
        # fits in flight did that)
        return contextlib.nullcontext()
    return dask.config.set({key: "64GiB"})


def client_of(scheduler: Any):
    """The distributed Client that will run the graphs, if any."""
    if hasattr(scheduler, "nthreads"):
        return scheduler
    if scheduler is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    return None


def is_distributed(scheduler: Any) -> bool:
    """Whether a distributed Client runs the graphs."""
    return client_of(scheduler) is not None


def scheduler_threads(scheduler: Any) -> int:
    """Threads the computation will use, to size the fat tasks."""
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return 1
    client = client_of(scheduler)
    if client is not None:
        return max(sum(client.nthreads().values()), 1)
    return os.cpu_count() or 1


def worker_limits(scheduler: Any) -> list[tuple[int | None, int]] | None:
    """``(memory limit, threads)`` of each worker of a distributed scheduler, as it reports
    them (a limit may be None); None when no distributed scheduler runs the tasks. The rules
    that read them are :mod:`bignmf.plan`'s."""
    client = client_of(scheduler)
    if client is None:
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return [(w.get("memory_limit") or None, int(w.get("nthreads", 1))) for w in workers]


def _missing(paths: list[str]) -> list[str]:
    """Those of ``paths`` that do not exist where this runs (on a worker)."""
    return [path for path in paths if not os.path.exists(path)]
