"""Where an iteration of bignmf's engine spends its time, against the plain loop's arithmetic.

Two measurements on the matrix of ``benchmarks/engine.py`` (the same cached store):

``kernels``
    Every piece of one iteration timed on its own, on one thread (best of ``--repeat``), summed
    over the row blocks: what the plain loop does per block (``A_i @ Ht``, HALS, ``A_i.T @ W_i``
    added into a running sum, grams), and what bignmf's fat task does per block (read the block
    — a row slice of the in-memory matrix, or a read from the store —, a fresh accumulator,
    ``update_w_block``, the pairwise adds, the tree's copying merges) and in the driver
    (``HState.of``, ``update_h``). The difference of the two sums is the engine's extra CPU work.
``phases``
    ``nmf(..., scheduler='threads')`` (or a ``LocalCluster``) with its driver steps and tasks
    wrapped by timers: per iteration, the driver's serial time (building the graph, preparing H,
    updating H), the time waiting for the tasks, each fat task's span, and the threads' idle time
    (2 × the tasks' span − the tasks' busy time). Wrapping works on the threaded scheduler only
    for tasks (the functions run in this process); on a cluster only driver phases are timed.

Run from the repository root::

    python benchmarks/engine_profile.py                 # the 500k x 50k matrix (cached)
    python benchmarks/engine_profile.py --quick
    py-spy record --native -r 200 --format raw -o prof.raw -- \
        python benchmarks/engine_profile.py --only run-threads
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import bignmf
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import MALLOC_ENV, ensure_store, initial_factors, local_cluster, parse_args
from engine_loop import csr_views

import bignmf.fit.driver
import bignmf.fit.engine
import bignmf.fit.graph as graph
from bignmf.kernels.hals import hals_update
from bignmf.kernels.solvers import (
    SOLVERS,
    HALSSolver,
    SolverParams,
    get_solver,
    prepare_h,
)
from bignmf.store.matrix import MemoryMatrix

_TMP: list[str] = []


def scratch_dir(workdir: str) -> str:
    """A fresh directory for W's Zarr blocks, under one root removed when the script exits."""
    import atexit
    import shutil
    import tempfile

    if not _TMP:
        _TMP.append(tempfile.mkdtemp(prefix="engine-profile-", dir=workdir))
        atexit.register(shutil.rmtree, _TMP[0], True)
    return tempfile.mkdtemp(dir=_TMP[0])


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------------------------------------
# kernels: each piece alone, one thread
# ---------------------------------------------------------------------------------------------


def kernels(matrix: MemoryMatrix, store, W0, H0, repeat: int) -> dict[str, float]:
    """Seconds per iteration (summed over blocks) of each piece, on one thread."""
    from threadpoolctl import threadpool_limits

    ro = matrix.row_offsets
    nb = matrix.n_blocks
    views = csr_views(matrix.matrix, ro)
    Wb = [np.ascontiguousarray(W0[ro[i] : ro[i + 1]]) for i in range(nb)]
    n, k = matrix.shape[1], H0.shape[0]
    solver = get_solver("hals")
    params = SolverParams()
    Ht, HHt = prepare_h(H0, H0.dtype)
    AHt = [v @ Ht for v in views]
    out: dict[str, float] = {}

    def each(fn):
        return lambda: [fn(i) for i in range(nb)]

    with threadpool_limits(limits=1):
        # what both do
        out["A_i @ Ht (scipy @, allocating)"] = best_of(each(lambda i: views[i] @ Ht), repeat)

        def hals_w(i):
            W = Wb[i].copy()
            hals_update(W, AHt[i], HHt)

        out["HALS sweep on W_i (incl. W_i copy)"] = best_of(each(hals_w), repeat)
        acc = np.zeros((n, k), np.float32)

        def scatter_tmp(i):
            acc.__iadd__(views[i].T @ Wb[i])

        out["loop: AtW += A_i.T @ W_i (temporary + add)"] = best_of(each(scatter_tmp), repeat)

        def grams(i):
            W64 = Wb[i].astype(np.float64)
            W64.T @ W64
            np.vdot(W64, AHt[i].astype(np.float64))

        out["WᵀW gram + ⟨W,AHᵀ⟩ in float64"] = best_of(each(grams), repeat)
        # bignmf's pieces
        out["bignmf: MemoryMatrix.read_block (row-slice copy)"] = best_of(
            each(lambda i: matrix.read_block(i)), repeat
        )
        buffers = store.new_buffers() if store is not None else None
        if store is not None:
            out["bignmf: CSRStore.read_block into buffers (decode)"] = best_of(
                each(lambda i: store.read_block(i, buffers)), repeat
            )
        out["bignmf: new_accumulator (np.zeros n×k + 2)"] = best_of(
            each(lambda i: solver.new_accumulator(n, k, np.float32)), repeat
        )
        work: dict = {}

        def update(i):
            acc = solver.new_accumulator(n, k, np.float32)
            solver.update_w_block(views[i], Wb[i], H0, Ht, HHt, params, acc, work)
            return acc

        out["bignmf: update_w_block (A·Hᵀ, HALS, AᵀW, grams; incl. accumulator)"] = best_of(
            each(update), repeat
        )
        accs = [update(i) for i in range(nb)]
        from bignmf.fit.reduction import aligned_groups

        n_groups = len(aligned_groups(nb, 8))  # the default 4 tasks per thread on 2 threads
        scratch = {key: v.copy() for key, v in accs[0].items()}
        add = best_of(lambda: solver.combine(scratch, accs[1]), repeat)
        copy_add = best_of(
            lambda: solver.combine({key: v.copy() for key, v in accs[0].items()}, accs[1]), repeat
        )
        out[f"bignmf: in-task pairwise adds ({nb - n_groups} × add)"] = (nb - n_groups) * add
        out[f"bignmf: tree merges/fold ({n_groups - 1} × copy + add)"] = (n_groups - 1) * copy_add
        out["bignmf driver: HState.of (Hᵀ, H·Hᵀ)"] = best_of(lambda: graph.HState.of(H0), repeat)
        total = {key: v.copy() for key, v in accs[0].items()}
        for a in accs[1:]:
            solver.combine(total, a)
        out["bignmf driver: update_h (HALS on Hᵀ + loss)"] = best_of(
            lambda: HALSSolver().update_h(H0, total, params, matrix.frobenius_sq), repeat
        )
    return out


# ---------------------------------------------------------------------------------------------
# phases: the engine with timers around its steps
# ---------------------------------------------------------------------------------------------


SOLVER = {"solver": "hals", "n_inner": None}


class Timeline:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, float, float]] = []  # (name, thread, start, end)
        self.lock = threading.Lock()

    def wrap(self, fn, name):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.events.append((name, threading.get_ident(), t, time.perf_counter()))

        return wrapped


@contextlib.contextmanager
def patched(timeline: Timeline, tasks: bool):
    """Wrap the driver's steps (and, in-process, the graph's task functions) with timers."""
    saved = []

    def patch(obj, attr, name, kind=None):
        if not hasattr(obj, attr):
            return
        original = obj.__dict__[attr] if isinstance(obj, type) else getattr(obj, attr)
        fn = original.__func__ if isinstance(original, classmethod) else original
        wrapped = timeline.wrap(fn, name)
        setattr(obj, attr, classmethod(wrapped) if isinstance(original, classmethod) else wrapped)
        saved.append((obj, attr, original))

    patch(bignmf.fit.driver, "iteration", "driver: build graph")
    patch(graph.HState, "of", "driver: HState.of")
    patch(bignmf.fit.engine.Runner, "persist", "driver: persist (wait)")
    patch(bignmf.fit.engine.Runner, "compute", "driver: compute (wait)")
    for cls in {type(s) for s in SOLVERS.values()}:
        patch(cls, "update_h", "driver: update_h")
    if tasks:
        patch(graph, "_group_task", "task: fat group")
        patch(graph, "_merge_task", "task: merge")
        patch(graph, "_fold_task", "task: fold")
        patch(graph, "_solver_step", "block: solver step")
    try:
        yield
    finally:
        for obj, attr, original in reversed(saved):
            setattr(obj, attr, original)


def phases(A, W0, H0, n_iter: int, scheduler, tasks: bool, **options) -> dict:
    timeline = Timeline()
    marks: list[float] = []
    with patched(timeline, tasks):
        marks.append(time.perf_counter())
        bignmf.fit.engine.nmf(
            A,
            H0.shape[0],
            solver=SOLVER["solver"],
            n_inner=SOLVER["n_inner"],
            init="custom",
            W=W0,
            H=H0,
            max_iter=n_iter,
            tol=0,
            scheduler=scheduler,
            callback=lambda info: marks.append(time.perf_counter()),
            **options,
        )
    # iteration t spans (marks[t], marks[t+1]]; leave out the first (and the setup before it)
    per: dict[str, list[float]] = defaultdict(list)
    for t in range(2, len(marks)):
        lo, hi = marks[t - 1], marks[t]
        ev = [e for e in timeline.events if lo <= e[2] < hi]
        per["iteration wall"].append(hi - lo)
        for name in {e[0] for e in ev}:
            per[name].append(sum(e[3] - e[2] for e in ev if e[0] == name))
        group = [e for e in ev if e[0] == "task: fat group"]
        if group:
            span = max(e[3] for e in group) - min(e[2] for e in group)
            per["tasks: span of the fat tasks"].append(span)
            busy = defaultdict(float)
            for e in group:
                busy[e[1]] += e[3] - e[2]
            per["tasks: busiest − idlest thread"].append(max(busy.values()) - min(busy.values()))
            per["tasks: fat tasks per thread"].append(len(group) / max(len(busy), 1))
        driver = sum(
            e[3] - e[2]
            for e in ev
            if e[0] in ("driver: build graph", "driver: HState.of", "driver: update_h")
        )
        per["driver serial (graph + HState + update_h)"].append(driver)
    return {name: statistics.median(v) for name, v in per.items()}


def _process_times() -> dict:
    import psutil

    me = psutil.Process()
    out = {"driver": me.cpu_times()[:2]}
    for child in sorted(me.children(recursive=True), key=lambda p: p.pid):
        with contextlib.suppress(psutil.Error):
            out[child.pid] = child.cpu_times()[:2]
    return out


def cluster_profile(path, W0, H0, args, malloc, **options) -> dict:
    """Driver phases, CPU per process (user/system) and the task stream of a cluster run."""

    from distributed import get_task_stream

    timeline = Timeline()
    marks, snaps = [], []

    epoch: list[float] = []

    def callback(info) -> None:
        marks.append(time.perf_counter())
        epoch.append(time.time())
        snaps.append(_process_times())

    with (
        local_cluster(malloc) as client,
        patched(timeline, tasks=False),
        get_task_stream(client) as ts,
    ):
        marks.append(time.perf_counter())
        epoch.append(time.time())
        bignmf.fit.engine.nmf(
            path,
            H0.shape[0],
            solver="hals",
            init="custom",
            W=W0,
            H=H0,
            max_iter=args.iters,
            tol=0,
            scheduler=client,
            callback=callback,
            workdir=scratch_dir(args.workdir),
            **options,
        )
    n = len(marks) - 2  # iterations 2..N
    out: dict[str, float] = {}
    out["iteration wall"] = (marks[-1] - marks[1]) / n
    for name in sorted({e[0] for e in timeline.events}):
        out[name] = (
            sum(e[3] - e[2] for e in timeline.events if e[0] == name and e[2] >= marks[1]) / n
        )
    first, last = snaps[0], snaps[-1]
    for key in (k for k in last if k in first):
        label = "driver (client, scheduler, H update)" if key == "driver" else f"process {key}"
        out[f"CPU user: {label}"] = (last[key][0] - first[key][0]) / n
        out[f"CPU system: {label}"] = (last[key][1] - first[key][1]) / n
    # task stream: compute and transfer seconds per task kind, iterations 2..N
    kinds: dict[str, float] = defaultdict(float)
    for rec in ts.data:
        key = rec["key"]
        prefix = (key[0] if isinstance(key, tuple) else key).rsplit("-", 1)[0]
        for ss in rec.get("startstops", ()):
            kinds[f"tasks: {ss['action']} {prefix}"] += ss["stop"] - ss["start"]
    wall_iters = len(marks) - 1  # task stream covers all iterations + init
    for name, s in sorted(kinds.items()):
        out[name + " (all iterations, per iteration)"] = s / wall_iters
    # the fat tasks of each iteration 2..N, per worker: how many, how long, over what span
    per: dict[str, list[float]] = defaultdict(list)
    for t in range(2, len(epoch)):
        lo, hi = epoch[t - 1], epoch[t]
        busy: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        starts, stops = [], []
        for rec in ts.data:
            key = rec["key"]
            if "_group_task" not in str(key[0] if isinstance(key, tuple) else key):
                continue
            for ss in rec.get("startstops", ()):
                if ss["action"] == "compute" and lo <= ss["start"] < hi:
                    busy[rec["worker"]] += ss["stop"] - ss["start"]
                    count[rec["worker"]] += 1
                    starts.append(ss["start"])
                    stops.append(ss["stop"])
        if len(busy) < 2:
            busy["(idle worker)"], count["(idle worker)"] = 0.0, 0
        per["fat tasks on the busiest worker"].append(max(count.values()))
        per["fat tasks on the other worker"].append(min(count.values()))
        per["fat-task seconds, busiest worker"].append(max(busy.values()))
        per["fat-task seconds, other worker"].append(min(busy.values()))
        if starts:
            per["span of the fat tasks"].append(max(stops) - min(starts))
            per["first fat task starts after the iteration begins"].append(min(starts) - lo)
            per["last fat task ends before the iteration ends"].append(hi - max(stops))
    for name, values in per.items():
        out[f"iteration: {name}"] = statistics.median(values)
    return out


# ---------------------------------------------------------------------------------------------
# what-if: the engine with one overhead removed by a monkeypatch (bignmf's code is unchanged)
# ---------------------------------------------------------------------------------------------


def _view_read_block(self, i, buffers=None):
    """MemoryMatrix.read_block as a zero-copy view (what the engine could do)."""
    r0, r1 = self.block_rows(i)
    M = self.matrix
    s, e = int(M.indptr[r0]), int(M.indptr[r1])
    block = sp.csr_matrix((r1 - r0, M.shape[1]), dtype=M.dtype)
    block.data, block.indices = M.data[s:e], M.indices[s:e]
    block.indptr = (M.indptr[r0 : r1 + 1] - s).astype(M.indices.dtype)
    return block


@contextlib.contextmanager
def _limited_update_h():
    """The driver's H update under threadpool_limits(1), whatever the scheduler."""
    from threadpoolctl import threadpool_limits

    originals = {cls: cls.update_h for cls in {type(s) for s in SOLVERS.values()}}

    def limited(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with threadpool_limits(limits=1):
                return fn(*args, **kwargs)

        return wrapped

    for cls, fn in originals.items():
        cls.update_h = limited(fn)
    try:
        yield
    finally:
        for cls, fn in originals.items():
            cls.update_h = fn


def whatif(matrix, store, W0, H0, args, cluster: bool) -> None:
    """Round-robin: the loop, bignmf as is, bignmf with zero-copy in-memory blocks (and, on a
    cluster, bignmf with the driver's H update limited to one BLAS thread)."""

    from engine import LOOP_MEM, round_robin, run_bignmf, run_loop, tree_cpu

    ro = matrix.row_offsets
    views = csr_views(matrix.matrix, ro)
    W0b = [W0[ro[i] : ro[i + 1]] for i in range(matrix.n_blocks)]
    N, k = args.iters, args.k

    def with_views():
        original = MemoryMatrix.read_block
        MemoryMatrix.read_block = _view_read_block
        try:
            return run_bignmf(matrix, k, W0, H0, N, scheduler="threads")
        finally:
            MemoryMatrix.read_block = original

    variants = {
        LOOP_MEM: lambda: run_loop(
            lambda i, b: views[i], len(views), W0b, H0, matrix.frobenius_sq, N
        ),
        "bignmf threads, memory (as is)": lambda: run_bignmf(
            matrix, k, W0, H0, N, scheduler="threads"
        ),
        "bignmf threads, memory, zero-copy blocks": with_views,
    }
    if cluster:

        def dist(limit: bool):
            def go():
                ctx = _limited_update_h() if limit else contextlib.nullcontext()
                with local_cluster(MALLOC_ENV) as client, ctx:
                    return run_bignmf(
                        store.path, k, W0, H0, N, scheduler=client, clock=tree_cpu,
                        workdir=scratch_dir(args.workdir),
                    )  # fmt: skip

            return go

        variants["cluster, malloc env (as is)"] = dist(False)
        variants["cluster, malloc env, update_h on 1 BLAS thread"] = dist(True)
    runs = round_robin(variants, args.repeat)
    from engine import per_iteration

    loop = [per_iteration(r) for r in runs[LOOP_MEM]]
    print(f"\nwhat-if, {args.repeat} rounds of {N} iterations (median | best round | CPU):")
    for name, rs in runs.items():
        pairs = [per_iteration(r) for r in rs]
        med = statistics.median(p[0] for p in pairs)
        best = min(p[0] for p in pairs)
        cpu = statistics.median(p[1] for p in pairs)
        print(
            f"  {name:50s} {med:.3f} | {best:.3f} | {cpu:.3f}   ÷ loop "
            f"{med / statistics.median(p[0] for p in loop):.2f} | "
            f"{best / min(p[0] for p in loop):.2f} | "
            f"{cpu / statistics.median(p[1] for p in loop):.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument(
        "--only",
        default="kernels,run-threads,run-disk,run-cluster",
        help="comma-separated: kernels, run-threads, run-disk, run-cluster, whatif, whatif-cluster",
    )
    extra.add_argument(
        "--text", action="store_true", help="profile on part (b)'s text matrix (in memory) instead"
    )
    extra.add_argument("--solver", default="hals")
    extra.add_argument("--n-inner", type=int, default=None)
    extra.add_argument("--block-nnz", type=int, default=None)
    extra.add_argument("--n-tasks", type=int, default=None, help="nmf's n_tasks (cluster runs)")
    known, rest = extra.parse_known_args(argv)
    args = parse_args(rest)
    only = set(known.only.split(","))
    if known.text:
        from engine import text_matrix

        store, A = None, text_matrix(args)
        matrix = MemoryMatrix(A, block_nnz=known.block_nnz)
        only -= {"run-disk", "run-cluster"}
    else:
        store, _ = ensure_store(args)
        A = store.to_scipy()
        matrix = MemoryMatrix(A, block_nnz=4 * args.chunk_size)
    SOLVER.update(solver=known.solver, n_inner=known.n_inner)
    m, n = matrix.shape
    seed = args.seed + (7 if known.text else 0)  # as benchmarks/engine.py seeds each part
    W0, H0 = initial_factors(m, n, args.k, matrix.value_sum, seed)
    print(f"matrix {m:,} x {n:,}, {A.nnz:,} nonzeros, {matrix.n_blocks} row blocks, k={args.k}")
    if "kernels" in only:
        out = kernels(matrix, store, W0, H0, args.repeat)
        print(
            f"\none thread, seconds per iteration summed over the blocks (best of {args.repeat}):"
        )
        for name, s in out.items():
            print(f"  {s:7.3f}  {name}")
    runs = []
    if "run-threads" in only:
        runs.append(
            (
                "threads, in memory",
                A if known.text else matrix,
                "threads",
                True,
                {"block_nnz": known.block_nnz} if known.block_nnz else {},
            )
        )
    if "run-disk" in only:
        runs.append(("threads, from disk, W memory", store.path, "threads", True,
                     {"w_storage": "memory"}))  # fmt: skip
    if "run-disk-zarr" in only:
        runs.append(("threads, from disk, W zarr", store.path, "threads", True,
                     {"w_storage": "zarr",
                      "workdir": scratch_dir(args.workdir)}))  # fmt: skip
    for label, source, scheduler, tasks, options in runs:
        res = phases(source, W0, H0, args.iters, scheduler, tasks, **options)
        print(f"\n{label}: medians per iteration over iterations 2–{args.iters}")
        for name, s in sorted(res.items()):
            print(f"  {s:7.3f}  {name}")
    if "whatif" in only or "whatif-cluster" in only:
        whatif(matrix, store, W0, H0, args, cluster="whatif-cluster" in only)
    if "run-cluster" in only:
        for env_name, malloc in (("default env", None), ("malloc env", MALLOC_ENV)):
            options = {"n_tasks": known.n_tasks} if known.n_tasks else {}
            res = cluster_profile(store.path, W0, H0, args, malloc, **options)
            print(
                f"\nLocalCluster 2x1 ({env_name}), from disk, W zarr: medians per iteration "
                f"over iterations 2–{args.iters}"
            )
            for name, s in res.items():
                print(f"  {s:7.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
