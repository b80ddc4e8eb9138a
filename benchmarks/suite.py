"""The benchmark suite: every part in one run, one Markdown report and its PNG plots.

Parts (``--parts``, all by default), each the function of its own script:

``roofline``
    s/iteration against a plain SciPy loop (in memory) and against the raw chunk read/decode
    speed of the store (``engine.py`` parts ``roofline`` and ``disk``).
``sklearn``
    Relative error against wall time for bignmf (hals, mu, bpp) and scikit-learn (``NMF`` cd
    and mu, ``MiniBatchNMF``) on the same in-memory matrix and k; time to each target loss
    (``engine.py`` part ``sklearn``).
``memory``
    Peak RSS of ``bignmf fit`` (driver and workers) for matrices of 1, 2, 4, 8× a budget
    (``memory_peak.py``); ``--largest`` adds a matrix larger than RAM.
``scaling``
    s/iteration with 1 vs 2 worker processes, and against the number of nonzeros with a linear
    fit (``scaling.py``).
``checkpoint``
    Checkpoint and resume overhead (``checkpoint_overhead.py``).
``missing``
    Fits on the observed entries only (planted ratings): held-out RMSE against wall time for
    bignmf ``missing="zeros"`` (hals, mu) and Spark ALS, Surprise ``NMF`` and RcppML, whichever
    are installed; time to the best peer's RMSE (``missing.py``).
``sizes``
    Time to scikit-learn's best loss, s/iteration and peak RSS against matrix size (10^5 to
    10^8 nonzeros, three shapes): ``bignmf fit``, ``bignmf.nmf``, scikit-learn cd and mu and
    RcppML, each in its own process, and a plain SciPy loop's s/iteration (``sizes.py``).
``study``
    Consensus NMF studies on planted single-cell counts: ``bignmf sweep`` against the ``cnmf``
    package (skipped with a note when not installed), same k list, replicates and normalised
    matrix: wall time, peak RSS, agreement of the consensus spectra with the planted programs;
    the full profile adds a matrix cNMF cannot hold, bignmf alone on a memory-limited
    LocalCluster (``study.py``).

Profiles: the default (full) uses each script's own defaults (tens of minutes, and hours for
``sizes``, whose largest matrices have 10^8 nonzeros); ``--quick`` their ``--quick`` settings
(under 5 minutes on 2 cores, ~4 more for ``missing``, whose peers are slow, and ~5 for
``sizes``); ``--smoke`` tiny matrices (well under a minute: it checks the plumbing, its
figures mean nothing).

    python -m benchmarks --quick                 # report in benchmarks/_out/report-quick.md
    python -m benchmarks --parts memory,scaling  # full profile, two parts
    python benchmarks/run.py --smoke --out /tmp/bench
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

try:
    import bignmf  # noqa: F401
except ImportError:  # run from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the scripts import each other as top-level modules (``import engine``), as when run directly
sys.path.insert(0, str(Path(__file__).resolve().parent))

import checkpoint_overhead
import engine
import memory_peak
import missing
import scaling
import sizes
import study

HERE = Path(__file__).resolve().parent
PARTS = ("roofline", "sklearn", "memory", "scaling", "checkpoint", "missing", "sizes", "study")
PROFILES = ("full", "quick", "smoke")
VERSIONED = ("numpy", "scipy", "dask", "distributed", "zarr", "numcodecs", "scikit-learn",
             "matplotlib", "psutil")  # fmt: skip

# Each profile's options for each script, as its own command line takes them. The smoke
# profile keeps every code path (LocalClusters included) on matrices of a few thousand rows.
ENGINE_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": ["--quick", "--rows", "20000", "--cols", "4000", "--nnz-per-row", "20",
              "--chunk-size", "16384", "--iters", "3", "--repeat", "1", "--sk-rows", "2000",
              "--sk-cols", "500", "--sk-nnz-per-row", "10", "--sk-max-iter", "20",
              "--sk-repeat", "1", "--sk-block-nnz", "0"],
}  # fmt: skip
MEMORY_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": ["--quick", "--budget-mib", "0.25", "--chunk-size", "4096", "--iters", "2",
              "--scheduler", "threads", "--interval", "0.02"],
}  # fmt: skip
SCALING_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": ["--quick", "--rows", "1000", "--chunk-size", "4096", "--iters", "3"],
}
CHECKPOINT_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": ["--quick", "--rows", "2000", "--cols", "500", "--iters", "3", "--repeat", "1"],
}
# smoke: no Spark (its JVM takes ~20 s to start); the other peers run when installed
MISSING_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": ["--quick", "--users", "3000", "--items", "400", "-k", "4", "--iters", "5",
              "--peers", "surprise,rcppml", "--peer-iters", "1,2", "--peer-budget", "5",
              "--rss-iters", "2"],
}  # fmt: skip

# smoke: one shape, two sizes (each method's process start is most of a second)
SIZES_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": [
        *("--sizes", "4000,16000", "--shapes", "medium", "--cols", "2000", "-k", "4"),
        *("--iters", "5", "--loop-iters", "3", "--budget", "30"),
    ],
}

# smoke: cNMF's minimum of 4 replicates (fewer leave its density filter no neighbours), and a
# tiny "larger" matrix so that the streamed generation and the LocalCluster path run too
STUDY_ARGV = {
    "full": [],
    "quick": ["--quick"],
    "smoke": [
        *("--cells", "1000", "--genes", "300", "--types", "4", "--activity", "1"),
        *("--library", "300", "--ks", "4,5", "--replicates", "4", "--max-iter", "200"),
        *("--large-cells", "8192", "--large-ks", "5", "--large-replicates", "2"),
        *("--large-max-iter", "20", "--large-memory-limit", "1GiB"),
    ],
}


# ---------------------------------------------------------------------------------------------
# The parts: each returns (Markdown, results, plots)
# ---------------------------------------------------------------------------------------------


def engine_parts(parts: set[str], ctx: argparse.Namespace) -> dict[str, tuple]:
    """``roofline`` and/or ``sklearn``: one ``engine.collect`` run."""
    which = (["roofline", "disk"] if "roofline" in parts else []) + (
        ["sklearn"] if "sklearn" in parts else []
    )
    argv = [*ENGINE_ARGV[ctx.profile], "--parts", ",".join(which), *_dirs(ctx)]
    result = engine.collect(engine.parse_args(argv), ctx.command)
    text = engine.markdown(result)
    text = text.split("\n\n", 1)[1] if "\n\n" in text else ""  # drop its date/machine header
    out: dict[str, tuple] = {}
    if "roofline" in parts:
        roof = text.split("**(b)")[0].strip()
        out["roofline"] = (roof, result.get("timing"), [roofline_plot(result, ctx.out)])
    if "sklearn" in parts:
        sk = "**(b)" + text.split("**(b)", 1)[1] if "**(b)" in text else ""
        out["sklearn"] = (sk.strip(), result.get("sklearn"), [result["sklearn"].get("plot")])
    return out


def roofline_plot(result: dict, out: Path) -> Path | None:
    """Bars of s/iteration per variant of parts (a) and (c), as ``roofline.png``."""
    plt = engine.pyplot()
    timing = result.get("timing")
    if plt is None or not timing:
        return None
    figures = timing["figures"]
    names = sorted(figures, key=lambda name: figures[name]["wall"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    ax.barh(names, [figures[n]["wall"] for n in names], color="C0", label="wall")
    ax.barh(names, [figures[n]["best"] for n in names], color="C1", height=0.3, label="best")
    ax.set_xlabel("seconds per iteration (median over rounds)")
    mx = timing["matrix"]
    ax.set_title(f"{mx['shape'][0]:,} × {mx['shape'][1]:,}, {mx['nnz']:,} nnz, k={result['k']}")
    ax.legend()
    fig.tight_layout()
    return engine.save_png(fig, out / "roofline.png")


def memory_part(ctx: argparse.Namespace) -> tuple:
    """Peak RSS of ``bignmf fit`` against matrix size (``memory_peak.run``)."""
    argv = [*MEMORY_ARGV[ctx.profile], *_dirs(ctx)] + (["--largest"] if ctx.largest else [])
    result = memory_peak.run(memory_peak.parse_args(argv))
    for row in result["rows"] + ([result["largest"]] if "largest" in result else []):
        row.pop("output", None)  # the fit's log: kept out of the JSON
    return memory_peak.markdown(result), result, [memory_peak.plot(result, ctx.out)]


def scaling_part(ctx: argparse.Namespace) -> tuple:
    """Workers and nonzeros scaling (``scaling.run``)."""
    result = scaling.run(scaling.parse_args([*SCALING_ARGV[ctx.profile], *_dirs(ctx)]))
    return scaling.markdown(result), result, [scaling.plot(result, ctx.out)]


def checkpoint_part(ctx: argparse.Namespace) -> tuple:
    """Checkpoint and resume overhead (``checkpoint_overhead.run``)."""
    args = checkpoint_overhead.parse_args([*CHECKPOINT_ARGV[ctx.profile], "--workdir",
                                           str(ctx.workdir)])  # fmt: skip
    result = checkpoint_overhead.run(args)
    return checkpoint_overhead.markdown(result), result, []


def missing_part(ctx: argparse.Namespace) -> tuple:
    """Held-out RMSE against time on planted ratings, bignmf and its peers (``missing.run``)."""
    result = missing.run(missing.parse_args([*MISSING_ARGV[ctx.profile], *_dirs(ctx)]))
    return missing.markdown(result), result, [missing.plot(result, ctx.out)]


def sizes_part(ctx: argparse.Namespace) -> tuple:
    """Time to scikit-learn's best loss against matrix size, every method (``sizes.run``)."""
    result = sizes.run(sizes.parse_args([*SIZES_ARGV[ctx.profile], *_dirs(ctx)]))
    checked_in = HERE / "sizes.png" if ctx.profile != "smoke" else None
    return sizes.markdown(result), result, [sizes.plot(result, ctx.out, checked_in)]


def study_part(ctx: argparse.Namespace) -> tuple:
    """``bignmf sweep`` against cNMF on planted single-cell counts (``study.run``)."""
    result = study.run(study.parse_args([*STUDY_ARGV[ctx.profile], *_dirs(ctx)]))
    return study.markdown(result), result, []


def _dirs(ctx: argparse.Namespace) -> list[str]:
    return ["--workdir", str(ctx.workdir), "--out", str(ctx.out)]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

TITLES = {
    "roofline": "Roofline: against a plain SciPy loop and the store's decode speed",
    "sklearn": "Against scikit-learn: loss against wall time",
    "memory": "Memory: peak RSS of `bignmf fit` against matrix size",
    "scaling": "Scaling: workers and nonzeros",
    "checkpoint": "Checkpoint and resume overhead",
    "missing": "Missing entries: held-out RMSE against wall time, against Spark, Surprise, RcppML",
    "sizes": "Sizes: time to scikit-learn's best loss from 10^5 to 10^8 nonzeros",
    "study": "Study: consensus NMF, `bignmf sweep` against cNMF",
}


def versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    from bignmf import __version__  # the distribution is bignmf-dask: ask the package

    found = {"python": platform.python_version(), "bignmf": __version__}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_revision() -> str:
    """The checkout's commit, with ``+changes`` when the tree differs from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" +changes" if dirty else "")


def header(ctx: argparse.Namespace, started: datetime.datetime) -> dict:
    """Date, machine, versions, command: what the report's first lines say."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": engine.machine(),
        "versions": versions(),
        "git": git_revision(),
        "command": ctx.command,
        "profile": ctx.profile,
        "parts": ctx.parts,
        "loadavg_start": os.getloadavg(),
    }


def report(head: dict, sections: dict[str, dict]) -> str:
    """The whole Markdown report."""
    v = head["versions"]
    lines = [
        f"# bignmf benchmarks — {head['profile']} profile",
        "",
        f"- Date: {head['date']}; total {head['total_s']:.0f} s",
        f"- Machine: {head['machine']}; load average at start/end "
        f"{head['loadavg_start'][0]:.1f} / {head['loadavg_end'][0]:.1f}",
        "- Versions: " + ", ".join(f"{name} {v[name]}" for name in v),
        f"- Checkout: {head['git']}",
        f"- Command: `{head['command']}`",
        "- Plots: " + (", ".join(f"`{p}`" for p in head["plots"]) or "none (no matplotlib)"),
    ]
    for part in head["parts"]:
        s = sections[part]
        together = " (with " + ", ".join(s["together"]) + ")" if s.get("together") else ""
        lines += ["", f"## {TITLES[part]}", "", f"*{s['seconds']:.0f} s{together}*", ""]
        lines.append(s["markdown"] if s.get("markdown") else f"**Failed:**\n\n```\n{s['error']}```")
        lines += [f"\n![{part}]({Path(p).name})" for p in s.get("plots", [])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The suite's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="small matrices, < 5 minutes")
    profile.add_argument("--smoke", action="store_true", help="tiny matrices: plumbing only")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, of: " + ",".join(PARTS)
    )
    parser.add_argument(
        "--largest", action="store_true", help="memory: also a matrix larger than RAM (long)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "_out", help="report and plots")
    parser.add_argument("--workdir", type=Path, default=HERE / "_data", help="cached inputs")
    args = parser.parse_args(argv)
    args.profile = "quick" if args.quick else "smoke" if args.smoke else "full"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.parts = [p for p in PARTS if p in args.parts]  # the report's order
    if args.largest and args.profile != "full":
        parser.error("--largest belongs to the full profile")
    words = sys.argv[1:] if argv is None else argv
    args.command = shlex.join(["python", "-m", "benchmarks", *words])
    return args


def run_parts(ctx: argparse.Namespace) -> dict[str, dict]:
    """Run the chosen parts in order; a part that fails is reported, not fatal."""
    runners: dict[str, Callable[[], dict[str, tuple]]] = {
        "memory": lambda: {"memory": memory_part(ctx)},
        "scaling": lambda: {"scaling": scaling_part(ctx)},
        "checkpoint": lambda: {"checkpoint": checkpoint_part(ctx)},
        "missing": lambda: {"missing": missing_part(ctx)},
        "sizes": lambda: {"sizes": sizes_part(ctx)},
        "study": lambda: {"study": study_part(ctx)},
    }
    engine_wanted = {p for p in ctx.parts if p in ("roofline", "sklearn")}
    if engine_wanted:  # one engine run serves both parts
        runners["engine"] = lambda: engine_parts(engine_wanted, ctx)
    order = (["engine"] if engine_wanted else []) + [p for p in ctx.parts if p in runners]
    sections: dict[str, dict] = {}
    for name in order:
        engine._say(f"== {name}")
        start = time.perf_counter()
        covers = sorted(engine_wanted) if name == "engine" else [name]
        try:
            produced = runners[name]()
        except Exception:
            error = traceback.format_exc()
            engine._say(error)
            produced = {part: None for part in covers}
        seconds = time.perf_counter() - start
        for part, value in produced.items():
            if value is None:
                sections[part] = {"seconds": seconds, "error": error, "plots": []}
                continue
            text, result, plots = value
            together = [p for p in covers if p != part]  # one engine run serves both parts
            sections[part] = {"seconds": seconds, "together": together, "markdown": text,
                              "result": result, "plots": [str(p) for p in plots if p]}  # fmt: skip
    return sections


def main(argv: list[str] | None = None) -> int:
    """Run the suite; write ``report[-PROFILE].md``, ``results[-PROFILE].json`` and PNGs."""
    warnings.filterwarnings("ignore", message="Sending large graph")
    ctx = parse_args(argv)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now()
    head = header(ctx, started)
    t0 = time.perf_counter()
    sections = run_parts(ctx)
    head.update(total_s=time.perf_counter() - t0, loadavg_end=os.getloadavg())
    head["plots"] = [Path(p).name for s in sections.values() for p in s.get("plots", [])]
    suffix = "" if ctx.profile == "full" else f"-{ctx.profile}"
    text = report(head, sections)
    (ctx.out / f"report{suffix}.md").write_text(text)
    results = {"header": head, "parts": {k: {**s, "markdown": None} for k, s in sections.items()}}
    (ctx.out / f"results{suffix}.json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    engine._say(f"report: {ctx.out / f'report{suffix}.md'} ({head['total_s']:.0f} s)")
    return 1 if any("error" in s for s in sections.values()) else 0
