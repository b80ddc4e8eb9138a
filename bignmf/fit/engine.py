"""The functional entry point :func:`nmf`: initialise, iterate, stop.

Each iteration builds one small graph (:func:`bignmf.fit.graph.iteration`), persists W's new blocks
and computes the reduced partial sums, then updates H in NumPy. The graph of iteration t refers
only to the persisted results of iteration t-1, so lineage never grows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bignmf import plan as memory_rules
from bignmf.cluster.runner import Runner, scheduler_threads, worker_limits
from bignmf.errors import ParameterError
from bignmf.fit import columns
from bignmf.fit.callbacks import (
    Checkpointer,
    FunctionCallback,
    LogIterations,
    MetricsFile,
    Phase,
    ProgressBar,
)
from bignmf.fit.coverage import count_entries, warn_about
from bignmf.fit.driver import FitState, IterationInfo, rounding, run
from bignmf.fit.graph import Pass, placement
from bignmf.fit.init import (
    InitSpec,
    check_custom,
    custom_init,
    nndsvd_init,
    nndsvd_passes,
    random_init,
)
from bignmf.fit.predict import predict as predict_entries
from bignmf.fit.rundir import WORK_W, CheckpointError, RunDir, crc32
from bignmf.fit.settings import (
    AUTO_CHECKPOINTS,
    IMPLICIT_ALPHA,
    FitSettings,
    RunOptions,
    RunRecord,
)
from bignmf.fit.stopping import get_stopping
from bignmf.kernels.solvers import MASK, SolverParams, get_solver
from bignmf.store import blockcache
from bignmf.store.csr import CSRStore, open_matrix
from bignmf.store.factors import ZarrBlocks, machine_memory_bytes
from bignmf.store.masked import MaskedMatrix
from bignmf.store.matrix import as_block_matrix
from bignmf.store.speckled import SpeckledMask, speckled_from_record
from bignmf.store.weighted import WeightedMatrix, weights_kind, with_weights

logger = logging.getLogger(__name__)


@dataclass
class NMFResult:
    """The outcome of :func:`nmf`.

    Attributes
    ----------
    W : ndarray or dask.array.Array, shape (m, k)
        NumPy when W was kept in memory; a lazy Dask array reading the Zarr blocks otherwise.
    H : ndarray, shape (k, n)
    loss_history : list of float
        Loss (the β-divergence) after each iteration's W update (see :class:`IterationInfo`).
    reconstruction_err : float
        scikit-learn's ``reconstruction_err_`` of the final ``(W, H)``: ‖A − WH‖_F for Frobenius.
    n_iter : int
    converged : bool
        Whether the stopping rule (``tol``, ``stopping``) stopped the run before ``max_iter``.
    run_dir : str or None
        The run directory, when checkpointing.
    objective_history : list of float
        The objective minimised after each iteration: the loss plus the penalties of
        ``alpha_W``/``alpha_H`` (equal to ``loss_history`` without them); the stopping rule
        reads it.
    settings : dict
        What the fit ran with: the settings that fix its iterates (``n_components``,
        ``solver``, ``beta_loss`` as β, ``init`` resolved, ``seed`` drawn if none was given,
        the penalties...; :meth:`~bignmf.fit.settings.FitSettings.to_record`) and ``max_iter``,
        ``tol``, ``stopping``.
    relative_error : float or None
        ``reconstruction_err / ‖A‖_F`` over the entries the fit saw (Frobenius loss; None
        for other losses).
    plan : list of str
        The memory plan this fit (or this resume: it plans again) ran with, one line per
        decision (:meth:`bignmf.plan.Plan.describe`); ``summary.json`` and the report show it.
    init : dict or None
        What the initialisation cost: ``method``, ``passes`` (NNDSVD's blockwise passes, as
        its progress counts them, :func:`~bignmf.fit.init.nndsvd_passes`; 0 for random or
        given factors) and ``seconds``; None for a resume, which restored a checkpoint
        instead. ``summary.json`` and the report show it.
    """

    W: Any
    H: np.ndarray
    loss_history: list[float] = field(default_factory=list)
    reconstruction_err: float = float("nan")
    n_iter: int = 0
    converged: bool = False
    run_dir: str | None = None
    objective_history: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    relative_error: float | None = None
    plan: list[str] = field(default_factory=list)
    init: dict | None = None

    def predict(self, rows, cols) -> np.ndarray:
        """The fitted value ``(W·H)[rows[p], cols[p]]`` of each (row, column) pair, what a fit
        on the stored entries only (``missing="zeros"``) is for; see
        :func:`bignmf.fit.predict.predict`."""
        return predict_entries(self.W, self.H, rows, cols)


def _seed(random_state: int | None) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(random_state, int | np.integer) and random_state >= 0:
        return int(random_state)
    raise ParameterError(f"random_state must be a non-negative int or None, got {random_state!r}")


def nmf(
    A: Any,
    n_components: int,
    *,
    solver: str = "hals",
    beta_loss: float | str = "frobenius",
    init: str | None = None,
    W: np.ndarray | None = None,
    H: np.ndarray | None = None,
    tol: float = 1e-4,
    stopping: str = "relative",
    max_iter: int = 200,
    random_state: int | None = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    n_inner: int | None = None,
    missing: str | None = None,
    mask: Any = None,
    weights: Any = None,
    implicit_alpha: float = IMPLICIT_ALPHA,
    implicit_f: str = "linear",
    w_storage: str = "auto",
    workdir: str | os.PathLike | None = None,
    n_tasks: int | None = None,
    split_every: int = 8,
    block_nnz: int | None = None,
    column_chunks: int | None = None,
    cache_a: int | str | None = None,
    scheduler: Any = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    callbacks: tuple = (),
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | str | None = AUTO_CHECKPOINTS,
    checkpoint_seconds: float | None = 600.0,
    resume: str | os.PathLike | None = None,
    plan_only: bool = False,
) -> NMFResult | memory_rules.Plan:
    """Non-negative matrix factorization A ≈ W·H of a stored or in-memory sparse matrix.

    Parameters
    ----------
    A : path, CSRStore, scipy.sparse matrix or ndarray, shape (m, n)
        A store written by :func:`bignmf.convert` (or an AnnData ``.zarr``), or a matrix in
        memory.
    n_components : int
        Rank k.
    solver : {'hals', 'mu', 'bpp'}
        Accelerated HALS (default), multiplicative updates, or ANLS with block principal
        pivoting.
    beta_loss : {'frobenius', 'kullback-leibler', 'itakura-saito'} or float
        Divergence; only ``'mu'`` supports other than Frobenius.
    init : {None, 'random', 'nndsvd', 'nndsvda', 'nndsvdar', 'custom'}
        As scikit-learn: ``None`` is 'nndsvda' when ``k <= min(m, n)``, else 'random';
        'random' is ``sqrt(mean(A)/k)·|N(0,1)|`` seeded per row block from ``random_state``;
        the NNDSVD family comes from an out-of-core randomized SVD (a few passes over A);
        'custom' takes ``W`` and ``H``.
    W, H : ndarray, optional
        Initial factors for ``init='custom'``.
    tol : float
        Tolerance of the stopping rule; 0 runs ``max_iter`` iterations.
    stopping : {'relative', 'sklearn'}
        The stopping rule, on the objective (loss + penalties) of each iteration's
        ``(W_t, H_{t-1})``. 'relative' (default): stop after the first iteration that lowers
        the objective by less than ``tol`` times its previous value. 'sklearn':
        scikit-learn's multiplicative-update rule — every 10 iterations, stop when
        ``sqrt(2·objective)`` fell by less than ``tol`` times its value after the first
        iteration (scikit-learn: of the initial factors) since the last check; what
        :class:`bignmf.NMF` uses (see :func:`bignmf.fit.stopping.sklearn_decrease`). Under either
        rule a rise of the objective is not convergence: the fit goes on, with an
        :class:`~bignmf.ObjectiveIncreaseWarning`.
    max_iter : int
        Maximum number of iterations.
    random_state : int, optional
        Seed of the random initialisation.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling.
    n_inner : int, optional
        HALS sweeps per pass over A (default 1 for 'hals', 3 with ``missing`` or ``mask``,
        where the per-row grams cost more than the sweeps; several amortise the pass).
    missing : {None, 'zeros'}
        None: every entry of A is observed (zeros are zeros). ``'zeros'``: only the stored
        entries are observed, every other one is unknown (ratings, held-out data): the
        objective is ``½·Σ_stored (a_ij − (WH)_ij)²`` plus the penalties, and the loss and
        relative error count the stored entries only. Solvers 'hals' (coordinate descent
        on each row's and column's own gram, exact in each coordinate) and 'mu' (masked
        multiplicative updates), Frobenius loss, one pass over A per iteration. A row or
        column with no stored entry gets zeros. The default ``init`` is then 'random'
        (scaled by the stored entries' mean): an SVD would read the unknown entries as 0.
    mask : optional
        Entries that are unknown whatever A holds there (a held-out set, a dense array's
        NaNs): any matrix of A's shape that ``A`` could be (a store, a path, scipy.sparse),
        whose stored entries — their pattern, not their values — are the unknown ones, or a
        :class:`~bignmf.store.speckled.SpeckledMask` (a seeded fraction of all entries, the
        held-out set of cross-validation, recorded by its seed and made again on resume). Every
        other entry, zeros included, is observed: the objective is ``½·Σ_off the mask
        (a_ij − (WH)_ij)²`` plus the penalties, and the loss and relative error are over those
        entries. Every pass, initialisation included, reads A with the masked entries
        removed. Solvers 'hals' and 'mu', Frobenius loss; not with ``missing``. A mask with
        no entry is no mask (the plain fit, bit for bit). Its statistics take one pass over A
        and the mask in this process when the fit starts.
    weights : {None, 'implicit'} or matrix, optional
        Entry weights c: the objective becomes ``½·Σ c_ij (t_ij − (WH)_ij)²`` plus the
        penalties, the loss and relative error are weighted (``Σ c·t²`` is the norm).
        ``'implicit'``: implicit feedback (Hu, Koren & Volinsky) — a stored value a says
        "liked" (target t = 1) with confidence ``c = 1 + implicit_alpha·f(a)``, every other
        entry "not liked" (t = 0) with confidence 1; not with ``missing``. A matrix (anything
        ``A`` could be) of A's shape and sparsity pattern: its values are the weights of A's
        stored entries (t = a), the other entries weigh 1, or are unknown with
        ``missing='zeros'``. Weights must be finite and >= 0. Solvers 'hals' and 'mu',
        Frobenius loss; not with ``mask``. The rows' and columns' grams are the plain
        ``HHᵀ``/``WᵀW`` corrected on A's pattern by ``c − 1``: one pass over A per
        iteration, nothing dense. ``implicit_alpha``, ``implicit_f`` are recorded in the run.
    implicit_alpha : float, default 40
        α of ``weights='implicit'`` (>= 0; Hu, Koren & Volinsky's 40, Spark's ALS uses 1).
    implicit_f : {'linear', 'log'}, default 'linear'
        f of ``weights='implicit'``: ``f(a) = a`` or ``log(1 + a)``.
    w_storage : {'auto', 'memory', 'zarr'}
        Keep W's blocks in memory or on disk in ``workdir``. 'auto': on a distributed
        scheduler always on disk (so that an iteration's graph depends only on stored blocks
        and a lost worker costs only its tasks), otherwise in memory when W fits easily.
    workdir : path, optional
        Where W's Zarr blocks go when on disk: the run directory when checkpointing, else a
        new temporary directory. On a cluster it must be on storage every worker can reach.
    n_tasks : int, optional
        Number of fat tasks per iteration (default 4 per scheduler thread).
    split_every : int
        Fan-in of the reduction tree (a power of two).
    block_nnz : int, optional
        Re-plan the row blocks (in-memory input, or stores from other tools).
    column_chunks : int, optional
        Cut H into this many column ranges and make two passes over A per iteration, so that
        no task holds all of H (for very wide matrices; Frobenius loss only; each block of A
        is then read ``2·column_chunks`` times per iteration). Default: 1 (one fused pass)
        unless a task's share of H — ``Hᵀ`` and its n×k partial sums — would exceed a quarter
        of a worker thread's memory (see :mod:`bignmf.fit.columns`). A resumed run keeps the
        recorded value.
    cache_a : int, str or None
        Keep A's decoded row blocks in the memory of each process that reads them (each Dask
        worker, or this process on a local scheduler) between iterations, up to this many
        bytes per process: a size such as ``'4GiB'``, a number of bytes, or ``'auto'`` (a
        quarter of the smallest worker's memory limit, or of RAM). Off by default: it trades
        memory for the decoding of every block in every pass. Only stores are cached; the
        results do not change; a worker with a memory limit keeps blocks only while below
        distributed's spill and pause thresholds; the blocks are dropped when the fit ends. A
        resumed run keeps the recorded value unless given another.
    scheduler : optional
        Passed to ``dask.compute`` (``'threads'``, ``'sync'``, a ``distributed.Client``);
        default: Dask's current scheduler.
    callback : callable, optional
        Called with an :class:`~bignmf.fit.driver.IterationInfo` after every iteration.
    callbacks : sequence, optional
        Objects with ``on_start``, ``on_iteration`` and ``on_end``
        (:class:`bignmf.Callback`; subclass it for no-op hooks).
    progress : bool or ProgressBar
        Show progress on stderr: a line as each phase begins (initialisation and its passes
        over A, the iterations), then a bar on a terminal or a line every 10 iterations or
        10 seconds elsewhere, with an ETA only when ``tol`` is 0
        (:class:`~bignmf.fit.callbacks.ProgressBar`; give one to share its clock and stream
        with what a front end showed before the fit).
    checkpoint_dir : path, optional
        Start a run directory here: ``run.json``, ``metrics.jsonl`` and checkpoints (the last
        two kept), from which :func:`nmf` with ``resume=`` continues. Must not hold a run.
    checkpoint_every, checkpoint_seconds : int or 'auto', float, optional
        Checkpoint every so many iterations and/or seconds, and always at the end. The
        default, ``'auto'`` and 10 minutes: every 10 iterations, postponed while checkpoints
        would take more than 5% of the fit's time (on a small matrix, where an iteration costs
        less than a checkpoint), and at least every 10 minutes.
    resume : path, optional
        Continue the run in this directory from its newest intact checkpoint. A, the
        settings that fix the iterates and the row blocking must be those it was started with;
        ``max_iter``, ``tol`` and ``stopping`` may differ. The result is bitwise equal to an
        uninterrupted run.
    plan_only : bool
        Check the parameters and return the memory plan (:class:`bignmf.plan.Plan`: how the
        fit would be cut to fit its scheduler's memory, and why) without fitting or writing
        anything.

    Returns
    -------
    NMFResult or Plan
        The result; the plan with ``plan_only``.

    Notes
    -----
    Memory: the driver holds H (k×n), a few n×k partial sums and k×k grams; each task holds one
    row block of A, its rows of W and ``log2(blocks per task) + 1`` n×k partial sums (n/R×k
    with ``column_chunks=R``). W is kept
    in memory (≈3·m·k values) or on disk. Results depend on the row blocks, never on the
    scheduler or the number of tasks: the partial sums are added in a fixed tree.
    """
    matrix = as_block_matrix(A, block_nnz=block_nnz)
    if mask is not None:
        if missing is not None:
            raise ParameterError("give either missing= or mask=, not both")
        if weights is not None:
            raise ParameterError("give either weights= or mask=, not both")
        matrix, missing = _masked(matrix, mask)
    options = RunOptions(
        max_iter=max_iter,
        tol=tol,
        stopping=stopping,
        w_storage=w_storage,
        block_nnz=block_nnz,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        cache_a=blockcache.parse_budget(cache_a),
        scheduler=scheduler,
        n_tasks=n_tasks,
        split_every=split_every,
        workdir=workdir,
    )
    recorded = RunRecord.from_json(RunDir(resume).record()) if resume is not None else None
    settings = FitSettings.build(
        matrix.shape,
        matrix.dtype,
        n_components,
        solver=solver,
        beta_loss=beta_loss,
        init=init,
        seed=None if resume is not None else _seed(random_state),
        alpha_W=alpha_W,
        alpha_H=alpha_H,
        l1_ratio=l1_ratio,
        n_inner=n_inner,
        missing=missing,
        weights=weights_kind(weights),
        implicit_alpha=implicit_alpha,
        implicit_f=implicit_f,
    )
    if weights is not None:
        matrix = _weighted(matrix, settings, weights)
    if column_chunks is None and recorded is not None:
        column_chunks = recorded.settings.column_chunks
    options = _with_tasks(options)
    memory = memory_plan(matrix, settings, options, column_chunks, resumed=recorded is not None)
    settings = dataclasses.replace(settings, column_chunks=memory.column_chunks)
    checked = _checked(matrix, settings, options, (W, H), resume)
    if plan_only:
        return memory
    observers = _callbacks(callback, callbacks, progress, options)
    return _start(
        matrix,
        settings,
        options,
        memory,
        checked,
        observers,
        (W, H),
        checkpoint_dir,
        resume,
        recorded,
    )


def _masked(matrix, mask) -> tuple[Any, str | None]:
    """A with ``mask`` (and missing='mask'), or A alone (and None) for a mask with no entry."""
    unknown = mask if isinstance(mask, SpeckledMask) else as_block_matrix(mask)
    if unknown.nnz == 0:
        return matrix, None
    return MaskedMatrix(matrix, unknown), MASK


def _weighted(matrix, settings: FitSettings, weights: Any) -> WeightedMatrix:
    """A carrying the weights of ``settings.weights`` (``weights``: the given matrix)."""
    return with_weights(
        matrix,
        "implicit" if settings.weights == "implicit" else weights,
        alpha=settings.implicit_alpha,
        f=settings.implicit_f,
        zeros_seen=settings.missing is None,
    )


def _with_tasks(options: RunOptions) -> RunOptions:
    """The options with the default number of tasks: four per thread of the scheduler."""
    if options.n_tasks is not None:
        return options
    return options.replace(n_tasks=4 * scheduler_threads(options.scheduler))


def memory_plan(
    matrix, settings: FitSettings, options: RunOptions, column_chunks=None, resumed=False
) -> memory_rules.Plan:
    """The memory plan of this fit on its scheduler (:func:`bignmf.plan.make_plan`).

    This asks the scheduler for its workers' memory limits and threads (or this machine for
    its RAM and threads) and hands the numbers to the rules; ``column_chunks`` is a requested
    (or, ``resumed``, recorded) count, None to let the rules choose.
    """
    scheduler = options.scheduler
    (m, n), k = matrix.shape, settings.n_components
    cache_a = options.cache_a if isinstance(matrix, CSRStore) else None
    try:
        made = memory_rules.make_plan(
            m,
            n,
            matrix.nnz,
            k,
            matrix.dtype.itemsize,
            matrix.row_offsets,
            memory_rules.blocks_per_task(matrix.n_blocks, options.n_tasks),
            workers=worker_limits(scheduler),
            ram=machine_memory_bytes(),
            threads=scheduler_threads(scheduler),
            column_chunks=column_chunks,
            w_storage=options.w_storage,
            cache_a=cache_a,
            beta_loss=settings.beta_loss,
            init=settings.init,
            missing=settings.entries,
        )
    except ValueError as error:
        raise ParameterError(str(error)) from None
    if resumed and column_chunks is not None:
        made = dataclasses.replace(made, columns_why="as the resumed run recorded")
    return made


def _checked(matrix, settings, options, initial, resume) -> tuple[SolverParams, Pass]:
    """The solver's parameters and the pass plan, once every setting left is checked."""
    if settings.column_chunks > 1:
        try:
            columns.check_solver(settings.solver, settings.beta_loss)
        except ValueError as error:
            raise ParameterError(str(error)) from None
    (m, n) = matrix.shape
    try:
        params = SolverParams.from_alpha(
            n_samples=m,
            n_features=n,
            beta_loss=settings.beta_loss,
            alpha_W=settings.alpha_W,
            alpha_H=settings.alpha_H,
            l1_ratio=settings.l1_ratio,
            n_inner=settings.n_inner,
            missing=settings.entries,
        )
        passes = Pass.plan(
            matrix.n_blocks, options.n_tasks, settings.solver, params, options.split_every
        )
    except ValueError as error:
        raise ParameterError(str(error)) from None
    if settings.init == "custom" and resume is None:  # before anything is written
        check_custom(*initial, matrix.shape, settings.n_components, matrix.dtype)
    return params, passes


def _start(
    matrix, settings, options, memory, checked, observers, initial, checkpoint_dir, resume, recorded
):
    """Open the run directory (a new run's, or the resumed one) and fit; ``checked`` is what
    :func:`_checked` gave."""
    for line in memory.describe():
        logger.info("plan: %s", line)
    runner = Runner(options.scheduler)
    where = resume if resume is not None else checkpoint_dir
    run_dir = RunDir(where) if where is not None else None
    # refusals before the lock writes its owner: the user's directory, another matrix
    if run_dir is not None and resume is None:
        run_dir.check_free()
    if resume is not None:
        _check_resumable(run_dir, recorded, matrix, settings)
        settings = recorded.settings
    # one process at a time fits or resumes a run directory: two resumes used to interleave
    with run_dir.locked() if run_dir is not None else contextlib.nullcontext():
        if resume is None and run_dir is not None:
            record = RunRecord(settings, options, _matrix_record(matrix), versions())
            run_dir.create(record.to_json())
        observers = observers + _run_callbacks(run_dir, options)
        job = _Job(
            matrix,
            settings,
            options,
            memory,
            *checked,
            runner,
            run_dir,
            recorded is not None,
            initial,
            observers,
        )
        try:
            return _fit(job)
        except BaseException:
            if run_dir is not None and resume is None:
                run_dir.discard()  # a run that fails before its first checkpoint blocks no retry
            raise


@dataclass(frozen=True)
class _Job:
    """A fit whose parameters are all checked and whose run directory (if any) is open."""

    matrix: Any
    settings: FitSettings
    options: RunOptions
    memory: memory_rules.Plan
    params: SolverParams
    plan: Pass
    runner: Runner
    run_dir: RunDir | None
    resumed: bool
    initial: tuple  # custom (W, H), or (None, None)
    callbacks: list


def _callbacks(callback, callbacks, progress, options: RunOptions) -> list:
    """The loop's observers: the user's, then progress (told the stopping rule, which its ETA
    depends on) and logging."""
    found = list(callbacks)
    if callback is not None:
        found.append(FunctionCallback(callback))
    if progress:
        bar = progress if isinstance(progress, ProgressBar) else ProgressBar()
        bar.rule(options.tol, options.stopping)
        found.append(bar)
    found.append(LogIterations())
    return found


def announce(observers, name: str, text: str) -> None:
    """Tell every observer with an ``on_phase`` hook that a phase begins."""
    phase = Phase(name, text)
    for observer in observers:
        hook = getattr(observer, "on_phase", None)
        if hook is not None:
            hook(phase)


def _run_callbacks(run_dir: RunDir | None, options: RunOptions) -> list:
    """Metrics and checkpoints, when the fit has a run directory."""
    if run_dir is None:
        return []
    every, seconds = options.checkpoint_every, options.checkpoint_seconds
    return [MetricsFile(run_dir), Checkpointer(run_dir, every, seconds)]


def _fit(job: _Job) -> NMFResult:
    """Initialise (or restore the newest checkpoint) and iterate."""
    matrix, runner, run_dir = job.matrix, job.runner, job.run_dir
    settings, options = job.settings, job.options
    n, k = matrix.shape[1], settings.n_components
    w_store = None
    if job.memory.w_storage == "zarr":
        w_buffers = _w_buffers(options.workdir, run_dir)
        w_store = ZarrBlocks(w_buffers, matrix.row_offsets, k, matrix.dtype)
        w_store.create()
    if (
        job.memory.distributed
    ):  # workers open the store and W's buffers by path: fail now, naming them
        # a masked or weighted fit's workers read the mask or the weights too
        beside = getattr(matrix, "mask", None) or getattr(matrix, "weights", None)
        runner.check_visible(
            [
                getattr(matrix, "path", None),
                getattr(beside, "path", None),
                w_store.path if w_store is not None else None,
            ]
        )
    reads = blockcache.cached(matrix, job.memory.cache_budget)
    solver = get_solver(settings.solver, settings.entries)
    H0 = np.zeros((k, n), matrix.dtype)
    state = FitState(reads, job.plan, runner, solver, job.params.beta_loss, None, w_store, H0)
    if settings.column_chunks > 1:
        ranges = columns.ColumnRanges.split(n, settings.column_chunks)
        workdir = None if w_store is None else os.path.dirname(w_store.path)
        state.two_passes = columns.TwoPasses(ranges, matrix.row_offsets, workdir)
    try:
        # one BLAS thread here too: on a cluster the driver's H update otherwise competes with
        # the workers for cores (measured 0.01 s quiet, 0.06-0.23 s under load)
        with threadpool_limits(limits=1), placement(runner.workers):
            restored = init = None
            if job.resumed:
                announce(
                    job.callbacks, "restore", f"restoring the newest checkpoint of {run_dir.path}"
                )
                restored = run_dir.load(lambda ckpt: state.restore_w(ckpt))
            if restored is None:
                if settings.missing == "zeros":  # off a mask, every row sees most columns
                    found = count_entries(reads, job.plan.groups, runner, k)
                    warn_about(found, job.params.l2_W, job.params.l2_H)
                init = _initialize(state, settings, *job.initial, job.callbacks)
            run(state, options.max_iter, options.tol, job.callbacks, options.stopping)
    finally:
        if reads is not matrix:
            runner.everywhere(blockcache.drop, matrix.path, matrix.key)
    final = state.final_loss()
    error = float(np.sqrt(2 * max(final, 0.0)))
    norm_sq = matrix.frobenius_sq
    relative = error / float(np.sqrt(norm_sq)) if settings.beta_loss == 2 and norm_sq else None
    stopping = {"max_iter": options.max_iter, "tol": options.tol, "stopping": options.stopping}
    return NMFResult(
        _collect_w(state),
        state.H,
        list(state.history),
        error,
        state.iteration,
        state.converged,
        str(run_dir.path) if run_dir else None,
        list(state.objective_history),
        {**settings.to_record(), **stopping},
        relative,
        job.memory.describe(),
        init,
    )


def _w_buffers(workdir, run_dir: RunDir | None) -> str:
    """Where W's Zarr buffers go: the run directory's fixed place (a resume refills them), else
    a new directory, so that a lazy W returned by an earlier fit is never overwritten."""
    if run_dir is not None and workdir is None:
        return os.path.join(run_dir.path, WORK_W)
    root = os.path.abspath(workdir) if workdir is not None else tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    return os.path.join(tempfile.mkdtemp(prefix="bignmf-", dir=root), WORK_W)


def _check_resumable(run_dir: RunDir, recorded: RunRecord, matrix, settings) -> None:
    """The same matrix, the same row blocking and the same settings as the recorded run."""
    theirs, ours = recorded.matrix, _matrix_record(matrix)
    if not _same_matrix(theirs["fingerprint"], ours["fingerprint"]):
        raise CheckpointError(
            f"{run_dir.path} was run on another matrix: recorded {theirs['fingerprint']}, "
            f"given {ours['fingerprint']}"
        )
    if theirs["row_offsets_crc32"] != ours["row_offsets_crc32"]:
        raise CheckpointError(
            f"{run_dir.path} was run with another row blocking of this matrix "
            f"({theirs['n_blocks']} blocks, now {ours['n_blocks']}); pass the same block_nnz"
        )
    differ = recorded.settings.differences(settings)
    if differ:
        listed = ", ".join(f"{key}: recorded {a!r}, given {b!r}" for key, (a, b) in differ.items())
        raise CheckpointError(f"{run_dir.path} was run with other settings ({listed})")


def _same_matrix(recorded: Any, given: Any) -> bool:
    """Whether two fingerprints agree on everything the recorded one holds (a run recorded
    before a fingerprint gained a part, e.g. the stores' chunk checksums, resumes)."""
    if isinstance(recorded, dict) and isinstance(given, dict):
        return all(key in given and _same_matrix(recorded[key], given[key]) for key in recorded)
    return recorded == given


def _matrix_record(matrix) -> dict:
    record = {
        "fingerprint": matrix.fingerprint(),
        "n_blocks": int(matrix.n_blocks),
        "row_offsets_crc32": crc32(np.asarray(matrix.row_offsets, dtype="<i8")),
    }
    record["frobenius_sq"] = float(matrix.frobenius_sq)  # of what the fit sees
    beside = {"mask": getattr(matrix, "mask", None), "weights": getattr(matrix, "weights", None)}
    for name, source in beside.items():
        if isinstance(source, CSRStore):
            record[name] = {"path": os.path.abspath(source.path), "key": source.key}
        elif isinstance(source, SpeckledMask):  # a seed, made again on resume
            record[name] = source.to_record()
    if isinstance(matrix, MaskedMatrix | WeightedMatrix):
        matrix = matrix.matrix
    if isinstance(matrix, CSRStore):
        record.update(path=os.path.abspath(matrix.path), key=matrix.key)
    return record


def versions() -> dict:
    """Versions of bignmf and the packages that compute its results."""
    from importlib.metadata import PackageNotFoundError, version

    from bignmf._version import __version__

    names = ("numpy", "scipy", "dask", "distributed", "zarr", "numcodecs")
    found = {"bignmf": __version__}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _initialize(state: FitState, settings: FitSettings, W, H, observers=()) -> dict:
    """Initial W blocks (persisted or written to buffer 0) and H; ``observers`` are told of
    the phase and of each pass over A. Returns :attr:`NMFResult.init`."""
    started = time.perf_counter()
    matrix, groups = state.matrix, state.plan.groups
    passes = 0
    spec = InitSpec(
        settings.n_components,
        matrix.dtype,
        settings.seed,
        matrix.row_offsets,
        observed_only=settings.entries is not None,
    )
    init = settings.init
    if init == "custom":
        announce(observers, "init", "initialising W and H: the W and H given")
        w_groups, state.H = custom_init(matrix, groups, spec, W, H, state.w_store)
    elif init == "random":
        announce(observers, "init", "initialising W and H: random")
        w_groups, state.H = random_init(matrix, groups, spec, state.w_store)
    else:
        passes = nndsvd_passes(settings.n_components, *matrix.shape)
        text = f"initialising W and H: {init}, from a randomized SVD ({passes} passes over A)"
        announce(observers, "init", text)

        def on_pass(done: int) -> None:
            announce(observers, "init-pass", f"initialisation: pass {done}/{passes} over A")

        w_groups, state.H = nndsvd_init(
            matrix,
            groups,
            spec,
            init,
            state.runner,
            state.w_store,
            state.two_passes,
            on_pass=on_pass,
        )
    if state.w_store is None:
        state.w_groups = list(state.runner.persist(*w_groups))
    else:  # the tasks wrote W into its Zarr buffer 0
        state.runner.compute(*w_groups)
    return {"method": init, "passes": passes, "seconds": time.perf_counter() - started}


def _collect_w(state: FitState) -> Any:
    """W as NumPy (kept in memory) or a lazy Dask array over its Zarr blocks."""
    if state.w_store is not None:
        return state.w_store.to_dask(state.iteration % 2)
    return np.vstack(list(state.w_blocks()))


def finished(run_dir: str | os.PathLike, **overrides: Any) -> tuple[int, bool] | None:
    """``(iterations, converged)`` when resuming ``run_dir`` would run no iteration, else None.

    Decided from the newest intact checkpoint's manifest, without reading W or starting a
    scheduler, by the run's ``max_iter``, ``tol`` and ``stopping`` or those in ``overrides``.
    None too when the run has no checkpoint yet or was run on an in-memory matrix.
    """
    run = RunDir(run_dir)
    record = RunRecord.from_json(run.record())
    given = {name: value for name, value in overrides.items() if value is not None}
    options = RunOptions.from_record(record.options.to_record(), **_parsed(given))
    checkpoint = run.newest()
    if checkpoint is None or record.store is None:
        return None
    if checkpoint.iteration >= options.max_iter:
        return checkpoint.iteration, False
    objective = checkpoint.objective_history or checkpoint.loss_history
    matrix = open_matrix(*record.store)
    noise = rounding(objective, record.settings.beta_loss, matrix, matrix.dtype)
    rule = get_stopping(options.stopping)
    return (checkpoint.iteration, True) if rule(objective, options.tol, noise) else None


def _beside(run_dir, record: RunRecord, name: str, given: Any, matrix: Any) -> Any:
    """The run's mask or weights (``name``) for ``matrix``: ``given``, else the store (or the
    speckled mask) recorded."""
    if given is not None:
        return given
    if name not in record.matrix:
        what = {"mask": "an in-memory mask: pass it", "weights": "in-memory weights: pass them"}
        raise CheckpointError(f"{run_dir} was run with {what[name]} as {name}=")
    speckled = speckled_from_record(record.matrix[name], matrix)
    if speckled is not None:
        return speckled
    return open_matrix(record.matrix[name]["path"], record.matrix[name]["key"])


#: What a resume may be given besides :meth:`RunOptions.may_change`: who watches the loop.
OBSERVERS = ("progress", "callback", "callbacks")


def _parsed(overrides: dict) -> dict:
    """Option overrides as :class:`RunOptions` holds them (a cache size given as text)."""
    if overrides.get("cache_a") is not None:
        return {**overrides, "cache_a": blockcache.parse_budget(overrides["cache_a"])}
    return overrides


def resume(
    run_dir: str | os.PathLike,
    *,
    A: Any = None,
    mask: Any = None,
    weights: Any = None,
    **overrides: Any,
) -> NMFResult:
    """Continue a checkpointed run with the settings it was started with.

    Parameters
    ----------
    run_dir : path
        A run directory made by ``nmf(..., checkpoint_dir=...)`` or ``bignmf fit``.
    A : optional
        The matrix; by default the store recorded in the run (in-memory inputs must be given).
    mask : optional
        The run's ``mask``; by default the store recorded (an in-memory mask must be given).
    weights : optional
        The run's given weights; by default the store recorded (in-memory weights must be
        given). Implicit feedback's are made again from A and the recorded α and f.
    **overrides
        Any of :meth:`RunOptions.may_change <bignmf.fit.settings.RunOptions.may_change>`
        (``max_iter``, ``tol``, ``stopping``, ``checkpoint_every``, ``checkpoint_seconds``,
        ``cache_a``, ``scheduler``, ``n_tasks``, ``split_every``, ``workdir``) and the
        observers ``progress``, ``callback``, ``callbacks``. A run recorded before
        ``stopping`` existed resumes with 'relative', the rule it ran with.

    Returns
    -------
    NMFResult
        Bitwise equal to what the uninterrupted run gives.
    """
    record = RunRecord.from_json(RunDir(run_dir).record())
    allowed = set(RunOptions.may_change()) | set(OBSERVERS)
    unknown = set(overrides) - allowed
    if unknown:
        raise TypeError(
            f"resume() cannot change {sorted(unknown)}; it may change {sorted(allowed)}"
        )
    if A is None:
        if record.store is None:
            raise CheckpointError(f"{run_dir} was run on an in-memory matrix: pass it as A=")
        A = open_matrix(*record.store, block_nnz=record.options.block_nnz)
    matrix = as_block_matrix(A, block_nnz=record.options.block_nnz)
    if record.settings.missing == MASK:
        matrix, _ = _masked(matrix, _beside(run_dir, record, "mask", mask, matrix))
    if record.settings.weights == "given":
        given_weights = _beside(run_dir, record, "weights", weights, matrix)
        matrix = _weighted(matrix, record.settings, given_weights)
    elif record.settings.weights == "implicit":
        matrix = _weighted(matrix, record.settings, None)
    given = {name: overrides.pop(name) for name in OBSERVERS if name in overrides}
    options = RunOptions.from_record(record.options.to_record(), **_parsed(overrides))
    observers = _callbacks(
        given.get("callback"), given.get("callbacks", ()), given.get("progress", False), options
    )
    options = _with_tasks(options)
    settings = record.settings
    memory = memory_plan(matrix, settings, options, settings.column_chunks, resumed=True)
    checked = _checked(matrix, settings, options, (None, None), run_dir)
    return _start(
        matrix, settings, options, memory, checked, observers, (None, None), None, run_dir, record
    )


__all__ = ["NMFResult", "Runner", "nmf", "resume", "versions"]
