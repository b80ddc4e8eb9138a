"""Checkpoint and resume overhead: seconds per iteration with checkpoints vs without.

Fits the same planted store three ways side by side — no checkpoints, bignmf's default
frequency (every 10 iterations), and a checkpoint after every iteration — and reports seconds
per iteration (checkpoint time included) and their ratios to the run without checkpoints, then
the time ``resume`` takes to reload the newest checkpoint.

    python benchmarks/checkpoint_overhead.py            # 200k x 20k, ~10M nonzeros, k = 20
    python benchmarks/checkpoint_overhead.py --quick    # 50k x 10k, ~2.5M nonzeros
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import bignmf
from bignmf.datasets.synthetic import make_planted

VARIANTS = {"none": None, "default (every 10)": 10, "every iteration": 1}


def _store(args: argparse.Namespace) -> bignmf.CSRStore:
    path = Path(args.workdir) / f"ckpt-{args.rows}x{args.cols}-{args.nnz_per_row}.zarr"
    if path.exists():
        return bignmf.open_matrix(path)
    return make_planted(path, args.rows, args.cols, 20, nnz_per_row=args.nnz_per_row, seed=0)


def _fit(store, every: int | None, iters: int, scheduler: str) -> tuple[float, float]:
    """Seconds per iteration (wall clock over the loop, checkpoints included) and resume time."""
    run_dir = Path(tempfile.mkdtemp(prefix="bignmf-ckpt-bench-"))
    try:
        options = {"init": "random", "random_state": 0, "tol": 0, "scheduler": scheduler}
        if every is None:
            start = time.perf_counter()
            bignmf.nmf(store, 20, max_iter=iters, **options)
            return (time.perf_counter() - start) / iters, float("nan")
        start = time.perf_counter()
        bignmf.nmf(
            store,
            20,
            max_iter=iters,
            checkpoint_dir=run_dir / "run",
            checkpoint_every=every,
            checkpoint_seconds=None,
            **options,
        )
        per_iteration = (time.perf_counter() - start) / iters
        start = time.perf_counter()
        bignmf.resume(run_dir / "run", max_iter=iters, scheduler=scheduler)  # nothing left to do
        return per_iteration, time.perf_counter() - start
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The script's options; ``--quick`` makes the matrix and the run smaller."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cols", type=int, default=20_000)
    parser.add_argument("--nnz-per-row", type=int, default=50)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--workdir", default="benchmarks/_data")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.iters, args.repeat = 50_000, 10_000, 10, 2
    return args


def run(args: argparse.Namespace) -> dict:
    """Fit the store of ``args`` with every variant, round robin; seconds and resume times.

    Returns
    -------
    dict
        ``matrix`` (shape, nnz), the settings, and ``rows``: per variant ``checkpoints``,
        ``s_per_iter`` (median over rounds), ``ratio`` (to no checkpoints) and ``resume_s``
        (NaN for the run without checkpoints).
    """
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    store = _store(args)
    seconds = {name: [] for name in VARIANTS}
    resumes = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):  # round robin: the machine is shared and noisy
        for name, every in VARIANTS.items():
            per_iteration, resume_seconds = _fit(store, every, args.iters, args.scheduler)
            seconds[name].append(per_iteration)
            resumes[name].append(resume_seconds)
    base = statistics.median(seconds["none"])
    rows = []
    for name in VARIANTS:
        median = statistics.median(seconds[name])
        rows.append(
            {
                "checkpoints": name,
                "s_per_iter": median,
                "ratio": median / base,
                "resume_s": statistics.median(resumes[name]),
            }
        )
    return {
        "matrix": {"shape": list(store.shape), "nnz": int(store.nnz)},
        "iters": args.iters,
        "scheduler": args.scheduler,
        "repeat": args.repeat,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """The matrix line and the table, as the script prints them."""
    m, n = result["matrix"]["shape"]
    lines = [
        f"matrix {m:,} x {n:,}, {result['matrix']['nnz']:,} nonzeros, k = 20, "
        f"{result['iters']} iterations, scheduler {result['scheduler']}, "
        f"median of {result['repeat']}",
        "",
        "| checkpoints | s/iteration | ratio to none | resume (load newest) s |",
        "|---|--:|--:|--:|",
    ]
    for row in result["rows"]:
        shown = "–" if np.isnan(row["resume_s"]) else f"{row['resume_s']:.2f}"
        lines.append(
            f"| {row['checkpoints']} | {row['s_per_iter']:.3f} | {row['ratio']:.2f} | {shown} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    print(markdown(run(parse_args(argv))))


if __name__ == "__main__":
    main()
