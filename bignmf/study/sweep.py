"""Studies: every (k, replicate) fit of a matrix as one resumable run, several fits in flight.

:func:`sweep` starts a study directory (:mod:`bignmf.study.layout`) and runs its fits — each a
normal checkpointed run directory, made by :func:`bignmf.nmf` — several at once on one scheduler,
so that the workers compute one fit's pass while the others' drivers update H and build their
next graphs; how many at once is the memory plan's (:func:`bignmf.plan.fits_in_flight`). Then,
per k, the consensus of its replicates (:mod:`bignmf.study.consensus`), its W refitted out of
core, and, in a cross-validated study, each fit's error on its held-out entries
(:mod:`bignmf.study.heldout`); last the table per k and the chosen k
(:mod:`bignmf.study.summary`). :func:`resume_study` finishes whatever a killed study left
undone: every fit's bits are those of an uninterrupted run, in flight or not, on any scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from bignmf.errors import BigNMFError, CheckpointError, ParameterError
from bignmf.fit.callbacks import ProgressBar
from bignmf.fit.rundir import RunDir, crash_point, write_json_atomic
from bignmf.plan import fits_in_flight
from bignmf.store.speckled import SpeckledMask
from bignmf.study.consensus import DENSITY_THRESHOLD, LOCAL_NEIGHBORHOOD
from bignmf.study.layout import StudyDir, read_json
from bignmf.study.settings import FIT_SETTINGS

__all__ = ["StoppedStudy", "StudySpec", "resume_study", "run_study", "sweep"]


class StoppedStudy(BigNMFError):
    """A fit of the study stopped because another one failed or the study was interrupted."""


@dataclass(frozen=True)
class StudySpec:
    """What a study is, as ``study.json`` records it.

    Attributes
    ----------
    ks : tuple of int
        The ranks, ascending.
    replicates : int
        Fits per k; replicate r is seeded ``seed + r``.
    seed : int
    fit : dict
        The fits' settings (:data:`FIT_SETTINGS`' keys).
    cv : float or None
        The held-out fraction of a cross-validated study (None: no test set).
    cv_seed : int
        The held-out set's seed.
    density_threshold, local_neighborhood : float
        The consensus's outlier filter (:func:`bignmf.study.consensus.consensus`).
    """

    ks: tuple[int, ...]
    replicates: int
    seed: int
    fit: dict
    cv: float | None = None
    cv_seed: int = 0
    density_threshold: float = DENSITY_THRESHOLD
    local_neighborhood: float = LOCAL_NEIGHBORHOOD

    @classmethod
    def build(cls, shape, ks, replicates, seed, fit, cv, cv_seed, threshold, neighborhood):
        """Check the numbers a study is made of (each fit's settings are checked by the plan)."""
        found = _ks(ks, shape)
        if int(replicates) != replicates or replicates < 1:
            raise ParameterError(f"replicates must be an integer >= 1, got {replicates!r}")
        if int(seed) != seed or seed < 0:
            raise ParameterError(f"seed must be an integer >= 0, got {seed!r}")
        if cv is not None and not 0.0 < cv < 1.0:
            raise ParameterError(f"cv (the held-out fraction) must be in (0, 1), got {cv!r}")
        if not threshold > 0:
            raise ParameterError(f"density_threshold must be > 0, got {threshold!r}")
        if not 0.0 < neighborhood <= 1.0:
            raise ParameterError(f"local_neighborhood must be in (0, 1], got {neighborhood!r}")
        unknown = set(fit) - set(FIT_SETTINGS)
        if unknown:
            raise ParameterError(f"a study's fits do not take {sorted(unknown)}")
        settings = {**FIT_SETTINGS, **fit}
        cv_seed = int(seed if cv_seed is None else cv_seed)
        counts = (found, int(replicates), int(seed))
        return cls(*counts, settings, cv, cv_seed, float(threshold), float(neighborhood))

    @property
    def fits(self) -> list[tuple[int, int]]:
        """Every (k, replicate), the largest k first (the longest fits start first)."""
        return [(k, r) for k in sorted(self.ks, reverse=True) for r in range(self.replicates)]

    def to_record(self) -> dict:
        """As ``study.json`` keeps it."""
        return {**dataclasses.asdict(self), "ks": list(self.ks)}

    @classmethod
    def from_record(cls, record: dict) -> StudySpec:
        """From ``study.json``."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {name: record[name] for name in names if name in record}
        values["ks"] = tuple(values["ks"])
        return cls(**values)


def _ks(ks, shape) -> tuple[int, ...]:
    try:
        found = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise ParameterError(f"ks must be integers, got {ks!r}") from None
    if not found or found[0] < 1 or any(int(k) != k for k in ks):
        raise ParameterError(f"ks must be integers >= 1, got {ks!r}")
    if found[-1] > min(shape):
        raise ParameterError(f"k = {found[-1]} is above min(m, n) = {min(shape)} of A")
    return tuple(found)


def speckle_of(spec: StudySpec, matrix) -> SpeckledMask | None:
    """The held-out entries of a cross-validated study, in A's row blocks (None without cv)."""
    if spec.cv is None:
        return None
    return SpeckledMask(matrix.shape, matrix.row_offsets, spec.cv, spec.cv_seed)


# --------------------------------------------------------------------------- the front doors


def sweep(
    A: Any,
    ks,
    *,
    out: str | os.PathLike,
    replicates: int = 10,
    seed: int = 0,
    cv: float | None = None,
    cv_seed: int | None = None,
    density_threshold: float = DENSITY_THRESHOLD,
    local_neighborhood: float = LOCAL_NEIGHBORHOOD,
    block_nnz: int | None = None,
    scheduler: Any = None,
    fits_in_flight: int | None = None,
    n_tasks: int | None = None,
    cache_a: int | str | None = None,
    progress: bool | ProgressBar = False,
    **fit: Any,
):
    """Fit every k of ``ks`` ``replicates`` times as one resumable study, then the consensus
    of each k, its stability and (with ``cv``) its held-out error, and choose k.

    Parameters
    ----------
    A : path, CSRStore, scipy.sparse matrix or ndarray, shape (m, n)
        As :func:`bignmf.nmf`'s (a store resumes by itself; an in-memory matrix must be given
        to :func:`resume_study` again).
    ks : iterable of int
        The ranks to try.
    out : path
        The study directory (new or empty).
    replicates : int
        Fits per k, replicate r seeded ``seed + r`` (a random initialisation each).
    seed : int
    cv : float, optional
        Cross-validate: hold out this fraction of all entries, stored ones and zeros alike,
        chosen by a seeded hash (:class:`~bignmf.store.speckled.SpeckledMask`, nothing copied);
        every fit runs on the rest (``mask=``) and is scored on them.
    cv_seed : int, optional
        The held-out set's seed (default ``seed``).
    density_threshold, local_neighborhood : float
        The consensus's outlier filter: spectra whose mean distance to their nearest
        ``local_neighborhood`` of the replicates is above ``density_threshold`` (unit vectors:
        0 to 2) are dropped (cNMF's defaults: 0.5, 0.30).
    block_nnz : int, optional
        Re-plan A's row blocks (as :func:`bignmf.nmf`).
    scheduler : optional
        As :func:`bignmf.nmf`'s: every fit runs on it.
    fits_in_flight : int, optional
        Fits at once (default: two per scheduler thread); never more than the memory plan
        allows (:func:`bignmf.plan.fits_in_flight`).
    n_tasks, cache_a : optional
        Every fit's, as :func:`bignmf.nmf`'s (neither changes a result; a resume may give
        others). The fits in flight in one process share its cache of A.
    progress : bool or ProgressBar
        A line on stderr per fit finished and per phase.
    **fit
        The fits' settings, as :func:`bignmf.nmf` takes them: ``solver``, ``beta_loss``,
        ``init`` (default 'random'), ``tol`` (default 1e-6: a consensus wants converged
        replicates, :data:`~bignmf.study.settings.STUDY_TOL`), ``stopping``, ``max_iter``
        (default 1000), ``alpha_W``,
        ``alpha_H``, ``l1_ratio``, ``n_inner``, ``checkpoint_every``, ``checkpoint_seconds``.

    Returns
    -------
    Study
        The table per k, the chosen k and the consensus factors (:class:`bignmf.study.Study`).

    Notes
    -----
    Memory: each fit's, times the fits in flight (which the plan bounds); the consensus holds
    the spectra of one k, ``replicates·k × n`` float64, and distances a slab of 512 rows at a
    time; never an m × n array. Every fit's result is bitwise the one it gets alone: fits in
    flight, a killed study resumed, another scheduler change nothing.
    """
    from bignmf.store.matrix import as_block_matrix

    matrix = as_block_matrix(A, block_nnz=block_nnz)
    spec = StudySpec.build(
        matrix.shape,
        ks,
        replicates,
        seed,
        fit,
        cv,
        cv_seed,
        density_threshold,
        local_neighborhood,
    )
    study = StudyDir(out)
    study.check_free()
    how = _How(scheduler, n_tasks, cache_a)
    plan = _plan(matrix, spec, how, block_nnz)  # every setting checked before writing
    with study.locked():
        study.create({**spec.to_record(), "input": _input_record(matrix, block_nnz)})
        return run_study(study, spec, matrix, how, fits_in_flight, progress, plan)


def resume_study(
    path: str | os.PathLike,
    *,
    A: Any = None,
    scheduler: Any = None,
    fits_in_flight: int | None = None,
    n_tasks: int | None = None,
    cache_a: int | str | None = None,
    progress: bool | ProgressBar = False,
):
    """Finish a study: fits not started run, stopped ones resume from their checkpoints,
    finished ones are read back; then whatever consensus and summary is missing.

    Parameters
    ----------
    path : path
        The study directory.
    A : optional
        The matrix; by default the store the study recorded (an in-memory matrix must be given).
    scheduler, fits_in_flight, n_tasks, cache_a, progress
        As :func:`sweep`'s.

    Returns
    -------
    Study
        Bitwise what the uninterrupted study gives.
    """
    from bignmf.store.csr import open_matrix
    from bignmf.store.matrix import as_block_matrix

    study = StudyDir(path)
    record = study.record()
    spec = StudySpec.from_record(record)
    given = record["input"]
    if A is None:
        if given.get("path") is None:
            raise CheckpointError(f"{study.path} was run on an in-memory matrix: pass it as A=")
        A = open_matrix(given["path"], given.get("key"), block_nnz=given.get("block_nnz"))
    matrix = as_block_matrix(A, block_nnz=given.get("block_nnz"))
    if _fingerprint(matrix) != given["fingerprint"]:
        raise CheckpointError(f"{study.path} was run on another matrix than the one given")
    how = _How(scheduler, n_tasks, cache_a)
    plan = _plan(matrix, spec, how, given.get("block_nnz"))
    with study.locked():
        return run_study(study, spec, matrix, how, fits_in_flight, progress, plan)


def _fingerprint(matrix) -> Any:
    import json

    return json.loads(json.dumps(matrix.fingerprint()))  # as study.json keeps it


def _input_record(matrix, block_nnz) -> dict:
    from bignmf.store.csr import CSRStore

    path = os.path.abspath(matrix.path) if isinstance(matrix, CSRStore) else None
    key = matrix.key if isinstance(matrix, CSRStore) else None
    return {
        "path": path,
        "key": key,
        "block_nnz": block_nnz,
        "shape": list(matrix.shape),
        "fingerprint": _fingerprint(matrix),
    }


@dataclass(frozen=True)
class _How:
    """Where and how every fit runs: what changes no result."""

    scheduler: Any = None
    n_tasks: int | None = None
    cache_a: int | str | None = None

    def options(self) -> dict:
        """As :func:`bignmf.nmf` and :func:`bignmf.resume` take them (unset ones left out,
        so that a resume keeps what its run recorded)."""
        given = {"n_tasks": self.n_tasks, "cache_a": self.cache_a}
        return {"scheduler": self.scheduler} | {k: v for k, v in given.items() if v is not None}


def _plan(matrix, spec: StudySpec, how: _How, block_nnz):
    """The memory plan of the study's largest fit (and every fit setting checked)."""
    from bignmf.fit.engine import nmf

    return nmf(
        matrix,
        max(spec.ks),
        **spec.fit,
        random_state=spec.seed,
        mask=speckle_of(spec, matrix),
        block_nnz=block_nnz,
        plan_only=True,
        **how.options(),
    )


# --------------------------------------------------------------------------- the fits


@dataclass(frozen=True)
class FitOutcome:
    """One finished fit, as the study reads it back."""

    k: int
    replicate: int
    n_iter: int
    relative_error: float | None
    seconds: float
    score: dict | None


def _bar(progress) -> ProgressBar:
    if isinstance(progress, ProgressBar):
        return progress
    return ProgressBar(enabled=bool(progress))


def run_study(study: StudyDir, spec: StudySpec, matrix, how: _How, requested, progress, plan):
    """Run what the study has left (the caller holds its lock): fits, consensus, summary."""
    from threadpoolctl import threadpool_limits

    from bignmf.study.summary import finish_study

    bar = _bar(progress)
    mask = speckle_of(spec, matrix)
    left = [fit for fit in spec.fits if _outcome(study, fit) is None]
    count, why = fits_in_flight(plan, len(left), requested)
    total = len(spec.fits)
    if left:
        bar.phase(f"fits: {len(left)} of {total} to run, {count} at a time ({why})", "study")
    # the fits' BLAS limits are process-wide: entered and left by threads in any order, they
    # would restore each other's; held here once, the fits' own nest inside it
    with threadpool_limits(limits=1), _shared_pool(how.scheduler):
        _run_fits(study, spec, matrix, mask, how, left, count, bar)
    outcomes = [_outcome(study, fit) for fit in spec.fits]
    return finish_study(study, spec, matrix, outcomes, how.scheduler, bar)


@contextlib.contextmanager
def _shared_pool(scheduler):
    """On dask's threaded scheduler, one pool of threads for every fit in flight.

    Each thread that computes gets a pool of its own otherwise (one per core): F fits in flight
    ran F times the tasks at once, each with its read buffers — two fits of an 8M-nonzero
    store held 129 MiB more than one fit's 30 MiB. Shared, the tasks of all fits queue for
    the same cores, and the fits overlap where one's driver works while another's tasks run.
    """
    import dask

    from bignmf.cluster.runner import client_of

    threaded = scheduler in ("threads", "threading") or (
        scheduler is None and client_of(None) is None and dask.config.get("scheduler", None) is None
    )
    if not threaded:
        yield
        return
    pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="bignmf-study-tasks")
    with pool, dask.config.set(pool=pool):
        yield


def _run_fits(study, spec, matrix, mask, how: _How, left, count, bar) -> None:
    """Run ``left`` fits, ``count`` at a time; the first failure stops the others at their
    next iteration (their checkpoints kept) and is raised."""
    stop = threading.Event()
    done = [len(spec.fits) - len(left)]
    started = time.monotonic()
    lock = threading.Lock()

    def one(fit):
        outcome = _fit(study, spec, matrix, mask, how, fit, stop)
        with lock:
            done[0] += 1
            _say_done(bar, outcome, done[0], len(spec.fits), started, len(left))
        return outcome

    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="bignmf-study")
    futures = [pool.submit(one, fit) for fit in left]
    try:
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in finished if f.exception() is not None]
        if failed:  # a fit's own failure rather than one stopped for it
            raise min(failed, key=lambda error: isinstance(error, StoppedStudy))
    except BaseException:
        stop.set()  # the others stop at their next iteration, keeping their checkpoints
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def _say_done(bar, outcome: FitOutcome, done: int, total: int, started: float, run: int):
    rel = outcome.relative_error
    error = f", relative error {rel:.4f}" if rel is not None else ""
    test = f", held-out RMSE {outcome.score['rmse']:.4g}" if outcome.score else ""
    spent = time.monotonic() - started
    ran = done - (total - run)
    eta = f", ETA {spent / ran * (total - done):.0f} s" if ran > 0 and done < total else ""
    bar.phase(
        f"fit k={outcome.k} r={outcome.replicate}: {outcome.n_iter} iterations{error}{test} "
        f"({done}/{total} fits{eta})",
        "study-fit",
    )


class _Stop:
    """The fits' callback: raise at the next iteration once the study stops."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, info) -> None:
        if self.stop.is_set():
            raise StoppedStudy("stopped: another fit of the study failed, or it was interrupted")


def _fit(study, spec, matrix, mask, how: _How, fit, stop) -> FitOutcome:
    """One fit of the study: run (or resume) it, write its outputs, score it."""
    from bignmf.fit.engine import nmf, resume
    from bignmf.fit.outputs import finish_run, read_summary

    k, r = fit
    path = study.fit_path(k, r)
    run = RunDir(path)
    began = time.perf_counter()
    if read_summary(path) is None:
        if stop.is_set():
            raise StoppedStudy("stopped before it began")
        if not run.exists() and path.exists():
            shutil.rmtree(path)  # what a kill left before the run was recorded
        if run.exists():
            result = resume(path, A=matrix, mask=mask, callback=_Stop(stop), **how.options())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            result = nmf(
                matrix,
                k,
                **spec.fit,
                random_state=spec.seed + r,
                mask=mask,
                checkpoint_dir=path,
                callback=_Stop(stop),
                **how.options(),
            )
        crash_point("study-fit", k * 1000 + r)
        finish_run(path, result, time.perf_counter() - began, plot=False)
    if mask is not None and read_json(study.score_path(k, r)) is None:
        _score(study, matrix, mask, fit, how.scheduler)
    return _outcome(study, fit)


def _score(study: StudyDir, matrix, mask, fit, scheduler) -> None:
    from bignmf.fit.outputs import read_factor
    from bignmf.fit.rundir import W_FILE
    from bignmf.study.heldout import held_out_error

    path = study.fit_path(*fit)
    H = read_factor(path, "H")
    score = held_out_error(matrix, mask, path / W_FILE, H, scheduler)
    write_json_atomic(study.score_path(*fit), score)


def _outcome(study: StudyDir, fit) -> FitOutcome | None:
    """A finished fit read back (None while it is not: no summary, or no score where the
    study is cross-validated)."""
    from bignmf.fit.outputs import read_summary

    k, r = fit
    summary = read_summary(study.fit_path(k, r))
    if summary is None:
        return None
    score = read_json(study.score_path(k, r))
    if score is None and _cross_validated(study):
        return None
    rel = summary.get("relative_error")
    return FitOutcome(k, r, summary["n_iter"], rel, summary["seconds"], score)


def _cross_validated(study: StudyDir) -> bool:
    return study.record().get("cv") is not None


def fit_h(study: StudyDir, k: int, replicate: int) -> np.ndarray:
    """A finished fit's H."""
    from bignmf.fit.outputs import read_factor

    H = read_factor(study.fit_path(k, replicate), "H")
    if H is None:
        raise CheckpointError(f"{study.fit_path(k, replicate)} has no H.zarr: not finished")
    return H


def replicate_errors(outcomes, k: int) -> list[float]:
    """The relative errors of k's replicates (those that report one)."""
    return [o.relative_error for o in outcomes if o.k == k and o.relative_error is not None]


def median_or_nan(values) -> float:
    """The median, NaN for no values."""
    return float(np.median(values)) if len(values) else float("nan")


def standard_error(values) -> float:
    """The standard error of the mean (NaN below two values)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
