"""Fits on the observed entries only (ratings): held-out RMSE against wall time, bignmf vs peers.

Planted ratings (:func:`bignmf.datasets.make_ratings`: users × items of rank k plus Gaussian
noise, 10% of the observed entries held out) are fitted on their training entries only, side by
side in one run, with the same k, and every fit is scored on the held-out entries by the same
code (:func:`bignmf.fit.predict.predict`, RMSE in float64):

* bignmf ``nmf(missing="zeros")``: ``hals`` with ``n_inner`` 1 and 3 and ``mu`` on the threaded
  scheduler, ``init="random"``, L2 ``alpha_W = alpha_H = --alpha``; one run each, scored after
  every iteration by a callback that reads (W, H) from the fit's state, its time left out;
  once more ``hals`` on the store's own row blocks, and once through ``bignmf fit`` and
  ``bignmf score`` in a subprocess for the peak RSS of its process; then, bignmf alone, the
  *larger than the workers' memory* series: ``bignmf fit --missing zeros`` on an embedded
  LocalCluster of 2 workers with a fixed memory limit each, on ratings of 1×, 5× and 25× the
  profile's users (and so its ratings), the largest larger decoded than the workers' memory
  together, each fit's process tree sampled for its peak RSS;
* Spark ML ``ALS(nonnegative=True)`` in ``local[2]`` (a JVM: Java and ``pyspark``);
* scikit-surprise ``NMF(biased=False)``;
* RcppML ``nmf(mask_zeros=TRUE)`` through ``Rscript`` (Debian's ``r-cran-rcppml``).

The peers have no per-iteration hook: each is fitted afresh with more and more iterations
(``--peer-iters``), every run timed whole (its fit call; loading the data into the tool is
setup, reported apart), while the next run is expected to end within ``--peer-budget``
seconds of the peer's runs. Spark ALS and Surprise weight each row's and column's penalty by
its number of ratings; their ``λ`` is the one that puts bignmf's penalty on a row or column
with the mean number of ratings (``λ = alpha·m·n / nnz``); RcppML 0.3.7 has no L2. Each peer
runs in a child process, imported only there; one that is not installed is skipped with a note.

    python benchmarks/missing.py            # 250k users x 20k items, ~5M ratings, k = 10
    python benchmarks/missing.py --quick    # 50k x 5k, ~1M ratings
    python benchmarks/missing.py --peers none --big-multiples ''   # no peers, no series
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

try:
    import bignmf
except ImportError:  # run as `python benchmarks/missing.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import bignmf
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine
import memory_peak
from memory_peak import MiB

from bignmf.datasets import RatingsSpec, RatingTriples, held_out_ratings, make_ratings
from bignmf.fit.predict import predict

PEERS = ("spark", "surprise", "rcppml")
PEER_NAMES = {"spark": "Spark ALS", "surprise": "Surprise NMF", "rcppml": "RcppML"}
#: bignmf's variants: (solver, n_inner, re-planned row blocks)
VARIANTS = (("hals", 1, True), ("hals", 3, True), ("mu", None, True), ("hals", 1, False))


# ---------------------------------------------------------------------------------------------
# Data and scores
# ---------------------------------------------------------------------------------------------


@dataclass
class Ratings:
    """The planted data: its training store, the held-out entries and their file."""

    spec: RatingsSpec
    store: bignmf.CSRStore
    test: RatingTriples | None
    test_path: Path
    generate_s: float


def ratings(args: argparse.Namespace, held_out: bool = True) -> Ratings:
    """The planted ratings of ``args``, cached in ``args.workdir``; the held-out triples in
    memory too unless ``held_out`` is false (their file is always written)."""
    params = {
        "ratings_per_user": args.ratings_per_user,
        "noise": args.noise,
        "test_fraction": 0.1,
        "seed": args.seed,
    }
    spec = RatingsSpec(args.users, args.items, args.components, **params)
    name = f"ratings-{args.users}x{args.items}-k{args.components}-r{args.ratings_per_user:g}"
    path = Path(args.workdir) / f"{name}-n{args.noise:g}-s{args.seed}.zarr"
    test_path = Path(f"{path}.test.mtx")
    start = time.perf_counter()
    if path.exists() and test_path.exists():
        store = bignmf.open_matrix(path)
    else:
        store = make_ratings(
            path, args.users, args.items, args.components, overwrite=True, **params
        ).store
    generate_s = time.perf_counter() - start
    test = held_out_ratings(spec) if held_out else None
    return Ratings(spec, store, test, test_path, generate_s)


def rmse(W: np.ndarray, H: np.ndarray, test: RatingTriples) -> float:
    """Held-out RMSE of ``W·H`` (every method is scored by this one function)."""
    error = predict(W, H, test.rows, test.cols).astype(np.float64) - test.values
    return float(np.sqrt(np.mean(error * error)))


def peer_lambda(alpha: float, shape: tuple[int, int], nnz: int) -> float:
    """The count-weighted ``λ`` (ALS-WR, Surprise) equal to bignmf's ``alpha`` on average.

    bignmf adds ``½·l2_W·‖w_i‖²`` per row with ``l2_W = n·alpha`` (scikit-learn's scaling,
    ``l2_H = m·alpha`` per column); Spark ALS and Surprise add ``½·λ·n_i·‖w_i‖²``, ``n_i`` the
    row's ratings. Equal for a row (or a column) with the mean count: ``λ = alpha·m·n / nnz``.
    """
    m, n = shape
    return alpha * m * n / nnz


@dataclass
class Curve:
    """Held-out RMSE against elapsed seconds: one point per iteration, or per separate run."""

    name: str
    iters: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rmse: list[float] = field(default_factory=list)
    separate_runs: bool = False
    setup_s: float = float("nan")  # loading the data into the tool, not counted
    scoring_s: float = 0.0  # bignmf: scoring after each iteration, not counted
    note: str = ""

    def best(self) -> int:
        """Index of the lowest RMSE."""
        return int(np.argmin(self.rmse))

    def time_to(self, target: float) -> float | None:
        """Seconds at the first point whose RMSE is at most ``target`` (None: never)."""
        return next((s for s, r in zip(self.seconds, self.rmse, strict=True) if r <= target), None)


def within_budget(spent: float, last: tuple[int, float] | None, iters: int, budget: float) -> bool:
    """Start a run of ``iters`` iterations? Always the first; then if, at the last run's
    seconds per iteration, it would end within ``budget`` seconds of all the runs."""
    if last is None:
        return True
    last_iters, last_s = last
    return spent + last_s * iters / max(last_iters, 1) <= budget


# ---------------------------------------------------------------------------------------------
# bignmf
# ---------------------------------------------------------------------------------------------


class _Enough(Exception):
    pass


class HeldOutScore(bignmf.Callback):
    """Scores (W_t, H_t) on the held-out entries after every iteration, its own time left out.

    The clock starts when the object is made, just before :func:`bignmf.nmf` is called: the
    fit's setup (planning, counting the entries, the initialisation) is counted.
    """

    def __init__(self, curve: Curve, test: RatingTriples, budget_s: float):
        self.curve, self.test, self.budget_s = curve, test, budget_s
        self.excluded = 0.0
        self.start = time.perf_counter()

    def on_iteration(self, state, info) -> None:
        now = time.perf_counter()
        W = np.vstack(list(state.w_blocks()))  # W in memory: the persisted blocks, no copy of A
        self.curve.iters.append(info.iteration)
        self.curve.seconds.append(now - self.start - self.excluded)
        self.curve.rmse.append(rmse(W, state.H, self.test))
        self.excluded += time.perf_counter() - now
        if self.curve.seconds[-1] >= self.budget_s:
            raise _Enough


def bignmf_curve(data: Ratings, args, solver: str, n_inner: int | None, block_nnz) -> Curve:
    """One bignmf fit on the threaded scheduler, scored after every iteration."""
    name = f"bignmf {solver}" + (f" n_inner={n_inner}" if solver == "hals" else "")
    if block_nnz is None:
        name += f", the store's {data.store.n_blocks} row block(s)"
    curve = Curve(name)
    recorder = HeldOutScore(curve, data.test, args.budget)
    with contextlib.suppress(_Enough), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows whose only rating is held out: W is 0 there
        bignmf.nmf(
            data.store,
            args.components,
            solver=solver,
            n_inner=n_inner,
            missing="zeros",
            alpha_W=args.alpha,
            init="random",
            random_state=args.seed,
            tol=0,
            max_iter=args.iters,
            scheduler="threads",
            block_nnz=block_nnz,
            callbacks=[recorder],
        )
    curve.scoring_s = recorder.excluded
    return curve


def cli_fit(data: Ratings, args, block_nnz: int | None) -> dict:
    """``bignmf fit --missing zeros`` then ``bignmf score --json``, the fit's RSS sampled."""
    scratch = Path(tempfile.mkdtemp(prefix="bignmf-missing-", dir=args.workdir))
    run_dir = scratch / "run"
    flags = {
        "-k": args.components,
        "--missing": "zeros",
        "--n-inner": 1,  # the first curve's (the default with missing entries is 3)
        "--alpha-W": args.alpha,
        "--init": "random",
        "--seed": args.seed,
        "--max-iter": args.rss_iters,
        "--tol": 0,
        "--scheduler": "threads",
        "--top": 0,
        "--out": run_dir,
    }
    if block_nnz:
        flags["--block-nnz"] = block_nnz
    options = [str(word) for flag in flags.items() for word in flag] + ["--no-progress"]
    cmd = [sys.executable, "-c", memory_peak.FIT, "fit", str(data.store.path), *options]
    try:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        sampled = memory_peak.run_sampled(cmd, 0.05, env)
        if sampled["returncode"] != 0:
            raise RuntimeError(f"bignmf fit failed:\n{sampled['output']}")
        done = subprocess.run(
            [sys.executable, "-m", "bignmf", "score", str(run_dir), str(data.test_path), "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        scored = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sampled.pop("output", None)
    return {**sampled, "iters": args.rss_iters, "rmse": scored["rmse"], "n_test": scored["n"]}


# ---------------------------------------------------------------------------------------------
# bignmf alone: ratings larger than the workers' memory
# ---------------------------------------------------------------------------------------------


def big_tasks(nnz: int, block_nnz: int) -> int:
    """``--n-tasks`` that gives about two row blocks of ``block_nnz`` a task (at least 8, the
    default on 2 single-threaded workers): a task holds as much at every size."""
    return max(8, -(-(nnz // block_nnz + 1) // 2))


def big_fit(data: Ratings, args, block_nnz: int, workdir: Path) -> dict:
    """``bignmf fit --missing zeros`` on a 2-worker LocalCluster with ``args.big_memory`` each,
    its process tree sampled, then ``bignmf score --json`` on the held-out entries.

    Parameters
    ----------
    data : Ratings
        The planted ratings of one size.
    args : argparse.Namespace
        The part's options (``big_memory``, ``big_iters``, ``components``, ``alpha``, ``seed``).
    block_nnz : int
        Nonzeros per row block, the same at every size.
    workdir : Path
        Where the cluster file and the run directory go (removed afterwards).

    Returns
    -------
    dict
        :func:`memory_peak.run_sampled`'s peaks and seconds, ``s_per_iter`` (median of the
        iterations after the first), ``rmse`` and ``n_test`` (held out), ``n_tasks``, the fit's
        row ``blocks`` and ``n_inner`` (from its ``run.json``), the store's
        matrix (``shape``, ``nnz``, ``row_blocks``, ``bytes_uncompressed``, ``bytes_on_disk``)
        and ``error`` (the fit's output tail) if it failed.
    """
    scratch = Path(tempfile.mkdtemp(prefix="bignmf-big-", dir=workdir))
    cluster, run_dir = scratch / "cluster.yaml", scratch / "run"
    cluster.write_text(f"kind: local\nworkers: 2\nthreads: 1\nmemory_limit: {args.big_memory}\n")
    nnz = int(data.store.nnz)
    flags = {
        "-k": args.components,
        "--missing": "zeros",
        "--alpha-W": args.alpha,
        "--init": "random",
        "--seed": args.seed,
        "--max-iter": args.big_iters,
        "--tol": 0,
        "--cluster": cluster,
        "--block-nnz": block_nnz,
        "--n-tasks": big_tasks(nnz, block_nnz),
        "--top": 0,
        "--out": run_dir,
    }
    options = [str(word) for flag in flags.items() for word in flag] + ["--no-progress"]
    cmd = [sys.executable, "-c", memory_peak.FIT, "fit", str(data.store.path), *options]
    # a fit whose workers all stay paused gives up after 60 s, not distributed's 300
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_BIGNMF__PAUSED_TIMEOUT": "60"}
    try:
        row = memory_peak.run_sampled(cmd, 0.05, env)
        output = row.pop("output", "")
        if row["returncode"] == 0:
            row["s_per_iter"] = memory_peak.seconds_per_iteration(run_dir)
            record = json.loads((run_dir / "run.json").read_text())
            row.update(blocks=record["matrix"]["n_blocks"], n_inner=record["settings"]["n_inner"])
            score = ["score", str(run_dir), str(data.test_path), "--json"]
            done = subprocess.run(
                [sys.executable, "-m", "bignmf", *score],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            scored = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(rmse=scored["rmse"], n_test=scored["n"])
        else:
            row["error"] = output[-1500:]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info = data.store.info()
    keys = ("shape", "nnz", "row_blocks", "bytes_uncompressed", "bytes_on_disk")
    row.update(matrix={key: info[key] for key in keys}, n_tasks=flags["--n-tasks"])
    return row


def big_series(args: argparse.Namespace, block_nnz: int) -> dict | None:
    """The larger-than-memory series: ratings of ``args.big_multiples`` × the profile's users
    (the same items and ratings a user), each fitted by :func:`big_fit`.

    Returns
    -------
    dict or None
        ``rows`` (one per size: :func:`big_fit`'s, with ``multiple`` and ``generate_s``), the
        settings (``memory_limit`` in bytes, ``workers``, ``iters``, ``block_nnz``); None when
        ``args.big_multiples`` is empty.
    """
    from dask.utils import parse_bytes

    if not args.big_multiples:
        return None
    sizes = []
    for multiple in args.big_multiples:  # every input written before the first timed fit
        scaled = argparse.Namespace(**{**vars(args), "users": multiple * args.users})
        sizes.append((multiple, ratings(scaled, held_out=False)))  # scored from the file
        engine._say(f"  ratings x{multiple}: {sizes[-1][1].store.nnz:,} training")
    rows = []
    for multiple, data in sizes:
        row = big_fit(data, args, block_nnz, Path(args.workdir))
        row.update(multiple=multiple, generate_s=data.generate_s)
        engine._say(f"  x{multiple}: " + ("failed" if "error" in row else _big_progress(row)))
        rows.append(row)
    return {
        "memory_limit": parse_bytes(args.big_memory),
        "workers": 2,
        "iters": args.big_iters,
        "block_nnz": block_nnz,
        "rows": rows,
    }


def _big_progress(row: dict) -> str:
    return (
        f"tree peak {row['tree_peak'] / MiB:.0f} MiB, {row['s_per_iter']:.2f} s/iter, "
        f"RMSE {row['rmse']:.4f}"
    )


# ---------------------------------------------------------------------------------------------
# Peers: each in a child process (``missing.py --peer-child NAME CONFIG``)
# ---------------------------------------------------------------------------------------------


def peer_missing(name: str) -> str | None:
    """Why peer ``name`` cannot run here (None: it can)."""
    if name == "spark":
        if importlib.util.find_spec("pyspark") is None:
            return "pyspark is not installed (`pip install pyspark`)"
        if shutil.which("java") is None:
            return "no Java runtime (`apt-get install default-jre-headless`)"
    elif name == "surprise":
        if importlib.util.find_spec("surprise") is None:
            return "scikit-surprise is not installed (`pip install scikit-surprise`)"
    elif name == "rcppml":
        if shutil.which("Rscript") is None:
            return "no Rscript (`apt-get install r-cran-rcppml`)"
        found = subprocess.run(["Rscript", "-e", "library(RcppML)"], capture_output=True)
        if found.returncode != 0:
            return "R has no RcppML (`apt-get install r-cran-rcppml`)"
    return None


def peer_inputs(data: Ratings) -> dict:
    """Files the peers read, written once next to the store: the training triples as CSV
    (``user,item,rating``, 0-based) and the held-out triples as ``.npz``."""
    base = Path(str(data.store.path))
    csv, npz = Path(f"{base}.train.csv"), Path(f"{base}.test.npz")
    if not csv.exists():
        A = data.store.to_scipy().tocoo()
        partial = csv.with_suffix(".partial")
        np.savetxt(partial, np.column_stack([A.row, A.col, A.data]), fmt="%d,%d,%.8g")
        partial.replace(csv)
    if not npz.exists():
        np.savez(npz.with_suffix(".partial.npz"), **data.test._asdict())
        npz.with_suffix(".partial.npz").replace(npz)
    return {"csv": str(csv), "test": str(npz)}


def run_peer(name: str, data: Ratings, args, files: dict, lam: float) -> Curve:
    """Fit peer ``name`` in a child process; a curve, or a curve holding only a note."""
    curve = Curve(PEER_NAMES[name], separate_runs=True)
    why = peer_missing(name)
    if why:
        curve.note = f"skipped: {why}"
        return curve
    if name == "rcppml":  # R: its own script, scored here
        return rcppml_curve(curve, data, args)
    config = {
        "shape": list(data.store.shape),
        "k": args.components,
        "lam": lam,
        "iters": args.peer_iters,
        "budget": args.peer_budget,
        "seed": args.seed,
        "threads": args.threads,
        "spark_blocks": args.spark_blocks,
        "workdir": str(args.workdir),
        **files,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-child", name, json.dumps(config)]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=args.peer_timeout
        )
    except subprocess.TimeoutExpired:
        curve.note = f"skipped: did not finish within {args.peer_timeout:.0f} s"
        return curve
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        curve.note = f"skipped: the run stopped with status {done.returncode} ({tail})"
        return curve
    got = json.loads(lines[-1])
    for key in ("iters", "seconds", "rmse", "setup_s", "note"):
        setattr(curve, key, got[key])
    return curve


def _child(name: str, config: dict) -> None:
    """In the child: fit peer ``name`` on ``config``'s files, print the curve as JSON."""
    test = RatingTriples(**np.load(config["test"]))
    curve = {"spark": _spark_child, "surprise": _surprise_child}[name](config, test)
    print(json.dumps(curve))


def _spark_child(config: dict, test: RatingTriples) -> dict:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    m, n = config["shape"]
    k, threads = config["k"], config["threads"]
    start = time.perf_counter()
    checkpoints = tempfile.mkdtemp(prefix="spark-ckpt-", dir=config["workdir"])
    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("bignmf-missing-bench")
        .config("spark.driver.memory", "4g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(2 * threads))
        .getOrCreate()
    )
    try:
        spark.sparkContext.setLogLevel("ERROR")
        # without checkpoints ALS's lineage grows with maxIter and overflows the stack (~15)
        spark.sparkContext.setCheckpointDir(checkpoints)
        frame = spark.read.csv(config["csv"], schema="u INT, i INT, r FLOAT")
        frame = frame.repartition(2 * threads).cache()
        frame.count()

        def als(iters: int):
            return ALS(
                rank=k,
                maxIter=iters,
                regParam=config["lam"],
                nonnegative=True,
                userCol="u",
                itemCol="i",
                ratingCol="r",
                seed=config["seed"],
                numUserBlocks=config["spark_blocks"],
                numItemBlocks=config["spark_blocks"],
            )

        als(1).fit(frame)  # warm-up, not counted: the JVM compiles ALS's code on its first fit
        setup_s = time.perf_counter() - start
        out: dict = {"iters": [], "seconds": [], "rmse": [], "setup_s": setup_s}
        spent, last = 0.0, None
        for iters in config["iters"]:
            if not within_budget(spent, last, iters, config["budget"]):
                break
            t0 = time.perf_counter()
            model = als(iters).fit(frame)  # trains and materialises both factors
            seconds = time.perf_counter() - t0
            W, H = np.zeros((m, k)), np.zeros((k, n))  # ids without ratings: zeros, as bignmf
            for row in model.userFactors.collect():
                W[row["id"]] = row["features"]
            for row in model.itemFactors.collect():
                H[:, row["id"]] = row["features"]
            out["iters"].append(iters)
            out["seconds"].append(seconds)
            out["rmse"].append(rmse(W, H, test))
            spent, last = spent + seconds, (iters, seconds)
        blocks = config["spark_blocks"]
        out["note"] = (
            f"local[{threads}], {blocks} user and item blocks, regParam "
            f"{config['lam']:.4g}; setup: JVM start, CSV read and cached, one "
            "warm-up fit"
        )
        return out
    finally:
        spark.stop()
        shutil.rmtree(checkpoints, ignore_errors=True)


def _surprise_child(config: dict, test: RatingTriples) -> dict:
    from surprise import NMF, Dataset, Reader

    m, n = config["shape"]
    k = config["k"]
    start = time.perf_counter()
    reader = Reader(line_format="user item rating", sep=",", rating_scale=(0, 10))
    trainset = Dataset.load_from_file(config["csv"], reader).build_full_trainset()
    rows = np.full(m, -1)
    cols = np.full(n, -1)
    for u in range(trainset.n_users):
        rows[int(trainset.to_raw_uid(u))] = u
    for i in range(trainset.n_items):
        cols[int(trainset.to_raw_iid(i))] = i
    known_rows, known_cols = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    out: dict = {"iters": [], "seconds": [], "rmse": [], "setup_s": time.perf_counter() - start}
    spent, last = 0.0, None
    for iters in config["iters"]:
        if not within_budget(spent, last, iters, config["budget"]):
            break
        algo = NMF(
            n_factors=k,
            n_epochs=iters,
            biased=False,
            reg_pu=config["lam"],
            reg_qi=config["lam"],
            random_state=config["seed"],
        )
        t0 = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - t0
        W, H = np.zeros((m, k)), np.zeros((k, n))
        W[known_rows] = algo.pu[rows[known_rows]]
        H[:, known_cols] = algo.qi[cols[known_cols]].T
        out["iters"].append(iters)
        out["seconds"].append(seconds)
        out["rmse"].append(rmse(W, H, test))
        spent, last = spent + seconds, (iters, seconds)
    out["note"] = f"one thread (Cython), reg_pu = reg_qi = {config['lam']:.4g}; setup: trainset"
    return out


# RcppML 0.3.7's mask_zeros path calls the R API from its OpenMP threads: with 2 threads it
# segfaults, and on a column or row without entries it throws std::range_error (Rcpp::Range of an
# empty column). So: one thread, and the matrix without its empty rows and columns.
RCPPML_SCRIPT = r"""
suppressMessages({library(Matrix); library(RcppML)})
a <- commandArgs(TRUE)
k <- as.integer(a[2]); iters <- as.integer(strsplit(a[3], ",")[[1]])
budget <- as.numeric(a[4]); out <- a[5]; seed <- as.integer(a[6])
setRcppMLthreads(1L)
t0 <- Sys.time(); A <- as(readMM(a[1]), "CsparseMatrix")
cat("setup", as.numeric(difftime(Sys.time(), t0, units = "secs")), "\n")
spent <- 0; last_s <- NA; last_it <- NA
for (it in iters) {
  if (!is.na(last_s) && spent + last_s * it / last_it > budget) break
  t0 <- Sys.time()
  m <- RcppML::nmf(A, k, tol = 1e-12, maxit = it, verbose = FALSE, seed = seed,
                   mask_zeros = TRUE)
  s <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  W <- m$w %*% diag(m$d)
  f <- file(file.path(out, sprintf("run-%d.bin", it)), "wb")
  writeBin(c(nrow(W), ncol(W), ncol(m$h), as.vector(W), as.vector(m$h)), f)
  close(f)
  cat("run", it, s, m$iter, "\n")
  spent <- spent + s; last_s <- s; last_it <- it
}
"""


def rcppml_curve(curve: Curve, data: Ratings, args) -> Curve:
    """RcppML through ``Rscript``: runs of more and more ``maxit``, scored here."""
    import scipy.io

    scratch = Path(tempfile.mkdtemp(prefix="rcppml-", dir=args.workdir))
    try:
        A = data.store.to_scipy()
        rows = np.flatnonzero(np.diff(A.indptr))
        cols = np.flatnonzero(np.bincount(A.indices, minlength=A.shape[1]))
        scipy.io.mmwrite(scratch / "train.mtx", A[rows][:, cols].tocoo())
        (scratch / "fit.R").write_text(RCPPML_SCRIPT)
        iters = ",".join(map(str, args.peer_iters))
        cmd = [
            "Rscript",
            str(scratch / "fit.R"),
            str(scratch / "train.mtx"),
            str(args.components),
            iters,
            str(args.peer_budget),
            str(scratch),
            str(args.seed + 1),  # RcppML's seed 0 is unseeded (a new draw each run)
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
        except subprocess.TimeoutExpired:
            curve.note = f"skipped: did not finish within {args.peer_timeout:.0f} s"
            return curve
        for line in done.stdout.splitlines():
            words = line.split()
            if words[:1] == ["setup"]:
                curve.setup_s = float(words[1])
            if words[:1] != ["run"]:
                continue
            values = np.fromfile(scratch / f"run-{words[1]}.bin", dtype=np.float64)
            m, k, n = (int(v) for v in values[:3])
            W = np.zeros((data.store.shape[0], k))
            H = np.zeros((k, data.store.shape[1]))
            W[rows] = values[3 : 3 + m * k].reshape((m, k), order="F")
            H[:, cols] = values[3 + m * k :].reshape((k, n), order="F")
            curve.iters.append(int(words[3]))
            curve.seconds.append(float(words[2]))
            curve.rmse.append(rmse(W, H, data.test))
        if not curve.iters:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            curve.note = f"skipped: the run stopped with status {done.returncode} ({tail})"
            return curve
        dropped = f"{A.shape[0] - rows.size} empty rows, {A.shape[1] - cols.size} empty columns"
        curve.note = (
            f"one thread, no L2 (0.3.7 has L1 only), {dropped} left out (it fails on "
            "them; predicted 0, as bignmf); setup: readMM"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return curve


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The script's options; ``--quick`` makes the data and the peers' budget smaller."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1M ratings, ~4 minutes")
    parser.add_argument("--users", type=int, help="rows (250000; quick 50000)")
    parser.add_argument("--items", type=int, help="columns (20000; quick 5000)")
    parser.add_argument("-k", "--components", type=int, default=10, help="planted and fitted k")
    parser.add_argument("--ratings-per-user", type=float, default=20.0)
    parser.add_argument("--noise", type=float, default=0.25, help="σ of the planted noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--alpha", type=float, help="bignmf alpha_W = alpha_H (5e-6; quick 5e-5: see README)"
    )
    parser.add_argument("--iters", type=int, help="bignmf iterations at most (100; quick 60)")
    parser.add_argument(
        "--budget", type=float, help="bignmf runs stop after this many seconds (300; quick 60)"
    )
    parser.add_argument("--block-nnz", type=int, help="bignmf row blocks (default nnz/8)")
    parser.add_argument("--threads", type=int, default=2, help="Spark local[N] (2)")
    parser.add_argument("--spark-blocks", type=int, default=4, help="ALS user/item blocks (4)")
    parser.add_argument("--peers", default=",".join(PEERS), help="of " + ",".join(PEERS))
    parser.add_argument(
        "--peer-iters", help="iterations of the peers' runs (1,2,5,10,20,40,80; quick to 40)"
    )
    parser.add_argument("--peer-budget", type=float, help="seconds per peer (600; quick 120)")
    parser.add_argument("--peer-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--rss-iters", type=int, default=20, help="iterations of the `bignmf fit` run (20)"
    )
    parser.add_argument(
        "--big-multiples",
        help="sizes of the larger-than-memory series, in the profile's users (1,5,25; quick "
        "1,2; '': none)",
    )
    parser.add_argument(
        "--big-memory", default="384MiB", help="memory limit of each of its 2 workers (384MiB)"
    )
    parser.add_argument("--big-iters", type=int, help="iterations of its fits (2)")
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    full = {
        "users": 250_000,
        "items": 20_000,
        # tuned on each profile's data (benchmarks/README.md): scikit-learn's scaling makes
        # the penalty grow with the shape, the ratings a user do not
        "alpha": 5e-6,
        "iters": 100,
        "budget": 300.0,
        "peer_iters": "1,2,5,10,20,40,80",
        "peer_budget": 600.0,
        "big_multiples": "1,5,25",
        "big_iters": 2,
    }
    quick = {
        "users": 50_000,
        "items": 5_000,
        "alpha": 5e-5,
        "iters": 60,
        "budget": 60.0,
        "peer_iters": "1,2,5,10,20,40",
        "peer_budget": 120.0,
        "big_multiples": "1,2",
        "big_iters": 2,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.peer_iters = [int(i) for i in str(args.peer_iters).split(",") if i.strip()]
    args.big_multiples = [int(i) for i in str(args.big_multiples).split(",") if i.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Fit the planted ratings with every bignmf variant and every peer; curves and summary.

    Returns
    -------
    dict
        ``data`` (shape, counts, spec), the settings, ``curves`` (``Curve`` as dicts, bignmf's
        first), ``target`` (the best peer's lowest RMSE, its name and time), ``rows`` (one per
        method), ``speedup``, ``cli`` (the ``bignmf fit`` run: peaks, RMSE) and ``big`` (the
        larger-than-memory series, :func:`big_series`; None without it).
    """
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    data = ratings(args)
    shape, nnz = data.store.shape, int(data.store.nnz)
    block_nnz = args.block_nnz or -(-nnz // 8)  # the default store is one block: one thread
    lam = peer_lambda(args.alpha, shape, nnz)
    engine._say(
        f"ratings {shape[0]:,} x {shape[1]:,}: {nnz:,} training, "
        f"{data.test.values.size:,} held out; alpha {args.alpha:g}, λ {lam:.4g}"
    )
    with warnings.catch_warnings():  # warm-up, not counted (as Spark's): imports, first pass
        warnings.simplefilter("ignore")
        bignmf.nmf(
            data.store,
            args.components,
            missing="zeros",
            init="random",
            max_iter=2,
            tol=0,
            scheduler="threads",
            block_nnz=block_nnz,
        )
    curves: list[Curve] = []
    for solver, n_inner, replan in VARIANTS:
        curves.append(bignmf_curve(data, args, solver, n_inner, block_nnz if replan else None))
        engine._say(f"  {_progress(curves[-1])}")
    cli = cli_fit(data, args, block_nnz)
    engine._say(f"  bignmf fit: tree peak {cli['tree_peak'] / 2**20:.0f} MiB")
    files = peer_inputs(data) if args.peers else {}
    for name in args.peers:
        curves.append(run_peer(name, data, args, files, lam))
        engine._say(f"  {_progress(curves[-1])}")
    rows, target, speedup = summary(curves)
    big = big_series(args, block_nnz)
    return {
        "data": {
            "shape": list(shape),
            "nnz": nnz,
            "n_test": int(data.test.values.size),
            "spec": {**asdict(data.spec), "dtype": str(np.dtype(data.spec.dtype))},
            "store_blocks": int(data.store.n_blocks),
            "generate_s": data.generate_s,
        },
        "k": args.components,
        "alpha": args.alpha,
        "l2": [shape[1] * args.alpha, shape[0] * args.alpha],
        "lam": lam,
        "block_nnz": block_nnz,
        "iters": args.iters,
        "budget": args.budget,
        "peer_iters": args.peer_iters,
        "peer_budget": args.peer_budget,
        "curves": [asdict(c) for c in curves],
        "target": target,
        "rows": rows,
        "speedup": speedup,
        "cli": cli,
        "big": big,
    }


def _progress(c: Curve) -> str:
    if not c.rmse:
        return f"{c.name}: {c.note}"
    b = c.best()
    return f"{c.name}: RMSE {c.rmse[b]:.4f} after {c.iters[b]} iterations, {c.seconds[b]:.1f} s"


def summary(curves: list[Curve]) -> tuple[list[dict], dict | None, dict | None]:
    """Per-method rows, the target (the best peer's lowest RMSE) and bignmf's speed-up to it."""
    ran = [c for c in curves if c.rmse]
    peers = [c for c in ran if not c.name.startswith("bignmf")]
    target = None
    if peers:
        best = min(peers, key=lambda c: c.rmse[c.best()])
        b = best.best()
        target = {
            "name": best.name,
            "rmse": best.rmse[b],
            "iters": best.iters[b],
            "seconds": best.seconds[b],
        }
    rows = []
    for c in curves:
        if not c.rmse:
            rows.append({"method": c.name, "note": c.note})
            continue
        b = c.best()
        to_target = c.time_to(target["rmse"]) if target else None
        rows.append(
            {
                "method": c.name,
                "runs": len(c.iters) if c.separate_runs else 1,
                "iters": c.iters[-1],
                "seconds": c.seconds[-1],
                "per_iter": c.seconds[-1] / max(c.iters[-1], 1),
                "best_rmse": c.rmse[b],
                "best_iter": c.iters[b],
                "best_seconds": c.seconds[b],
                "last_rmse": c.rmse[-1],
                "to_target": to_target,
                "ratio": None if to_target is None or not target else target["seconds"] / to_target,
                "setup_s": c.setup_s,
                "note": c.note,
            }
        )
    speedup = None
    if target:
        mine = [r for r in rows if r["method"].startswith("bignmf") and r.get("to_target")]
        if mine:
            fastest = min(mine, key=lambda r: r["to_target"])
            speedup = {
                "method": fastest["method"],
                "seconds": fastest["to_target"],
                "ratio": fastest["ratio"],
            }
    return rows, target, speedup


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None or x != x else format(x, fmt)


def _s(seconds: float | None) -> str:
    """Seconds to 2–3 significant digits."""
    if seconds is None or seconds != seconds:
        return "–"
    return (
        f"{seconds:.0f}"
        if seconds >= 100
        else f"{seconds:.1f}"
        if seconds >= 1
        else f"{seconds:.2f}"
    )


def markdown(result: dict) -> str:
    """The data line, the table of methods, bignmf's speed-up, notes."""
    d = result["data"]
    (m, n), spec = d["shape"], d["spec"]
    l2w, l2h = result["l2"]
    lines = [
        f"planted ratings {m:,} users × {n:,} items, rank {spec['n_components']}, noise σ "
        f"{spec['noise']:g} (the floor of the held-out RMSE), {spec['ratings_per_user']:g} "
        f"ratings a user: {d['nnz']:,} training, {d['n_test']:,} held out; k = {result['k']}. "
        f"bignmf: threaded scheduler, `init='random'`, alpha_W = alpha_H = {result['alpha']:g} "
        f"(l2_W = {l2w:g}, l2_H = {l2h:g}), row blocks of {result['block_nnz']:,} nonzeros "
        f"(the store has {d['store_blocks']}), one run each, scored after every iteration; "
        f"peers: λ = {result['lam']:.4g} (the same penalty on a row or column with the mean "
        f"number of ratings), separate runs of {', '.join(map(str, result['peer_iters']))} "
        f"iterations within {result['peer_budget']:g} s each peer, each run timed whole.",
        "",
        "| method | runs | iterations | seconds | s/iteration | best held-out RMSE | at "
        "iteration | at s | last RMSE | s to best peer's RMSE | best peer's time ÷ it | setup s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rows"]:
        if "best_rmse" not in r:
            continue
        lines.append(
            f"| {r['method']} | {r['runs']} | {r['iters']} | {_s(r['seconds'])} | "
            f"{r['per_iter']:.3f} | {r['best_rmse']:.4f} | {r['best_iter']} | "
            f"{_s(r['best_seconds'])} | {r['last_rmse']:.4f} | {_s(r['to_target'])} | "
            f"{_f(r['ratio'], '.2f')} | {_s(r['setup_s'])} |"
        )
    lines.append("")
    target, speedup = result["target"], result["speedup"]
    if target and speedup:
        ratio = speedup["ratio"]
        how = f"{ratio:.1f}× sooner" if ratio >= 1 else f"{1 / ratio:.1f}× later"
        lines.append(
            f"**{speedup['method']} reaches the best peer's held-out RMSE ({target['name']}: "
            f"{target['rmse']:.4f} after {target['iters']} iterations, {_s(target['seconds'])} "
            f"s) in {_s(speedup['seconds'])} s: {how}**, side by side in this run."
        )
    elif target:
        mine = min(r["best_rmse"] for r in result["rows"] if r["method"].startswith("bignmf"))
        lines.append(
            f"**No bignmf run reached the best peer's held-out RMSE** ({target['name']}: "
            f"{target['rmse']:.4f}; bignmf's best {mine:.4f})."
        )
    else:
        lines.append("No peer ran: no target to compare with.")
    cli, first = result["cli"], result["curves"][0]
    same = ""
    if cli["iters"] in first["iters"]:
        same = f"; the in-process run had {first['rmse'][first['iters'].index(cli['iters'])]:.4f}"
    scoring = [c["scoring_s"] for c in result["curves"] if c["name"].startswith("bignmf")]
    lines += [
        "",
        f"- `bignmf fit --missing zeros` ({cli['iters']} iterations, hals n_inner=1, threaded, "
        f"in a subprocess): peak RSS {cli['tree_peak'] / 2**20:.0f} MiB, {_s(cli['seconds'])} s "
        f"with start-up; `bignmf score --json` on the `.test.mtx`: RMSE {cli['rmse']:.4f} "
        f"({cli['n_test']:,} entries){same}.",
        f"- bignmf's scoring callback took {_s(min(scoring))}–{_s(max(scoring))} s a run, not "
        "counted; one warm-up fit of 2 iterations ran first, not counted.",
    ]
    for r in result["rows"]:
        if r.get("note") and not r["method"].startswith("bignmf"):
            lines.append(f"- {r['method']}: {r['note']}.")
    if result.get("big"):
        lines += ["", *big_markdown(result["big"], result["k"])]
    return "\n".join(lines)


def big_markdown(big: dict, k: int) -> list[str]:
    """The larger-than-memory series: its settings, one row per size, the growth of the peaks."""
    limit, workers = big["memory_limit"], big["workers"]
    given = limit * workers
    n_inner = next((r["n_inner"] for r in big["rows"] if "n_inner" in r), "–")
    lines = [
        f"**Larger than the workers' memory** (bignmf alone): `bignmf fit -k {k} --missing zeros "
        f"--init random --max-iter {big['iters']} --tol 0 --block-nnz {big['block_nnz']}` "
        f"(hals, n_inner {n_inner}) on an embedded LocalCluster of {workers} single-threaded "
        f"workers with a memory limit of {limit / MiB:g} MiB each ({given / MiB:g} MiB "
        "together; `--cluster`, `memory_limit`), `--n-tasks` for about two row blocks a "
        "task; the same items and ratings a user, the users multiplied. *A decoded*: values, "
        "column indices and row pointers; peaks sampled every 0.05 s over the process tree "
        "(the driver's exact); s/iteration: median after the first; RMSE: `bignmf score RUN "
        "test.mtx --json`.",
        "",
        "| × users | users | training ratings | A decoded MiB | A ÷ workers' memory | on disk "
        "MiB | row blocks | tasks | tree peak MiB | driver MiB | largest worker MiB | Σ peaks "
        "MiB | s/iteration | held-out RMSE | wall s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in big["rows"]:
        mx = r["matrix"]
        head = (
            f"| {r['multiple']} | {mx['shape'][0]:,} | {mx['nnz']:,} | "
            f"{memory_peak._mib(mx['bytes_uncompressed'])} | "
            f"{mx['bytes_uncompressed'] / given:.3f} | {memory_peak._mib(mx['bytes_on_disk'])} | "
            f"{r.get('blocks', '–')} | {r['n_tasks']} | "
        )
        if "error" in r:
            lines.append(head + "failed | | | | | | |")
            continue
        lines.append(
            head + f"{r['tree_peak'] / MiB:,.0f} | {r['driver_peak'] / MiB:,.0f} | "
            f"{r['worker_peak'] / MiB:,.0f} | {r['sum_of_peaks'] / MiB:,.0f} | "
            f"{r['s_per_iter']:.2f} | {r['rmse']:.4f} | {_s(r['seconds'])} |"
        )
    ok = [r for r in big["rows"] if "error" not in r]
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        growth = last["matrix"]["nnz"] / first["matrix"]["nnz"]
        lines += [
            "",
            f"From ×{first['multiple']} to ×{last['multiple']}: ratings ×{growth:.1f}; tree peak "
            f"{memory_peak._growth(first, last, 'tree_peak')} (driver "
            f"{memory_peak._growth(first, last, 'driver_peak')}, largest worker "
            f"{memory_peak._growth(first, last, 'worker_peak')}); the largest worker's peak "
            f"{last['worker_peak'] / limit:.2f}× its limit.",
        ]
    for r in big["rows"]:
        if "error" in r:
            tail = r["error"].strip().splitlines()[-1:] or ["no output"]
            lines.append(f"- ×{r['multiple']} failed: {tail[0][:300]}")
    return lines


def plot(result: dict, out: Path) -> Path | None:
    """Held-out RMSE against seconds, every method, as ``missing.png``."""
    plt = engine.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, c in enumerate(result["curves"]):
        if not c["rmse"]:
            continue
        style = {"marker": "o", "linestyle": "--"} if c["separate_runs"] else {"marker": "."}
        ax.plot(c["seconds"], c["rmse"], color=f"C{i}", label=c["name"], markersize=4, **style)
    if result["target"]:
        t = result["target"]
        ax.axhline(t["rmse"], color="grey", linewidth=0.8, label=f"best peer ({t['name']})")
    ax.axhline(
        result["data"]["spec"]["noise"],
        color="black",
        linewidth=0.8,
        linestyle=":",
        label="noise σ",
    )
    ax.set_xscale("log")
    top = max([max(c["rmse"][1:] or c["rmse"]) for c in result["curves"] if c["rmse"]] or [1])
    ax.set_ylim(0, min(top, 1.5) * 1.05)
    ax.set_xlabel("seconds (peers: one separate run per point)")
    ax.set_ylabel("held-out RMSE")
    m, n = result["data"]["shape"]
    ax.set_title(f"{m:,} × {n:,} ratings, {result['data']['nnz']:,} training, k={result['k']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return engine.save_png(fig, Path(out) / "missing.png")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer-child"]:
        _child(argv[1], json.loads(argv[2]))
        return 0
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    plot(result, Path(args.out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
