"""Factorize a matrix larger than the workers' memory, kill the run, resume it: same bits.

bignmf never holds A whole: every iteration streams A's row blocks from the store, and each
Dask task holds one row block, its rows of W and a few n×k partial sums. So a matrix larger than
the memory of all the workers together factorizes on them, and a run killed at any moment
resumes from its last checkpoint to exactly the result of an uninterrupted run.

This example:

1. generates a planted sparse matrix (:func:`bignmf.datasets.make_planted`) whose CSR form is
   larger than the memory given to the workers — 2 worker processes of 200 MiB each (300 MiB
   with ``--large``);
2. writes a cluster file (``kind: local``: an embedded LocalCluster of 2 single-threaded
   workers with ``memory_limit: 200MiB``) for ``bignmf fit --cluster``;
3. runs ``bignmf fit`` as a subprocess, checkpointing every 2 iterations, and SIGKILLs its
   whole process group (the command, its scheduler and its workers) a few iterations in;
4. runs ``bignmf resume`` on the run directory, which continues from the newest checkpoint;
5. factorizes the same matrix uninterrupted, in this process with the threaded scheduler, and
   shows that W and H are bitwise equal — bignmf's results do not depend on the scheduler,
   the workers, or interruptions;

and all along samples the resident memory of the worker processes, to show that they stayed
within their limit (distributed pauses a worker at 80% of it and restarts it at 95%).

Run it::

    python examples/larger_than_memory.py           # 461 MiB matrix, 2 x 200 MiB workers, ~1 min
    python examples/larger_than_memory.py --large   # 4.5 GiB matrix, 2 x 300 MiB, ~15 min

It writes, under ``--out`` (default ``./bignmf-examples/larger_than_memory``): ``A.zarr`` (the
matrix, reused when the example runs again), ``cluster.yaml``, ``run/`` (the run directory:
checkpoints, ``metrics.jsonl``, ``W.zarr``, ``H.zarr``, ``summary.json``, ``loss.png``) and
``fit.log``, ``resume.log`` (what the two commands printed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil  # a dependency of distributed
import zarr

import bignmf
from bignmf.datasets.synthetic import make_planted
from bignmf.fit.outputs import read_metrics

MiB = 2**20
WORKERS = 2
K = 10
# Row blocks of 2**19 nonzeros (6 MiB of float64 values and int32 indices): the unit a task
# reads, small next to the limit. float64: 12 bytes per nonzero, so that a matrix of a given
# size in bytes has fewer nonzeros to generate (and to compute with) than in float32.
BLOCK_NNZ = 2**19
CHUNK_SIZE = 2**17
CHECKPOINT_EVERY = 2
# Memory per worker: a worker holds ~115 MiB once bignmf is imported; a task adds a row block
# of A, its rows of W (rows / tasks × k values: they grow with the rows) and a few n×k partial
# sums. With 4M rows a worker peaks near 160 MiB, where distributed would pause a 200 MiB
# worker (at 80%): --large gives them 300 MiB.
SMALL = {"rows": 400_000, "cols": 5_000, "nnz_per_row": 100, "max_iter": 10, "kill_after": 5,
         "memory_limit": 200 * MiB}  # fmt: skip
LARGE = {"rows": 4_000_000, "cols": 5_000, "nnz_per_row": 100, "max_iter": 30,
         "kill_after": 13, "memory_limit": 300 * MiB}  # fmt: skip
# What distributed logs when a worker runs short of memory.
MEMORY_TROUBLE = re.compile(r"Pausing worker|memory budget|Restarting worker|KilledWorker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/larger_than_memory",
                        help="output directory")  # fmt: skip
    parser.add_argument("--large", action="store_true", help="a 4.5 GiB matrix, 30 iterations")
    return parser.parse_args(argv)


def csr_bytes(store) -> int:
    """Bytes of the matrix as CSR in memory: values, column indices and row pointers."""
    index_bytes = 4 if store.shape[1] < 2**31 else 8
    return store.nnz * (store.dtype.itemsize + index_bytes) + (store.shape[0] + 1) * 8


# --------------------------------------------------------------------------------------------
# 1.–2. The matrix and the cluster file
# --------------------------------------------------------------------------------------------


def make_matrix(path: Path, size: dict) -> bignmf.CSRStore:
    """The planted matrix, generated block by block (reused if already there)."""
    m, n = size["rows"], size["cols"]
    try:
        store = bignmf.open_matrix(path)
        if store.shape == (m, n):
            print(f"using the matrix generated before: {path}")
            return store
    except (bignmf.StoreFormatError, FileNotFoundError):
        pass
    print(f"generating a {m:,} x {n:,} planted matrix of rank {K}...")
    start = time.perf_counter()
    store = make_planted(path, m, n, K, nnz_per_row=size["nnz_per_row"], seed=0,
                         dtype="float64", chunk_size=CHUNK_SIZE, block_nnz=BLOCK_NNZ,
                         overwrite=True)  # fmt: skip
    print(f"  done in {time.perf_counter() - start:.0f}s")
    return store


def write_cluster_file(path: Path, memory_limit: int) -> Path:
    """A ``kind: local`` cluster file: the workers ``bignmf fit`` and ``resume`` start."""
    path.write_text(
        "kind: local\n"
        f"workers: {WORKERS}\n"
        "threads: 1\n"
        f"memory_limit: {memory_limit // MiB}MiB\n"
    )  # fmt: skip
    return path


# --------------------------------------------------------------------------------------------
# 3.–4. The commands, the kill, the workers' memory
# --------------------------------------------------------------------------------------------


class WorkerMemory:
    """Peak resident memory of the Dask worker processes under a command, sampled every 0.1 s.

    The nannies of an embedded LocalCluster start each worker with multiprocessing's spawn:
    those are the descendants whose command line runs ``multiprocessing.spawn``.
    """

    def __init__(self, pid: int, memory_limit: int):
        self.root = psutil.Process(pid)
        self.memory_limit = memory_limit
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:  # the command has ended
                return
            for child in children:
                try:
                    if "multiprocessing.spawn" in " ".join(child.cmdline()):
                        rss = child.memory_info().rss
                        self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
                except psutil.Error:  # it ended between the listing and the reading
                    continue
            self._stop.wait(0.1)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        peaks = ", ".join(f"{peak / MiB:.0f}" for peak in self.peaks.values()) or "none seen"
        return f"worker peak RSS (MiB): {peaks} — limit {self.memory_limit / MiB:.0f} MiB each"


def bignmf_command(*args: str, log: Path) -> subprocess.Popen:
    """Start ``bignmf -v ARGS`` in a new session (its own process group), output to ``log``."""
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "bignmf", "-v", *args], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def bignmf_lines(log: Path) -> list[str]:
    """The iteration and checkpoint lines bignmf logged (``-v``), without their timestamps."""
    text = log.read_text(errors="replace")
    return re.findall(r"bignmf ((?:iteration|checkpoint) .*)", text)


def memory_trouble(*logs: Path) -> list[str]:
    """Lines of the logs where distributed paused or restarted a worker for memory."""
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
    return [line for line in lines if MEMORY_TROUBLE.search(line)]


def watch(proc: subprocess.Popen, log: Path, done=lambda: False) -> None:
    """Wait until the command ends or ``done()``; stop it if a worker ran short of memory.

    (A worker paused for memory that is not its data — nothing to spill — may never resume:
    better to say so than to wait forever.)
    """
    while proc.poll() is None and not done():
        if trouble := memory_trouble(log):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SystemExit(f"a worker ran short of memory (see {log}):\n" + "\n".join(trouble))
        time.sleep(0.1)


def newest_checkpoint(run_dir: Path) -> int | None:
    """The iteration of the newest committed checkpoint: ``CURRENT`` names it (ckpt-NNNNNN)."""
    pointer = run_dir / "CURRENT"
    if not pointer.exists():
        return None
    return int(pointer.read_text().strip().rsplit("-", 1)[-1])


def fit_and_kill(store_path: Path, run_dir: Path, cluster: Path, log: Path, size: dict) -> None:
    """Run ``bignmf fit`` until ``kill_after`` iterations are done, then SIGKILL everything."""
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["fit", str(store_path), "-k", str(K), "--out", str(run_dir), "--cluster",
            str(cluster), "--checkpoint-every", str(CHECKPOINT_EVERY), "--max-iter",
            str(size["max_iter"]), "--tol", "0", "--seed", "0", "--init", "random",
            "--no-progress"]  # fmt: skip
    # --tol 0: run exactly max_iter iterations. --init random: NNDSVD would first take a few
    # extra passes over A. (Both ways, the resumed result equals the uninterrupted one.)

    def far_enough() -> bool:  # metrics.jsonl has a line per iteration done
        return len(read_metrics(run_dir)) >= size["kill_after"] and bool(newest_checkpoint(run_dir))

    print(f"$ bignmf {' '.join(args)}")
    proc = bignmf_command(*args, log=log)
    with WorkerMemory(proc.pid, size["memory_limit"]) as memory:
        watch(proc, log, far_enough)
        if proc.returncode is not None:
            raise SystemExit(f"bignmf fit ended (status {proc.returncode}) before the kill; "
                             f"see {log}")  # fmt: skip
        os.killpg(proc.pid, signal.SIGKILL)  # the command, its scheduler, nannies and workers
        proc.wait()
    done = len(read_metrics(run_dir))
    print("\n".join(f"  {line}" for line in bignmf_lines(log)))
    print(f"  -> SIGKILL to the process group after {done} iterations: the command, its "
          f"scheduler and its {WORKERS} workers are gone")  # fmt: skip
    print(f"  newest checkpoint: iteration {newest_checkpoint(run_dir)}; {memory.summary()}")


def resume(run_dir: Path, cluster: Path, log: Path, memory_limit: int) -> None:
    """``bignmf resume`` to the end, on a fresh cluster from the same file."""
    args = ["resume", str(run_dir), "--cluster", str(cluster), "--no-progress"]
    print(f"$ bignmf {' '.join(args)}")
    proc = bignmf_command(*args, log=log)
    with WorkerMemory(proc.pid, memory_limit) as memory:
        watch(proc, log)
    if proc.returncode != 0:
        raise SystemExit(f"bignmf resume failed (status {proc.returncode}); see {log}")
    print("\n".join(f"  {line}" for line in bignmf_lines(log)))
    print(f"  {memory.summary()}")


# --------------------------------------------------------------------------------------------
# 5. The uninterrupted reference
# --------------------------------------------------------------------------------------------


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes (C order): equal digests, equal bits."""
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def reference_fit(store, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """The same settings, in one go, with the threaded scheduler in this process."""
    start = time.perf_counter()
    result = bignmf.nmf(store, K, random_state=0, init="random", tol=0, max_iter=max_iter,
                        scheduler="threads")  # fmt: skip
    print(f"uninterrupted threaded fit: {result.n_iter} iterations in "
          f"{time.perf_counter() - start:.0f}s")  # fmt: skip
    return np.asarray(result.W), result.H


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = make_matrix(out / "A.zarr", size)
    total = WORKERS * size["memory_limit"]
    print(f"A: {store.shape[0]:,} x {store.shape[1]:,}, {store.nnz:,} nonzeros: "
          f"{csr_bytes(store) / MiB:,.0f} MiB as CSR in memory, "
          f"{csr_bytes(store) / total:.1f}x the {total / MiB:.0f} MiB of the {WORKERS} workers "
          f"together")  # fmt: skip

    cluster = write_cluster_file(out / "cluster.yaml", size["memory_limit"])
    run_dir = out / "run"
    fit_and_kill(out / "A.zarr", run_dir, cluster, out / "fit.log", size)
    resume(run_dir, cluster, out / "resume.log", size["memory_limit"])
    trouble = memory_trouble(out / "fit.log", out / "resume.log")
    print(f"workers paused or restarted for memory: {len(trouble) or 'never'}")

    resumed_W = zarr.open_array(run_dir / "W.zarr", mode="r")[...]
    resumed_H = zarr.open_array(run_dir / "H.zarr", mode="r")[...]
    W, H = reference_fit(store, size["max_iter"])
    print(f"killed + resumed  W, H digest: {digest(resumed_W, resumed_H)}")
    print(f"uninterrupted     W, H digest: {digest(W, H)}")
    same = resumed_W.tobytes() == W.tobytes() and resumed_H.tobytes() == H.tobytes()
    print("bitwise equal: " + ("yes" if same else "NO"))
    return 0 if same and not trouble else 1


if __name__ == "__main__":
    raise SystemExit(main())
