"""Time to scikit-learn's best loss against matrix size: bignmf's CLI and ``nmf``, their peers.

Planted sparse matrices (:func:`bignmf.datasets.planted_source`, rank k topics over
``--cols`` columns, float32 counts) of 10^5, 10^6, 10^7 and 10^8 nonzeros in three shapes —
``tall`` (~5 nonzeros a row), ``medium`` (~50), ``dense`` rows (~500) — each written once as an
uncompressed ``.npz`` in ``--workdir``, are factorized at rank k, side by side in one run, each
method in its own child process timed from its start (imports, reading the file and the
initialisation included):

* ``bignmf fit FILE.npz -k K --max-iter 2N --tol 0 --seed 0 --out RUN``, the command as a user
  runs it (it converts the file into ``RUN/A.zarr`` first; every other option its default:
  ``hals``, ``nndsvda``, the scheduler the memory plan picks). Its per-iteration relative error
  and wall-clock time come from the run's ``metrics.jsonl``;
* ``bignmf.nmf(A, k, max_iter=2N, tol=0, random_state=SEED)`` on the matrix loaded with
  ``scipy.sparse.load_npz``, every other argument its default (the CLI's seed: both faces
  compute the same iterates); a callback records each iteration's relative error and time;
* scikit-learn ``NMF(solver='cd')`` and ``NMF(solver='mu')``, ``max_iter=N``, ``tol=0``, from
  ``init='nndsvda'`` (bignmf's default, and scikit-learn's own default for k <= min(m, n)),
  where the matrix fits in memory: the initialisation is ``_initialize_nmf`` (what ``NMF``
  calls for it), then the fit from it (``init='custom'``) with every iterate's loss recorded
  (``engine_sklearn.sklearn_curve``; those evaluations' time is subtracted);
* RcppML's ``nmf`` through ``Rscript`` (Debian's ``r-cran-rcppml``; a benchmark-only peer,
  skipped with a note where absent), on the CSC matrix of Aᵀ that A's CSR arrays are: runs of
  ``maxit`` 1, 2, 5, 10, 20, 50, 100, 200 in one R process, each timed whole, until one reaches
  the target or the next would pass the budget (its empty rows and columns dropped first:
  RcppML 0.3.7 fails on them);
* in this process, the plain SciPy loop of ``engine_loop.py`` (the same HALS arithmetic on the
  same row blocks, 2 threads, the matrix in memory): its seconds per iteration are the floor
  bignmf's iteration is compared with.

The *target* is scikit-learn's best final relative error ‖A − WH‖/‖A‖ (the lower of cd's and
mu's after N iterations); each method's *time to target* is the time from its process's start
to its first iterate at or below it. Peak RSS: each child's process tree, sampled
(``memory_peak.run_sampled``). A method whose run took longer than ``--budget`` seconds at one
size is skipped at the larger sizes of that shape, and the report says so; a run is killed
after ``--timeout-factor`` budgets.

    python benchmarks/sizes.py --quick      # 10^5 and 10^6 nonzeros, all shapes, minutes
    python benchmarks/sizes.py              # up to 10^8 (hours; the budget skips the slow)
    python benchmarks/sizes.py --sizes 1e6 --shapes medium --methods fit,nmf,cd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import scipy.sparse as sp

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/sizes.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine
import memory_peak
import missing
from engine_loop import csr_views
from memory_peak import MiB

from bignmf.store.matrix import MemoryMatrix

HERE = Path(__file__).resolve().parent
SHAPES = {"tall": 5, "medium": 50, "dense": 500}
SHAPE_NAMES = {"tall": "tall (~5 a row)", "medium": "medium (~50)", "dense": "dense rows (~500)"}
METHODS = {
    "fit": "bignmf fit (CLI)",
    "nmf": "bignmf.nmf",
    "cd": "sklearn cd",
    "mu": "sklearn mu",
    "rcppml": "RcppML",
}
LOOP = "plain SciPy loop"
RCPPML_ITERS = (1, 2, 5, 10, 20, 50, 100, 200)
# bignmf reports the loss of (W_t, H_{t-1}) and in float32 sums: a hair of slack on the target
TARGET_SLACK = 1e-5

# The children. Each prints nothing the parent reads but one JSON file (its argv's last); the
# times are Unix times, so the parent measures them from the moment it started the child.
SKLEARN_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import scipy.sparse as sp
from sklearn.decomposition._nmf import _initialize_nmf
from engine_sklearn import sklearn_curve
path, solver, k, iters, out = sys.argv[2:7]
A = sp.load_npz(path).tocsr()
W0, H0 = _initialize_nmf(A, int(k), init="nndsvda", random_state=0)
start = time.time()
curve = sklearn_curve(A, W0, H0, solver, max_iter=int(iters), tol=0)
record = {"times": [start + s for s in curve.seconds], "rel": curve.rel, "n_iter": curve.n_iter,
          "final_rel": curve.final_rel, "s_per_iter": curve.wall / max(curve.n_iter, 1)}
with open(out, "w") as f:
    json.dump(record, f)
"""
NMF_CHILD = """
import json, statistics, sys, time
import scipy.sparse as sp
import bignmf
path, out = sys.argv[1], sys.argv[5]
k, iters, seed = (int(word) for word in sys.argv[2:5])
A = sp.load_npz(path).tocsr()
times, rel, seconds = [], [], []
def record(info):
    times.append(time.time()); rel.append(info.relative_error); seconds.append(info.seconds)
bignmf.nmf(A, k, max_iter=iters, tol=0, random_state=seed, callback=record)
with open(out, "w") as f:
    json.dump({"times": times, "rel": rel, "n_iter": len(rel),
               "s_per_iter": statistics.median(seconds[1:] or seconds)}, f)
"""
# RcppML's own stopping rule is off (tol = 1e-12): every run does its maxit iterations.
RCPPML_SCRIPT = r"""
suppressMessages({library(Matrix); library(RcppML)})
a <- commandArgs(TRUE)
dir <- a[1]; m <- as.integer(a[2]); n <- as.integer(a[3]); nnz <- as.numeric(a[4])
k <- as.integer(a[5]); iters <- as.integer(strsplit(a[6], ",")[[1]])
budget <- as.numeric(a[7]); target <- as.numeric(a[8]); seed <- as.integer(a[9])
setRcppMLthreads(as.integer(a[10]))
rd <- function(name, what, count) {
  f <- file(file.path(dir, name), "rb"); on.exit(close(f)); readBin(f, what, count, size = 4)
}
# A's CSR arrays are the CSC arrays of t(A): factorizing t(A) is the same problem, no copy
At <- new("dgCMatrix", i = rd("indices.i32", "integer", nnz), p = rd("indptr.i32", "integer",
          m + 1), x = rd("data.f32", "double", nnz), Dim = c(n, m))
# RcppML 0.3.7 fails on empty rows or columns (the relative error stays above 1): a user has
# to drop them, so it is part of the setup; the loss is unchanged (their factors are 0)
At <- At[tabulate(At@i + 1L, n) > 0, diff(At@p) > 0]
norm2 <- sum(At@x^2)
cat("setup", format(as.numeric(Sys.time()), digits = 17), "\n")
rel <- function(fit) {
  w <- sweep(fit$w, 2, fit$d, "*")
  cross <- sum(as.matrix(At %*% t(fit$h)) * w)
  sqrt(max(norm2 - 2 * cross + sum(crossprod(w) * tcrossprod(fit$h)), 0) / norm2)
}
spent <- 0; last_s <- NA; last_it <- NA
for (it in iters) {
  if (!is.na(last_s) && spent + last_s * it / last_it > budget) break
  t0 <- Sys.time()
  fit <- RcppML::nmf(At, k, tol = 1e-12, maxit = it, verbose = FALSE, seed = seed)
  s <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  e <- rel(fit)
  cat("run", it, s, fit$iter, format(e, digits = 17), "\n")
  spent <- spent + s; last_s <- s; last_it <- it
  if (e <= target) break
}
"""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def case_npz(args: argparse.Namespace, nnz: int, shape: str) -> Path:
    """The planted matrix of ``nnz`` nonzeros in ``shape``, cached as ``.npz`` in the workdir."""
    z = SHAPES[shape]
    rows = max(int(nnz / z), args.k)
    name = f"sizes_planted_{rows}x{args.cols}_k{args.k}_z{z}_s{args.seed}.npz"
    options = {"nnz_per_row": z, "seed": args.seed, "dtype": "float32"}
    return engine.planted_npz(Path(args.workdir) / name, rows, args.cols, args.k, **options)


def rcppml_inputs(npz: Path, A: sp.csr_matrix) -> Path:
    """A's CSR arrays as raw little-endian int32/float32 files R reads with ``readBin`` (once)."""
    folder = npz.with_name(npz.stem + ".rcsr")
    if not (folder / "data.f32").exists():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        A.indptr.astype("<i4").tofile(partial / "indptr.i32")
        A.indices.astype("<i4").tofile(partial / "indices.i32")
        A.data.astype("<f4").tofile(partial / "data.f32")
        shutil.rmtree(folder, ignore_errors=True)
        partial.replace(folder)
    return folder


def fits_in_memory(A: sp.csr_matrix, k: int) -> bool:
    """Whether scikit-learn's NMF would fit in half the available RAM: A, the transposed copy
    its ``cd`` makes, the float64 copies of its products, W and H (a generous estimate)."""
    import psutil

    m, n = A.shape
    need = 3 * (A.data.nbytes + A.indices.nbytes + A.indptr.nbytes) + 4 * 8 * k * (m + n)
    return need < psutil.virtual_memory().available / 2


# ---------------------------------------------------------------------------------------------
# One method's run: a child process, timed from its start, its tree's RSS sampled
# ---------------------------------------------------------------------------------------------


def timed_child(cmd: list[str], args: argparse.Namespace) -> tuple[dict, float]:
    """Run ``cmd`` under :func:`memory_peak.run_sampled`; its figures and its start (Unix time)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    sampled = memory_peak.run_sampled(cmd, 0.05, env, timeout=args.budget * args.timeout_factor)
    return sampled, t0


def finished(method: str, sampled: dict, curve: dict) -> dict:
    """One method's row: its curve and the child's peaks, or why it has none."""
    row = {"method": method, "seconds": sampled["seconds"], "peak": sampled["tree_peak"]}
    if sampled["timed_out"]:
        return {**row, "note": f"killed after {sampled['seconds']:.0f} s (the timeout)"}
    if sampled["returncode"] != 0 or not curve.get("rel"):
        tail = (sampled["output"].strip().splitlines() or ["no output"])[-1][:200]
        return {**row, "note": f"failed with status {sampled['returncode']} ({tail})"}
    return {**row, **curve}


def run_sklearn(solver: str, npz: Path, args: argparse.Namespace) -> dict:
    """``NMF(solver=solver)`` from nndsvda, ``max_iter = args.iters``, ``tol = 0``, in a child."""
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        out = Path(scratch, "curve.json")
        words = (HERE, npz, solver, args.k, args.iters, out)
        cmd = [sys.executable, "-c", SKLEARN_CHILD, *map(str, words)]
        sampled, t0 = timed_child(cmd, args)
        curve = json.loads(out.read_text()) if out.exists() else {}
    curve["times"] = [t - t0 for t in curve.get("times", [])]
    return finished(solver, sampled, curve)


def run_nmf(npz: Path, args: argparse.Namespace) -> dict:
    """``bignmf.nmf(A, k, max_iter=2N, tol=0)`` on the loaded matrix, in a child."""
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        out = Path(scratch, "curve.json")
        words = (npz, args.k, 2 * args.iters, args.seed, out)
        cmd = [sys.executable, "-c", NMF_CHILD, *map(str, words)]
        sampled, t0 = timed_child(cmd, args)
        curve = json.loads(out.read_text()) if out.exists() else {}
    curve["times"] = [t - t0 for t in curve.get("times", [])]
    return finished("nmf", sampled, curve)


def run_fit(npz: Path, args: argparse.Namespace) -> dict:
    """``bignmf fit FILE.npz`` as a user runs it, ``--max-iter 2N --tol 0``."""
    from bignmf.fit.outputs import read_metrics

    scratch = Path(tempfile.mkdtemp(prefix="sizes-fit-", dir=args.workdir))
    run_dir = scratch / "run"
    flags = {
        "-k": args.k,
        "--out": run_dir,
        "--max-iter": 2 * args.iters,
        "--tol": 0,
        "--seed": args.seed,
    }
    options = [str(word) for flag in flags.items() for word in flag]
    cmd = [sys.executable, "-c", memory_peak.FIT, "fit", str(npz), *options]
    try:
        sampled, t0 = timed_child(cmd, args)
        metrics = read_metrics(run_dir)
        curve = {
            "times": [r["time"] - t0 for r in metrics],
            "rel": [r["relative_error"] for r in metrics],
            "n_iter": len(metrics),
            "s_per_iter": memory_peak.seconds_per_iteration(run_dir),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return finished("fit", sampled, curve)


def run_rcppml(npz: Path, A: sp.csr_matrix, target: float, args: argparse.Namespace) -> dict:
    """RcppML's ``nmf`` through ``Rscript``: runs of more and more ``maxit``, each timed whole.

    Its *times* are those a user who knew the right ``maxit`` would see: the R process's
    setup (start, libraries, reading the arrays) plus that one run's fit.
    """
    why = missing.peer_missing("rcppml")
    if why:
        return {"method": "rcppml", "note": f"skipped: {why}"}
    folder = rcppml_inputs(npz, A)
    (m, n), nnz = A.shape, A.nnz
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        script = Path(scratch, "fit.R")
        script.write_text(RCPPML_SCRIPT)
        iters = ",".join(str(i) for i in RCPPML_ITERS if i <= 4 * args.iters)
        # RcppML's seed 0 is unseeded (a new draw each run): seed + 1
        target_arg = repr(target * (1 + TARGET_SLACK))
        words = (script, folder, m, n, nnz, args.k, iters, args.budget, target_arg)
        cmd = ["Rscript", *map(str, (*words, args.seed + 1, args.threads))]
        sampled, t0 = timed_child(cmd, args)
    return finished("rcppml", sampled, rcppml_curve(sampled["output"], t0))


def rcppml_curve(output: str, t0: float) -> dict:
    """The R script's ``setup``/``run`` lines as a curve (one point per run)."""
    setup, curve = math.nan, {"times": [], "rel": [], "iters": [], "fit_s": []}
    for words in (line.split() for line in output.splitlines()):
        if words[:1] == ["setup"]:
            setup = float(words[1]) - t0
        elif words[:1] == ["run"]:
            curve["iters"].append(int(float(words[3])))
            curve["fit_s"].append(float(words[2]))
            curve["times"].append(setup + float(words[2]))
            curve["rel"].append(float(words[4]))
    if curve["rel"]:
        curve.update(
            n_iter=curve["iters"][-1],
            setup_s=setup,
            s_per_iter=curve["fit_s"][-1] / max(curve["iters"][-1], 1),
        )
    return curve


def loop_per_iteration(A: sp.csr_matrix, args: argparse.Namespace) -> dict:
    """Seconds per iteration of ``engine_loop.plain_loop`` on bignmf's in-memory row blocks."""
    matrix = MemoryMatrix(A)  # the row blocks bignmf.nmf makes of an in-memory matrix
    ro = matrix.row_offsets
    views = csr_views(matrix.matrix, ro)
    W0, H0 = engine.initial_factors(*A.shape, args.k, matrix.value_sum, args.seed)
    W0_blocks = [W0[ro[i] : ro[i + 1]] for i in range(matrix.n_blocks)]
    run = engine.run_loop(
        lambda i, _: views[i], len(views), W0_blocks, H0, matrix.frobenius_sq, args.loop_iters
    )
    wall, cpu = engine.per_iteration(run)
    return {"method": "loop", "s_per_iter": wall, "cpu_per_iter": cpu, "blocks": len(views)}


# ---------------------------------------------------------------------------------------------
# One case (a size and a shape): every method, the target, the times to it
# ---------------------------------------------------------------------------------------------


def time_to(row: dict, target: float) -> float | None:
    """Seconds from the process's start to the first iterate at or below ``target``."""
    limit = target * (1 + TARGET_SLACK)
    return next((t for t, r in zip(row["times"], row["rel"], strict=True) if r <= limit), None)


def run_case(nnz: int, shape: str, args: argparse.Namespace, skips: dict) -> dict:
    """Every method on one planted matrix; ``skips`` (method, shape) → why, updated."""
    npz = case_npz(args, nnz, shape)
    A = sp.load_npz(npz).tocsr()
    case = {"size": nnz, "shape": shape, "matrix": [*A.shape], "nnz": int(A.nnz), "rows": []}
    engine._say(f"== {nnz:.0e} nonzeros, {shape}: {A.shape[0]:,} x {A.shape[1]:,}, {A.nnz:,}")
    sk_fits = fits_in_memory(A, args.k)
    for solver in ("cd", "mu"):
        if solver in args.methods:
            why = skips.get((solver, shape)) or (None if sk_fits else "would not fit in memory")
            case["rows"].append(
                _run_or_skip(solver, why, lambda s=solver: run_sklearn(s, npz, args))
            )
    finals = [r["rel"][-1] for r in case["rows"] if r.get("rel")]
    case["target"] = min(finals) if finals else None
    runners = {"fit": lambda: run_fit(npz, args), "nmf": lambda: run_nmf(npz, args)}
    if case["target"] is not None:
        runners["rcppml"] = lambda: run_rcppml(npz, A, case["target"], args)
    for method, runner in runners.items():
        if method in args.methods:
            case["rows"].append(_run_or_skip(method, skips.get((method, shape)), runner))
    case["loop"] = loop_per_iteration(A, args)
    _mark_over_budget(case, args.budget, skips)
    _score(case)
    return case


def _run_or_skip(method: str, why: str | None, runner) -> dict:
    if why:
        return {"method": method, "note": f"skipped: {why}"}
    row = runner()
    engine._say(f"  {METHODS[method]}: {_progress(row)}")
    return row


def _progress(row: dict) -> str:
    if "rel" not in row:
        return row.get("note", "")
    return (
        f"{row['n_iter']} iterations, rel. error {row['rel'][-1]:.5f}, {row['seconds']:.1f} s, "
        f"{row['s_per_iter']:.4f} s/iter, peak {row['peak'] / MiB:.0f} MiB"
    )


def _mark_over_budget(case: dict, budget: float, skips: dict) -> None:
    """Skip at the larger sizes of this shape each method whose run here passed the budget."""
    for row in case["rows"]:
        if row.get("seconds", 0) > budget and (row["method"], case["shape"]) not in skips:
            skips[row["method"], case["shape"]] = (
                f"took {row['seconds']:.0f} s at {case['size']:.0e} nonzeros, over the "
                f"{budget:g} s budget"
            )


def _score(case: dict) -> None:
    """Times to the target, the ratios the goal is stated in, and whether it is met."""
    target, loop = case["target"], case["loop"]["s_per_iter"]
    for row in case["rows"]:
        if "rel" in row:
            row["to_target"] = time_to(row, target) if target is not None else None
            row["vs_loop"] = row["s_per_iter"] / loop
    sk = [r["to_target"] for r in case["rows"] if r["method"] in ("cd", "mu") and r.get("rel")]
    case["sklearn_best_s"] = min((t for t in sk if t is not None), default=None)
    reached = {r["method"]: r["to_target"] for r in case["rows"] if r.get("to_target")}
    case["fastest"] = min(reached, key=reached.get) if reached else None
    for row in case["rows"]:
        if row.get("to_target") and case["sklearn_best_s"]:
            row["sklearn_ratio"] = case["sklearn_best_s"] / row["to_target"]


def goal(case: dict) -> dict:
    """The issue's goal for this case, per bignmf face: faster to the target than every peer,
    ≥ 3× scikit-learn's best (from 10^6 nonzeros), an iteration no slower than the loop."""
    peers = [r.get("to_target") for r in case["rows"] if r["method"] not in ("fit", "nmf")]
    peers = [t for t in peers if t is not None]
    out = {}
    for row in case["rows"]:
        if row["method"] in ("fit", "nmf") and "rel" in row:
            mine, ratio = row.get("to_target"), row.get("sklearn_ratio")
            out[row["method"]] = {
                "fastest": mine is not None and all(mine < t for t in peers),
                "x3": None if case["size"] < 10**6 or ratio is None else ratio >= 3,
                "loop": row["vs_loop"] <= 1.0,
            }
    return out


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Every size and shape of ``args`` (sizes in order, so the budget skips can apply).

    Returns
    -------
    dict
        The settings and ``cases`` (one per size and shape: the matrix, ``target``, ``rows``
        per method — its curve ``times``/``rel``, ``s_per_iter``, ``peak``, ``to_target``,
        ``sklearn_ratio``, ``vs_loop`` or a ``note`` —, ``loop``, ``fastest``).
    """
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for nnz in args.sizes:  # every input generated before the first timed run
        for shape in args.shapes:
            case_npz(args, nnz, shape)
    skips: dict = {}
    cases = [run_case(nnz, shape, args, skips) for nnz in args.sizes for shape in args.shapes]
    for case in cases:
        case["goal"] = goal(case)
    return {
        "k": args.k,
        "cols": args.cols,
        "iters": args.iters,
        "loop_iters": args.loop_iters,
        "budget": args.budget,
        "threads": args.threads,
        "rcppml": missing.peer_missing("rcppml"),
        "cases": cases,
    }


def markdown(result: dict) -> str:
    """The settings, one table row per size, shape and method, and the goal's verdicts."""
    lines = [
        f"Planted float32 matrices, {result['cols']:,} columns, k = {result['k']}; each method "
        "in its own process, timed from its start. *Target*: scikit-learn's best final "
        f"relative error after {result['iters']} iterations (cd or mu, from nndsvda); "
        f"bignmf runs {2 * result['iters']} iterations (`--tol 0`), RcppML runs of growing "
        "`maxit` until one reaches the target. *s to target*: from the process's start (in "
        "bold the first to get there); "
        "*sklearn ÷*: scikit-learn's best time to the target ÷ this method's; *÷ loop*: "
        f"s/iteration ÷ the plain SciPy loop's (2 threads, in memory, median of "
        f"{result['loop_iters']} iterations after the first); *peak*: the process tree's RSS.",
        "",
        "| nonzeros | shape | method | iterations | s/iter | ÷ loop | s to target | sklearn ÷ "
        "| final rel. error | peak MiB | process s |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for case in result["cases"]:
        lines += _case_rows(case)
        notes += [
            f"- {case['size']:.0e}, {case['shape']}, {METHODS[r['method']]}: {r['note']}."
            for r in case["rows"]
            if "note" in r
        ]
    lines += ["", *goal_lines(result), *notes]
    if result["rcppml"]:
        lines.append(f"- RcppML skipped everywhere: {result['rcppml']}.")
    return "\n".join(lines)


def _case_rows(case: dict) -> list[str]:
    m, n = case["matrix"]
    head = f"| {case['size']:.0e} | {case['shape']} {m:,}×{n:,} | "
    lines = []
    for r in case["rows"]:
        if "rel" not in r:
            lines.append(head + f"{METHODS[r['method']]} | | | | – | | | | |")
            continue
        fastest = "**" if case["fastest"] == r["method"] else ""
        lines.append(
            head + f"{METHODS[r['method']]} | {r['n_iter']} | {r['s_per_iter']:.4f} | "
            f"{r['vs_loop']:.2f} | {fastest}{missing._s(r['to_target'])}{fastest} | "
            f"{missing._f(r.get('sklearn_ratio'), '.2f')} | {r['rel'][-1]:.5f} | "
            f"{r['peak'] / MiB:,.0f} | {missing._s(r['seconds'])} |"
        )
    loop = case["loop"]
    lines.append(head + f"{LOOP} | | {loop['s_per_iter']:.4f} | 1.00 | | | | | |")
    return lines


def goal_lines(result: dict) -> list[str]:
    """Per bignmf face, where it is the fastest, ≥ 3× scikit-learn (≥ 10^6), ≤ the loop."""
    lines = []
    for method in ("fit", "nmf"):
        verdicts = [(c, c["goal"][method]) for c in result["cases"] if method in c["goal"]]
        if not verdicts:
            continue

        def where(key, want=True, verdicts=verdicts):
            return [f"{c['size']:.0e} {c['shape']}" for c, g in verdicts if g[key] is want]

        lines.append(
            f"- **{METHODS[method]}**: fastest to the target in {len(where('fastest'))} of "
            f"{len(verdicts)} cases (not: {', '.join(where('fastest', False)) or 'none'}); ≥ 3× "
            f"scikit-learn's best at ≥ 10^6 nonzeros: {', '.join(where('x3')) or 'none'} (not: "
            f"{', '.join(where('x3', False)) or 'none'}); iteration no slower than the loop: "
            f"{', '.join(where('loop')) or 'none'}."
        )
    return lines


def plot(result: dict, out: Path, copy_to: Path | None = None) -> Path | None:
    """Time to target and s/iteration against nonzeros, a panel per shape, as ``sizes.png``."""
    plt = engine.pyplot()
    if plt is None or not result["cases"]:
        return None
    shapes = list(dict.fromkeys(c["shape"] for c in result["cases"]))
    fig, axes = plt.subplots(2, len(shapes), figsize=(5 * len(shapes), 8), squeeze=False)
    for col, shape in enumerate(shapes):
        cases = [c for c in result["cases"] if c["shape"] == shape]
        for i, method in enumerate(METHODS):
            _plot_method(axes[:, col], cases, method, f"C{i}")
        loop = [(c["nnz"], c["loop"]["s_per_iter"]) for c in cases]
        axes[1, col].plot(*zip(*loop, strict=True), "k:", marker=".", label=LOOP)
        axes[0, col].set_title(SHAPE_NAMES[shape])
        for ax, label in zip(
            axes[:, col], ("s to target (from process start)", "s/iteration"), strict=True
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("nonzeros")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(
        f"NMF k={result['k']}: time to scikit-learn's best loss, planted matrices, "
        f"{os.cpu_count()} cores"
    )
    fig.tight_layout()
    path = engine.save_png(fig, Path(out) / "sizes.png")
    if copy_to is not None:
        shutil.copy(path, copy_to)
    return path


def _plot_method(axes, cases: list[dict], method: str, color: str) -> None:
    rows = [(c["nnz"], r) for c in cases for r in c["rows"] if r["method"] == method]
    ran = [(x, r) for x, r in rows if "rel" in r]
    if not ran:
        return
    reached = [(x, r["to_target"]) for x, r in ran if r.get("to_target")]
    if reached:
        axes[0].plot(*zip(*reached, strict=True), color=color, marker="o", label=METHODS[method])
    axes[1].plot(
        [x for x, _ in ran],
        [r["s_per_iter"] for _, r in ran],
        color=color,
        marker="o",
        label=METHODS[method],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The part's options; ``--quick`` is 10^5 and 10^6 nonzeros."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^6 nonzeros, minutes")
    parser.add_argument("--sizes", help="nonzeros, comma-separated (1e5,1e6,1e7,1e8; quick to 1e6)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="of " + ",".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS), help="of " + ",".join(METHODS))
    parser.add_argument("--cols", type=int, default=20_000, help="columns (20000)")
    parser.add_argument("-k", type=int, default=20, help="rank (20)")
    parser.add_argument("--iters", type=int, default=50, help="scikit-learn's max_iter (50)")
    parser.add_argument("--loop-iters", type=int, default=6, help="the loop's iterations (6)")
    parser.add_argument("--budget", type=float, help="seconds a run may take (600; quick 120)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="kill after (3) budgets")
    parser.add_argument("--threads", type=int, default=2, help="RcppML's threads (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.standard = args.sizes is None  # a profile's sizes: its plot is the checked-in one
    default_sizes = "1e5,1e6" if args.quick else "1e5,1e6,1e7,1e8"
    args.sizes = [int(float(s)) for s in (args.sizes or default_sizes).split(",")]
    args.budget = args.budget or (120.0 if args.quick else 600.0)
    for name, known in (("shapes", SHAPES), ("methods", METHODS)):
        chosen = [w.strip() for w in getattr(args, name).split(",") if w.strip()]
        if set(chosen) - set(known):
            parser.error(f"unknown {name} {sorted(set(chosen) - set(known))}; of {list(known)}")
        setattr(args, name, chosen)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    plot(result, Path(args.out), HERE / "sizes.png" if args.standard else None)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
