"""Speed of bignmf's engine: against a plain SciPy loop, against scikit-learn, and from disk.

Three parts (``--parts``, all by default):

``roofline`` (a)
    Seconds per HALS iteration of ``bignmf.nmf`` against a hand-written SciPy loop doing the
    same arithmetic on the same row blocks with the same two threads
    (``benchmarks/engine_loop.py``): bignmf on the threaded scheduler with the matrix in memory,
    and on a ``distributed.LocalCluster`` of 2 single-threaded worker processes reading the
    matrix from its store on disk, once with Dask's default worker environment, once with
    large ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` set through
    ``distributed.nanny.pre-spawn-environ``, and once more with those and ``cache_a='auto'``
    (each worker decodes its blocks of A once and keeps them, as the loop keeps A in memory).
``disk`` (c)
    The same matrix factorized from its Zarr store (lz4) on the threaded scheduler, W kept in
    memory and W kept in Zarr, against the in-memory figures and against the time to read and
    decode every chunk of the store on two threads (the ``chunks+decode`` floor of
    ``benchmarks/read_throughput.py``), plus the plain loop reading the store the same way.
``sklearn`` (b)
    Time to reach scikit-learn's final loss on a text-like in-memory matrix: scikit-learn
    ``NMF(solver='cd')``, ``NMF(solver='mu')``, ``MiniBatchNMF`` against bignmf's ``hals``
    (``n_inner`` = 1, 2, 4, 8), ``mu`` and ``bpp``, all from the same initial (W, H)
    (``benchmarks/engine_sklearn.py``); a plot of the relative error against time.

Per-iteration figures are medians over the iterations of a run after the first (warm-up), then
medians over ``--repeat`` rounds in which every variant runs once, in rotating order, in one
process; ratios are of those medians. CPU seconds (all threads and worker processes) are
reported beside wall seconds: on a shared machine they are the steadier measure of work done.
The page cache is warm: the store is read before the timed rounds and fits in memory.

Usage::

    python benchmarks/engine.py                     # 500k x 50k, 50M nonzeros, ~12 min
    python benchmarks/engine.py --quick             # small matrices, < 2 min
    python benchmarks/engine.py --parts roofline --repeat 5 --json benchmarks/_out/a.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/engine.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_loop import csr_views, plain_loop
from engine_sklearn import Curve, minibatch_curve, sklearn_curve

from bignmf.datasets.synthetic import make_planted, planted_source
from bignmf.fit.engine import nmf
from bignmf.store.csr import DirectChunkReader, open_matrix
from bignmf.store.matrix import MemoryMatrix

PARTS = ("roofline", "disk", "sklearn")
try:  # the malloc thresholds bignmf sets for its own worker processes
    from bignmf.cluster.config import WORKER_ENV

    MALLOC_ENV = {key: int(v) for key, v in WORKER_ENV.items() if key.startswith("MALLOC_")}
except ImportError:
    MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": 256 << 20, "MALLOC_MMAP_THRESHOLD_": 64 << 20}
MB = 1e6


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def ensure_store(args: argparse.Namespace):
    """The planted matrix of parts (a) and (c) as an lz4 store in ``--workdir`` (cached)."""
    tag = (
        f"engine_planted_{args.rows}x{args.cols}_k{args.k}_z{args.nnz_per_row:g}"
        f"_s{args.seed}_float32_lz4_c{args.chunk_size}"
    )
    path = Path(args.workdir) / f"{tag}.zarr"
    stamp = path.with_name(path.name + ".done")
    if stamp.exists() and path.exists():
        with contextlib.suppress(Exception):
            store = open_matrix(path)
            _say(f"using cached {path} ({store.nnz:,} nonzeros)")
            return store, json.loads(stamp.read_text())["write_s"]
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    store = make_planted(
        path,
        args.rows,
        args.cols,
        args.k,
        nnz_per_row=args.nnz_per_row,
        seed=args.seed,
        dtype="float32",
        chunk_size=args.chunk_size,
        codec="lz4",
        overwrite=True,
    )
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps({"write_s": seconds}))
    _say(f"generated and wrote {path} in {seconds:.1f} s ({store.nnz:,} nonzeros)")
    return store, seconds


def planted_npz(path: Path, rows: int, cols: int, k: int, **kwargs) -> Path:
    """A planted matrix (:func:`planted_source`) as an uncompressed ``.npz``, written once.

    Parameters
    ----------
    path : Path
        The cache file; kept when it exists, else written beside and renamed into place.
    rows, cols, k : int
        Shape and planted rank.
    **kwargs
        Passed to :func:`planted_source` (``nnz_per_row``, ``seed``, ``dtype``...).

    Returns
    -------
    Path
        ``path``.
    """
    if path.exists():
        return path
    source = planted_source(rows, cols, k, **kwargs)
    A = sp.vstack(list(source.blocks()), format="csr")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    sp.save_npz(partial, A, compressed=False)  # uncompressed: loads at disk speed
    partial.replace(path)
    return path


def text_matrix(args: argparse.Namespace) -> sp.csr_matrix:
    """The text-like matrix of part (b), in memory (cached as .npz in ``--workdir``)."""
    rows, cols, z = args.sk_rows, args.sk_cols, args.sk_nnz_per_row
    path = Path(args.workdir) / (
        f"engine_text_{rows}x{cols}_k{args.k}_z{z:g}_zipf{args.sk_zipf:g}_s{args.seed}.npz"
    )
    options = {"nnz_per_row": z, "zipf_exponent": args.sk_zipf, "seed": args.seed + 1}
    planted_npz(path, rows, cols, args.k, dtype="float32", **options)
    return sp.load_npz(path).tocsr()


def initial_factors(m: int, n: int, k: int, value_sum: float, seed: int, dtype=np.float32):
    """scikit-learn's random init: ``sqrt(mean(A)/k)·|N(0, 1)|``, here for W and H alike."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(value_sum / (m * n) / k)
    H0 = np.abs(scale * rng.standard_normal((k, n))).astype(dtype)
    W0 = np.abs(scale * rng.standard_normal((m, k))).astype(dtype)
    return W0, H0


# ---------------------------------------------------------------------------------------------
# Clocks and clusters
# ---------------------------------------------------------------------------------------------


def process_cpu() -> float:
    """CPU seconds of this process (all threads)."""
    return time.process_time()


def tree_cpu() -> float:
    """CPU seconds of this process and all its descendants (the cluster's worker processes)."""
    import psutil

    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def local_cluster(malloc: dict | None):
    """A ``LocalCluster`` of 2 single-threaded worker processes (and its Client)."""
    import dask
    from distributed import Client, LocalCluster

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.update(malloc or {})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # heartbeats racing the shutdown log errors
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# ---------------------------------------------------------------------------------------------
# Timed runs: each returns per-iteration wall and CPU seconds
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def run_bignmf(A, k, W0, H0, n_iter, *, scheduler, clock=process_cpu, **options) -> Run:
    run = Run()
    last = [clock()]

    def callback(info) -> None:
        now = clock()
        run.cpu.append(now - last[0])
        last[0] = now
        run.wall.append(info.seconds)
        run.losses.append(info.loss)

    nmf(
        A,
        k,
        solver="hals",
        init="custom",
        W=W0,
        H=H0,
        max_iter=n_iter,
        tol=0,
        scheduler=scheduler,
        callback=callback,
        **options,
    )
    return run


def run_loop(get_block, n_blocks, W0_blocks, H0, norm_a_sq, n_iter, new_buffers=None) -> Run:
    run = Run()
    last = [process_cpu()]

    def callback(t, loss, seconds) -> None:
        now = process_cpu()
        run.cpu.append(now - last[0])
        last[0] = now
        run.wall.append(seconds)
        run.losses.append(loss)

    plain_loop(
        get_block,
        n_blocks,
        W0_blocks,
        H0,
        norm_a_sq,
        n_iter,
        threads=2,
        new_buffers=new_buffers or (lambda: None),
        callback=callback,
    )
    return run


def decode_floor(store, n_passes: int, threads: int = 2) -> Run:
    """Read and decode every chunk file of the store, split over ``threads`` threads, per pass.

    The ``chunks+decode`` floor of ``read_throughput.py`` on ``threads`` threads: each thread
    reads its share of the chunk files and decodes them (numcodecs releases the GIL) into its
    own reused buffer; one pass is one "iteration".
    """
    root = Path(store.path)
    jobs = []
    for name in ("data", "indices", "indptr"):
        array = store.group[name]
        decoder = DirectChunkReader.for_array(array).decoder
        n_chunks = -(-array.shape[0] // array.chunks[0])
        for c in range(n_chunks):
            jobs.append((root / name / "c" / str(c), decoder, array.chunks[0], array.dtype))
    shares = [jobs[t::threads] for t in range(threads)]

    def work(share) -> int:
        buffers: dict = {}
        done = 0
        for path, decoder, chunk, dtype in share:
            out = buffers.get((chunk, dtype))
            if out is None:
                out = buffers[(chunk, dtype)] = np.empty(chunk, dtype=dtype)
            if decoder is None:
                with open(path, "rb", buffering=0) as f:
                    done += f.readinto(memoryview(out).cast("B"))
            else:
                decoder.decode(path.read_bytes(), out=out)
                done += out.nbytes
        return done

    run = Run()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(n_passes):
            c0, t0 = process_cpu(), time.perf_counter()
            list(pool.map(work, shares))
            run.wall.append(time.perf_counter() - t0)
            run.cpu.append(process_cpu() - c0)
    return run


def per_iteration(run: Run) -> tuple[float, float]:
    """Median wall and CPU seconds per iteration, the first (warm-up) left out."""
    wall = run.wall[1:] or run.wall
    cpu = run.cpu[1:] or run.cpu
    return statistics.median(wall), statistics.median(cpu)


def round_robin(variants: dict[str, Callable[[], Run]], repeat: int) -> dict[str, list[Run]]:
    names = list(variants)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            run = variants[name]()
            runs[name].append(run)
            wall, cpu = per_iteration(run)
            _say(
                f"  round {r + 1}/{repeat} {name}: {wall:.3f} s/iter, {cpu:.3f} CPU s/iter "
                f"({time.perf_counter() - start:.0f} s)"
            )
    return runs


# ---------------------------------------------------------------------------------------------
# Parts (a) and (c)
# ---------------------------------------------------------------------------------------------


LOOP_MEM = "loop, memory"
BIG_MEM = "bignmf threads, memory"
DIST = "bignmf LocalCluster 2x1, disk, W zarr"
DIST_MALLOC = "bignmf LocalCluster 2x1, disk, W zarr, malloc env"
DIST_CACHED = "bignmf LocalCluster 2x1, A cached in workers, W zarr, malloc env"
BIG_DISK = "bignmf threads, disk, W memory"
BIG_DISK_ZARR = "bignmf threads, disk, W zarr"
LOOP_DISK = "loop, disk"
DECODE = "decode floor, 2 threads"


def timing_parts(args: argparse.Namespace, parts: set[str]) -> dict:
    store, write_s = ensure_store(args)
    info = store.info()
    _say(f"loading {store.path} into memory")
    A = store.to_scipy()
    matrix = MemoryMatrix(A, block_nnz=4 * args.chunk_size)
    if not np.array_equal(matrix.row_offsets, store.row_offsets):
        raise RuntimeError("the in-memory row blocks differ from the store's")
    m, n = matrix.shape
    W0, H0 = initial_factors(m, n, args.k, matrix.value_sum, args.seed)
    ro = matrix.row_offsets
    W0_blocks = [W0[ro[i] : ro[i + 1]] for i in range(matrix.n_blocks)]
    views = csr_views(matrix.matrix, ro)
    norm_a_sq = matrix.frobenius_sq
    N, k = args.iters, args.k
    workdir = Path(tempfile.mkdtemp(prefix="engine-w-", dir=args.workdir))

    variants: dict[str, Callable[[], Run]] = {
        LOOP_MEM: lambda: run_loop(lambda i, b: views[i], len(views), W0_blocks, H0, norm_a_sq, N),
        BIG_MEM: lambda: run_bignmf(matrix, k, W0, H0, N, scheduler="threads"),
    }
    if "roofline" in parts:

        def dist(malloc, **options):
            def go() -> Run:
                with local_cluster(malloc) as client:
                    # W lives in Zarr on a distributed scheduler (bignmf refuses 'memory' there)
                    return run_bignmf(
                        store.path,
                        k,
                        W0,
                        H0,
                        N,
                        scheduler=client,
                        clock=tree_cpu,
                        workdir=tempfile.mkdtemp(dir=workdir),
                        **options,
                    )

            return go

        variants[DIST] = dist(None)
        variants[DIST_MALLOC] = dist(args.malloc_env)
        # the workers decode A once and keep it, as the loop keeps it in memory
        variants[DIST_CACHED] = dist(args.malloc_env, cache_a="auto")
    if "disk" in parts:
        variants[BIG_DISK] = lambda: run_bignmf(
            store.path, k, W0, H0, N, scheduler="threads", w_storage="memory"
        )
        variants[BIG_DISK_ZARR] = lambda: run_bignmf(
            store.path,
            k,
            W0,
            H0,
            N,
            scheduler="threads",
            w_storage="zarr",
            workdir=tempfile.mkdtemp(dir=workdir),
        )
        variants[LOOP_DISK] = lambda: run_loop(
            lambda i, b: store.read_block(i, b),
            store.n_blocks,
            W0_blocks,
            H0,
            norm_a_sq,
            N,
            new_buffers=store.new_buffers,
        )
        variants[DECODE] = lambda: decode_floor(store, N)
    decode_floor(store, 1)  # warm the page cache
    load = os.getloadavg()
    try:
        runs = round_robin(variants, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = (load, os.getloadavg())

    figures = {}
    for name, rs in runs.items():
        pairs = [per_iteration(r) for r in rs]
        figures[name] = {
            "wall": statistics.median(p[0] for p in pairs),
            "best": min(p[0] for p in pairs),
            "cpu": statistics.median(p[1] for p in pairs),
            "wall_rounds": [p[0] for p in pairs],
            "cpu_rounds": [p[1] for p in pairs],
            "wall_iterations": [r.wall for r in rs],
        }
    # every engine variant computes the same iterates: check the losses agree with the loop's
    ref = runs[LOOP_MEM][0].losses
    agree = {
        name: float(max(abs(a - b) / abs(b) for a, b in zip(rs[0].losses, ref, strict=True)))
        for name, rs in runs.items()
        if rs[0].losses and name != LOOP_MEM
    }
    nbytes = info["bytes_uncompressed"]
    return {
        "matrix": {
            "shape": [m, n],
            "nnz": int(A.nnz),
            "row_blocks": int(matrix.n_blocks),
            "bytes_uncompressed": nbytes,
            "bytes_on_disk": info["bytes_on_disk"],
            "chunk_size": args.chunk_size,
            "write_s": write_s,
        },
        "iters": N,
        "figures": figures,
        "loss_max_rel_diff_vs_loop": agree,
        "loadavg_before_after": load,
    }


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None without matplotlib (the optional
    'plots' extra: the parts then write their tables only)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG (making its folder) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _paired(f: dict, name: str, ref: Callable[[int], float]) -> float:
    """Median over rounds of ``name``'s figure ÷ ``ref(round)``: runs of one round are minutes
    apart at most, so the ratio cancels the slow drifts of a shared machine's load."""
    rounds = f[name]["wall_rounds"]
    return statistics.median(rounds[r] / ref(r) for r in range(len(rounds)))


def roofline_table(t: dict) -> list[dict]:
    f = t["figures"]
    loop = f[LOOP_MEM]
    rows = []
    targets = {LOOP_MEM: None, BIG_MEM: 1.1, DIST: 1.3, DIST_MALLOC: 1.3, DIST_CACHED: 1.3}
    for name, target in targets.items():
        if name not in f:
            continue
        rows.append(
            {
                "variant": name,
                "wall": f[name]["wall"],
                "best": f[name]["best"],
                "cpu": f[name]["cpu"],
                "paired_ratio": _paired(f, name, lambda r: loop["wall_rounds"][r]),
                "best_ratio": _ratio(f[name]["best"], loop["best"]),
                "cpu_ratio": _ratio(f[name]["cpu"], loop["cpu"]),
                "target": target,
            }
        )
    return rows


def disk_table(t: dict) -> tuple[list[dict], dict]:
    """Ratios to max(compute, decode): paired per round, of the best rounds, of CPU seconds."""
    f = t["figures"]
    nbytes = t["matrix"]["bytes_uncompressed"]
    floors = {
        "decode_s": f[DECODE]["wall"],
        "decode_best_s": f[DECODE]["best"],
        "decode_mb_s": nbytes / f[DECODE]["wall"] / MB,
        "decode_best_mb_s": nbytes / f[DECODE]["best"] / MB,
        "decode_cpu_s": f[DECODE]["cpu"],
    }

    def roof(base: str, stat: str, r: int | None = None) -> float:
        if r is not None:
            return max(f[base]["wall_rounds"][r], f[DECODE]["wall_rounds"][r])
        return max(f[base][stat], f[DECODE][stat])

    rows = []
    for name in (BIG_DISK, BIG_DISK_ZARR, LOOP_DISK, LOOP_MEM, BIG_MEM, DECODE):
        rows.append(
            {
                "variant": name,
                "wall": f[name]["wall"],
                "best": f[name]["best"],
                "cpu": f[name]["cpu"],
                "vs_big_mem": _paired(f, name, lambda r: f[BIG_MEM]["wall_rounds"][r]),
                "vs_roof_loop": _paired(f, name, lambda r: roof(LOOP_MEM, "wall", r)),
                "vs_roof_loop_best": f[name]["best"] / roof(LOOP_MEM, "best"),
                "vs_roof_loop_cpu": f[name]["cpu"] / roof(LOOP_MEM, "cpu"),
                "vs_roof_bignmf": _paired(f, name, lambda r: roof(BIG_MEM, "wall", r)),
            }
        )
    return rows, floors


# ---------------------------------------------------------------------------------------------
# Part (b)
# ---------------------------------------------------------------------------------------------


class _Enough(Exception):
    pass


def bignmf_curve(A, W0, H0, solver, n_inner, *, target_rel, budget_s, max_iter, **options):
    """bignmf on the threaded scheduler; stop at ``target_rel``, ``budget_s`` or ``max_iter``."""
    label = f"bignmf {solver}" + (f" n_inner={n_inner}" if solver == "hals" else "")
    if options.get("block_nnz"):
        label += f", block_nnz={options['block_nnz']:,}"
    curve = Curve(label)
    start = time.perf_counter()

    def callback(info) -> None:
        curve.seconds.append(time.perf_counter() - start)
        curve.rel.append(float(info.relative_error))
        curve.n_iter = info.iteration
        if info.relative_error <= target_rel or curve.seconds[-1] >= budget_s:
            raise _Enough

    with contextlib.suppress(_Enough):
        nmf(
            A,
            W0.shape[1],
            solver=solver,
            n_inner=n_inner,
            init="custom",
            W=W0,
            H=H0,
            max_iter=max_iter,
            tol=0,
            scheduler="threads",
            callback=callback,
            **options,
        )
    curve.wall = curve.seconds[-1]
    curve.final_rel = curve.rel[-1]
    return curve


def sklearn_part(args: argparse.Namespace) -> dict:
    A = text_matrix(args)
    m, n = A.shape
    k = args.k
    W0, H0 = initial_factors(m, n, k, float(A.sum(dtype=np.float64)), args.seed + 7)
    _say(
        f"text matrix {m:,} x {n:,}, {A.nnz:,} nonzeros ({A.nnz / m:.0f}/row), "
        f"{np.mean(A.data == 1):.0%} ones, max {A.data.max():g}"
    )
    col_nnz = np.bincount(A.indices, minlength=n)
    tuned = args.sk_block_nnz if args.sk_block_nnz is not None else -(-A.nnz // 8)
    methods: list[tuple[str, str, int | None, int | None]] = [
        ("sklearn", "cd", None, None),
        ("sklearn", "mu", None, None),
        ("sklearn", "minibatch", None, None),
    ]
    methods += [("bignmf", "hals", i, None) for i in (1, 2, 4, 8)]
    methods += [("bignmf", "mu", None, None), ("bignmf", "bpp", None, None)]
    if tuned:  # smaller row blocks: the default gives 2 blocks here, one busy thread
        methods += [("bignmf", "hals", i, tuned) for i in (1, 4)]
    rounds: list[dict[tuple, Curve]] = []
    targets: dict = {}
    for r in range(args.sk_repeat):
        # sklearn first in every round: bignmf's runs stop at its loss and within its time
        order = methods[:3] + _rotate(methods[3:], r)
        curves: dict[tuple, Curve] = {}
        for method in order:
            lib, solver, n_inner, block_nnz = method
            if lib == "sklearn" and solver != "minibatch":
                c = sklearn_curve(A, W0, H0, solver, max_iter=args.sk_max_iter)
            elif lib == "sklearn":
                budget = args.sk_budget * curves[methods[0]].seconds[-1]
                c = minibatch_curve(A, W0, H0, budget_s=budget)
            else:
                if not targets:
                    L_cd = curves[methods[0]].rel[-1]
                    targets = {
                        "cd": L_cd,
                        "mu": curves[methods[1]].rel[-1],
                        "cd_slack": L_cd * (1 + args.sk_slack),
                        "best_sklearn": min(min(c.rel) for c in curves.values()),
                    }
                budget = args.sk_budget * curves[methods[0]].seconds[-1]
                options = {"block_nnz": block_nnz} if block_nnz else {}
                c = bignmf_curve(
                    A,
                    W0,
                    H0,
                    solver,
                    n_inner,
                    target_rel=targets["best_sklearn"],
                    budget_s=budget,
                    max_iter=args.sk_max_iter * 4,
                    **options,
                )
            curves[method] = c
            _say(
                f"  round {r + 1}/{args.sk_repeat} {c.name}: {c.n_iter} iterations, "
                f"{c.seconds[-1]:.1f} s, rel. error {min(c.rel):.6f}"
            )
        rounds.append(curves)

    def med(values):
        values = [v for v in values]
        return None if any(v is None for v in values) else statistics.median(values)

    def time_to(method, rel):
        return med([rd[method].time_to(rel) for rd in rounds])

    cd, mu = methods[0], methods[1]
    t_cd, t_mu = (
        med([rd[cd].seconds[-1] for rd in rounds]),
        med([rd[mu].seconds[-1] for rd in rounds]),
    )
    t_cd_slack = time_to(cd, targets["cd_slack"])
    rows = []
    for method in methods:
        c = rounds[0][method]
        to_cd, to_mu = time_to(method, targets["cd"]), time_to(method, targets["mu"])
        to_slack, to_best = (
            time_to(method, targets["cd_slack"]),
            time_to(method, targets["best_sklearn"]),
        )
        seconds = med([rd[method].seconds[-1] for rd in rounds])
        per_iter = med([rd[method].seconds[-1] / max(rd[method].n_iter, 1) for rd in rounds])
        rows.append(
            {
                "method": c.name,
                "n_iter": int(statistics.median(rd[method].n_iter for rd in rounds)),
                "seconds": seconds,
                "per_iter": per_iter if method[1] != "minibatch" else None,
                "final_rel": min(min(rd[method].rel) for rd in rounds),
                "to_cd": to_cd,
                "iters_to_cd": c.iterations_to(targets["cd"]),
                "speedup_cd": _ratio(t_cd, to_cd),
                "to_cd_slack": to_slack,
                "speedup_cd_slack": _ratio(t_cd_slack, to_slack),
                "to_mu": to_mu,
                "speedup_mu": _ratio(t_mu, to_mu),
                "to_best": to_best,
            }
        )
    plot = plot_curves(list(rounds[0].values()), targets["cd"], args)
    return {
        "matrix": {
            "shape": [m, n],
            "nnz": int(A.nnz),
            "zipf_exponent": args.sk_zipf,
            "ones_share": float(np.mean(A.data == 1)),
            "max_value": float(A.data.max()),
            "empty_columns": int(np.sum(col_nnz == 0)),
            "top1pct_columns_nnz_share": float(
                np.sort(col_nnz)[::-1][: max(n // 100, 1)].sum() / A.nnz
            ),
        },
        "targets": {
            **targets,
            "t_cd": t_cd,
            "t_mu": t_mu,
            "t_cd_slack": t_cd_slack,
            "slack": args.sk_slack,
        },
        "sklearn_reported_final": {
            rounds[0][m_].name: rounds[0][m_].final_rel for m_ in methods[:3]
        },
        "tuned_block_nnz": tuned,
        "sk_repeat": args.sk_repeat,
        "budget_factor": args.sk_budget,
        "rows": rows,
        "curves": [[c.as_dict() for c in rd.values()] for rd in rounds],
        "plot": plot,
    }


def _rotate(items: list, r: int) -> list:
    if not items:
        return items
    r %= len(items)
    return items[r:] + items[:r]


def plot_curves(curves: list[Curve], L_cd: float, args) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    floor = min(min(c.rel) for c in curves)
    colors = plt.get_cmap("tab10").colors
    solver_color: dict[str, tuple] = {}
    for c in curves:
        base = c.name.split(",")[0]
        color = solver_color.setdefault(base, colors[len(solver_color) % len(colors)])
        dashed = c.name.startswith("sklearn")
        style = "--" if dashed else "-." if "block_nnz" in c.name else "-"
        marker = "o" if "MiniBatch" in c.name else None
        kw = dict(color=color, ls=style, marker=marker, ms=3, lw=1.4, label=c.name)
        ax1.plot(c.seconds, c.rel, **kw)
        ax2.plot(c.seconds, np.maximum(np.asarray(c.rel) - floor, 1e-7), **kw)
    for ax in (ax1, ax2):
        ax.set_xlabel("seconds (wall, from the call)")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax1.axhline(L_cd, color="k", lw=0.8, ls=":", label="sklearn cd final")
    ax1.set_ylim(floor - 0.001, floor + 0.02)
    ax1.set_ylabel("relative error ‖A − WH‖/‖A‖")
    ax2.axhline(max(L_cd - floor, 1e-7), color="k", lw=0.8, ls=":")
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error − lowest reached by any method")
    ax1.legend(fontsize=6.5, ncol=2)
    fig.suptitle(
        f"NMF k={args.k}, float32: {args.sk_rows:,} x {args.sk_cols:,} text-like "
        "matrix, 2 cores (dash: scikit-learn; dash-dot: bignmf with smaller blocks)"
    )
    fig.tight_layout()
    out = save_png(fig, Path(args.out) / "engine_sklearn.png")
    if not args.quick:
        shutil.copy(out, Path(__file__).resolve().parent / "engine_sklearn.png")
    return str(out)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(ImportError):
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    return f"{model}, {os.cpu_count()} cores{mem}"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _met(ratio: float | None, target: float | None, higher: bool = False) -> str:
    if target is None or ratio is None:
        return ""
    ok = ratio >= target if higher else ratio <= target
    return f"{'≥' if higher else '≤'} {target:g}: **{'yes' if ok else 'no'}**"


def markdown(result: dict) -> str:
    lines = [
        f"{result['date']}, {result['machine']}; Python {result['python']}, numpy "
        f"{result['versions']['numpy']}, scipy {result['versions']['scipy']}, dask "
        f"{result['versions']['dask']}, scikit-learn {result['versions']['sklearn']}.",
        f"Command: `{result['command']}`",
    ]
    t = result.get("timing")
    if t:
        mx = t["matrix"]
        lines += [
            "",
            f"Matrix {mx['shape'][0]:,} × {mx['shape'][1]:,}, {mx['nnz']:,} nonzeros, float32, "
            f"k = {result['k']}, {mx['row_blocks']} row blocks; "
            f"{mx['bytes_uncompressed'] / MB:.0f} MB uncompressed, "
            f"{mx['bytes_on_disk'] / MB:.0f} MB on disk (lz4). HALS, {t['iters']} iterations "
            f"per run, median over iterations 2–{t['iters']}, then over {result['repeat']} "
            f"rounds; warm page cache. Load average before/after: "
            f"{t['loadavg_before_after'][0][0]:.1f} / {t['loadavg_before_after'][1][0]:.1f}.",
        ]
    if t and "roofline" in result["parts"]:
        lines += [
            "",
            "**(a) Seconds per iteration against the plain SciPy loop** (2 threads, in memory). "
            "*s/iter*: median over rounds of each run's median iteration; *best*: the fastest "
            "round's; *CPU*: CPU seconds of all threads and worker processes per iteration. "
            "*÷ loop paired*: median over rounds of the ratio to the loop's run of the same "
            "round (cancels slow drifts of the machine's load); *÷ loop best*: best ÷ best.",
            "",
            "| variant | s/iter | best | CPU s/iter | ÷ loop paired | ÷ loop best | "
            "÷ loop CPU | target (paired) |",
            "|---|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in roofline_table(t):
            lines.append(
                f"| {r['variant']} | {r['wall']:.3f} | {r['best']:.3f} | {r['cpu']:.3f} | "
                f"{_f(r['paired_ratio'], '.2f')} | {_f(r['best_ratio'], '.2f')} | "
                f"{_f(r['cpu_ratio'], '.2f')} | {_met(r['paired_ratio'], r['target'])} |"
            )
    if t and "disk" in result["parts"]:
        rows, fl = disk_table(t)
        lines += [
            "",
            "**(c) From the Zarr store on disk** (threaded scheduler, 2 threads). Decode floor: "
            f"{fl['decode_s']:.3f} s per pass over the store (best {fl['decode_best_s']:.3f} s) "
            f"= {fl['decode_mb_s']:,.0f} MB/s (best {fl['decode_best_mb_s']:,.0f}) of "
            "uncompressed bytes on 2 threads. *Roof* = max(in-memory s/iter, decode s/pass), "
            "the in-memory figure being the plain loop's (*loop roof*) or bignmf's (*bignmf "
            "roof*); ratios paired per round as in (a), or of the best rounds, or of CPU seconds.",
            "",
            "| variant | s/iter | best | CPU s/iter | ÷ bignmf memory | ÷ loop roof | "
            "÷ loop roof best | ÷ loop roof CPU | ÷ bignmf roof | target (paired) |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in rows:
            disk = r["variant"].startswith("bignmf threads, disk")
            target = _met(r["vs_roof_loop"], 1.3) if disk else ""
            lines.append(
                f"| {r['variant']} | {r['wall']:.3f} | {r['best']:.3f} | {r['cpu']:.3f} | "
                f"{r['vs_big_mem']:.2f} | {r['vs_roof_loop']:.2f} | "
                f"{r['vs_roof_loop_best']:.2f} | {r['vs_roof_loop_cpu']:.2f} | "
                f"{r['vs_roof_bignmf']:.2f} | {target} |"
            )
    s = result.get("sklearn")
    if s:
        mx, tg = s["matrix"], s["targets"]
        lines += [
            "",
            f"**(b) Time to reach scikit-learn's loss** — text-like matrix {mx['shape'][0]:,} × "
            f"{mx['shape'][1]:,}, {mx['nnz']:,} nonzeros (Zipf exponent {mx['zipf_exponent']:g},"
            f" {mx['ones_share']:.0%} of the entries are 1, the top 1% of columns hold "
            f"{mx['top1pct_columns_nnz_share']:.0%} of the nonzeros), float32 for all, k = "
            f"{result['k']}, the same initial (W, H) for all; bignmf on the threaded scheduler "
            f"(2 threads), default row blocks"
            + (f" or `block_nnz={s['tuned_block_nnz']:,}`" if s["tuned_block_nnz"] else "")
            + ". Targets "
            f"(relative error ‖A − WH‖/‖A‖): sklearn cd's final {tg['cd']:.6f} (reached at "
            f"{tg['t_cd']:.1f} s), the same + {tg['slack']:.1%} = {tg['cd_slack']:.6f} (sklearn "
            f"cd at {_f(tg['t_cd_slack'], '.1f')} s), sklearn mu's final {tg['mu']:.6f} (at "
            f"{tg['t_mu']:.1f} s), lowest sklearn {tg['best_sklearn']:.6f}. bignmf runs stop at "
            f"the lowest sklearn loss or after {s['budget_factor']:g}× sklearn cd's time; "
            f"times are from the call, setup included; medians of {s['sk_repeat']} round(s) (a "
            "target missed in any round shows –), *lowest rel. error* over all rounds.",
            "",
            "| method | iters | s | s/iter | lowest rel. error | iters to cd's | s to cd's | "
            "× vs cd | "
            f"s to cd's +{tg['slack']:.1%} | × vs cd | s to mu's | × vs mu | s to lowest sklearn |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in s["rows"]:
            lines.append(
                f"| {r['method']} | {r['n_iter']} | {r['seconds']:.1f} | {_f(r['per_iter'])} | "
                f"{r['final_rel']:.6f} | {_f(r.get('iters_to_cd'), 'd')} | "
                f"{_f(r['to_cd'], '.1f')} | {_f(r['speedup_cd'], '.2f')} | "
                f"{_f(r['to_cd_slack'], '.1f')} | {_f(r['speedup_cd_slack'], '.2f')} | "
                f"{_f(r['to_mu'], '.1f')} | {_f(r['speedup_mu'], '.2f')} | "
                f"{_f(r['to_best'], '.1f')} |"
            )
        if s.get("plot"):
            lines += ["", f"Plot: `{s['plot']}`."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small matrices, < 2 minutes")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: roofline,sklearn,disk"
    )
    parser.add_argument("--rows", type=int, help="rows of the (a)/(c) matrix (500000)")
    parser.add_argument("--cols", type=int, help="columns (50000)")
    parser.add_argument("--nnz-per-row", type=float, help="mean nonzeros per row (100)")
    parser.add_argument("--chunk-size", type=int, help="store chunk (2**20; blocks = 4 chunks)")
    parser.add_argument("-k", type=int, default=20, help="rank (20)")
    parser.add_argument("--iters", type=int, default=8, help="iterations per timed run (8)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of (a)/(c) (5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sk-rows", type=int, help="rows of the (b) text matrix (100000)")
    parser.add_argument("--sk-cols", type=int, help="columns (20000)")
    parser.add_argument("--sk-nnz-per-row", type=float, help="(50)")
    parser.add_argument("--sk-zipf", type=float, default=1.0, help="Zipf exponent (1.0)")
    parser.add_argument(
        "--sk-max-iter", type=int, default=200, help="sklearn max_iter (its default, 200)"
    )
    parser.add_argument(
        "--sk-budget",
        type=float,
        default=1.0,
        help="bignmf runs stop after this times sklearn cd's time (1)",
    )
    parser.add_argument(
        "--sk-block-nnz",
        type=int,
        default=None,
        help="also run bignmf with this block_nnz (default nnz/8; 0: skip)",
    )
    parser.add_argument("--sk-repeat", type=int, default=2, help="rounds of part (b) (2)")
    parser.add_argument(
        "--sk-slack",
        type=float,
        default=1e-3,
        help="also time reaching cd's relative error × (1 + this) (1e-3)",
    )
    parser.add_argument(
        "--malloc-env",
        type=json.loads,
        default=MALLOC_ENV,
        help=f"JSON of the malloc variables (default {json.dumps(MALLOC_ENV)})",
    )
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--render", help="only print the tables of a results JSON file")
    args = parser.parse_args(argv)
    full = dict(
        rows=500_000,
        cols=50_000,
        nnz_per_row=100,
        chunk_size=1 << 20,
        sk_rows=100_000,
        sk_cols=20_000,
        sk_nnz_per_row=50,
    )
    quick = dict(
        rows=50_000,
        cols=20_000,
        nnz_per_row=60,
        chunk_size=1 << 17,
        sk_rows=20_000,
        sk_cols=5_000,
        sk_nnz_per_row=30,
    )
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = args.parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    if args.quick and args.repeat == parser.get_default("repeat"):
        args.repeat = 2
    if args.quick and args.sk_repeat == parser.get_default("sk_repeat"):
        args.sk_repeat = 1
    if args.quick and args.sk_block_nnz is None:
        args.sk_block_nnz = 0  # one set of bignmf runs only
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="Sending large graph")
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return 0
    result = collect(args, " ".join(["python", "benchmarks/engine.py", *(argv or sys.argv[1:])]))
    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("engine_quick.md" if args.quick else "engine.md")).write_text(text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    _say(f"total {result['total_s']:.0f} s")
    return 0


def collect(args: argparse.Namespace, command: str) -> dict:
    """Run the parts of ``args`` (from :func:`parse_args`); the results as ``markdown`` takes.

    Parameters
    ----------
    args : argparse.Namespace
        Options, as :func:`parse_args` returns them.
    command : str
        The command line recorded in the results.

    Returns
    -------
    dict
        Date, machine, versions, settings, ``timing`` (parts roofline/disk), ``sklearn``.
    """
    import dask
    import sklearn

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "python": platform.python_version(),
        "versions": {
            "numpy": np.__version__,
            "scipy": __import__("scipy").__version__,
            "dask": dask.__version__,
            "sklearn": sklearn.__version__,
        },
        "command": command,
        "parts": sorted(args.parts),
        "k": args.k,
        "repeat": args.repeat,
    }
    start = time.perf_counter()
    if args.parts & {"roofline", "disk"}:
        result["timing"] = timing_parts(args, args.parts)
    if "sklearn" in args.parts:
        result["sklearn"] = sklearn_part(args)
    result["total_s"] = time.perf_counter() - start
    return result


if __name__ == "__main__":
    sys.exit(main())
