"""Command-line interface: ``bignmf fit``, ``resume``, ``transform``, ``score``,
``top-features``, ``top-rows``, ``report``, ``convert``, ``info``, ``generate``, ``demo``.

No algorithm lives here: each command parses its options and calls the library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from bignmf import registry
from bignmf._memory import fix_mmap_threshold
from bignmf._version import __version__
from bignmf.errors import BigNMFError, MissingExtraError, ParameterError, StoreExistsError
from bignmf.fit.settings import AUTO_CHECKPOINTS, IMPLICIT_ALPHA
from bignmf.io.vocabulary import find_vocabulary, vocabulary_path
from bignmf.store.layout import CODEC_NAMES, DEFAULT_CHUNK_SIZE, DEFAULT_CODEC
from bignmf.study.consensus import DENSITY_THRESHOLD, LOCAL_NEIGHBORHOOD
from bignmf.study.settings import STUDY_MAX_ITER, STUDY_TOL


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


def _cache_size(text: str):
    from bignmf.store.blockcache import parse_budget

    try:
        return parse_budget(text) or 0  # 0, not None: `resume --cache-a 0` turns it off
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: ``--scheduler``'s default: the memory plan chooses (:func:`bignmf.plan.choose_scheduler`).
AUTO_SCHEDULER = "auto"
SCHEDULER_HELP = (
    "auto (the default: threads in this process when A decoded and W take at most a quarter "
    "of RAM, else local; --workers means local), local (an embedded LocalCluster, one worker "
    "process per core), threads, sync, or an address like tcp://host:8786"
)


def _scheduler(args: argparse.Namespace):
    """The context manager yielding the run's scheduler: ``--cluster`` or ``--scheduler``;
    None for ``auto``, which :func:`_chosen` decides once the matrix is open."""
    from bignmf.cluster.config import connect, scheduler_for

    if args.cluster is None and args.scheduler == AUTO_SCHEDULER and args.workers is None:
        return None
    if args.cluster is None:
        spec = "local" if args.scheduler == AUTO_SCHEDULER else args.scheduler
        return scheduler_for(spec, n_workers=args.workers)
    if args.workers is not None:
        raise BigNMFError(
            "--workers sizes the embedded LocalCluster; with --cluster, set the "
            "workers in the cluster file"
        )
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
    from bignmf.io.convert import convert

    with _progress_bar(None, not args.no_progress, "convert") as bar:
        store = convert(
            args.src,
            args.dst,
            format=args.format,
            key=args.key,
            slab_nnz=args.slab_nnz,
            memory_nnz=args.memory_nnz,
            tmpdir=args.tmpdir,
            progress=bar.update,
            **_store_options(args),
        )
    _print_info(store.info())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    fix_mmap_threshold()
    from bignmf.datasets.synthetic import make_planted

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
    return {
        "input": str(Path(path).absolute()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "key": key,
        "block_nnz": block_nnz,
    }


def _existing(path: str) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return Path(path)


def _as_store(
    path: str,
    run_dir: Path,
    key: str | None,
    block_nnz: int | None,
    reuse: bool = False,
    name: str | None = None,
):
    """A store as given, or the input converted into ``RUN_DIR/A.zarr`` (or ``name``) first
    (``reuse``: the conversion an earlier attempt of the same fit committed there)."""
    from bignmf.errors import StoreFormatError
    from bignmf.fit.rundir import CONVERTED
    from bignmf.io.convert import convert
    from bignmf.store.csr import open_matrix

    try:
        return open_matrix(_existing(path), key, block_nnz=block_nnz)
    except StoreFormatError:
        if Path(path).is_dir() and Path(path, "zarr.json").exists() and key is None:
            raise
    converted = run_dir / (name or CONVERTED)
    if reuse:
        print(f"using {converted}, converted from {path} by an earlier attempt", file=sys.stderr)
        return open_matrix(converted, block_nnz=block_nnz)
    print(f"converting {path} into {converted}", file=sys.stderr)
    return convert(path, converted, key=key, block_nnz=block_nnz)


def _show_top_features(H, store: str | None, given: str | None, n: int) -> None:
    """Each component's top features, named by the vocabulary found (else numbered, saying
    how to give names)."""
    vocabulary = find_vocabulary(store, H.shape[1], given)
    if vocabulary is None:
        print(
            f"no vocabulary found for {store or 'this run'}: printing column numbers; give "
            f"one name per line with --vocab FILE, or as {vocabulary_path(store or 'A.zarr')}",
            file=sys.stderr,
        )
    _print_top_features(H, vocabulary, n)


def _print_top_features(H, vocabulary: list[str] | None, n: int) -> None:
    from bignmf.fit.outputs import top_features

    for c, features in enumerate(top_features(H, n)):
        names = [
            vocabulary[j] if vocabulary and j < len(vocabulary) else str(j) for j, _ in features
        ]
        print(f"component {c:>3}: {' '.join(names)}")


def _finish(run_dir: Path, result, seconds: float, n_top: int, bar=None) -> None:
    """Write W, H, summary and loss curve; print what a person wants to see (``bar``: the
    command's :class:`~bignmf.fit.callbacks.ProgressBar`, told of the writing)."""
    from bignmf.fit.outputs import error_over, finish_run

    if bar is not None:
        bar.phase(f"writing W, H, the summary and the loss curve into {run_dir}", "write")
    out = finish_run(run_dir, result, seconds)
    if out.plot_skipped:
        print(
            f"loss curve skipped: {out.plot_skipped}; pip install matplotlib, or the 'plots' extra",
            file=sys.stderr,
        )
    state = "converged" if result.converged else "stopped at max_iter"
    rel = out.relative_error
    settings = _record(run_dir).settings
    plain = settings.missing is None and settings.weights is None
    over = "" if plain else f" on the {error_over(settings.missing, settings.weights)}"
    print(
        f"{result.n_iter} iterations ({state}) in {seconds:.1f}s; "
        f"reconstruction error{over} {result.reconstruction_err:.6g}"
        + (f" (relative {rel:.4f})" if rel is not None else "")
    )
    print(f"W: {out.W}  H: {out.H}  metrics: {out.metrics}")
    print(f"summary: {out.summary}" + (f"  loss curve: {out.loss_plot}" if out.loss_plot else ""))
    if n_top:
        print("top features:")
        _show_top_features(result.H, _store_path(run_dir), None, n_top)


def _record(run_dir):
    """The run's :class:`~bignmf.fit.settings.RunRecord`."""
    from bignmf.fit.rundir import RunDir
    from bignmf.fit.settings import RunRecord

    return RunRecord.from_json(RunDir(run_dir).record())


def _store_path(run_dir) -> str | None:
    store = _record(run_dir).store
    return store[0] if store else None


def _cmd_fit(args: argparse.Namespace) -> int:
    import time

    from bignmf.fit.rundir import MASK_CONVERTED, RunDir, crash_point

    run = RunDir(args.out)
    run_dir = run.path
    args.key = _layer_key(args)
    source = _source(args.input, args.key, args.block_nnz)
    if args.write_back:  # refused before a fit whose results could not go back
        _check_write_back(args)
    bar = _progress(args)
    where = _scheduler(args)  # checks a --cluster file before a long conversion
    created = not run_dir.exists()
    run.check_free()  # the user's files are refused before the lock writes there
    with run.locked():  # the conversion, the fit and its outputs
        reuse = run.claim(source)  # a new or empty --out, or what a stopped attempt left
        try:
            bar.phase(f"opening {args.input}", "open")
            store = _as_store(args.input, run_dir, args.key, args.block_nnz, reuse)
            mask = _beside_store(args.mask, run_dir, MASK_CONVERTED) if args.mask else None
            weights = _weights_arg(args.weights, run_dir)
            crash_point("fit-converted", 0)
            start = time.perf_counter()
            result = _fit_in(where, store, run_dir, args, mask, weights, bar)
        except BaseException:
            run.release(created)  # a failed start blocks no retry (a converted input is kept)
            raise
        if args.plan_only:
            run.release(created)  # only a conversion stays, for the fit that follows
            print("\n".join(result.describe()))
            return 0
        _finish(run_dir, result, time.perf_counter() - start, args.top, bar)
        if args.write_back:
            _write_back(args, run_dir, bar)
    return 0


def _layer_key(args: argparse.Namespace) -> str | None:
    """``--key``, or ``layers/NAME`` for ``--layer NAME``."""
    if args.layer is None:
        return args.key
    if args.key is not None:
        raise BigNMFError("give --layer NAME or --key layers/NAME, not both")
    return f"layers/{args.layer}"


def _check_write_back(args: argparse.Namespace) -> None:
    """``--write-back`` needs an AnnData input, and a matrix of its cells × genes."""
    from bignmf.io.writeback import Elements, anndata_format

    if anndata_format(args.input) is None:
        raise BigNMFError(
            f"--write-back: {args.input} is not an AnnData .zarr store or .h5ad file (a "
            f"fit without --write-back leaves its results in {args.out}: W.zarr, H.zarr)"
        )
    if args.key is not None and args.key.strip("/") != "X" and not args.key.startswith("layers/"):
        raise BigNMFError(
            f"--write-back: the results of --key {args.key} have no place in obsm/varm "
            "(only X and layers are of the store's obs x var)"
        )
    Elements.named(args.key_added)


def _write_back(args: argparse.Namespace, run_dir: Path, bar) -> None:
    """Put the finished run's W, Hᵀ and summary into the AnnData input."""
    import bignmf.anndata
    from bignmf.io.writeback import Elements

    elements = Elements.named(args.key_added)
    bar.phase(f"writing {elements.describe()} into {args.input}", "write")
    layer = args.key[len("layers/") :] if args.key and args.key.startswith("layers/") else None
    bignmf.anndata.write(args.input, run_dir, key_added=args.key_added, layer=layer)
    print(f"written back into {args.input}: {elements.describe()}")


def _progress(args: argparse.Namespace):
    """The command's progress lines (silent with ``--no-progress``), from its first second."""
    from bignmf.fit.callbacks import ProgressBar

    return ProgressBar(enabled=not args.no_progress)


def _chosen(args: argparse.Namespace, shape, nnz: int, dtype, k: int, bar):
    """``--scheduler auto``'s scheduler for a matrix (the plan's rule), said on ``bar``."""
    import numpy as np

    from bignmf.cluster.config import scheduler_for
    from bignmf.plan import choose_scheduler
    from bignmf.store.factors import machine_memory_bytes

    (m, n), itemsize = shape, np.dtype(dtype).itemsize
    name, why = choose_scheduler(m, n, nnz, k, itemsize, machine_memory_bytes())
    other = "local for a cluster" if name == "threads" else "threads to stay in this process"
    bar.phase(f"scheduler: {name} ({why}; --scheduler {other})", "scheduler")
    args.scheduler = name
    return scheduler_for(name)


def _chosen_for_run(args: argparse.Namespace, run_dir: Path, bar):
    """``--scheduler auto``'s scheduler for a resume of ``run_dir``, from its recorded store
    (opened, not read); threads for a run without one (its resume then says what is missing)."""
    from bignmf.cluster.config import scheduler_for
    from bignmf.store.csr import open_matrix

    record = _record(run_dir)
    if record.store is None:
        args.scheduler = "threads"
        return scheduler_for("threads")
    store = open_matrix(*record.store)
    return _chosen(args, store.shape, store.nnz, store.dtype, record.settings.n_components, bar)


@contextlib.contextmanager
def _started(where, args: argparse.Namespace, bar):
    """Enter the scheduler's context (``_scheduler``), saying when a cluster starts or is
    joined, and where its dashboard is."""
    from bignmf.cluster.config import LOCAL_KINDS, dashboard

    if args.cluster is not None:
        bar.phase(f"starting the cluster of {args.cluster}", "cluster")
    elif args.scheduler == "local":
        workers = args.workers or os.cpu_count() or 1
        plural = "s" if workers > 1 else ""
        bar.phase(f"starting a local Dask cluster ({workers} worker{plural})", "cluster")
    elif args.scheduler not in LOCAL_KINDS:
        bar.phase(f"joining the Dask scheduler at {args.scheduler}", "cluster")
    with where as scheduler:
        line = dashboard(scheduler)
        if line is not None:
            bar.phase(line, "dashboard")
        yield scheduler


def _beside_store(path: str, run_dir: Path, name: str):
    """``--mask`` or ``--weights`` as a store, converted into ``RUN_DIR/name`` when it is a
    file (anew on each attempt: only A's conversion is worth reusing)."""
    import shutil

    shutil.rmtree(run_dir / name, ignore_errors=True)
    return _as_store(path, run_dir, None, None, name=name)


def _weights_arg(value: str | None, run_dir: Path):
    """``--weights``: None, 'implicit', or the weights file as a store."""
    from bignmf.fit.rundir import WEIGHTS_CONVERTED

    if value is None or value == "implicit":
        return value
    if not Path(value).exists():
        raise BigNMFError(f"--weights {value}: neither 'implicit' nor a file or store")
    return _beside_store(value, run_dir, WEIGHTS_CONVERTED)


def _fit_in(
    where, store, run_dir: Path, args: argparse.Namespace, mask=None, weights=None, bar=None
):
    """``bignmf fit``'s call of :func:`bignmf.nmf` on the chosen scheduler (its memory plan
    with ``--plan-only``), showing progress on ``bar``."""
    from bignmf.fit.engine import nmf

    bar = bar if bar is not None else _progress(args)
    auto = args.components == AUTO_RANK
    if auto and args.plan_only:
        raise BigNMFError("--plan-only plans one k: give -k a number")
    if auto and (args.missing or mask is not None or weights is not None):
        raise BigNMFError(
            "-k auto cross-validates on every entry: not with --missing, --mask or --weights"
        )
    if where is None:
        k = max(_auto_ks(store.shape)) if auto else args.components  # auto's largest try
        where = _chosen(args, store.shape, store.nnz, store.dtype, k, bar)
    with _started(where, args, bar) as scheduler:
        if auto:
            args.components = _choose_k(store, run_dir, args, scheduler, bar)
        return nmf(
            store,
            args.components,
            init=args.init,
            **_fit_settings(args),
            random_state=args.seed,
            missing=args.missing,
            mask=mask,
            weights=weights,
            implicit_alpha=args.implicit_alpha,
            implicit_f=args.implicit_f,
            w_storage=args.w_storage,
            block_nnz=args.block_nnz,
            column_chunks=args.column_chunks,
            n_tasks=args.n_tasks,
            cache_a=args.cache_a,
            scheduler=scheduler,
            progress=bar,
            checkpoint_dir=run_dir,
            checkpoint_every=args.checkpoint_every,
            checkpoint_seconds=args.checkpoint_seconds,
            plan_only=args.plan_only,
        )


def _auto_ks(shape) -> tuple[int, ...]:
    from bignmf.study.rank import auto_ks

    return auto_ks(shape)


def _choose_k(store, run_dir: Path, args: argparse.Namespace, scheduler, bar) -> int:
    """``-k auto``: the k of a cross-validated study in ``RUN_DIR/choose-k`` (resumed when a
    stopped attempt left one)."""
    from bignmf.fit.rundir import CHOOSE_K
    from bignmf.study.rank import choose_rank

    where = run_dir / CHOOSE_K
    bar.phase(f"choosing k: a cross-validated study in {where}", "choose-k")
    study = choose_rank(
        store,
        out=where,
        seed=args.seed or 0,
        scheduler=scheduler,
        progress=bar,
        **_fit_settings(args),
    )
    print(f"k = {study.chosen_k}, chosen by {where}: {study.rule}")
    return study.chosen_k


def _cmd_resume(args: argparse.Namespace) -> int:
    import time

    from bignmf.fit.engine import finished, resume
    from bignmf.fit.outputs import read_summary
    from bignmf.fit.rundir import RunDir
    from bignmf.fit.settings import RunOptions
    from bignmf.study.layout import is_study

    if is_study(args.run_dir):
        return _resume_study(args)
    if args.fits_in_flight is not None:
        raise BigNMFError(f"--fits-in-flight: {args.run_dir} is a run, not a study")

    # the options `resume` takes as flags (the scheduler is --scheduler/--cluster's)
    names = [n for n in RunOptions.may_change() if n != "scheduler" and hasattr(args, n)]
    overrides = {name: getattr(args, name) for name in names}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    run = RunDir(args.run_dir)
    options = RunOptions.from_record(_record(run.path).options.to_record(), **overrides)
    if args.write_back:  # into the fit's input: refused now if it cannot go there
        args.input, args.key = _fit_input(run)
        args.out = run.path
        _check_write_back(args)
    bar = _progress(args)
    done = finished(run.path, **overrides)
    summary = read_summary(run.path) if done is not None else None
    if done is not None and summary is not None and summary.get("n_iter") == done[0]:
        # nothing to run and the outputs are written: no scheduler started, no file changed
        # (but the AnnData input, when asked: a write-back that was stopped is done again)
        print(_already_finished(run.path, *done, options), file=sys.stderr)
        if args.write_back:
            with run.locked():
                _write_back(args, run.path, bar)
        return 0
    with run.locked():  # the fit and its outputs: another resume is refused meanwhile
        start = time.perf_counter()
        where = _scheduler(args)
        if where is None:  # chosen again: the machine may have changed, the bits do not
            where = _chosen_for_run(args, run.path, bar)
        with _started(where, args, bar) as scheduler:
            result = resume(run.path, scheduler=scheduler, progress=bar, **overrides)
        _finish(run.path, result, time.perf_counter() - start, args.top, bar)
        if args.write_back:
            _write_back(args, run.path, bar)
    return 0


def _fit_input(run) -> tuple[str, str | None]:
    """The input (and ``--key``) ``bignmf fit`` was given for ``run``, still there."""
    claim = run.fit_input()
    if claim is None:
        raise BigNMFError(
            f"--write-back: {run.path} does not record the input it was fitted from (a run "
            "started from Python: write back with bignmf.anndata.write(input, run))"
        )
    if not Path(claim).exists():
        raise BigNMFError(f"--write-back: the fit's input {claim} is no longer there")
    return claim, run.fit_key()


def _already_finished(run_dir: Path, n_iter: int, converged: bool, options) -> str:
    """Why a resume runs nothing, and how to go on."""
    if converged:
        return (
            f"{run_dir}: converged at iteration {n_iter} (--tol {options.tol:g}); "
            "nothing changed. To go on, pass --tol 0 (or a smaller --tol) and a higher "
            "--max-iter"
        )
    return (
        f"{run_dir}: finished: {n_iter} iterations, none left under --max-iter "
        f"{options.max_iter}; nothing changed. Pass a higher --max-iter to go "
        "further"
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    import shutil

    from bignmf.study.layout import StudyDir

    study = StudyDir(args.out)
    study.check_free()  # the user's files are refused before anything is written there
    args.key = _layer_key(args)
    bar = _progress(args)
    where = _scheduler(args)  # checks a --cluster file before a long conversion
    created = not study.path.exists()
    with study.locked():
        if not study.exists():  # a conversion left by a start that was killed: made again
            shutil.rmtree(study.converted, ignore_errors=True)
        try:
            bar.phase(f"opening {args.input}", "open")
            store = _as_store(args.input, study.path, args.key, args.block_nnz)
            result = _sweep_in(where, store, study.path, args, bar)
        except BaseException:
            if not study.exists():  # nothing to resume: nothing left to block a retry
                shutil.rmtree(study.converted, ignore_errors=True)
                if created:
                    shutil.rmtree(study.path, ignore_errors=True)
            raise
    _print_study(result, args.top)
    return 0


def _sweep_in(where, store, out: Path, args: argparse.Namespace, bar):
    """``bignmf sweep``'s call of :func:`bignmf.sweep` on the chosen scheduler."""
    from bignmf.study.sweep import sweep

    if where is None:
        where = _chosen(args, store.shape, store.nnz, store.dtype, max(args.ks), bar)
    with _started(where, args, bar) as scheduler:
        return sweep(
            store,
            args.ks,
            out=out,
            replicates=args.replicates,
            seed=args.seed,
            cv=args.cv,
            cv_seed=args.cv_seed,
            density_threshold=args.density_threshold,
            local_neighborhood=args.local_neighborhood,
            block_nnz=args.block_nnz,
            scheduler=scheduler,
            fits_in_flight=args.fits_in_flight,
            n_tasks=args.n_tasks,
            cache_a=args.cache_a,
            progress=bar,
            init=args.init,
            **_fit_settings(args),
            checkpoint_every=args.checkpoint_every,
            checkpoint_seconds=args.checkpoint_seconds,
        )


def _resume_study(args: argparse.Namespace) -> int:
    """``bignmf resume STUDY``: the fits, consensus and summary a study has left."""
    from bignmf.store.csr import open_matrix
    from bignmf.study.layout import StudyDir
    from bignmf.study.sweep import StudySpec, resume_study

    names = ("max_iter", "tol", "stopping")
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    given += ["--write-back"] if args.write_back else []
    if given:
        raise BigNMFError(
            f"{' '.join(given)}: a study resumes with the settings it recorded (these apply to "
            "a run directory)"
        )
    study = StudyDir(args.run_dir)
    record = study.record()
    bar = _progress(args)
    where = _scheduler(args)
    if where is None:
        source = record["input"]
        if source.get("path") is None:
            raise BigNMFError(f"{study.path} was run on an in-memory matrix: resume it from Python")
        store = open_matrix(source["path"], source.get("key"))
        k = max(StudySpec.from_record(record).ks)
        where = _chosen(args, store.shape, store.nnz, store.dtype, k, bar)
    with _started(where, args, bar) as scheduler:
        result = resume_study(
            study.path,
            scheduler=scheduler,
            fits_in_flight=args.fits_in_flight,
            n_tasks=args.n_tasks,
            cache_a=args.cache_a,
            progress=bar,
        )
    _print_study(result, args.top)
    return 0


def _print_study(study, n_top: int) -> None:
    """The table per k, the chosen k, where the files are, the chosen consensus's top
    features."""
    cv = any(not math.isnan(row.test_rmse) for row in study.table)
    header = f"{'k':>4} {'fits':>5} {'error':>8} {'consensus':>10} {'stability':>10}"
    header += f" {'outliers':>9}"
    print(header + ("   held-out RMSE" if cv else ""))
    for row in study.table:
        line = (
            f"{row.k:>4} {row.replicates:>5} {row.error:>8.4f} {row.consensus_error:>10.4f} "
            f"{row.stability:>10.4f} {row.outliers:>9}"
        )
        if cv:
            line += f"   {row.test_rmse:.4g} ± {row.test_rmse_se:.2g}"
        print(line)
    if study.chosen_k is None:
        print(f"no k chosen ({study.rule}: no k could be compared)")
    else:
        print(f"chosen k = {study.chosen_k}: {study.rule}")
    print(
        f"study: {study.path} (summary.json, table.csv, selection.png, density.png; the "
        f"consensus W and H of each k in {study.path / 'consensus'}/k<K>/)"
    )
    if n_top and study.chosen_k is not None:
        try:
            _, H = study.consensus(study.chosen_k)
        except ParameterError as error:
            print(error)
            return
        print(f"top features of the consensus of k = {study.chosen_k}:")
        _show_top_features(H, _study_store(study.path), None, n_top)


def _study_store(path) -> str | None:
    from bignmf.study.layout import StudyDir

    return StudyDir(path).record()["input"].get("path")


def _cmd_transform(args: argparse.Namespace) -> int:
    from bignmf.cluster.config import scheduler_for
    from bignmf.fit.outputs import write_rows
    from bignmf.fit.transform import transform

    settings = _record(args.run_dir).settings
    H = _finished_h(args.run_dir)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise StoreExistsError(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a converted input and W's working blocks live only as long as the command
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".bignmf-transform-") as tmp:
        store = _as_store(args.input, Path(tmp), args.key, None)
        if store.shape[1] != H.shape[1]:
            raise BigNMFError(
                f"{args.input} has {store.shape[1]} columns; the run's H has {H.shape[1]}"
            )
        solver = "bpp" if settings.beta_loss == 2 else "mu"
        with scheduler_for(args.scheduler, n_workers=args.workers) as scheduler:
            W = transform(
                store,
                H,
                solver=solver,
                beta_loss=settings.beta_loss,
                alpha_W=settings.alpha_W,
                l1_ratio=settings.l1_ratio,
                max_iter=args.max_iter,
                scheduler=scheduler,
                workdir=tmp,
                missing=settings.missing,
                weights=_transform_weights(settings, args.weights, Path(tmp)),
                implicit_alpha=settings.implicit_alpha,
                implicit_f=settings.implicit_f,
            )
            write_rows(W, out)
    print(f"W of {store.shape[0]:,} rows x {H.shape[0]} components: {out}")
    return 0


def _transform_weights(settings, given: str | None, tmp: Path):
    """The new rows' weights for ``bignmf transform``: the run's implicit feedback, or the
    ``--weights`` file a run fitted with given weights needs."""
    from bignmf.fit.rundir import WEIGHTS_CONVERTED

    if settings.weights == "implicit":
        if given is not None:
            raise BigNMFError("--weights: the run uses implicit feedback's weights, made from A")
        return "implicit"
    if settings.weights == "given":
        if given is None:
            raise BigNMFError(
                "the run was fitted with --weights FILE: give the new rows' weights as "
                "--weights FILE (the input's shape and sparsity pattern)"
            )
        return _as_store(given, tmp, None, None, name=WEIGHTS_CONVERTED)
    if given is not None:
        raise BigNMFError("--weights: the run was fitted without weights")
    return None


def _finished_h(run_dir):
    """The H a finished run wrote."""
    from bignmf.fit.outputs import read_factor

    H = read_factor(run_dir, "H")
    if H is None:
        raise BigNMFError(
            f"{run_dir} has no H.zarr: the run has not finished (`bignmf resume {run_dir}` "
            "finishes it)"
        )
    return H


def _cmd_score(args: argparse.Namespace) -> int:
    import zarr

    from bignmf.fit.predict import score
    from bignmf.fit.rundir import RunDir
    from bignmf.io.registry import open_source

    H = _finished_h(args.run_dir)
    W = zarr.open_array(RunDir(args.run_dir).factor_paths[0], mode="r")  # read by row slabs
    result = score(W, H, open_source(str(_existing(args.test)), key=args.key))
    if args.json:
        print(json.dumps(result._asdict()))
    else:
        print(result.describe())
    return 0


def _cmd_top_features(args: argparse.Namespace) -> int:
    from bignmf.results import consensus_top_features, top_features
    from bignmf.study.layout import is_study

    if is_study(args.run_dir):  # a study: the consensus of -k, by default the chosen k
        top = consensus_top_features(args.run_dir, args.k, args.n, args.vocab)
    elif args.k is not None:
        raise BigNMFError(f"-k chooses a study's consensus; {args.run_dir} is a run")
    else:  # a stopped run: its newest checkpoint
        top = top_features(args.run_dir, args.n, args.vocab)
    if not top.named:
        print(
            f"no vocabulary found for {top.store or 'this run'}: printing column numbers; give "
            f"one name per line with --vocab FILE, or as {vocabulary_path(top.store or 'A.zarr')}",
            file=sys.stderr,
        )
    _print_top(top, args.format, "column", "feature")
    return 0


def _cmd_top_rows(args: argparse.Namespace) -> int:
    from bignmf.results import top_rows

    top = top_rows(args.run_dir, args.n)
    if not top.named:
        print(
            f"no row names found for {top.store or 'this run'}: printing row numbers; names "
            "come from <store>.titles.txt (one a line) or an AnnData store's obs_names",
            file=sys.stderr,
        )
    _print_top(top, args.format, "row", "name")
    return 0


def _print_top(top, form: str, index: str, name: str) -> None:
    """``top`` (a :class:`bignmf.results.Top`) as text, CSV or JSON on stdout; ``index`` and
    ``name`` are the words for the number and the name (column/feature, row/name)."""
    import csv

    if form == "json":
        listed = [
            {
                "component": c,
                f"{index}s": [
                    {"rank": r, index: x.index, name: x.name, "weight": x.weight}
                    for r, x in enumerate(ranked, 1)
                ],
            }
            for c, ranked in enumerate(top.components)
        ]
        print(json.dumps(listed, indent=1))
    elif form == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["component", "rank", index, name, "weight"])
        for c, ranked in enumerate(top.components):
            out.writerows([c, r, x.index, x.name, repr(x.weight)] for r, x in enumerate(ranked, 1))
    elif index == "column":  # the words of a topic read best on one line
        for c, ranked in enumerate(top.components):
            print(f"component {c:>3}: {' '.join(x.name for x in ranked)}")
    else:  # row names (titles, cell barcodes) are long and may hold spaces: one a line
        for c, ranked in enumerate(top.components):
            print(f"component {c:>3}:")
            for r, x in enumerate(ranked, 1):
                named = f"  {x.name}" if top.named else ""
                print(f"  {r:>3}. row {x.index}{named}  ({x.weight:.4g})")


def _cmd_report(args: argparse.Namespace) -> int:
    from bignmf.report import write_report

    path = write_report(
        args.run_dir, args.out, n_features=args.n, n_rows=args.rows, vocab=args.vocab
    )
    print(f"report: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from bignmf.datasets.corpus import docstring_corpus
    from bignmf.fit.engine import nmf
    from bignmf.store.csr import open_matrix

    out = Path(args.out)
    corpus = out / "docs.zarr"
    if corpus.exists():
        store = open_matrix(corpus)
        print(f"using the corpus built before: {corpus}")
    else:
        print("building a corpus from the docstrings of the installed Python packages...")
        with _progress_bar(None, not args.no_progress, "documents") as bar:
            store, _ = docstring_corpus(
                corpus, max_documents=args.max_documents, progress=bar.update
            )
    m, n = store.shape
    print(f"corpus: {m:,} documents x {n:,} terms, {store.nnz:,} nonzeros ({corpus})")
    run_dir = next(out / f"run-{i}" for i in range(1, 10**6) if not (out / f"run-{i}").exists())
    print(f"fitting {args.components} topics into {run_dir} ...")
    start = time.perf_counter()
    bar = _progress(args)
    where = _scheduler(args)
    if where is None:
        where = _chosen(args, store.shape, store.nnz, store.dtype, args.components, bar)
    with _started(where, args, bar) as scheduler:
        result = nmf(
            store,
            args.components,
            random_state=0,
            max_iter=args.max_iter,
            scheduler=scheduler,
            progress=bar,
            checkpoint_dir=run_dir,
        )
    _finish(run_dir, result, time.perf_counter() - start, 8, bar)
    try:
        from bignmf.report import write_report

        page = write_report(run_dir)
    except MissingExtraError as error:  # no matplotlib: the fit's outputs stand without it
        print(f"no report page: {error}")
    else:
        print(f"the topics and their documents on one page: open {page}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from bignmf.store.csr import open_matrix

    path = _existing(args.path)
    if path.is_file():
        store = path.with_name(path.name.split(".")[0] + ".zarr")
        raise BigNMFError(
            f"{path} is a file, not a store: convert it first (bignmf convert {path} {store})"
        )
    store = open_matrix(path, key=args.key)
    info = store.info()
    if args.verify:
        checked = store.verify()
        info["verified"] = checked
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
        if args.verify:
            sums = "every chunk's checksum, " if checked["checksums"] else ""
            print(
                f"verified: {checked['row_blocks']} row blocks, {checked['nnz']:,} nonzeros — "
                f"{sums}indptr, column indices, values and the recorded norm"
            )
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


DEMO_CORPUS = """The corpus is built offline from what this Python has installed, so its size
depends on it: the docstrings (200 characters or more, duplicates dropped) of the standard
library and the installed packages, read without importing them; a seeded sample of at most
--max-documents of them; terms kept when found in at least 5 documents and at most half of
them. A fresh environment with only bignmf and its dependencies gives about 9,900 documents x
7,200 terms (Python 3.11: 2,400 of them from the standard library), with the 'plots' extra
about 12,500 x 8,100; more packages give more documents, up to --max-documents.
"""

STOPPING_HELP = "rule for --tol, on the objective (loss + penalties): " + registry.help_text(
    "stopping"
)

EXAMPLES = """examples:
  bignmf demo                                      topics of the installed packages' docstrings
  bignmf fit counts.mtx.gz -k 30 --out run/        convert, factorize, checkpoint
  bignmf resume run/ --max-iter 400                after a kill, or to go further
  bignmf sweep cells.h5ad -k 5-30:5 --out study/   which k: consensus and stability per k
"""

SWEEP_EPILOG = """\
Each (k, replicate) fit is a run directory in STUDY/fits/k<K>/r<R>/, several run at once;
`bignmf resume STUDY` finishes a study that was stopped, bit for bit. Per k: the consensus
of the replicates (Kotliar et al.'s cNMF: unit-length spectra, outliers by local density,
k-means, cluster medians; W refitted with H fixed), its stability (silhouette) and error;
with --cv, each fit's held-out RMSE. The chosen k: with --cv, the smallest k within one
standard error of the lowest held-out RMSE; else the largest k within 0.01 of the highest
stability. Written: summary.json,
table.csv, selection.png, density.png and consensus/k<K>/ (W.zarr, H.zarr) in STUDY;
`bignmf top-features STUDY -k K` prints a consensus's top features.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2); the usage is left to ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.required or "default" in text:
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)" if action.dest not in ("help", "version") else text
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


def _number(kind: type, low: float, *, above: bool = False, high: float | None = None):
    """An argparse type: a finite ``kind`` >= ``low`` (> with ``above``), <= ``high``."""
    bound = f"> {low:g}" if above else f">= {low:g}"
    bound = bound if high is None else f"between {low:g} and {high:g}"
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}") from None
        if not (
            math.isfinite(value)
            and (value > low if above else value >= low)
            and (high is None or value <= high)
        ):
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}")
        return value

    return parse


AUTO_RANK = "auto"
POSITIVE = _number(int, 1)
COUNT = _number(int, 0)
NON_NEGATIVE = _number(float, 0)
SECONDS = _number(float, 0, above=True)
RATIO = _number(float, 0, high=1)
FORMATS = ("text", "csv", "json")  # of top-features and top-rows


def _every(text: str):
    if text == AUTO_CHECKPOINTS:
        return text
    try:
        return POSITIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 1 or {AUTO_CHECKPOINTS}, got {text!r}"
        ) from None


def _alpha_h(text: str):
    return text if text == "same" else NON_NEGATIVE(text)


def _rank_arg(text: str):
    """``fit -k``: a rank, or ``auto``."""
    return AUTO_RANK if text == AUTO_RANK else POSITIVE(text)


def _ks_arg(text: str) -> tuple[int, ...]:
    """``-k`` of a sweep: ``5,10,15``, ``3-8`` or ``5-30:5`` (ranges include both ends)."""
    found: list[int] = []
    for part in text.split(","):
        low, dash, rest = part.strip().partition("-")
        high, colon, step = rest.partition(":")
        try:
            if not dash:
                found.append(int(low))
                continue
            step_value = int(step) if colon else 1
            if step_value < 1:
                raise ValueError
            span = range(int(low), int(high) + 1, step_value)
            if not span:
                raise argparse.ArgumentTypeError(f"{part.strip()!r} is an empty range")
            found.extend(span)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a k, a range a-b or a range a-b:step"
            ) from None
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the ks must be integers >= 1")
    return tuple(sorted(set(found)))


def _fraction(text: str) -> float:
    value = _number(float, 0, above=True, high=1)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction must be below 1")
    return value


def _fraction_or_one(text: str) -> float:
    return _number(float, 0, above=True, high=1)(text)


def _add_fits_in_flight(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fits-in-flight",
        type=POSITIVE,
        metavar="N",
        help="a study's fits at once (default: 2 per scheduler thread; never more than the "
        "memory plan allows)",
    )


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="dtype of stored values (default: float32/float64 as given, integers become float32)",
    )
    p.add_argument(
        "--chunk-size", type=POSITIVE, default=DEFAULT_CHUNK_SIZE, help="elements per chunk"
    )
    p.add_argument(
        "--block-nnz", type=POSITIVE, help="target nonzeros per row block (default: 4 chunks)"
    )
    p.add_argument("--block-rows", type=POSITIVE, help="fixed rows per row block instead")
    p.add_argument(
        "--codec",
        choices=sorted(CODEC_NAMES),
        default=DEFAULT_CODEC,
        help="compression of the stored arrays: "
        + "; ".join(f"{name}: {text}" for name, text in CODEC_NAMES.items()),
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_run_options(p: argparse.ArgumentParser, resuming: bool = False) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        default=AUTO_SCHEDULER,
        help=SCHEDULER_HELP,
    )
    where.add_argument(
        "--cluster",
        metavar="FILE",
        help="a cluster YAML file (kind local, address, slurm, pbs, kubernetes "
        "or ssh; see cluster_configs/)",
    )
    p.add_argument(
        "--workers",
        type=POSITIVE,
        help="workers of the embedded LocalCluster (default: one per core)",
    )
    p.add_argument(
        "--n-tasks",
        type=POSITIVE,
        help="tasks per pass (default: 4 per thread; more: smaller tasks, less memory each)",
    )
    p.add_argument(
        "--cache-a",
        metavar="SIZE",
        type=_cache_size,
        help="keep A's decoded row blocks in each worker's memory between "
        "iterations, up to SIZE per worker (e.g. 4GiB, or auto: a quarter of "
        "its memory limit; 0: off); saves decoding A every pass (default: off, "
        "or on resume the run's setting)",
    )
    run_s = " (default: the run's)" if resuming else ""
    p.add_argument(
        "--checkpoint-every",
        type=_every,
        default=None if resuming else AUTO_CHECKPOINTS,
        help="iterations between checkpoints, or auto: every 10, fewer where checkpoints would "
        f"take more than 5%% of the fit's time{run_s}",
    )
    p.add_argument(
        "--checkpoint-seconds",
        type=SECONDS,
        default=None if resuming else 600.0,
        help=f"seconds between checkpoints{run_s}",
    )
    p.add_argument(
        "--top",
        type=COUNT,
        default=10,
        help="top features printed, named when a vocabulary is found (0: none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


#: What :func:`_add_fit_settings` adds besides ``--init``, as :func:`bignmf.nmf`'s keywords.
FIT_SETTINGS = ("solver", "beta_loss", "tol", "stopping", "max_iter",
                "alpha_W", "alpha_H", "l1_ratio", "n_inner")  # fmt: skip


def _fit_settings(args: argparse.Namespace) -> dict:
    """The fit's settings the command was given (:data:`FIT_SETTINGS`)."""
    return {name: getattr(args, name) for name in FIT_SETTINGS}


def _add_fit_settings(
    p: argparse.ArgumentParser,
    init_default: str | None,
    init_why: str,
    tol: float = 1e-4,
    max_iter: int = 200,
):
    """The options of a fit's settings (``fit`` and ``sweep``): solver, loss, initialisation,
    stopping, regularisation, HALS sweeps."""
    p.add_argument(
        "--solver",
        default="hals",
        choices=registry.names("solver"),
        help="the solver: " + registry.help_text("solver"),
    )
    p.add_argument(
        "--beta-loss",
        default="frobenius",
        choices=registry.names("beta_loss"),
        help="the divergence (other than frobenius: --solver mu)",
    )
    p.add_argument(
        "--init",
        choices=[n for n in registry.names("init") if n != "custom"],
        default=init_default,
        help=f"initialisation (default: {init_why}): "
        + registry.help_text("init", exclude=("custom",)),
    )
    p.add_argument(
        "--tol",
        type=NON_NEGATIVE,
        default=tol,
        help="tolerance of the stopping rule (0: run --max-iter iterations)",
    )
    p.add_argument("--max-iter", type=POSITIVE, default=max_iter, help="iterations at most")
    p.add_argument(
        "--stopping", choices=registry.names("stopping"), default="relative", help=STOPPING_HELP
    )
    p.add_argument(
        "--alpha-W",
        type=NON_NEGATIVE,
        default=0.0,
        help="regularisation of W (scikit-learn's alpha_W)",
    )
    p.add_argument(
        "--alpha-H",
        default="same",
        type=_alpha_h,
        help="regularisation of H, or 'same' as --alpha-W",
    )
    p.add_argument(
        "--l1-ratio", type=RATIO, default=0.0, help="L1 share of the regularisation, in [0, 1]"
    )
    p.add_argument(
        "--n-inner",
        type=POSITIVE,
        help="HALS sweeps per pass over A (default: 1; 3 with --missing, --mask or --weights)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bignmf`` command."""
    parser = _Parser(
        prog="bignmf",
        description="Out-of-core, distributed NMF of large sparse matrices.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"bignmf {__version__}")
    verbose = {"action": "store_true", "help": "log every iteration"}
    parser.add_argument("-v", "--verbose", **verbose)
    # -v after the subcommand too; SUPPRESS keeps it from resetting a -v given before
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", default=argparse.SUPPRESS, **verbose)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **options) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            formatter_class=_Formatter,
            **options,
        )

    p = command("convert", "convert a matrix file into a bignmf store")
    p.add_argument("src", help=".npz, .mtx[.gz], .h5ad, AnnData .zarr or dense Zarr array")
    p.add_argument("dst", help="directory of the new store")
    p.add_argument("--format", help="source format when the suffix does not tell")
    p.add_argument("--key", help="matrix inside an AnnData file (default: X)")
    p.add_argument(
        "--slab-nnz", type=POSITIVE, help="nonzeros read from the source at a time (default: 1M)"
    )
    p.add_argument(
        "--memory-nnz",
        type=POSITIVE,
        help="entries the external sort holds in memory (default: 4M)",
    )
    p.add_argument("--tmpdir", help="external sort's temporary files (default: beside DST)")
    _add_store_options(p)
    p.set_defaults(func=_cmd_convert)

    p = command("info", "describe a stored matrix")
    p.add_argument("path", help="a bignmf store or an AnnData .zarr store")
    p.add_argument("--key", help="matrix inside an AnnData store (default: X)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="read the whole store and check every chunk's checksum, indptr, column indices, "
        "values and the recorded norm (one pass; exit 2 naming what is wrong)",
    )
    p.set_defaults(func=_cmd_info)

    p = command("demo", "topics of the docstrings of the installed packages", epilog=DEMO_CORPUS)
    p.add_argument("--out", default="bignmf-demo", help="directory of the corpus and runs")
    p.add_argument("-k", "--components", type=POSITIVE, default=20, help="topics")
    p.add_argument(
        "--max-documents", type=POSITIVE, default=20000, help="at most this many documents"
    )
    p.add_argument("--max-iter", type=POSITIVE, default=200, help="iterations at most")
    p.add_argument("--scheduler", default=AUTO_SCHEDULER, help=SCHEDULER_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo, cluster=None, workers=None)

    p = command("fit", "factorize a matrix into a run directory (checkpointed)")
    p.add_argument("input", help="a store, AnnData .zarr, or any file `bignmf convert` reads")
    p.add_argument(
        "-k",
        "--components",
        type=_rank_arg,
        required=True,
        help="rank k, or auto: chosen by a cross-validated study in OUT/choose-k/ (ranks 2 to "
        "50 up to min(m, n), 3 replicates, 5%% of the entries held out; the smallest k within "
        "one standard error of the lowest held-out RMSE; `bignmf sweep` for control) "
        "(required)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run directory: new, empty, or left by a stopped attempt of a fit (required)",
    )
    _add_fit_settings(p, None, "nndsvda, or random when k > min(m, n), as scikit-learn")
    p.add_argument(
        "--seed", type=COUNT, help="random seed (default: drawn, and recorded in the run)"
    )
    p.add_argument(
        "--missing",
        choices=registry.names("missing"),
        help="which entries are unknown rather than zero (default: none) — "
        + registry.help_text("missing")
        + " (ratings; solvers hals and mu, Frobenius loss)",
    )
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="entries that are unknown whatever the input holds (a held-out set): a store or "
        "any file `bignmf convert` reads, of the input's shape, whose stored entries are the "
        "unknown ones; every other entry, zeros included, is fitted (solvers hals and mu)",
    )
    p.add_argument(
        "--weights",
        metavar="implicit|FILE",
        help="entry weights: 'implicit' for implicit feedback (counts, plays: a stored value "
        "a is 'liked' with confidence 1 + alpha*f(a), every other entry 'not liked' with "
        "confidence 1; Hu, Koren & Volinsky), or a store or file of the input's shape and "
        "sparsity pattern whose values weigh its stored entries (the others weigh 1, or 0 "
        "with --missing zeros); solvers hals and mu",
    )
    p.add_argument(
        "--implicit-alpha",
        type=NON_NEGATIVE,
        default=IMPLICIT_ALPHA,
        help=f"alpha of --weights implicit (default {IMPLICIT_ALPHA:g})",
    )
    p.add_argument(
        "--implicit-f",
        choices=registry.names("implicit_f"),
        default="linear",
        help="f of --weights implicit — " + registry.help_text("implicit_f"),
    )
    p.add_argument("--key", help="matrix inside an AnnData store (default: X)")
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="fit the AnnData layer NAME (e.g. counts) instead of X: --key layers/NAME",
    )
    _add_write_back(p, "the AnnData input")
    p.add_argument(
        "--block-nnz",
        type=POSITIVE,
        help="re-plan the row blocks to about this many nonzeros each (default: the store's plan)",
    )
    p.add_argument(
        "--w-storage",
        default="auto",
        choices=registry.names("w_storage"),
        help="where W lives between iterations (auto: memory when it fits, Zarr on a cluster)",
    )
    p.add_argument(
        "--column-chunks",
        type=POSITIVE,
        metavar="R",
        help="cut H into R column ranges, two passes per iteration (very wide "
        "matrices; default: only when H would not fit a task)",
    )
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="print the memory plan (row blocks, memory per task, column ranges, where W "
        "lives, the cache of A, and why) and exit without fitting; -v prints it before a fit",
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_fit)

    p = command("resume", "continue a run from its newest intact checkpoint")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument(
        "--max-iter", type=POSITIVE, help="raise the iteration limit (default: the run's)"
    )
    p.add_argument("--tol", type=NON_NEGATIVE, help="another tolerance (default: the run's)")
    p.add_argument(
        "--stopping",
        choices=registry.names("stopping"),
        help=f"{STOPPING_HELP} (default: the run's)",
    )
    _add_write_back(p, "the AnnData input the fit was given")
    _add_run_options(p, resuming=True)
    _add_fits_in_flight(p)
    p.set_defaults(func=_cmd_resume)

    p = command(
        "sweep",
        "fit every k several times as one resumable study: consensus, stability, held-out "
        "error, the chosen k",
        epilog=SWEEP_EPILOG,
    )
    p.add_argument("input", help="a store, AnnData .zarr, or any file `bignmf convert` reads")
    p.add_argument(
        "-k",
        "--ks",
        type=_ks_arg,
        required=True,
        help="the ranks: a list (5,10,15), a range (3-8) or a range with a step (5-30:5)",
    )
    p.add_argument("--out", required=True, help="the study directory: new or empty (required)")
    p.add_argument(
        "--replicates", type=POSITIVE, default=10, help="fits per k (replicate r: seed + r)"
    )
    p.add_argument("--seed", type=COUNT, default=0, help="seed of replicate 0")
    p.add_argument(
        "--cv",
        type=_fraction,
        metavar="FRACTION",
        help="cross-validate: hold out this fraction of all entries (stored ones and zeros, "
        "by a seeded hash; nothing copied), fit the rest, score each fit on them",
    )
    p.add_argument("--cv-seed", type=COUNT, help="seed of the held-out entries (default: --seed)")
    p.add_argument(
        "--density-threshold",
        type=SECONDS,
        default=DENSITY_THRESHOLD,
        help="consensus: drop spectra whose mean distance to their nearest neighbours (unit "
        "vectors: 0 to 2) is above this (2: keep all)",
    )
    p.add_argument(
        "--local-neighborhood",
        type=_fraction_or_one,
        default=LOCAL_NEIGHBORHOOD,
        help="consensus: the neighbours of that distance, a fraction of the replicates",
    )
    _add_fit_settings(
        p,
        "random",
        "random: replicates of an SVD start would be one fit",
        STUDY_TOL,  # a consensus wants converged replicates (bignmf/study/settings.py)
        STUDY_MAX_ITER,
    )
    p.add_argument("--key", help="matrix inside an AnnData store (default: X)")
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="the AnnData layer NAME (e.g. counts) instead of X: --key layers/NAME",
    )
    p.add_argument(
        "--block-nnz",
        type=POSITIVE,
        help="re-plan the row blocks to about this many nonzeros each (default: the store's plan)",
    )
    _add_run_options(p)
    _add_fits_in_flight(p)
    p.set_defaults(func=_cmd_sweep)

    p = command("transform", "coefficients of new rows against a run's H")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("input", help="a store, AnnData .zarr, or any file `bignmf convert` reads")
    p.add_argument("--out", required=True, help="Zarr array written with W (rows x k)")
    p.add_argument("--key", help="matrix inside an AnnData store (default: X)")
    p.add_argument(
        "--max-iter",
        type=POSITIVE,
        default=200,
        help="MU iterations (non-Frobenius), or coordinate-descent sweeps (a run fitted with "
        "--missing, --mask or --weights)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="the new rows' weights, for a run fitted with --weights FILE (the input's shape "
        "and sparsity pattern)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--scheduler", default="threads", help="threads, sync, local or an address")
    p.add_argument(
        "--workers",
        type=POSITIVE,
        help="workers of an embedded LocalCluster (default: one per core)",
    )
    p.set_defaults(func=_cmd_transform)

    p = command("score", "RMSE and MAE of a finished run's W·H on held-out entries")
    p.add_argument("run_dir", help="the run directory (finished: it holds W.zarr and H.zarr)")
    p.add_argument(
        "test",
        help="the held-out entries: a .mtx of (row, column, value) triples, or any matrix "
        "`bignmf convert` reads, of the run's shape (its stored entries are scored)",
    )
    p.add_argument("--key", help="matrix inside an AnnData store (default: X)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=_cmd_score)

    p = command("top-features", "print each component's top features")
    p.add_argument("run_dir", help="the run directory, or a study (its consensus)")
    p.add_argument(
        "-k", type=POSITIVE, help="a study's consensus of this k (default: the k it chose)"
    )
    p.add_argument(
        "--vocab",
        help="one feature name per line (default: <store>.vocab.txt, or an AnnData "
        "store's var_names)",
    )
    p.add_argument("-n", type=POSITIVE, default=10, help="features per component")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (a line per component), csv (component,rank,column,feature,weight) or "
        "json (a list per component)",
    )
    p.set_defaults(func=_cmd_top_features)

    p = command("top-rows", "print each component's top rows (documents, cells, users)")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("-n", type=POSITIVE, default=10, help="rows per component")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text, csv (component,rank,row,name,weight) or json (a list per component); "
        "names from <store>.titles.txt or AnnData obs_names, else row numbers",
    )
    p.set_defaults(func=_cmd_top_rows)

    p = command("report", "write a self-contained HTML page of a run (extra: plots)")
    p.add_argument("run_dir", help="the run directory (finished, or stopped: its checkpoint)")
    p.add_argument("--out", help="the page written (default: RUN/report.html)")
    p.add_argument("-n", type=POSITIVE, default=10, help="top features charted per component")
    p.add_argument("--rows", type=COUNT, default=10, help="top rows listed per component (0: none)")
    p.add_argument(
        "--vocab",
        help="one feature name per line (default: <store>.vocab.txt, or an AnnData "
        "store's var_names)",
    )
    p.set_defaults(func=_cmd_report)

    p = command("generate", "write a seeded synthetic low-rank sparse matrix")
    p.add_argument("dst", help="directory of the new store")
    p.add_argument("--rows", type=POSITIVE, default=100_000, help="rows")
    p.add_argument("--cols", type=POSITIVE, default=20_000, help="columns")
    p.add_argument("-k", "--components", type=POSITIVE, default=20, help="planted rank")
    p.add_argument(
        "--nnz-per-row",
        type=_number(float, 0, above=True),
        default=50,
        help="mean nonzeros per row",
    )
    p.add_argument("--seed", type=COUNT, default=0, help="random seed")
    _add_store_options(p)
    p.set_defaults(func=_cmd_generate)
    for p in sub.choices.values():  # what _user_error names Python keywords by
        p.set_defaults(
            flags={
                a.dest: a.option_strings[-1]
                for a in p._actions
                if a.option_strings and a.dest != "help"
            }
        )
    return parser


def _user_error(error: BaseException, args: argparse.Namespace | None) -> str:
    """The one line a user sees for an error of theirs, in the CLI's words."""
    if isinstance(error, StoreExistsError):
        return error.message("--overwrite")
    text = str(error)
    if isinstance(error, ParameterError) and args is not None:
        for name, flag in _flags(args).items():  # Python keywords as the CLI's flags
            text = re.sub(rf"\b{name}\b", flag, text)
    return " ".join(text.split()) or type(error).__name__


def _fault(error: Exception, args: argparse.Namespace | None) -> int:
    """Exit status 3 and one line for a fit stopped by its machine (a lost scheduler, a full
    disk: :func:`bignmf.fit.faults.describe`), the traceback only with ``-v``; re-raise
    anything else."""
    from bignmf.fit.faults import FAULT_STATUS, describe

    command = getattr(args, "command", None)
    run_dir = {"fit": "out", "resume": "run_dir"}.get(command)
    line = describe(error, getattr(args, run_dir, None) if run_dir else None, command or "")
    if line is None:
        raise error
    if getattr(args, "verbose", False):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"bignmf {command}: error: {line}", file=sys.stderr)
    return FAULT_STATUS


def _add_write_back(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--write-back",
        action="store_true",
        help="when the fit is done, store W as obsm['X_nmf'], H transposed as varm['NMF'] "
        f"and the settings and loss as uns['nmf'] in {where} (.zarr in place, .h5ad "
        "rewritten beside and swapped in)",
    )
    p.add_argument(
        "--key-added",
        default="nmf",
        metavar="KEY",
        help="names --write-back uses: obsm['X_KEY'], varm['KEY' in upper case], uns['KEY']",
    )


def _flags(args: argparse.Namespace) -> dict[str, str]:
    """Keyword → flag, for the options of the command that ran."""
    return {**getattr(args, "flags", {}), "n_components": "-k", "random_state": "--seed"}


USER_ERRORS = (
    BigNMFError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
)


#: The commands that take a study where they take a run directory.
STUDY_COMMANDS = ("resume", "top-features")


def _refuse_a_study(args: argparse.Namespace) -> None:
    """A study given where a run directory is expected: one line saying what to do."""
    run_dir = getattr(args, "run_dir", None)
    if run_dir is None or args.command in STUDY_COMMANDS:
        return
    from bignmf.study.layout import is_study

    if is_study(run_dir):
        raise BigNMFError(
            f"{run_dir} is a study, not a run: `bignmf top-features {run_dir} -k K` reads a "
            f"consensus, its plots are {Path(run_dir) / 'selection.png'} and density.png, and "
            f"each fit is a run in {Path(run_dir) / 'fits'}/k<K>/r<R>/"
        )


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def _interrupted(args: argparse.Namespace | None) -> str:
    """The line for Ctrl-C: what to run to go on, when a run or a study was begun."""
    from bignmf.fit.rundir import CHOOSE_K, RUN_FILE
    from bignmf.study.layout import STUDY_FILE

    command = getattr(args, "command", None)
    text = f"bignmf {command}: interrupted" if command else "bignmf: interrupted"
    where = {"fit": "out", "resume": "run_dir", "sweep": "out"}.get(command)
    path = Path(getattr(args, where)) if where else None
    if path is not None and any((path / name).is_file() for name in (RUN_FILE, STUDY_FILE)):
        return f"{text}; `bignmf resume {path}` goes on from its last checkpoints"
    if path is not None and (path / CHOOSE_K / STUDY_FILE).is_file():
        return f"{text}; the same `bignmf fit` command goes on with its choice of k"
    return text


def _print_warnings(prog: str) -> None:
    """Show warnings as one line each, like errors, rather than with the code that warned."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bignmf`` command; returns the exit status."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        handler: Callable[[argparse.Namespace], int] = args.func
        _refuse_a_study(args)
        with warnings.catch_warnings():  # restores the caller's way to show warnings
            _print_warnings(f"bignmf {args.command}")
            status = handler(args)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
        return status
    except USER_ERRORS as err:
        prog = "bignmf" if args is None else f"bignmf {args.command}"
        print(f"{prog}: error: {_user_error(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`bignmf top-features RUN | head`): end quietly; stdout is
        # pointed at devnull so that flushing it at exit raises nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # the machine's faults get a line; anything else is a bug
        return _fault(err, args)


if __name__ == "__main__":
    sys.exit(main())
