"""Consensus NMF studies: ``bignmf sweep`` against the ``cnmf`` package, side by side.

Planted single-cell counts — cells × genes, Poisson counts of ``library · usage · programs``
with ``--programs`` known gene programs: one identity program per cell type and
``--activity`` activity programs shared across the types (each cell's usage a mixture of its
type's program and, for some cells, the activity programs) — are written once as an AnnData
``.h5ad`` in ``--workdir``, with the planted programs beside them (``.programs.npy``). Then, on
the same 2 cores, each method in its own processes timed from their start, their process
trees' RSS sampled (``memory_peak.run_sampled``):

* **cNMF** (Kotliar et al., eLife 2019; the ``cnmf`` package, a benchmark-only peer skipped
  with a note where it is not importable), its documented steps, each a process: ``prepare``
  (the k list, ``n_iter`` = the replicates, the seed, ``num_highvar_genes`` = every gene so
  that both methods factorize the same genes, its default solver settings: scikit-learn ``cd``,
  ``init='random'``, ``tol=1e-4``, ``max_NMF_iter=1000``), ``factorize`` as ``--cnmf-workers``
  worker processes in parallel (``worker_i``, ``total_workers``, as its docs run it), ``combine``,
  ``k_selection_plot`` (stability and error per k, what a user looks at to choose k) and
  ``consensus`` for every k (``density_threshold`` 0.5, its default; no clustergram);
* **bignmf**: ``bignmf sweep NORM.h5ad -k KS --replicates R --out STUDY --seed S
  --solver hals --init random --max-iter 1000 --tol 1e-6 --no-progress`` on the very matrix
  cNMF factorizes — its ``prepare`` writes the variance-normalised counts as
  ``cnmf_tmp/<name>.norm_counts.h5ad`` — so that accuracy compares like with like. Where cNMF is
  absent the same normalisation (each gene divided by its standard deviation) is done here.

``--tol``: the two rules differ. scikit-learn's ``cd`` (cNMF) stops when the projected gradient
fell below ``tol`` of its first value; bignmf's default rule when one iteration lowered the
objective by less than ``tol`` of it. With the same number, 1e-4, bignmf stopped after ~16
iterations at k = 10 where ``cd`` ran ~50 and its spectra were 0.0015 of a correlation below
cNMF's (quick profile, 2026-12-04); at 1e-6 they match cNMF's to 0.0002, and 200 iterations
(``--tol 0``) give cNMF's to 1e-4: 1e-6 is the setting of equal accuracy.

*Agreement with the planted programs*, for the planted K: each planted program, taken into the
normalised space (divided gene by gene as the counts were), is matched to a consensus spectrum
(``scipy.optimize.linear_sum_assignment`` on the Pearson correlations); the report gives the
minimum and the median of the matched correlations.

The full profile adds a **larger matrix** (``--large-cells``, default 1.5M cells × the same
genes, ~5% dense), generated streamed (a :class:`bignmf.types.Source` of row slabs into
``bignmf.convert``: the generator never holds the matrix), factorized by ``bignmf sweep`` alone
(raw counts, a reduced k list and replicate count) on an embedded LocalCluster whose workers
have explicit memory limits (``--cluster`` file of kind ``local``). cNMF is not run on it: its
``k_selection_plot`` step densifies the normalised counts (``norm_counts.X.todense()``, cells ×
genes float64) and subtracts a dense ``usage · spectra`` DataFrame of the same shape, two or
three such arrays at once — the report gives the arithmetic.

    python benchmarks/study.py --quick          # 5,000 cells × 1,000 genes, k 7,10,13, R 8
    python benchmarks/study.py                  # 20,000 × 2,000, R 20, + 1.5M cells (long)
    python benchmarks/study.py --large-cells 0  # the side-by-side comparison only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/study.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine
import memory_peak
from memory_peak import GiB, MiB

from bignmf.types import Source

HERE = Path(__file__).resolve().parent
BLOCK_CELLS = 4096  # cells per generation block: part of the definition of the matrix
NAME = "study"  # cNMF's run name
DENSITY_THRESHOLD = 0.5  # cNMF's default local-density threshold

# cNMF's steps, each run as its own process, as its command line runs them.
CNMF_PREPARE = """
import sys
from cnmf import cNMF
out, name, counts, ks, reps, seed, genes, max_iter = sys.argv[1:9]
cNMF(output_dir=out, name=name).prepare(
    counts_fn=counts, components=[int(k) for k in ks.split(",")], n_iter=int(reps),
    seed=int(seed), num_highvar_genes=int(genes), max_NMF_iter=int(max_iter))
"""
# ``factorize`` as its docs run it in parallel: one process per worker index, all at once
CNMF_FACTORIZE = """
import subprocess, sys
out, name, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
code = "import sys; from cnmf import cNMF; cNMF(output_dir=sys.argv[1], name=sys.argv[2])" \\
       ".factorize(worker_i=int(sys.argv[3]), total_workers=int(sys.argv[4]))"
procs = [subprocess.Popen([sys.executable, "-c", code, out, name, str(i), str(workers)],
                          stdout=subprocess.DEVNULL) for i in range(workers)]
sys.exit(max(p.wait() for p in procs))
"""
CNMF_COMBINE = """
import sys
from cnmf import cNMF
cNMF(output_dir=sys.argv[1], name=sys.argv[2]).combine()
"""
CNMF_K_SELECTION = """
import sys
from cnmf import cNMF
cNMF(output_dir=sys.argv[1], name=sys.argv[2]).k_selection_plot(close_fig=True)
"""
CNMF_CONSENSUS = """
import sys
from cnmf import cNMF
c = cNMF(output_dir=sys.argv[1], name=sys.argv[2])
for k in sys.argv[3].split(","):
    c.consensus(int(k), density_threshold=float(sys.argv[4]), show_clustering=False,
                close_clustergram_fig=True)
"""
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
CNMF_STEPS = ("prepare", "factorize", "combine", "k_selection_plot", "consensus")
# The steps a ``bignmf sweep`` stands for, given the normalised matrix: the ratio's basis
REPLACED = ("factorize", "combine", "consensus")


# ---------------------------------------------------------------------------------------------
# Planted single-cell counts
# ---------------------------------------------------------------------------------------------


def planted_programs(n_genes: int, n_types: int, n_activity: int, seed: int) -> np.ndarray:
    """(n_types + n_activity) × genes: identity programs, then activity programs (rows sum to 1).

    Identity programs share a base expression (most genes low, a few high) changed by
    type-specific fold changes, 4% of the genes marking each type; an activity program is a
    response of 5% of the genes, zero elsewhere.
    """
    rng = np.random.default_rng([seed, 0])
    base = rng.lognormal(0.0, 1.0, size=n_genes)
    programs = []
    for _ in range(n_types):
        folds = rng.lognormal(0.0, 0.5, size=n_genes)
        markers = rng.choice(n_genes, size=max(n_genes // 25, 1), replace=False)
        folds[markers] *= 8.0
        programs.append(base * folds)
    for _ in range(n_activity):
        activity = np.zeros(n_genes)
        responders = rng.choice(n_genes, size=max(n_genes // 20, 1), replace=False)
        activity[responders] = rng.lognormal(1.0, 1.0, size=len(responders))
        programs.append(activity)
    programs = np.array(programs)
    return programs / programs.sum(axis=1, keepdims=True)


def cell_block(
    programs: np.ndarray, n_types: int, library: float, seed: int, b: int, n_cells: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Generation block ``b``: its cells' Poisson counts (CSR float32) and cell types.

    A cell's usage: its type's identity program, and each activity program with probability
    0.3 at a share drawn from U(0.1, 0.35) (the identity program gets the rest); its library
    size log-normal around ``library`` counts.
    """
    rng = np.random.default_rng([seed, 1, b])
    rows = min(BLOCK_CELLS, n_cells - b * BLOCK_CELLS)
    n_activity = programs.shape[0] - n_types
    cell_type = rng.integers(0, n_types, size=rows)
    shares = np.where(
        rng.random((rows, n_activity)) < 0.3, rng.uniform(0.1, 0.35, (rows, n_activity)), 0.0
    )
    usage = np.zeros((rows, programs.shape[0]))
    usage[np.arange(rows), cell_type] = 1.0 - shares.sum(axis=1)
    usage[:, n_types:] = shares
    usage *= rng.lognormal(np.log(library), 0.4, size=(rows, 1))
    counts = rng.poisson(usage @ programs).astype(np.float32)
    return sp.csr_matrix(counts), cell_type


def cells_source(
    n_cells: int, programs: np.ndarray, n_types: int, library: float, seed: int
) -> Source:
    """The counts as a :class:`~bignmf.types.Source`: one generation block at a time."""

    def blocks():
        for b in range(-(-n_cells // BLOCK_CELLS)):
            yield cell_block(programs, n_types, library, seed, b, n_cells)[0]

    name = f"<planted cells {n_cells}x{programs.shape[1]}>"
    return Source(name, (n_cells, programs.shape[1]), np.dtype(np.float32), blocks)


def _data_name(args: argparse.Namespace, cells: int, library: float) -> str:
    return (
        f"study_cells_{cells}x{args.genes}_t{args.types}a{args.activity}_L{library:g}_s{args.seed}"
    )


def counts_h5ad(args: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """The planted counts as an AnnData ``.h5ad`` (cached in the workdir) and the programs."""
    import anndata as ad
    import pandas as pd

    programs = planted_programs(args.genes, args.types, args.activity, args.seed)
    path = Path(args.workdir) / (_data_name(args, args.cells, args.library) + ".h5ad")
    if not path.exists():
        pieces, types = [], []
        for b in range(-(-args.cells // BLOCK_CELLS)):
            X, t = cell_block(programs, args.types, args.library, args.seed, b, args.cells)
            pieces.append(X)
            types.append(t)
        X = sp.vstack(pieces, format="csr")
        keep = np.asarray(X.sum(axis=0)).ravel() > 0
        if not keep.all():  # cNMF cannot scale a gene without counts: no such genes planted
            raise ValueError(f"{(~keep).sum()} genes have no counts: raise --library")
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(np.concatenate(types))},
            index=[f"cell{i}" for i in range(args.cells)],
        )
        var = pd.DataFrame(index=[f"gene{j}" for j in range(args.genes)])
        partial = path.with_name(path.stem + ".partial.h5ad")
        ad.AnnData(X=X, obs=obs, var=var).write_h5ad(partial)
        partial.replace(path)
    np.save(path.with_suffix(".programs.npy"), programs)
    return path, programs


def large_store(args: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """The larger matrix as a bignmf store, generated and converted streamed (cached)."""
    import bignmf

    programs = planted_programs(args.genes, args.types, args.activity, args.seed)
    path = Path(args.workdir) / (_data_name(args, args.large_cells, args.large_library) + ".zarr")
    if not path.exists():
        engine._say(f"generating {args.large_cells:,} cells x {args.genes:,} genes, streamed")
        start = time.perf_counter()
        source = cells_source(args.large_cells, programs, args.types, args.large_library, args.seed)
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        bignmf.convert(source, partial)
        partial.replace(path)
        engine._say(f"  written in {time.perf_counter() - start:.0f} s")
    return path, programs


def normalise(counts: Path, out: Path) -> Path:
    """Each gene divided by its standard deviation, as cNMF's ``prepare`` does (for bignmf
    where cNMF is absent)."""
    import anndata as ad

    if not out.exists():
        data = ad.read_h5ad(counts)
        X = data.X.astype(np.float64).tocsc()
        mean = np.asarray(X.mean(axis=0)).ravel()
        sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
        sd = np.sqrt((sq - mean**2) * X.shape[0] / (X.shape[0] - 1))
        data.X = (X @ sp.diags(1 / sd)).tocsr()
        data.write_h5ad(out)
    return out


def gene_scales(counts: Path, normalised: Path) -> tuple[np.ndarray, float]:
    """Per gene, normalised / raw counts: what takes a planted program into the normalised
    space (the ratio of the column sums; the same factor multiplies every cell of a gene);
    and ‖normalised‖²_F, which turns cNMF's prediction error into a relative error."""
    import anndata as ad

    raw = np.asarray(ad.read_h5ad(counts).X.sum(axis=0), dtype=np.float64).ravel()
    X = ad.read_h5ad(normalised).X
    norm = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    return norm / raw, float(np.sum(np.asarray(X.data, dtype=np.float64) ** 2))


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def agreement(spectra: np.ndarray, programs: np.ndarray) -> dict:
    """Each planted program's Pearson correlation with its matched spectrum (Hungarian match).

    Returns ``min``, ``median`` and ``matched`` (one correlation per planted program).
    """
    from scipy.optimize import linear_sum_assignment

    def standard(x):
        x = np.asarray(x, dtype=np.float64)
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)

    corr = standard(programs) @ standard(spectra).T
    rows, cols = linear_sum_assignment(-corr)
    matched = corr[rows, cols]
    return {
        "min": float(matched.min()),
        "median": float(np.median(matched)),
        "matched": [float(c) for c in matched],
    }


def _npz_frame(path: Path) -> np.ndarray:
    """The values of a DataFrame cNMF saved (``save_df_to_npz``: data, index, columns)."""
    with np.load(path, allow_pickle=True) as f:
        return np.asarray(f["data"])


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


def cnmf_missing() -> str | None:
    """Why cNMF cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("cnmf") is None:
        return "the `cnmf` package is not installed (`python -m pip install cnmf`)"
    return None


def _env() -> dict:
    # Agg: cNMF's plots (k_selection_plot) need no display
    return {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}


def _step(name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    sampled = memory_peak.run_sampled(cmd, 0.05, {**_env(), **(env or {})}, timeout=timeout)
    row = {key: sampled[key] for key in ("returncode", "seconds", "tree_peak", "processes")}
    if sampled["timed_out"] or sampled["returncode"] != 0:
        tail = (sampled["output"].strip().splitlines() or ["no output"])[-1][:300]
        row["error"] = "killed (timeout)" if sampled["timed_out"] else tail
    engine._say(
        f"  {name}: {sampled['seconds']:.1f} s, peak {sampled['tree_peak'] / MiB:.0f} MiB"
        + (f" — {row['error']}" if "error" in row else "")
    )
    return {"step": name, **row}


def run_cnmf(counts: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """cNMF's steps on ``counts``, each a process; per step: seconds, tree peak."""
    out = scratch / "cnmf"
    shutil.rmtree(out, ignore_errors=True)
    ks = ",".join(map(str, args.ks))
    py = sys.executable
    base = [str(out), NAME]
    commands = {
        "prepare": [
            py,
            "-c",
            CNMF_PREPARE,
            *base,
            str(counts),
            ks,
            str(args.replicates),
            str(args.seed),
            str(args.genes),
            str(args.max_iter),
        ],
        "factorize": [py, "-c", CNMF_FACTORIZE, *base, str(args.cnmf_workers)],
        "combine": [py, "-c", CNMF_COMBINE, *base],
        "k_selection_plot": [py, "-c", CNMF_K_SELECTION, *base],
        "consensus": [py, "-c", CNMF_CONSENSUS, *base, ks, str(DENSITY_THRESHOLD)],
    }
    engine._say(f"== cNMF: k {ks}, {args.replicates} replicates, {args.cnmf_workers} workers")
    # the factorize workers share the cores: each gets its share of BLAS threads, as a user
    # running them in parallel would set (unset, each would start one a core: 2x slower here)
    threads = str(max(1, (os.cpu_count() or 1) // args.cnmf_workers))
    blas = {name: threads for name in BLAS_THREADS}
    steps = []
    for name in CNMF_STEPS:
        steps.append(
            _step(name, commands[name], args.timeout, blas if name == "factorize" else None)
        )
        if "error" in steps[-1]:
            break
    tmp = out / NAME / "cnmf_tmp"
    result = {
        "method": "cnmf",
        "steps": steps,
        "seconds": sum(s["seconds"] for s in steps),
        "replaced_seconds": sum(s["seconds"] for s in steps if s["step"] in REPLACED),
        "peak": max(s["tree_peak"] for s in steps),
        "normalised": str(tmp / f"{NAME}.norm_counts.h5ad"),
        "spectra": {},
    }
    failed = [s for s in steps if "error" in s]
    if failed:
        result["error"] = f"{failed[0]['step']}: {failed[0]['error']}"
        return result
    dt = str(DENSITY_THRESHOLD).replace(".", "_")
    for k in args.ks:
        result["spectra"][k] = _npz_frame(tmp / f"{NAME}.spectra.k_{k}.dt_{dt}.consensus.df.npz")
    stats = np.load(out / NAME / f"{NAME}.k_selection_stats.df.npz", allow_pickle=True)
    columns = [str(c) for c in stats["columns"]]
    result["per_k"] = [dict(zip(columns, map(float, row), strict=True)) for row in stats["data"]]
    return result


def run_sweep(
    matrix: Path,
    ks: list[int],
    replicates: int,
    max_iter: int,
    args: argparse.Namespace,
    study: Path,
    extra: list[str] = (),
) -> dict:
    """``bignmf sweep`` as a user runs it, in a process timed from its start."""
    shutil.rmtree(study, ignore_errors=True)
    options = {
        "-k": ",".join(map(str, ks)),
        "--replicates": replicates,
        "--out": study,
        "--seed": args.seed,
        "--solver": "hals",
        "--init": "random",
        "--max-iter": max_iter,
        "--tol": args.tol,
    }
    words = [str(w) for pair in options.items() for w in pair] + ["--no-progress", *extra]
    cmd = [sys.executable, "-c", memory_peak.FIT, "sweep", str(matrix), *words]
    engine._say(f"== bignmf sweep {matrix.name} -k {options['-k']} --replicates {replicates}")
    sampled = memory_peak.run_sampled(cmd, 0.05, _env(), timeout=args.timeout)
    engine._say(f"  {sampled['seconds']:.1f} s, peak {sampled['tree_peak'] / MiB:.0f} MiB")
    result = {
        "method": "bignmf",
        "command": "bignmf sweep " + " ".join([str(matrix.name), *words]),
        "seconds": sampled["seconds"],
        "peak": sampled["tree_peak"],
        "driver_peak": sampled["driver_peak"],
        "worker_peak": sampled["worker_peak"],
        "processes": sampled["processes"],
        "spectra": {},
    }
    if sampled["timed_out"] or sampled["returncode"] != 0:
        tail = sampled["output"].strip().splitlines()[-5:] or ["no output"]
        result["error"] = "killed (timeout)" if sampled["timed_out"] else " / ".join(tail)[:600]
        engine._say(f"  failed: {result['error']}")
        return result
    import zarr

    summary = json.loads((study / "summary.json").read_text())
    per_k = "per_k" if "per_k" in summary else "table"  # the table per k, by either name
    result["summary"] = {key: value for key, value in summary.items() if key != per_k}
    result["per_k"] = summary.get(per_k, [])
    for k in ks:
        path = study / "consensus" / f"k{k}" / "H.zarr"
        if path.exists():
            result["spectra"][k] = np.asarray(zarr.open_array(path, mode="r")[...])
    return result


def _score(result: dict, k: int, programs: np.ndarray) -> None:
    spectra = result.get("spectra", {}).get(k)
    if spectra is not None:
        result["agreement"] = agreement(spectra, programs)
    result["spectra"] = sorted(result.get("spectra", {}))  # the ks found; arrays stay out


def chosen_k(result: dict) -> int | None:
    """The k the sweep's summary says it chose, under whichever name it uses."""
    summary = result.get("summary") or {}
    for key in ("chosen_k", "k_chosen", "best_k", "selected_k", "k"):
        if isinstance(summary.get(key), int):
            return summary[key]
    return None


# ---------------------------------------------------------------------------------------------
# The larger matrix, bignmf alone
# ---------------------------------------------------------------------------------------------


def cnmf_dense_bytes(cells: int, genes: int) -> dict:
    """What cNMF's ``k_selection_plot`` allocates at once (float64 cells × genes arrays)."""
    one = cells * genes * 8
    return {"array": one, "at_once": 3 * one}


def run_large(args: argparse.Namespace, scratch: Path) -> dict:
    """``bignmf sweep`` of the larger store on a LocalCluster of memory-limited workers."""
    import psutil
    import zarr

    store, programs = large_store(args)
    group = zarr.open_group(store, mode="r")
    nnz = int(group["data"].shape[0])
    cluster = scratch / "cluster.yaml"
    cluster.write_text(
        "kind: local\n"
        f"workers: {args.large_workers}\nthreads: 1\nmemory_limit: {args.large_memory_limit}\n"
    )
    result = run_sweep(
        store,
        args.large_ks,
        args.large_replicates,
        args.large_max_iter,
        args,
        scratch / "large-study",
        ["--cluster", str(cluster)],
    )
    k = args.types + args.activity
    _score(result, k, programs)
    result.update(
        cells=args.large_cells,
        genes=args.genes,
        nnz=nnz,
        stored_bytes=nnz * 8 + (args.large_cells + 1) * 8,
        workers=args.large_workers,
        memory_limit=args.large_memory_limit,
        ram=psutil.virtual_memory().total,
        cnmf_dense=cnmf_dense_bytes(args.large_cells, args.genes),
        ks=args.large_ks,
        replicates=args.large_replicates,
        max_iter=args.large_max_iter,
    )
    return result


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Both methods on the planted counts, then (``--large-cells``) bignmf on the larger matrix.

    Returns
    -------
    dict
        The settings, ``matrix`` (shape, nnz), ``cnmf`` and ``bignmf`` (``seconds``, ``peak``,
        ``agreement``, ``per_k``...; cNMF's ``steps``, or a ``note`` when it was skipped),
        ``ratio`` and ``goal``, and ``large`` when run.
    """
    import h5py

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "study-runs"
    scratch.mkdir(exist_ok=True)
    counts, programs = counts_h5ad(args)
    k = args.types + args.activity
    if k not in args.ks:
        raise ValueError(f"the k list {args.ks} must include the planted K = {k}")
    with h5py.File(counts, "r") as f:
        nnz = int(f["X"]["data"].shape[0])
    result: dict = {
        "cells": args.cells,
        "genes": args.genes,
        "nnz": nnz,
        "planted_k": k,
        "ks": args.ks,
        "replicates": args.replicates,
        "seed": args.seed,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "cnmf_workers": args.cnmf_workers,
        "cores": os.cpu_count(),
    }
    why = None if "cnmf" in args.peers else "not asked for (`--peers`)"
    why = why or cnmf_missing()
    if why:
        result["cnmf"] = {"method": "cnmf", "note": f"skipped: {why}"}
        normalised = normalise(counts, workdir / (counts.stem + ".norm.h5ad"))
    else:
        result["cnmf"] = run_cnmf(counts, args, scratch)
        normalised = Path(result["cnmf"]["normalised"])
        if not normalised.exists():  # prepare failed: bignmf still runs, on our normalisation
            normalised = normalise(counts, workdir / (counts.stem + ".norm.h5ad"))
    scales, frobenius_sq = gene_scales(counts, normalised)
    planted = programs * scales  # into the normalised space
    for row in result["cnmf"].get("per_k", []):  # its sum of squares, as bignmf's relative error
        row["relative_error"] = math.sqrt(row["prediction_error"] / frobenius_sq)
    result["bignmf"] = run_sweep(
        normalised, args.ks, args.replicates, args.max_iter, args, scratch / "bignmf-study"
    )
    for method in ("cnmf", "bignmf"):
        _score(result[method], k, planted)
    result["bignmf"]["chosen_k"] = chosen_k(result["bignmf"])
    result["ratio"], result["goal"] = verdict(result)
    if args.large_cells:
        try:
            result["large"] = run_large(args, scratch)
        except Exception as error:  # reported; the side-by-side figures stand
            result["large"] = {"error": f"{type(error).__name__}: {error}"}
        result["goal"]["large"] = large_verdict(result["large"])
    return result


def verdict(result: dict) -> tuple[dict, dict]:
    """The wall-time ratios and issue 14's goal on the side-by-side matrix."""
    cn, bn = result["cnmf"], result["bignmf"]
    if "seconds" not in cn or "error" in cn or "error" in bn:
        return {}, {"accuracy": None, "speed": None}
    ratio = {
        "pipeline": bn["seconds"] / cn["seconds"],
        "replaced": bn["seconds"] / cn["replaced_seconds"],
    }
    a, b = cn.get("agreement"), bn.get("agreement")
    accurate = None
    if a and b:  # at least cNMF's, to 0.001 of a correlation
        accurate = b["min"] >= a["min"] - 1e-3 and b["median"] >= a["median"] - 1e-3
    return ratio, {"accuracy": accurate, "speed": 1 / ratio["replaced"] >= 3}


def large_verdict(large: dict) -> bool | None:
    """Done, every worker within its memory limit, the whole tree within the RAM."""
    if "error" in large or "seconds" not in large:
        return False
    limit = _bytes(large["memory_limit"], large["ram"], large["workers"])
    return large["worker_peak"] <= limit and large["peak"] < large["ram"]


def _bytes(limit: str, ram: int, workers: int) -> float:
    """A LocalCluster ``memory_limit`` (``4GiB``, ``0.25``, ``auto``) in bytes."""
    text = str(limit).strip()
    if text == "auto":
        return ram / workers
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "GB": 1e9, "MB": 1e6}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    value = float(text)
    return value * ram if value <= 1 else value


def markdown(result: dict) -> str:
    """Settings, the comparison table, cNMF's steps, per-k figures, the goal's verdicts."""
    k = result["planted_k"]
    cn, bn = result["cnmf"], result["bignmf"]
    matrix = f"{result['cells']:,} × {result['genes']:,}"
    ks = ",".join(map(str, result["ks"]))
    density = result["nnz"] / (result["cells"] * result["genes"]) if result["nnz"] else math.nan
    lines = [
        f"Planted single-cell counts, {matrix} ({result['nnz']:,} nonzeros, "
        f"{density:.1%} dense), K = {k} planted programs; k list {ks}, {result['replicates']} "
        f"replicates per k, seed {result['seed']}, at most {result['max_iter']} iterations "
        f"(cNMF's `max_NMF_iter`; bignmf `--max-iter`, `--tol {result['tol']:g}`), "
        f"{result['cores']} cores. Both factorize cNMF's variance-normalised counts (every gene "
        "kept). *Wall*: from each process's start (cNMF: its steps' processes, one after "
        f"another; `factorize` as {result['cnmf_workers']} worker processes at once); *peak*: "
        "the largest process tree's summed RSS (sampled); *r*: Pearson correlation of each "
        "planted program with its matched consensus spectrum at the planted K (min / median).",
        "",
        "| method | matrix | ks | replicates | wall s | peak RSS MiB | min r | median r "
        "| chosen / planted k |",
        "|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    lines.append(_row("cNMF " + _version("cnmf"), matrix, ks, result["replicates"], cn, k, None))
    lines.append(_row("bignmf sweep", matrix, ks, result["replicates"], bn, k, bn.get("chosen_k")))
    large = result.get("large")
    if large and "cells" in large:
        big = f"{large['cells']:,} × {large['genes']:,} (raw counts)"
        lines.append(
            _row(
                "bignmf sweep, LocalCluster",
                big,
                ",".join(map(str, large["ks"])),
                large["replicates"],
                large,
                k,
                chosen_k(large),
            )
        )
    lines.append("")
    ratio = result.get("ratio")
    if ratio:
        lines.append(
            f"**bignmf / cNMF wall time measured side by side in this run: "
            f"{ratio['replaced']:.2f}** (bignmf sweep {bn['seconds']:.1f} s ÷ cNMF's "
            f"factorize + combine + consensus {cn['replaced_seconds']:.1f} s, the steps a sweep "
            f"stands for; {1 / ratio['replaced']:.1f}× faster); {ratio['pipeline']:.2f} against "
            f"cNMF's whole pipeline ({cn['seconds']:.1f} s, prepare and k_selection_plot "
            "included)."
        )
    else:
        lines.append(f"- No ratio: {cn.get('note') or cn.get('error') or bn.get('error')}.")
    if "steps" in cn:
        lines += [
            "",
            "cNMF's steps:",
            "",
            "| step | s | peak RSS MiB | processes |",
            "|---|--:|--:|--:|",
        ]
        lines += [
            f"| {s['step']} | {s['seconds']:.1f} | {s['tree_peak'] / MiB:,.0f} | {s['processes']} |"
            for s in cn["steps"]
        ]
    lines += ["", *per_k_lines(result), "", *goal_lines(result)]
    for method in (cn, bn, large or {}):
        if method.get("error"):
            lines.append(f"- {method.get('method', 'large')} failed: {method['error']}")
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _row(name, matrix, ks, reps, r, k, chosen) -> str:
    if "seconds" not in r:
        return f"| {name} | {matrix} | {ks} | {reps} | – | – | – | – | {r.get('note', '')} |"
    a = r.get("agreement") or {}
    r_min = f"{a['min']:.4f}" if a else "–"
    r_med = f"{a['median']:.4f}" if a else "–"
    picked = f"{chosen} / {k}" if chosen is not None else f"– / {k}"
    return (
        f"| {name} | {matrix} | {ks} | {reps} | {r['seconds']:,.1f} | "
        f"{r['peak'] / MiB:,.0f} | {r_min} | {r_med} | {picked} |"
    )


def per_k_lines(result: dict) -> list[str]:
    """Stability and error per k, as each method reports them."""
    lines = [
        "Per k (cNMF's `k_selection_plot` statistics; bignmf's `summary.json`):",
        "",
        "| k | cNMF silhouette | cNMF consensus rel. error | bignmf stability "
        "| bignmf consensus rel. error | bignmf median replicate rel. error "
        "| bignmf outliers | bignmf median iterations |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    cn = {int(row["k"]): row for row in result["cnmf"].get("per_k", [])}
    bn = {int(row["k"]): row for row in result["bignmf"].get("per_k", []) if "k" in row}
    for k in result["ks"]:
        c, b = cn.get(k, {}), bn.get(k, {})
        lines.append(
            f"| {k} | {_f(c.get('silhouette'))} | {_f(c.get('relative_error'))} | "
            f"{_f(b.get('stability'))} | {_f(b.get('consensus_error'))} | "
            f"{_f(b.get('error'))} | {b.get('outliers', '–')} | {b.get('iterations', '–')} |"
        )
    return lines


def _f(x, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def goal_lines(result: dict) -> list[str]:
    """Issue 14's goal, plainly: met or not, and why."""
    goal = result.get("goal", {})
    cn, bn = result["cnmf"].get("agreement"), result["bignmf"].get("agreement")

    def said(value):
        return "not measured" if value is None else "**met**" if value else "**not met**"

    lines = []
    if cn and bn:
        lines.append(
            f"- Accuracy at least cNMF's (min and median r each ≥ cNMF's − 0.001): "
            f"{said(goal.get('accuracy'))} (bignmf {bn['min']:.4f} / {bn['median']:.4f}, "
            f"cNMF {cn['min']:.4f} / {cn['median']:.4f})."
        )
    else:
        lines.append(f"- Accuracy at least cNMF's: {said(goal.get('accuracy'))}.")
    speed = result.get("ratio", {}).get("replaced")
    lines.append(
        f"- ≥ 3× faster than cNMF on the same {result['cores']} cores: {said(goal.get('speed'))}"
        + (f" ({1 / speed:.1f}×)." if speed else ".")
    )
    large = result.get("large")
    if large is None:
        lines.append("- Larger matrix within the workers' memory: not run in this profile.")
    elif "cells" not in large or "seconds" not in large:
        lines.append(f"- Larger matrix: **not met** ({large.get('error')}).")
    else:
        limit = _bytes(large["memory_limit"], large["ram"], large["workers"])
        dense = large["cnmf_dense"]
        lines.append(
            f"- Larger matrix ({large['cells']:,} × {large['genes']:,}, {large['nnz']:,} "
            f"nonzeros, {large['stored_bytes'] / GiB:.1f} GiB as CSR float32) within the "
            f"workers' memory: {said(goal.get('large'))} — largest worker "
            f"{large['worker_peak'] / GiB:.2f} GiB against its limit "
            f"{limit / GiB:.2f} GiB ({large['workers']} workers), the whole tree "
            f"{large['peak'] / GiB:.2f} GiB against {large['ram'] / GiB:.1f} GiB of RAM; "
            f"{large['seconds'] / 60:.1f} min."
        )
        lines.append(
            f"- cNMF not run on it: its `k_selection_plot` computes `((norm_counts.X.todense() "
            f"- usage.dot(spectra))**2)` — a dense float64 {large['cells']:,} × "
            f"{large['genes']:,} array is {dense['array'] / GiB:.1f} GiB, and the densified "
            f"counts, the prediction and their difference are alive together: "
            f"{dense['at_once'] / GiB:.0f} GiB against {large['ram'] / GiB:.0f} GiB of RAM."
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The part's options; ``--quick`` is 5,000 cells × 1,000 genes, no larger matrix."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5,000 cells x 1,000 genes, 8 replicates, no larger matrix",
    )
    parser.add_argument("--cells", type=int, help="cells (20000; quick 5000)")
    parser.add_argument("--genes", type=int, help="genes (2000; quick 1000)")
    parser.add_argument("--types", type=int, default=8, help="cell types: identity programs (8)")
    parser.add_argument("--activity", type=int, default=2, help="activity programs (2)")
    parser.add_argument("--library", type=float, default=400.0, help="median counts a cell (400)")
    parser.add_argument("--ks", help="k list (7,10,13); must include types + activity")
    parser.add_argument("--replicates", type=int, help="replicates per k (20; quick 8)")
    parser.add_argument(
        "--max-iter",
        type=int,
        default=1000,
        help="iterations at most per fit (1000: cNMF's max_NMF_iter)",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-6,
        help="bignmf's --tol (1e-6: its relative rule; see the module's notes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnmf-workers", type=int, default=2, help="cNMF factorize processes")
    parser.add_argument("--peers", default="cnmf", help="cnmf, or none")
    parser.add_argument("--large-cells", type=int, help="larger matrix's cells (1500000; quick 0)")
    parser.add_argument(
        "--large-library",
        type=float,
        default=150.0,
        help="its median counts a cell (150: ~5%% dense)",
    )
    parser.add_argument("--large-ks", default="10", help="its k list (10)")
    parser.add_argument("--large-replicates", type=int, default=2, help="its replicates (2)")
    parser.add_argument("--large-max-iter", type=int, default=60, help="its iterations (60)")
    parser.add_argument("--large-workers", type=int, default=2, help="LocalCluster workers (2)")
    parser.add_argument("--large-memory-limit", default="4GiB", help="per worker (4GiB)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds a step may run")
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.cells = args.cells or (5_000 if args.quick else 20_000)
    args.genes = args.genes or (1_000 if args.quick else 2_000)
    args.ks = [int(k) for k in (args.ks or "7,10,13").split(",")]
    args.replicates = args.replicates or (8 if args.quick else 20)
    if args.large_cells is None:
        args.large_cells = 0 if args.quick else 1_500_000
    args.large_ks = [int(k) for k in args.large_ks.split(",")]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip() not in ("", "none")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
