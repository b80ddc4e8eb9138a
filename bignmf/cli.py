"""Command-line interface: ``bignmf fit``, ``resume``, ``top-features``, ``convert``, ``info``,
``generate``.

No algorithm lives here: each command parses its options and calls the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from ._memory import fix_mmap_threshold
from .errors import BigNMFError
from .storage import CODECS, DEFAULT_CHUNK_SIZE, DEFAULT_CODEC


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr, silent when stderr is not a terminal or when disabled."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="rows", unit_scale=True, desc=desc, disable=None if enabled else True
    )


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--dtype", choices=["float32", "float64"], help="dtype of stored values")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="elements per chunk")
    p.add_argument("--block-nnz", type=int, help="target nonzeros per row block (4 chunks)")
    p.add_argument("--block-rows", type=int, help="fixed rows per row block instead")
    p.add_argument("--codec", choices=sorted(CODECS), default=DEFAULT_CODEC)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cache_size(text: str):
    from .blockcache import parse_budget

    try:
        return parse_budget(text) or 0  # 0, not None: `resume --cache-a 0` turns it off
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default="local",
                       help="local (embedded LocalCluster, default), threads, sync, or an "
                            "address like tcp://host:8786")  # fmt: skip
    where.add_argument("--cluster", metavar="FILE",
                       help="a cluster YAML file (kind local, address, slurm, pbs, kubernetes "
                            "or ssh; see cluster_configs/)")  # fmt: skip
    p.add_argument("--workers", type=int, help="workers of the embedded LocalCluster")
    p.add_argument("--n-tasks", type=int,
                   help="tasks per pass (default 4 per thread; more: smaller tasks, less memory "
                        "each)")  # fmt: skip
    p.add_argument("--cache-a", metavar="SIZE", type=_cache_size,
                   help="keep A's decoded row blocks in each worker's memory between "
                        "iterations, up to SIZE per worker (e.g. 4GiB, or auto: a quarter of "
                        "its memory limit; 0: off); saves decoding A every pass. Default: off, "
                        "or on resume the run's setting")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    p.add_argument("--checkpoint-seconds", type=float, default=600.0)
    p.add_argument("--top", type=int, default=10, help="top features printed (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _scheduler(args: argparse.Namespace):
    """The context manager yielding the run's scheduler: ``--cluster`` or ``--scheduler``."""
    from .cluster import connect, scheduler_for

    if args.cluster is None:
        return scheduler_for(args.scheduler, n_workers=args.workers)
    if args.workers is not None:
        raise BigNMFError("--workers sizes the embedded LocalCluster; with --cluster, set the "
                          "workers in the cluster file")  # fmt: skip
    return connect(args.cluster)


def _store_options(args: argparse.Namespace) -> dict:
    return {
        "overwrite": args.overwrite,
        "dtype": args.dtype,
        "chunk_size": args.chunk_size,
        "block_nnz": args.block_nnz,
        "block_rows": args.block_rows,
        "codec": args.codec,
    }


def _cmd_convert(args: argparse.Namespace) -> int:
    fix_mmap_threshold()
    from .ingest import convert

    with _progress_bar(None, not args.no_progress, "convert") as bar:
        store = convert(args.src, args.dst, format=args.format, key=args.key,
                        slab_nnz=args.slab_nnz, memory_nnz=args.memory_nnz, tmpdir=args.tmpdir,
                        progress=bar.update, **_store_options(args))  # fmt: skip
    _print_info(store.info())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    fix_mmap_threshold()
    from .synthetic import make_planted

    options = _store_options(args)
    options["dtype"] = options["dtype"] or "float32"
    with _progress_bar(args.rows, not args.no_progress, "generate") as bar:
        store = make_planted(
            args.dst,
            args.rows,
            args.cols,
            args.components,
            nnz_per_row=args.nnz_per_row,
            seed=args.seed,
            progress=bar.update,
            **options,
        )
    _print_info(store.info())
    return 0


def _source(path: str, key: str | None, block_nnz: int | None) -> dict:
    """What identifies an input to convert: a retried fit reuses its conversion only if
    this is unchanged."""
    stat = _existing(path).stat()
    return {"input": str(Path(path).absolute()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "key": key, "block_nnz": block_nnz}  # fmt: skip


def _existing(path: str) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return Path(path)


def _as_store(
    path: str, run_dir: Path, key: str | None, block_nnz: int | None, reuse: bool = False
):
    """A store as given, or the input converted into ``RUN_DIR/A.zarr`` first (``reuse``: the
    conversion an earlier attempt of the same fit committed there)."""
    from .checkpoint import CONVERTED
    from .errors import StoreFormatError
    from .ingest import convert
    from .storage import open_matrix

    try:
        return open_matrix(_existing(path), key, block_nnz=block_nnz)
    except StoreFormatError:
        if Path(path).is_dir() and Path(path, "zarr.json").exists() and key is None:
            raise
    converted = run_dir / CONVERTED
    if reuse:
        print(f"using {converted}, converted from {path} by an earlier attempt", file=sys.stderr)
        return open_matrix(converted, block_nnz=block_nnz)
    print(f"converting {path} into {converted}", file=sys.stderr)
    return convert(path, converted, key=key, block_nnz=block_nnz)


def _vocabulary(store_path: str | None, given: str | None) -> list[str] | None:
    """The vocabulary file named, or ``<store>.vocab.txt`` beside the input store."""
    from .datasets import vocabulary_path

    candidates = [given] if given else ([vocabulary_path(store_path)] if store_path else [])
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate).read_text(encoding="utf-8").splitlines()
        if given:
            raise FileNotFoundError(f"vocabulary file {given} not found")
    return None


def _print_top_features(H, vocabulary: list[str] | None, n: int) -> None:
    from .outputs import top_features

    for c, features in enumerate(top_features(H, n)):
        names = [vocabulary[j] if vocabulary and j < len(vocabulary) else str(j)
                 for j, _ in features]  # fmt: skip
        print(f"component {c:>3}: {' '.join(names)}")


def _finish(run_dir: Path, result, seconds: float, n_top: int) -> None:
    """Write W, H, summary and loss curve; print what a person wants to see."""
    from .checkpoint import RunDir, crash_point
    from .outputs import plot_loss, write_factors, write_summary

    record = RunDir(run_dir).record()
    w_path, h_path = write_factors(result.W, result.H, run_dir)
    crash_point("finish-factors", result.n_iter)
    png = plot_loss(run_dir)
    norm = None
    rel = None
    if result.loss_history and record["settings"]["beta_loss"] == 2:
        from .storage import open_matrix

        path = record["matrix"].get("path")
        norm = open_matrix(path, record["matrix"].get("key")).frobenius_sq if path else None
        rel = result.reconstruction_err / norm**0.5 if norm else None
    summary = {"n_components": record["settings"]["n_components"], "n_iter": result.n_iter,
               "converged": result.converged, "reconstruction_err": result.reconstruction_err,
               "relative_error": rel, "seconds": seconds, "W": str(w_path), "H": str(h_path),
               "loss_plot": str(png) if png else None, "settings": record["settings"],
               "matrix": record["matrix"]}  # fmt: skip
    write_summary(run_dir, summary)
    state = "converged" if result.converged else "stopped at max_iter"
    print(f"{result.n_iter} iterations ({state}) in {seconds:.1f}s; "
          f"reconstruction error {result.reconstruction_err:.6g}"
          + (f" (relative {rel:.4f})" if rel is not None else ""))  # fmt: skip
    print(f"W: {w_path}  H: {h_path}  metrics: {run_dir / 'metrics.jsonl'}")
    print(f"summary: {run_dir / 'summary.json'}" + (f"  loss curve: {png}" if png else ""))
    vocabulary = _vocabulary(record["matrix"].get("path"), None)
    if n_top and vocabulary is not None:
        print("top features:")
        _print_top_features(result.H, vocabulary, n_top)


def _cmd_fit(args: argparse.Namespace) -> int:
    import time

    from .checkpoint import RunDir, crash_point

    run = RunDir(args.out)
    run_dir = run.path
    source = _source(args.input, args.key, args.block_nnz)
    where = _scheduler(args)  # checks a --cluster file before a long conversion
    created = not run_dir.exists()
    reuse = run.claim(source)  # a new or empty --out, or what a stopped attempt left
    try:
        store = _as_store(args.input, run_dir, args.key, args.block_nnz, reuse)
        crash_point("fit-converted", 0)
        start = time.perf_counter()
        result = _fit_in(where, store, run_dir, args)
    except BaseException:
        run.release(created)  # a failed start blocks no retry (a converted input is kept)
        raise
    _finish(run_dir, result, time.perf_counter() - start, args.top)
    return 0


def _fit_in(where, store, run_dir: Path, args: argparse.Namespace):
    """``bignmf fit``'s call of :func:`bignmf.nmf` on the chosen scheduler."""
    from .engine import nmf

    with where as scheduler:
        return nmf(
            store, args.components, solver=args.solver, beta_loss=args.beta_loss,
            init=args.init, tol=args.tol, max_iter=args.max_iter, random_state=args.seed,
            alpha_W=args.alpha_W, alpha_H=args.alpha_H, l1_ratio=args.l1_ratio,
            n_inner=args.n_inner, w_storage=args.w_storage, block_nnz=args.block_nnz,
            column_chunks=args.column_chunks, n_tasks=args.n_tasks, cache_a=args.cache_a,
            scheduler=scheduler, progress=not args.no_progress, checkpoint_dir=run_dir,
            checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds,
        )  # fmt: skip


def _cmd_resume(args: argparse.Namespace) -> int:
    import time

    from .checkpoint import RunDir
    from .engine import resume

    names = ("max_iter", "tol", "n_tasks", "cache_a")
    overrides = {name: getattr(args, name) for name in names}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    run = RunDir(args.run_dir)
    options = {**run.record()["options"], **overrides}
    start = time.perf_counter()
    with _scheduler(args) as scheduler:
        result = resume(run.path, scheduler=scheduler, progress=not args.no_progress,
                        **overrides)  # fmt: skip
    if _summary_of(run.path, result.n_iter) is not None:  # no iteration was left to run
        print(_already_finished(run.path, result, options), file=sys.stderr)
        return 0
    _finish(run.path, result, time.perf_counter() - start, args.top)
    return 0


def _summary_of(run_dir: Path, n_iter: int) -> dict | None:
    """The run's summary, when it was written for ``n_iter`` iterations."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("n_iter") == n_iter else None


def _already_finished(run_dir: Path, result, options: dict) -> str:
    """Why a resume ran nothing, and how to go on."""
    if result.converged:
        return (f"{run_dir}: converged at iteration {result.n_iter} (--tol {options['tol']:g}); "
                "nothing changed. To go on, pass --tol 0 (or a smaller --tol) and a higher "
                "--max-iter")  # fmt: skip
    return (f"{run_dir}: finished: {result.n_iter} iterations, max_iter {options['max_iter']}; "
            "nothing changed. Pass a higher --max-iter to go further")  # fmt: skip


def _cmd_transform(args: argparse.Namespace) -> int:
    import zarr

    from .checkpoint import RunDir
    from .cluster import scheduler_for
    from .outputs import write_rows
    from .transform import transform

    settings = RunDir(args.run_dir).record()["settings"]
    H = zarr.open_array(Path(args.run_dir) / "H.zarr", mode="r")[...]
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise BigNMFError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a converted input and W's working blocks live only as long as the command
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".bignmf-transform-") as tmp:
        store = _as_store(args.input, Path(tmp), args.key, None)
        if store.shape[1] != H.shape[1]:
            raise BigNMFError(
                f"{args.input} has {store.shape[1]} columns; the run's H has {H.shape[1]}"
            )
        solver = "bpp" if settings["beta_loss"] == 2 else "mu"
        with scheduler_for(args.scheduler, n_workers=args.workers) as scheduler:
            W = transform(store, H, solver=solver, beta_loss=settings["beta_loss"],
                          alpha_W=settings["alpha_W"], l1_ratio=settings["l1_ratio"],
                          max_iter=args.max_iter, scheduler=scheduler, workdir=tmp)  # fmt: skip
            write_rows(W, out)
    print(f"W of {store.shape[0]:,} rows x {H.shape[0]} components: {out}")
    return 0


def _cmd_top_features(args: argparse.Namespace) -> int:
    import zarr

    from .checkpoint import RunDir

    run = RunDir(args.run_dir)
    record = run.record()
    h_path = Path(args.run_dir) / "H.zarr"
    if h_path.exists():
        H = zarr.open_array(h_path, mode="r")[...]
    elif run.committed():  # a run started from Python: H of its newest checkpoint
        H = run.read(run.committed()[0]).H
    else:
        raise BigNMFError(f"{args.run_dir} has neither H.zarr nor a checkpoint yet")
    _print_top_features(H, _vocabulary(record["matrix"].get("path"), args.vocab), args.n)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .cluster import scheduler_for
    from .datasets import docstring_corpus
    from .engine import nmf
    from .storage import open_matrix

    out = Path(args.out)
    corpus = out / "docs.zarr"
    if corpus.exists():
        store = open_matrix(corpus)
        print(f"using the corpus built before: {corpus}")
    else:
        print("building a corpus from the docstrings of the installed Python packages...")
        with _progress_bar(None, not args.no_progress, "documents") as bar:
            store, _ = docstring_corpus(corpus, max_documents=args.max_documents,
                                        progress=bar.update)  # fmt: skip
    m, n = store.shape
    print(f"corpus: {m:,} documents x {n:,} terms, {store.nnz:,} nonzeros ({corpus})")
    run_dir = next(out / f"run-{i}" for i in range(1, 10**6) if not (out / f"run-{i}").exists())
    print(f"fitting {args.components} topics into {run_dir} ...")
    start = time.perf_counter()
    with scheduler_for(args.scheduler) as scheduler:
        result = nmf(store, args.components, random_state=0, max_iter=args.max_iter,
                     scheduler=scheduler, progress=not args.no_progress,
                     checkpoint_dir=run_dir)  # fmt: skip
    _finish(run_dir, result, time.perf_counter() - start, 8)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .storage import open_matrix

    info = open_matrix(args.path, key=args.key).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    m, n = info["shape"]
    bn = info["block_nnz"]
    rows = [
        ("path", info["path"]),
        ("shape", f"{m:,} x {n:,}"),
        ("nonzeros", f"{info['nnz']:,}"),
        ("density", f"{info['density']:.3g}"),
        ("dtype", f"{info['dtype']} (indices {info['index_dtype']})"),
        (
            "row blocks",
            f"{info['row_blocks']} (nnz min {bn['min']:,} / median "
            f"{bn['median']:,} / max {bn['max']:,})",
        ),
        ("chunks", f"{info['chunk_size']:,} elements, codec {info['codec']}"),
        ("size on disk", _human_bytes(info["bytes_on_disk"])),
        ("uncompressed", _human_bytes(info["bytes_uncompressed"])),
        ("compression", f"{info['compression_ratio']:.2f}x"),
        ("Frobenius norm", f"{info['frobenius_norm']:.6g}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bignmf`` command."""
    parser = argparse.ArgumentParser(
        prog="bignmf",
        description="Out-of-core, distributed NMF of large sparse matrices.",
    )
    parser.add_argument("--version", action="version", version=f"bignmf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every iteration")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a matrix file into a bignmf store")
    p.add_argument("src", help=".npz, .mtx[.gz], .h5ad, AnnData .zarr or dense Zarr array")
    p.add_argument("dst", help="directory of the new store")
    p.add_argument("--format", help="source format when the suffix does not tell")
    p.add_argument("--key", help="matrix inside an AnnData file (default X)")
    p.add_argument("--slab-nnz", type=int, help="nonzeros read from the source at a time")
    p.add_argument("--memory-nnz", type=int, help="entries the external sort holds in memory")
    p.add_argument("--tmpdir", help="external sort's temporary files (default: beside DST)")
    _add_store_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="describe a stored matrix")
    p.add_argument("path")
    p.add_argument("--key", help="matrix inside an AnnData store (default X)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="topics of the docstrings of the installed packages")
    p.add_argument("--out", default="bignmf-demo", help="directory of the corpus and runs")
    p.add_argument("-k", "--components", type=int, default=20)
    p.add_argument("--max-documents", type=int, default=20000)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--scheduler", default="local", help="local, threads, sync or an address")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("fit", help="factorize a matrix into a run directory (checkpointed)")
    p.add_argument("input", help="a store, AnnData .zarr, or any file `bignmf convert` reads")
    p.add_argument("-k", "--components", type=int, required=True, help="rank k")
    p.add_argument("--out", required=True, help="run directory (must not hold a run)")
    p.add_argument("--solver", default="hals", choices=["hals", "mu", "bpp"])
    p.add_argument("--beta-loss", default="frobenius",
                   choices=["frobenius", "kullback-leibler", "itakura-saito"])  # fmt: skip
    p.add_argument("--init", choices=["random", "nndsvd", "nndsvda", "nndsvdar"],
                   help="default: nndsvda (as scikit-learn)")  # fmt: skip
    p.add_argument("--tol", type=float, default=1e-4, help="relative loss decrease to stop at")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--seed", type=int, help="random seed (recorded in the run)")
    p.add_argument("--alpha-W", type=float, default=0.0)
    p.add_argument("--alpha-H", default="same", type=lambda v: v if v == "same" else float(v))
    p.add_argument("--l1-ratio", type=float, default=0.0)
    p.add_argument("--n-inner", type=int, help="HALS sweeps per pass over A (default 1)")
    p.add_argument("--key", help="matrix inside an AnnData store (default X)")
    p.add_argument("--block-nnz", type=int, help="re-plan row blocks of a foreign store")
    p.add_argument("--w-storage", default="auto", choices=["auto", "memory", "zarr"])
    p.add_argument("--column-chunks", type=int, metavar="R",
                   help="cut H into R column ranges, two passes per iteration (very "
                        "wide matrices; default: only when H would not fit a task)")  # fmt: skip
    _add_run_options(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("resume", help="continue a run from its newest intact checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--max-iter", type=int, help="raise the iteration limit")
    p.add_argument("--tol", type=float)
    _add_run_options(p)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("transform", help="coefficients of new rows against a run's H")
    p.add_argument("run_dir")
    p.add_argument("input", help="a store, AnnData .zarr, or any file `bignmf convert` reads")
    p.add_argument("--out", required=True, help="Zarr array written with W (rows x k)")
    p.add_argument("--key", help="matrix inside an AnnData store (default X)")
    p.add_argument("--max-iter", type=int, default=200, help="MU iterations (non-Frobenius)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--scheduler", default="threads", help="threads, sync, local or an address")
    p.add_argument("--workers", type=int, help="workers of an embedded LocalCluster")
    p.set_defaults(func=_cmd_transform)

    p = sub.add_parser("top-features", help="print each component's top features")
    p.add_argument("run_dir")
    p.add_argument("--vocab", help="one feature name per line (default: <input>.vocab.txt)")
    p.add_argument("-n", type=int, default=10, help="features per component")
    p.set_defaults(func=_cmd_top_features)

    p = sub.add_parser("generate", help="write a seeded synthetic low-rank sparse matrix")
    p.add_argument("dst")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cols", type=int, default=20_000)
    p.add_argument("-k", "--components", type=int, default=20, help="planted rank")
    p.add_argument("--nnz-per-row", type=float, default=50)
    p.add_argument("--seed", type=int, default=0)
    _add_store_options(p)
    p.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bignmf`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (BigNMFError, FileNotFoundError) as err:
        print(f"bignmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
