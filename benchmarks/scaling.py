"""Scaling: seconds per iteration with 1 vs 2 worker processes, and as the matrix grows.

Two measurements, each with its variants run side by side, round-robin, in one process
(``engine.round_robin``), medians over iterations 2.. of a run, then over rounds:

``workers``
    ``bignmf.nmf`` on the largest store with an embedded LocalCluster of 1 and of 2
    single-threaded worker processes (``bignmf.cluster.scheduler_for('local', n_workers=...)``,
    as ``bignmf fit --workers N`` starts it; 127.0.0.1). Both clusters are started once and
    kept for every round. Speed-up = s/iter(1) ÷ s/iter(2), paired per round.
``nnz``
    The same fit on 4 planted stores with the same columns, k and nonzeros per row, rows (so
    nonzeros) doubling, on one LocalCluster of 2 workers; a least-squares line
    s/iter = a + b·nnz, its R² and each size's residual: the engine's cost should be linear in
    the nonzeros.

All fits are HALS from the same kind of initial (W, H) (``engine.initial_factors``), ``tol=0``,
W in Zarr next to the run (as on any distributed scheduler).

    python benchmarks/scaling.py              # 10M..80M nonzeros, ~6 min
    python benchmarks/scaling.py --quick      # 2M..16M nonzeros, ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/scaling.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine
import memory_peak

from bignmf.cluster.config import scheduler_for


def fit_on(store, scheduler, args: argparse.Namespace, clock=engine.tree_cpu) -> engine.Run:
    """``args.iters`` HALS iterations of ``store`` on ``scheduler``; per-iteration seconds."""
    m, n = store.shape
    W0, H0 = engine.initial_factors(m, n, args.k, store.value_sum, args.seed)
    workdir = tempfile.mkdtemp(prefix="bignmf-scaling-", dir=args.workdir)
    try:
        return engine.run_bignmf(
            store.path,
            args.k,
            W0,
            H0,
            args.iters,
            scheduler=scheduler,
            clock=clock,
            workdir=workdir,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(runs: dict[str, list[engine.Run]]) -> dict[str, dict]:
    """Median wall and CPU seconds per iteration of each variant, and each round's wall."""
    out = {}
    for name, rs in runs.items():
        pairs = [engine.per_iteration(r) for r in rs]
        out[name] = {
            "wall": statistics.median(p[0] for p in pairs),
            "cpu": statistics.median(p[1] for p in pairs),
            "wall_rounds": [p[0] for p in pairs],
        }
    return out


def workers_part(store, clients: dict, args: argparse.Namespace) -> dict:
    """s/iteration with 1 and 2 worker processes on the same store, and the paired speed-up."""
    variants = {_workers(w): _fit_variant(store, clients[w], args) for w in (1, 2)}
    figures = summarize(engine.round_robin(variants, args.repeat))
    one, two = figures[_workers(1)]["wall_rounds"], figures[_workers(2)]["wall_rounds"]
    paired = statistics.median(a / b for a, b in zip(one, two, strict=True))
    return {"figures": figures, "speedup": paired, "matrix": _matrix(store)}


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict:
    """Least-squares ``y = a + b·x``: coefficients, R² and residuals (y − fit)."""
    b, a = np.polyfit(x, y, 1)
    fitted = a + b * x
    residuals = y - fitted
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residuals**2)) / total if total > 0 else float("nan")
    return {
        "intercept": float(a),
        "slope": float(b),
        "r2": r2,
        "residuals": residuals.tolist(),
        "fitted": fitted.tolist(),
    }


def nnz_part(stores: list, client, args: argparse.Namespace) -> dict:
    """s/iteration of each store on one LocalCluster, and the line through them."""
    variants = {f"{s.nnz:,} nnz": _fit_variant(s, client, args) for s in stores}
    figures = summarize(engine.round_robin(variants, args.repeat))
    nnz = np.array([s.nnz for s in stores], dtype=float)
    wall = np.array([figures[f"{s.nnz:,} nnz"]["wall"] for s in stores])
    return {
        "matrices": [_matrix(s) for s in stores],
        "s_per_iter": wall.tolist(),
        "cpu_per_iter": [figures[f"{s.nnz:,} nnz"]["cpu"] for s in stores],
        "fit": linear_fit(nnz, wall),
    }


def _fit_variant(store, client, args) -> Callable[[], engine.Run]:
    return lambda: fit_on(store, client, args)


def _matrix(store) -> dict:
    info = store.info()
    keys = ("shape", "nnz", "row_blocks", "bytes_uncompressed", "bytes_on_disk")
    return {key: info[key] for key in keys}


def stores_for(args: argparse.Namespace) -> list:
    """The planted stores: ``args.rows`` × 2^i rows, i < ``args.sizes`` (cached)."""
    return [
        memory_peak.planted_store(
            args.workdir, args.rows << i, args.cols, args.nnz_per_row, args.chunk_size, args.k
        )[0]
        for i in range(args.sizes)
    ]


def run(args: argparse.Namespace) -> dict:
    """Both measurements; the workers one on the largest store."""
    stores = stores_for(args)
    result = {
        "k": args.k,
        "iters": args.iters,
        "repeat": args.repeat,
        "cols": args.cols,
        "nnz_per_row": args.nnz_per_row,
        "chunk_size": args.chunk_size,
        "workers": args.workers,
        "loadavg_before": os.getloadavg(),
    }
    with contextlib.ExitStack() as stack:
        # every cluster started once and kept for all rounds (an idle one costs only heartbeats)
        clients = {w: stack.enter_context(scheduler_for("local", n_workers=w))
                   for w in sorted({1, 2, args.workers})}  # fmt: skip
        result["workers_scaling"] = workers_part(stores[-1], clients, args)
        result["nnz_scaling"] = nnz_part(stores, clients[args.workers], args)
    result["loadavg_after"] = os.getloadavg()
    return result


def markdown(result: dict) -> str:
    """The two tables in Markdown."""
    ws, ns = result["workers_scaling"], result["nnz_scaling"]
    mx = ws["matrix"]
    lines = [
        f"HALS, k = {result['k']}, {result['iters']} iterations per run, median over iterations "
        f"2–{result['iters']}, then over {result['repeat']} round(s) (variants round-robin); "
        f"planted float32 matrices, {result['cols']:,} columns, {result['nnz_per_row']:g} "
        f"nonzeros per row, lz4, chunks of {result['chunk_size']:,}; W in Zarr. Load average "
        f"before/after: {result['loadavg_before'][0]:.1f} / {result['loadavg_after'][0]:.1f}.",
        "",
        f"**Workers** (LocalCluster, 1 thread each; matrix {mx['shape'][0]:,} × "
        f"{mx['shape'][1]:,}, {mx['nnz']:,} nonzeros, {mx['row_blocks']} row blocks):",
        "",
        "| workers | s/iter | CPU s/iter (all processes) | speed-up (paired) |",
        "|--:|--:|--:|--:|",
    ]
    for name, f in ws["figures"].items():
        speedup = f"{ws['speedup']:.2f}" if name.startswith("2") else "1.00"
        lines.append(f"| {name.split()[0]} | {f['wall']:.3f} | {f['cpu']:.3f} | {speedup} |")
    fit = ns["fit"]
    lines += [
        "",
        f"**Matrix size** (LocalCluster, {result['workers']} workers × 1 thread): s/iter = "
        f"{fit['intercept']:.3f} s + {fit['slope'] * 1e6:.4f} s per million nonzeros, "
        f"R² = {fit['r2']:.4f}.",
        "",
        "| rows | nonzeros | row blocks | uncompressed MB | s/iter | CPU s/iter | fit | "
        "residual | residual % |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for i, m in enumerate(ns["matrices"]):
        y, f_, r = ns["s_per_iter"][i], fit["fitted"][i], fit["residuals"][i]
        lines.append(
            f"| {m['shape'][0]:,} | {m['nnz']:,} | {m['row_blocks']} | "
            f"{m['bytes_uncompressed'] / 1e6:,.0f} | {y:.3f} | {ns['cpu_per_iter'][i]:.3f} | "
            f"{f_:.3f} | {r:+.3f} | {100 * r / f_:+.1f} |"
        )
    return "\n".join(lines)


def plot(result: dict, out: Path) -> Path | None:
    """s/iteration against nonzeros with the fitted line, and the workers bars: ``scaling.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is the optional 'plots' extra
        return None
    ns, ws = result["nnz_scaling"], result["workers_scaling"]
    nnz = np.array([m["nnz"] for m in ns["matrices"]]) / 1e6
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(2, 1))
    ax1.plot(nnz, ns["s_per_iter"], "o", label="measured (median)")
    xs = np.linspace(0, nnz.max() * 1.05, 50)
    fit = ns["fit"]
    ax1.plot(
        xs,
        fit["intercept"] + fit["slope"] * 1e6 * xs,
        "-",
        lw=1,
        label=f"a + b·nnz, R² = {fit['r2']:.4f}",
    )
    ax1.set_xlabel("nonzeros (millions)")
    ax1.set_ylabel("seconds per iteration")
    ax1.set_title(f"{result['workers']} workers: s/iteration vs nonzeros")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    names = list(ws["figures"])
    ax2.bar(names, [ws["figures"][n]["wall"] for n in names], color=["C1", "C0"])
    ax2.set_ylabel("seconds per iteration")
    ax2.set_title(f"{ws['matrix']['nnz']:,} nnz: speed-up {ws['speedup']:.2f}×")
    fig.tight_layout()
    return engine.save_png(fig, out / "scaling.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The part's options; ``--quick`` fills smaller defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2M..16M nonzeros, ~1 minute")
    parser.add_argument(
        "--rows", type=int, help="rows of the smallest matrix (200000; quick 41120)"
    )
    parser.add_argument("--sizes", type=int, default=4, help="matrices, rows doubling (4)")
    parser.add_argument("--cols", type=int, default=20_000, help="columns (20000)")
    parser.add_argument("--nnz-per-row", type=float, default=50, help="(50)")
    parser.add_argument("--chunk-size", type=int, help="store chunk (2**20; quick 2**17)")
    parser.add_argument("-k", type=int, default=20, help="rank (20)")
    parser.add_argument("--iters", type=int, help="iterations per run (6; quick 4)")
    parser.add_argument("--repeat", type=int, help="rounds (3; quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the nnz series (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    defaults = (
        dict(rows=41_120, chunk_size=1 << 17, iters=4, repeat=1)
        if args.quick
        else dict(rows=200_000, chunk_size=1 << 20, iters=6, repeat=3)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(markdown(result))
    plot(result, Path(args.out))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
