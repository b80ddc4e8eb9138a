"""Peak memory of ``bignmf fit`` against the size of the matrix: it must stay flat.

Runs the command-line ``bignmf fit`` (default scheduler: an embedded LocalCluster of one
single-threaded worker process per core) in a subprocess on planted matrices of 1×, 2×, 4× and 8×
a fixed *budget* of uncompressed matrix bytes (same columns and nonzeros per row, rows doubling),
and samples the resident set of the whole process tree — the driver and every worker process —
while it runs. Reported per matrix: the peak of the tree's summed RSS (sampled), the sum of each
process's own peak (``VmHWM``, an upper bound on the first), the driver's and the largest worker's
peaks, and seconds per iteration (from the run's ``metrics.jsonl``).

``--largest`` also factorizes one matrix larger than this machine's RAM (uncompressed; or the
given number of GiB), with ``--init random`` and a couple of iterations, measured the same way.

    python benchmarks/memory_peak.py                     # budget 256 MiB: 32M..256M nonzeros
    python benchmarks/memory_peak.py --quick             # budget 16 MiB: 2M..16M nonzeros
    python benchmarks/memory_peak.py --largest           # + one matrix larger than RAM (long)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/memory_peak.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine

MiB = 2**20
GiB = 2**30
MULTIPLES = (1, 2, 4, 8)
# ``bignmf fit`` as the ``bignmf`` command runs it (``bignmf.cli.main``), which then writes its
# own peak RSS for ``run_sampled``: sampling alone would miss whatever the driver reaches after
# the last sample. VmHWM, not ru_maxrss: on Linux a process started by vfork + exec (as
# subprocess does) inherits its parent's high-water mark into ru_maxrss, so a large parent would
# show as a large driver; VmHWM belongs to the process's own address space.
FIT = """
import os, resource, sys
from bignmf.cli import main
try:
    code = main(sys.argv[1:])
finally:
    try:
        with open("/proc/self/status") as f:
            peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    except OSError:  # no /proc: ru_maxrss, in bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["BIGNMF_BENCH_PEAK"], "w") as f:
        f.write(str(peak))
sys.exit(code)
"""
# Bytes of one stored nonzero: float32 value + int32 column index; indptr adds 8 per row.
NNZ_BYTES = 8


# ---------------------------------------------------------------------------------------------
# Sampling a process tree
# ---------------------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """A live process's peak resident set so far (``VmHWM`` of ``/proc/PID/status``), in bytes.

    Parameters
    ----------
    pid : int
        Process id.

    Returns
    -------
    int
        Bytes; 0 where the process is gone or the platform has no ``/proc``.
    """
    with contextlib.suppress(OSError, StopIteration):
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return 0


class TreeSampler:
    """Peak RSS of a process and all its descendants, sampled every ``interval`` seconds.

    Each sample sums the current RSS of every live process of the tree (``tree_peak`` is the
    largest sum) and reads each process's ``VmHWM``, which the kernel keeps between samples, so
    ``peaks`` (per process id) misses only what a process reaches in its last ``interval``.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.tree_peak = 0
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        """Take one sample of the tree (processes that vanish meanwhile are skipped)."""
        import psutil

        processes = [self.root]
        with contextlib.suppress(psutil.Error):
            processes += self.root.children(recursive=True)
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                rss = process.memory_info().rss
                total += rss
                peak = max(rss, vm_hwm(process.pid), self.peaks.get(process.pid, 0))
                self.peaks[process.pid] = peak
                self.names.setdefault(process.pid, " ".join(process.cmdline()[1:4]))
        self.tree_peak = max(self.tree_peak, total)

    def kill(self) -> None:
        """Kill the root process and its descendants (children first: none is left orphaned)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            for process in [*self.root.children(recursive=True), self.root]:
                with contextlib.suppress(psutil.Error):
                    process.kill()


def run_sampled(
    cmd: list[str], interval: float = 0.05, env: dict | None = None, timeout: float | None = None
) -> dict:
    """Run ``cmd``, sampling its process tree until it exits.

    Parameters
    ----------
    cmd : list of str
        The command. If it writes its own peak RSS in bytes to the file named by the
        environment variable ``BIGNMF_BENCH_PEAK`` (as :data:`FIT` does), that exact figure
        replaces the sampled one for the command's process.
    interval : float
        Seconds between samples.
    env : dict, optional
        The environment (default: this one's).
    timeout : float, optional
        Seconds after which the command and its descendants are killed (default: none).

    Returns
    -------
    dict
        ``returncode``, ``seconds``, ``tree_peak`` (largest sampled sum of the tree's RSS),
        ``sum_of_peaks`` (each process's own peak, summed: an upper bound of the tree's),
        ``driver_peak`` (the command's process), ``worker_peak`` (the largest descendant's),
        ``processes`` (how many the tree had), ``output`` (its last 4,000 characters),
        ``timed_out`` (killed after ``timeout`` seconds).
    """
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch, "peak")
        env = {**(os.environ if env is None else env), "BIGNMF_BENCH_PEAK": str(peak_file)}
        with open(Path(scratch, "log"), "w+b") as log:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            sampler = TreeSampler(proc.pid, interval)
            timed_out = False
            while proc.poll() is None:
                sampler.sample()
                if timeout is not None and time.perf_counter() - start > timeout:
                    timed_out = True
                    sampler.kill()
                    proc.wait()
                    break
                time.sleep(interval)
            seconds = time.perf_counter() - start
            log.seek(0)
            output = log.read().decode(errors="replace")
        driver = sampler.peaks.get(proc.pid, 0)
        if peak_file.exists():  # the command's own high-water mark, read as it exited
            driver = max(driver, int(peak_file.read_text()))
    children = [v for pid, v in sampler.peaks.items() if pid != proc.pid]
    return {
        "returncode": proc.returncode,
        "seconds": seconds,
        "tree_peak": max(sampler.tree_peak, driver),
        "sum_of_peaks": driver + sum(children),
        "driver_peak": driver,
        "worker_peak": max(children, default=0),
        "processes": 1 + len(children),
        "output": output[-4000:],
        "timed_out": timed_out,
    }


# ---------------------------------------------------------------------------------------------
# Data and fits
# ---------------------------------------------------------------------------------------------


def rows_for(nbytes: float, nnz_per_row: float) -> int:
    """Rows of a planted matrix with ``nnz_per_row`` whose CSR takes about ``nbytes``."""
    return max(int(nbytes / (nnz_per_row * NNZ_BYTES + 8)), 1)


def planted_store(
    workdir: str,
    rows: int,
    cols: int,
    nnz_per_row: float,
    chunk_size: int,
    k: int = 20,
    seed: int = 0,
):
    """A cached float32 lz4 planted store (``engine.ensure_store``'s cache in ``workdir``).

    Returns
    -------
    store : bignmf.store.csr.CSRStore
    write_s : float
        Seconds it took to generate and write (when it was made).
    """
    spec = SimpleNamespace(
        workdir=workdir,
        rows=rows,
        cols=cols,
        k=k,
        nnz_per_row=nnz_per_row,
        seed=seed,
        chunk_size=chunk_size,
    )
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return engine.ensure_store(spec)


def fit_command(
    store_path: str, run_dir: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()
) -> list[str]:
    """``bignmf fit`` (through :data:`FIT`) with a fixed number of iterations."""
    options = ["-k", args.k, "--out", run_dir, "--max-iter", args.iters, "--tol", 0, "--seed", 0,
               "--no-progress", "--top", 0, "--scheduler", args.scheduler]  # fmt: skip
    if args.workers:
        options += ["--workers", args.workers]
    return [sys.executable, "-c", FIT, "fit", str(store_path), *map(str, options), *extra]


def seconds_per_iteration(run_dir: Path) -> float:
    """Median of the run's per-iteration seconds, the first (warm-up) left out."""
    from bignmf.fit.outputs import read_metrics

    seconds = [r["seconds"] for r in read_metrics(run_dir)]
    return statistics.median(seconds[1:] or seconds) if seconds else float("nan")


def measure_fit(store, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict:
    """Fit ``store`` with ``bignmf fit`` in a subprocess; its tree's peaks and timings."""
    run_dir = Path(tempfile.mkdtemp(prefix="bignmf-mem-", dir=args.workdir)) / "run"
    try:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        result = run_sampled(fit_command(store.path, run_dir, args, extra), args.interval, env)
        if result["returncode"] != 0:
            raise RuntimeError(f"bignmf fit failed:\n{result['output']}")
        result["s_per_iter"] = seconds_per_iteration(run_dir)
        result["run_dir_bytes"] = _du(run_dir)
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    info = store.info()
    keys = ("shape", "nnz", "row_blocks", "bytes_uncompressed", "bytes_on_disk")
    result["matrix"] = {key: info[key] for key in keys}
    return result


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Peak RSS of ``bignmf fit`` for matrices of ``args.multiples`` × ``args.budget_mib``.

    Returns
    -------
    dict
        ``rows`` (one per matrix, as :func:`measure_fit` returns, with ``multiple``), the
        settings, and ``largest`` when ``args.largest`` is set.
    """
    stores = []
    for multiple in args.multiples:  # generate everything before the first timed fit
        rows = rows_for(multiple * args.budget_mib * MiB, args.nnz_per_row)
        store, write_s = planted_store(
            args.workdir, rows, args.cols, args.nnz_per_row, args.chunk_size, args.k
        )
        stores.append((multiple, store, write_s))
    results = []
    for multiple, store, write_s in stores:
        row = measure_fit(store, args)
        row.update(multiple=multiple, write_s=write_s)
        engine._say(
            f"  memory {multiple}x: tree peak {row['tree_peak'] / MiB:.0f} MiB, "
            f"{row['s_per_iter']:.2f} s/iter"
        )
        results.append(row)
    out = {
        "budget_mib": args.budget_mib,
        "k": args.k,
        "iters": args.iters,
        "cols": args.cols,
        "nnz_per_row": args.nnz_per_row,
        "chunk_size": args.chunk_size,
        "scheduler": args.scheduler,
        "interval": args.interval,
        # worker processes only on the embedded LocalCluster ('local': one per core by default)
        "workers": (args.workers or os.cpu_count()) if args.scheduler == "local" else 0,
        "rows": results,
    }
    if args.largest:
        out["largest"] = run_largest(args)
    return out


def run_largest(args: argparse.Namespace) -> dict:
    """One matrix larger than RAM (or ``args.largest_gib`` GiB uncompressed), fitted once."""
    import psutil

    ram = psutil.virtual_memory().total
    target = args.largest_gib * GiB if args.largest_gib else 1.1 * ram
    rows = rows_for(target, args.largest_nnz_per_row)
    start = time.perf_counter()
    store, write_s = planted_store(
        args.workdir, rows, args.largest_cols, args.largest_nnz_per_row, 1 << 20, args.k
    )
    engine._say(f"largest: {store.nnz:,} nonzeros ready after {time.perf_counter() - start:.0f} s")
    options = argparse.Namespace(**{**vars(args), "iters": args.largest_iters})
    row = measure_fit(store, options, extra=("--init", "random"))
    row.update(write_s=write_s, ram_bytes=ram, iters=args.largest_iters, k=args.k,
               workers=options.workers or os.cpu_count())  # fmt: skip
    return row


def markdown(result: dict) -> str:
    """The part's table and the largest run's paragraph, in Markdown."""
    lines = _series_markdown(result) if result["rows"] else []
    if result.get("largest"):
        lines += ["", _largest_markdown(result["largest"])]
    return "\n".join(lines).strip()


def _series_markdown(result: dict) -> list[str]:
    lines = [
        f"`bignmf fit -k {result['k']} --max-iter {result['iters']} --tol 0` in a subprocess "
        f"(scheduler `{result['scheduler']}`, {result['workers'] or 'no'} worker processes), "
        f"planted float32 matrices with {result['cols']:,} columns and "
        f"{result['nnz_per_row']:g} nonzeros per row, lz4, chunks of {result['chunk_size']:,}; "
        f"budget {result['budget_mib']:g} MiB of uncompressed CSR. *Tree peak*: the largest "
        "sum of the RSS of the driver and all its descendant processes (workers, resource "
        f"tracker) sampled every {result.get('interval', 0.05):g} s; *Σ peaks*: each process's "
        "own peak summed (VmHWM; the driver's exact, read by itself as it exits), an upper bound.",
        "",
        "| × budget | rows | nonzeros | row blocks | uncompressed MiB | on disk MiB | "
        "tree peak MiB | Σ peaks MiB | driver MiB | largest worker MiB | processes | s/iter | "
        "wall s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [_table_row(r, r["multiple"]) for r in result["rows"]]
    first, last = result["rows"][0], result["rows"][-1]
    growth = last["matrix"]["bytes_uncompressed"] / first["matrix"]["bytes_uncompressed"]
    lines += [
        "",
        f"From the smallest to the largest matrix: matrix ×{growth:.1f}; tree peak "
        f"{_growth(first, last, 'tree_peak')} (driver {_growth(first, last, 'driver_peak')}, "
        f"largest worker {_growth(first, last, 'worker_peak')}); the largest matrix's tree "
        f"peak is {last['tree_peak'] / last['matrix']['bytes_uncompressed']:.2f}× its "
        "uncompressed size.",
    ]
    return lines


def _largest_markdown(big: dict) -> str:
    mx = big["matrix"]
    return (
        f"**Largest matrix factorized here**: {mx['shape'][0]:,} × {mx['shape'][1]:,}, "
        f"{mx['nnz']:,} nonzeros, {mx['bytes_uncompressed'] / GiB:.1f} GiB uncompressed "
        f"({mx['bytes_uncompressed'] / big['ram_bytes']:.2f}× this machine's "
        f"{big['ram_bytes'] / GiB:.0f} GiB of RAM), {mx['bytes_on_disk'] / GiB:.1f} GiB on disk, "
        f"{mx['row_blocks']} row blocks; generated and written in {big['write_s']:.0f} s. "
        f"`bignmf fit -k {big['k']} --init random --max-iter {big['iters']} --tol 0` "
        f"({big['workers']} worker processes): {big['s_per_iter']:.1f} s per iteration (median "
        f"of iterations 2–{big['iters']}), {big['seconds']:.0f} s in all; tree peak "
        f"{big['tree_peak'] / MiB:,.0f} MiB (driver {big['driver_peak'] / MiB:,.0f}, largest "
        f"worker {big['worker_peak'] / MiB:,.0f} MiB), "
        f"{big['tree_peak'] / mx['bytes_uncompressed']:.3f}× the matrix."
    )


def _mib(nbytes: float) -> str:
    """MiB, with decimals only where the figure is small."""
    mib = nbytes / MiB
    return f"{mib:,.0f}" if mib >= 10 else f"{mib:.2f}"


def _growth(first: dict, last: dict, key: str) -> str:
    """``×ratio`` of ``last[key]`` to ``first[key]``; – without worker processes."""
    return f"×{last[key] / first[key]:.2f}" if first[key] else "–"


def _table_row(r: dict, label) -> str:
    mx = r["matrix"]
    return (
        f"| {label} | {mx['shape'][0]:,} | {mx['nnz']:,} | {mx['row_blocks']} | "
        f"{_mib(mx['bytes_uncompressed'])} | {_mib(mx['bytes_on_disk'])} | "
        f"{r['tree_peak'] / MiB:,.0f} | {r['sum_of_peaks'] / MiB:,.0f} | "
        f"{r['driver_peak'] / MiB:,.0f} | {r['worker_peak'] / MiB:,.0f} | {r['processes']} | "
        f"{r['s_per_iter']:.2f} | {r['seconds']:.1f} |"
    )


def plot(result: dict, out: Path) -> Path | None:
    """Peak RSS against the matrix's uncompressed size, as ``out/memory.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is the optional 'plots' extra
        return None
    rows = result["rows"]
    if not rows:
        return None
    size = np.array([r["matrix"]["bytes_uncompressed"] for r in rows]) / MiB
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("tree_peak", "whole tree (sampled sum)"),
        ("sum_of_peaks", "Σ peaks"),
        ("driver_peak", "driver"),
        ("worker_peak", "largest worker"),
    ):
        if any(r[key] for r in rows):  # no worker line without worker processes
            ax.plot(size, [r[key] / MiB for r in rows], marker="o", label=label)
    big = result.get("largest")
    if big:  # another shape: one point, marked apart
        x = big["matrix"]["bytes_uncompressed"] / MiB
        label = f"whole tree, --largest ({big['matrix']['nnz']:,} nnz)"
        ax.plot(x, big["tree_peak"] / MiB, "*", ms=12, color="C0", label=label)
        size = np.append(size, x)
    ax.plot(size, size, color="k", ls=":", lw=1, label="the matrix (uncompressed)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
    ax.set_xlabel("matrix, uncompressed CSR (MiB)")
    ax.set_ylabel("peak RSS (MiB)")
    where = f"{result['workers']} workers" if result["workers"] else result["scheduler"]
    ax.set_title(f"bignmf fit, k={result['k']}, {where}: peak RSS against matrix size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return engine.save_png(fig, out / "memory.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The part's options; ``--quick`` fills smaller defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="budget 16 MiB, ~1 minute")
    parser.add_argument("--budget-mib", type=float, help="1x, in MiB (256; quick 16)")
    parser.add_argument("--multiples", default="1,2,4,8", help="sizes in budgets (1,2,4,8)")
    parser.add_argument("--cols", type=int, default=20_000, help="columns (20000)")
    parser.add_argument("--nnz-per-row", type=float, default=50, help="(50)")
    parser.add_argument("--chunk-size", type=int, help="store chunk (2**20; quick 2**17)")
    parser.add_argument("-k", type=int, default=20, help="rank (20)")
    parser.add_argument("--iters", type=int, default=5, help="iterations per fit (5)")
    parser.add_argument("--scheduler", default="local", help="bignmf fit --scheduler (local)")
    parser.add_argument("--workers", type=int, help="bignmf fit --workers (one per core)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--largest", action="store_true", help="also a matrix > RAM (long)")
    parser.add_argument("--largest-gib", type=float, help="its uncompressed GiB (1.1x RAM)")
    parser.add_argument("--largest-cols", type=int, default=100_000, help="(100000)")
    parser.add_argument("--largest-nnz-per-row", type=float, default=200, help="(200)")
    parser.add_argument("--largest-iters", type=int, default=3, help="(3)")
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--out", default="benchmarks/_out")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.budget_mib is None:
        args.budget_mib = 16 if args.quick else 256
    if args.chunk_size is None:
        args.chunk_size = 1 << 17 if args.quick else 1 << 20
    # an empty list (--multiples '') skips the series: only --largest runs
    args.multiples = [float(x) if "." in x else int(x) for x in args.multiples.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    plot(result, Path(args.out))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
