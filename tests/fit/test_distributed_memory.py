"""A fit of a matrix larger than the workers' memory, on memory-limited `dask worker` processes.

Two single-threaded ``dask worker`` processes (each with its nanny) on 127.0.0.1 get
``--memory-limit 200MiB``; the matrix, as CSR in memory, is several times their total limit.
The fit must complete with no worker restarted or paused (distributed pauses a worker at 80% of
its limit, its nanny kills it at 95%), every worker's peak resident set under the pause
threshold, and the threaded scheduler's bits.

A worker's resident set before any task is ≈ 62 MiB; once a task has imported bignmf (NumPy,
SciPy, zarr) it is ≈ 115 MiB, whatever the matrix. Above that, a fat task holds one row block
of A (values, indices, indptr), its rows of W and ``log2(blocks per task) + 1`` n×k partial
sums: with blocks of 2**19 nonzeros (float64: 6 MiB) and n = 5,000, k = 10, workers peaked at
129 MiB (2× test, random init) and 137 MiB (8× test, NNDSVDA init) — 65-69% of the limit,
under the 160 MiB pause threshold. (Spilling, from 70%, is allowed: it pauses and kills
nothing.)

``test_a_fit_of_8x_the_workers_memory`` is the issue's criterion (CSR ≥ 8× the total limit:
3.2 GiB; 4.5-6 min on a shared 2-core machine, generating the matrix and the threaded reference
fit included), hence ``slow``. The default run keeps the same workers and limit with a matrix 2×
their total limit (each worker could not hold even its half of A): ≈ 45 s.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time

import dask
import numpy as np
import psutil
import pytest
from distributed import Client

import bignmf
from bignmf import plan
from bignmf.datasets.synthetic import make_planted
from bignmf.store import blockcache
from tests.conftest import LocalProcessCluster, _dask_cli

MiB = 2**20
LIMIT = 200 * MiB  # per worker
N_WORKERS = 2
K = 10
N_COLS = 5_000
NNZ_PER_ROW = 100
CHUNK_SIZE = 2**17  # elements per Zarr chunk
BLOCK_NNZ = 2**19  # nonzeros per row block: 6 MiB of float64 values + int32 indices
# What a worker's log says when it is paused or resumed, or its nanny restarts it for memory.
MEMORY_TROUBLE = re.compile(r"Pausing worker|Resuming worker|memory budget|Restarting")


class MemoryLimitedCluster(LocalProcessCluster):
    """:class:`conftest.LocalProcessCluster` whose workers get ``--memory-limit memory_limit``."""

    def __init__(self, workdir, memory_limit: int, n_workers: int = N_WORKERS):
        self.memory_limit = memory_limit
        super().__init__(workdir, n_workers=n_workers, nthreads=1)

    def start_worker(self, name, nthreads=1, env=None):
        """Start ``dask worker`` as the parent class does, with this cluster's memory limit."""
        cmd = [*_dask_cli(), "worker", self.address, "--host", "127.0.0.1", "--nthreads",
               str(nthreads), "--nworkers", "1", "--dashboard-address", "127.0.0.1:0",
               "--memory-limit", str(self.memory_limit),
               "--local-directory", str(self.workdir / name), "--name", name]  # fmt: skip
        return self._start(cmd, env or {**os.environ, "PYTHONWARNINGS": "ignore"}, name)

    def worker_logs(self) -> dict[str, str]:
        """Each worker's log (its nanny's and its own lines)."""
        return {path.stem: path.read_text(errors="replace")
                for path in sorted(self.workdir.glob("worker*.log"))}  # fmt: skip


class PeakRSS:
    """Samples the resident set of some processes from a background thread.

    Parameters
    ----------
    pids : dict
        Name -> process id.
    interval : float
        Seconds between samples.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.05):
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peaks = dict.fromkeys(pids, 0)
        self.lost: set[str] = set()
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, process in self.processes.items():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:  # the process is gone: recorded, asserted on later
                    self.lost.add(name)
                    continue
                self.peaks[name] = max(self.peaks[name], rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _peak_rss(pid: int) -> int:
    """A process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _csr_bytes(store) -> int:
    """Bytes of the matrix as CSR in memory: values, indices and indptr."""
    index_bytes = 4 if store.shape[1] < 2**31 else 8
    return store.nnz * (store.dtype.itemsize + index_bytes) + (store.shape[0] + 1) * 8


def _fit_under_the_limit(tmp_path, n_rows: int, ratio: float, init: str, cache_a=None) -> dict:
    """Generate, fit on the memory-limited cluster, check no worker suffered; return figures."""
    store = make_planted(
        tmp_path / "A.zarr", n_rows, N_COLS, K, nnz_per_row=NNZ_PER_ROW, seed=0,
        dtype="float64", chunk_size=CHUNK_SIZE, block_nnz=BLOCK_NNZ,
    )  # fmt: skip
    total_limit = N_WORKERS * LIMIT
    assert _csr_bytes(store) >= ratio * total_limit, (_csr_bytes(store), total_limit)
    pause = dask.config.get("distributed.worker.memory.pause")
    cluster = MemoryLimitedCluster(tmp_path / "cluster", LIMIT)
    try:
        with Client(cluster.address, timeout=60) as client:
            before = client.run(os.getpid)
            names = {w: info["name"] for w, info in client.scheduler_info()["workers"].items()}
            start = time.perf_counter()
            held = []

            def look(info):
                if cache_a is not None:
                    held.extend(client.run(blockcache.stats).values())

            with PeakRSS(before) as sampler:
                result = bignmf.nmf(store, K, init=init, random_state=0, max_iter=3, tol=0,
                                    scheduler=client, workdir=tmp_path / "work",
                                    cache_a=cache_a, callback=look)  # fmt: skip
            seconds = time.perf_counter() - start
            after = client.run(os.getpid)
            after_names = {w: i["name"] for w, i in client.scheduler_info()["workers"].items()}
            high_water = {worker: _peak_rss(pid) for worker, pid in after.items()}
            events = {w: client.get_events(w) for w in before}
            restarts = client.get_events("worker-restart-memory")
    finally:
        cluster.close()
    assert result.n_iter == 3
    if cache_a == "auto":
        # Each worker may keep a quarter of its limit, but only below distributed's spill
        # and pause thresholds: here that leaves little or no room, and keeping the quarter
        # anyway paused both workers and hung the fit (the first version of the cache).
        assert max(s["bytes"] for s in held) <= plan.CACHE_AUTO_FRACTION * LIMIT
        assert held[-1]["refused"] > 0
    # No worker was lost, replaced or restarted: same addresses, names and processes.
    assert after == before
    assert after_names == names
    assert not sampler.lost
    assert restarts == ()
    # None was paused: the scheduler logs every status change of a worker.
    for worker, log in events.items():
        changes = [e for _, e in log if e.get("action") == "worker-status-change"]
        assert [c["status"] for c in changes] == ["running"], (worker, changes)
    for name, text in cluster.worker_logs().items():
        trouble = [line for line in text.splitlines() if MEMORY_TROUBLE.search(line)]
        assert not trouble, (name, trouble)
    # Every worker stayed under the fraction of its limit at which distributed pauses it.
    for worker, peak in high_water.items():
        # VmHWM is updated lazily from per-thread RSS counters: it may trail a sample by a
        # few pages (~60 KB seen under load), never by megabytes.
        assert peak + MiB >= sampler.peaks[worker] > 0
        assert peak < pause * LIMIT, f"{names[worker]}: peak RSS {peak / MiB:.0f} MiB"
    # The same bits as the threaded scheduler (W read back from its Zarr blocks here, not
    # gathered through the workers).
    reference = bignmf.nmf(store, K, init=init, random_state=0, max_iter=3, tol=0,
                           scheduler="threads")  # fmt: skip
    assert result.H.tobytes() == reference.H.tobytes()
    W = result.W.compute(scheduler="threads")
    assert W.tobytes() == np.asarray(reference.W).tobytes()
    assert result.loss_history == reference.loss_history
    figures = {
        "csr_mib": _csr_bytes(store) / MiB,
        "limit_mib": LIMIT / MiB,
        "fit_s": seconds,
        "peak_rss_mib": {names[w]: peak / MiB for w, peak in high_water.items()},
    }
    shutil.rmtree(tmp_path / "A.zarr")  # gigabytes: not kept among pytest's last runs
    shutil.rmtree(tmp_path / "work")
    return figures


def test_a_fit_of_2x_the_workers_memory_stays_under_the_limit(tmp_path):
    figures = _fit_under_the_limit(tmp_path, n_rows=700_000, ratio=2, init="random")
    print(figures)


def test_a_cached_fit_stays_under_the_limit(tmp_path):
    figures = _fit_under_the_limit(tmp_path, n_rows=700_000, ratio=2, init="random",
                                   cache_a="auto")  # fmt: skip
    print(figures)


@pytest.mark.slow
def test_a_fit_of_8x_the_workers_memory(tmp_path):
    figures = _fit_under_the_limit(tmp_path, n_rows=2_800_000, ratio=8, init="nndsvda")
    print(figures)
