"""Every memory rule of a fit, as arithmetic on numbers: how a fit is cut to fit its machines.

Like rechunker's ``algorithm.py``, this module decides and does nothing: it takes the numbers
(A's shape and nonzeros, the rank k, the bytes per value, the row blocks, the workers' memory
limits or this machine's RAM) and returns the numbers the engine acts on. It imports only the
standard library and NumPy. What *asks* the machine or the scheduler stays with the callers:
this machine's RAM (:func:`bignmf.store.factors.machine_memory_bytes`) and the workers' memory
limits and threads (:mod:`bignmf.cluster.runner`), which pass their answers in.

The rules, in the order the engine applies them (:func:`make_plan` follows the same order):

1. **Blocks per task**: the row blocks are grouped into at most ``n_tasks`` fat tasks of
   ``⌈n_blocks / n_tasks⌉`` blocks (:func:`blocks_per_task`).
2. **Memory per task**: the smallest worker memory limit divided by that worker's threads; a
   worker with no limit counts as this machine's RAM; on a local scheduler, RAM divided by its
   threads (:func:`task_memory`).
3. **Column ranges**: a fused task holds ``(⌈log2 b⌉ + 5)·n·k`` values for H (b blocks per task,
   :func:`fused_task_bytes`); when that exceeds :data:`TASK_MEMORY_FRACTION` of the task's
   memory, H is cut into the fewest column ranges that fit (:func:`choose_column_chunks`). Only
   the Frobenius loss can be cut; with an NNDSVD initialisation the randomized SVD's sketches,
   ``n × (k + 10)`` float64, are cut the same way and count too (:func:`auto_column_chunks`). A
   requested count wins. With missing entries, one pass: every column's packed gram,
   ``n·k(k+1)/2`` float64 per partial sum, counts in H's share (:func:`observed_task_bytes`),
   and the plan says when that exceeds the quarter.
4. **W's storage**: on a distributed scheduler always Zarr on disk; else in memory when its three
   copies (``3·m·k`` values) need at most :data:`W_MEMORY_FRACTION` of RAM
   (:func:`choose_w_storage`). A request wins where it can be honoured.
5. **Cache of A**: off unless asked; ``'auto'`` is :data:`CACHE_AUTO_FRACTION` of one process's
   memory, the smallest worker's limit or RAM (:func:`cache_budget`, :func:`process_memory`).

A study (:func:`bignmf.sweep`) adds one rule, :func:`fits_in_flight`: how many fits run at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: Where W lives between iterations (see :func:`bignmf.nmf`'s ``w_storage``); the registry's
#: 'w_storage' table.
W_STORAGE = {
    "auto": "in memory when it fits easily, on disk on a distributed scheduler",
    "memory": "in the memory of the workers (persisted blocks)",
    "zarr": "on disk, in Zarr buffers beside the run",
}

#: share of a worker thread's memory one task may use before the columns are cut into ranges
TASK_MEMORY_FRACTION = 0.25
#: W kept in memory when its copies need at most this share of RAM
W_MEMORY_FRACTION = 0.25
#: copies of W a fit holds in memory: W_t, W_t+1 and working copies
W_COPIES = 3
#: ``cache_a='auto'``: this share of a worker's memory limit (or of RAM)
CACHE_AUTO_FRACTION = 0.25
#: Share of this machine's RAM that A decoded and W may take for a fit that names no scheduler
#: to run in this process on threads (:func:`choose_scheduler`).
IN_PROCESS_FRACTION = 0.25
#: columns the randomized SVD of an NNDSVD initialisation adds to k (float64 sketches)
SKETCH_OVERSAMPLES = 10
SKETCH_ITEMSIZE = 8
#: bytes per value of the per-column grams a fit with missing entries sums (float64)
GRAM_ITEMSIZE = 8
#: share of one process's memory (the smallest worker's limit, or RAM) that a study's fits in
#: flight may take together
STUDY_MEMORY_FRACTION = 0.5
#: fits in flight a study runs by default per thread of the scheduler: one computes while the
#: other's driver updates H and builds its next graph
FITS_PER_THREAD = 2


# --------------------------------------------------------------------------- tasks and memory


def blocks_per_task(n_blocks: int, n_tasks: int) -> int:
    """Row blocks in the largest of at most ``n_tasks`` fat tasks: ``⌈n_blocks / n_tasks⌉``."""
    return -(-int(n_blocks) // max(int(n_tasks), 1))


def worker_memory(
    workers: Iterable[tuple[int | None, int | None]], ram: int | None
) -> list[tuple[int, int]]:
    """``(memory limit, threads)`` per worker, a missing limit being ``ram`` (this machine's RAM)
    and a missing thread count one; ``ram`` is needed only for a worker without a limit."""
    out = []
    for limit, threads in workers:
        if not limit:
            if ram is None:
                raise ValueError("a worker has no memory limit: this machine's RAM is needed")
            limit = ram
        out.append((int(limit), max(int(threads if threads is not None else 1), 1)))
    return out


def task_memory(
    workers: Sequence[tuple[int, int]] | None, ram: int | None = None, threads: int = 1
) -> int:
    """Memory one task may use: the smallest worker memory limit per thread, or RAM per thread.

    Parameters
    ----------
    workers : sequence of (int, int) or None
        ``(memory limit, threads)`` of each worker of a distributed scheduler (see
        :func:`worker_memory`); None or empty: the tasks run on this machine.
    ram : int, optional
        This machine's RAM; needed when ``workers`` is None or empty.
    threads : int
        Threads running tasks on this machine (used with ``ram``).
    """
    shares = [limit // threads_ for limit, threads_ in workers or ()]
    if shares:
        return int(min(shares))
    if ram is None:
        raise ValueError("no worker memory limits: this machine's RAM is needed")
    return int(ram) // max(int(threads), 1)


def process_memory(workers: Sequence[tuple[int, int]] | None, ram: int | None = None) -> int:
    """Memory of one process running tasks: the smallest worker memory limit, or ``ram`` when
    the tasks run on this machine."""
    limits = [limit for limit, _ in workers or ()]
    if limits:
        return int(min(limits))
    if ram is None:
        raise ValueError("no worker memory limits: this machine's RAM is needed")
    return int(ram)


# --------------------------------------------------------------------------- column ranges


def fused_task_bytes(n: int, k: int, itemsize: int, blocks_per_task: int) -> int:
    """Memory one fused-pass task needs for H: Hᵀ, H·Hᵀ and its n×k partial sums.

    H and Hᵀ (2), ``log2(blocks per task) + 1`` partial sums, and the copies a merge task makes
    of two stacks' sums (2).
    """
    depth = math.ceil(math.log2(max(blocks_per_task, 1))) + 1
    return (depth + 4) * n * k * itemsize


def observed_task_bytes(n: int, k: int, itemsize: int, blocks_per_task: int) -> int:
    """Memory one fused-pass task needs for H when entries are missing: the plain share
    (:func:`fused_task_bytes`) and every column's packed gram, ``n × k(k+1)/2`` float64 values
    in each partial sum and merge copy."""
    depth = math.ceil(math.log2(max(blocks_per_task, 1))) + 1
    grams = (depth + 2) * n * (k * (k + 1) // 2) * GRAM_ITEMSIZE
    return fused_task_bytes(n, k, itemsize, blocks_per_task) + grams


def choose_column_chunks(
    n: int, k: int, itemsize: int, blocks_per_task: int, task_memory: int
) -> int:
    """Fewest column ranges that keep a task's share of H within ``TASK_MEMORY_FRACTION``.

    Parameters
    ----------
    n, k : int
        Columns of A and rank.
    itemsize : int
        Bytes per value of the factors (A's dtype).
    blocks_per_task : int
        Row blocks per fused task.
    task_memory : int
        Bytes one task may use (a worker's memory limit divided by its threads).

    Returns
    -------
    int
        1 (the fused single pass) when H fits, else the number of column ranges.
    """
    need = fused_task_bytes(n, k, itemsize, blocks_per_task)
    budget = TASK_MEMORY_FRACTION * task_memory
    if need <= budget:
        return 1
    return min(max(2, math.ceil(need / budget)), n)


def column_bounds(n: int, n_ranges: int) -> tuple[int, ...]:
    """Bounds of ``n_ranges`` column ranges of (nearly) equal width over ``n`` columns."""
    if not 1 <= n_ranges <= max(n, 1):
        raise ValueError(f"column_chunks must be between 1 and n = {n}, got {n_ranges}")
    return tuple(int(b) for b in np.linspace(0, n, n_ranges + 1).round())


#: The initialisations by name (see :func:`bignmf.nmf`'s ``init``; computed by
#: :mod:`bignmf.fit.init`); the registry's 'init' table, here for a ``--help`` without dask.
INITS = {
    "random": "sqrt(mean(A)/k)·|N(0,1)|, seeded per row block (the stored entries' mean when "
    "entries are missing)",
    "custom": "the W and H given",
    "nndsvd": "NNDSVD from an out-of-core randomized SVD (zeros kept)",
    "nndsvda": "NNDSVD with zeros filled by the mean of A",
    "nndsvdar": "NNDSVD with zeros filled by small random values",
}


def default_init(
    init: str | None, k: int, shape: tuple[int, int], missing: str | None = None
) -> str:
    """``init``, or scikit-learn's default: 'nndsvda' when ``k <= min(m, n)``, else 'random';
    'random' with unknown entries (``missing``), which an SVD would read as zeros (planted
    ratings, 40 iterations: held-out RMSE 0.500 from 'random', 0.574 from 'nndsvda')."""
    if init is not None:
        return init
    if missing is not None:
        return "random"
    return "nndsvda" if k <= min(shape) else "random"


def uses_sketch(init: str | None, k: int, m: int, n: int) -> bool:
    """Whether the initialisation runs the randomized SVD (whose sketches are cut like H)."""
    return default_init(init, k, (m, n)).startswith("nndsvd")


def auto_column_chunks(
    m: int,
    n: int,
    k: int,
    itemsize: int,
    blocks_per_task: int,
    task_memory: int,
    beta_loss: float = 2.0,
    init: str | None = None,
) -> int:
    """The column ranges a fit chooses when none is requested (nor recorded by a resumed run).

    One pass for any loss but Frobenius (``beta_loss`` 2.0, which only two passes support);
    else the fewest ranges that fit H, and the randomized SVD's sketches when ``init`` (the
    user's, None for the default) is an NNDSVD.
    """
    if float(beta_loss) != 2.0:
        return 1
    chunks = choose_column_chunks(n, k, itemsize, blocks_per_task, task_memory)
    if uses_sketch(init, k, m, n):
        sketch = choose_column_chunks(
            n, k + SKETCH_OVERSAMPLES, SKETCH_ITEMSIZE, blocks_per_task, task_memory
        )
        chunks = max(chunks, sketch)
    return chunks


# --------------------------------------------------------------------------- W and the cache


def w_memory_bytes(n_rows: int, k: int, itemsize: int) -> int:
    """Bytes W needs in memory: :data:`W_COPIES` copies of ``n_rows × k`` values."""
    return int(n_rows) * int(k) * int(itemsize) * W_COPIES


def choose_w_storage(
    n_rows: int,
    k: int,
    itemsize: int,
    memory: int | None,
    requested: str = "auto",
    distributed: bool = False,
) -> tuple[str, str]:
    """Where W lives, ``'memory'`` or ``'zarr'``, and why (a phrase).

    Parameters
    ----------
    n_rows, k : int
        Shape of W.
    itemsize : int
        Bytes per value of W.
    memory : int or None
        This machine's RAM; needed only for ``'auto'`` on a local scheduler.
    requested : {'auto', 'memory', 'zarr'}
        The user's choice: an explicit one wins where it can be honoured.
    distributed : bool
        Whether a distributed scheduler runs the tasks. There W lives on the (shared) store:
        a distributed scheduler keeps the lineage of every persisted result, so W kept as
        task results would make each iteration's graph depend on all the earlier ones, while
        W on disk makes an iteration depend only on stored blocks (a lost worker's tasks are
        rerun from them).

    Raises
    ------
    ValueError
        For an unknown request, or ``'memory'`` on a distributed scheduler.
    """
    if requested not in W_STORAGE:
        choices = ", ".join(repr(name) for name in W_STORAGE)
        raise ValueError(f"w_storage must be one of {choices}, not {requested!r}")
    if distributed:
        if requested == "memory":
            raise ValueError(
                "w_storage='memory' cannot be used on a distributed scheduler: it would keep "
                "every iteration's lineage; use 'zarr' (the default there) with a workdir the "
                "workers can reach"
            )
        return "zarr", "a distributed scheduler would keep every iteration's lineage in memory"
    if requested != "auto":
        return requested, "requested"
    if memory is None:
        raise ValueError("w_storage='auto' on a local scheduler needs this machine's RAM")
    need = w_memory_bytes(n_rows, k, itemsize)
    limit = W_MEMORY_FRACTION * memory
    within = f"{format_bytes(limit)}, a quarter of {format_bytes(memory)} of RAM"
    if need <= limit:
        return "memory", f"{format_bytes(need)} for {W_COPIES} copies; limit {within}"
    return "zarr", f"{format_bytes(need)} for {W_COPIES} copies exceeds {within}"


def cache_budget(budget: int | str | None, process_memory: int | None = None) -> int | None:
    """Bytes of A's blocks each process may keep: None (off), the bytes given, or for
    ``'auto'`` :data:`CACHE_AUTO_FRACTION` of ``process_memory`` (one process's memory)."""
    if budget is None:
        return None
    if budget == "auto":
        if process_memory is None:
            raise ValueError("cache_a='auto' needs the memory of one process")
        return int(CACHE_AUTO_FRACTION * process_memory)
    return int(budget)


def decoded_bytes(m: int, n: int, nnz: int, itemsize: int) -> int:
    """Bytes of A decoded in memory: values and column indices, and indptr (indices are int32,
    int64 for more than 2**31 - 1 columns)."""
    index = 4 if n <= 2**31 - 1 else 8
    return int(nnz) * (int(itemsize) + index) + (int(m) + 1) * index


def choose_scheduler(m: int, n: int, nnz: int, k: int, itemsize: int, ram: int) -> tuple[str, str]:
    """The scheduler of a fit that names none: ``'threads'`` or ``'local'``, and why.

    Parameters
    ----------
    m, n, nnz, k, itemsize : int
        A's shape, stored entries, the rank and bytes per value.
    ram : int
        This machine's RAM.

    Returns
    -------
    (str, str)
        ``'threads'`` (this process) when A decoded and W (:func:`w_memory_bytes`) together
        take at most :data:`IN_PROCESS_FRACTION` of ``ram``: a fit in core, where an embedded
        cluster would only add its start (seconds) and its per-task costs; else ``'local'``,
        an embedded LocalCluster whose workers' memory limits bound an out-of-core fit. Either
        gives the same bits (the fixed reduction tree), so a resume may choose again.
    """
    need = decoded_bytes(m, n, nnz, itemsize) + w_memory_bytes(m, k, itemsize)
    limit = IN_PROCESS_FRACTION * ram
    within = f"{format_bytes(limit)}, a quarter of this machine's {format_bytes(ram)}"
    if need <= limit:
        return "threads", f"A decoded and W take {format_bytes(need)}, within {within}: in core"
    return "local", f"A decoded and W take {format_bytes(need)}, more than {within}"


def format_bytes(count: float) -> str:
    """``count`` bytes in binary units, e.g. ``'1.5 GiB'``, ``'32 MiB'``, ``'512 B'``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} {units[unit]}"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """How a fit is cut to fit its machines (made by :func:`make_plan`).

    Attributes
    ----------
    shape : (int, int)
        A's shape ``(m, n)``.
    nnz, k, itemsize : int
        A's stored entries, the rank and bytes per value.
    n_blocks : int
        Row blocks of A (and of W).
    rows_per_block : int
        Rows of the tallest row block.
    blocks_per_task : int
        Row blocks per fused task.
    column_ranges : tuple of (int, int), or None
        H's column ranges ``(start, stop)`` of a two-pass iteration; None: one fused pass.
    columns_why : str
        Why (a phrase).
    w_storage : {'memory', 'zarr'}
        Where W lives between iterations.
    w_storage_why : str
        Why (a phrase).
    cache_budget : int or None
        Bytes of A's decoded blocks each process may keep; None: no cache.
    cache_why : str
        Why (a phrase).
    task_memory : int
        Bytes one task may use.
    h_task_bytes : int
        What one fused task needs for H (:func:`fused_task_bytes`).
    w_bytes : int
        What W needs in memory (:func:`w_memory_bytes`).
    workers : tuple of (int, int), or None
        ``(memory limit, threads)`` of each worker of a distributed scheduler; None: local.
    ram : int or None
        This machine's RAM, where it was given.
    threads : int
        Threads of the local scheduler (1 on a distributed one, where ``workers`` tell).
    """

    shape: tuple[int, int]
    nnz: int
    k: int
    itemsize: int
    n_blocks: int
    rows_per_block: int
    blocks_per_task: int
    column_ranges: tuple[tuple[int, int], ...] | None
    columns_why: str
    w_storage: str
    w_storage_why: str
    cache_budget: int | None
    cache_why: str
    task_memory: int
    h_task_bytes: int
    w_bytes: int
    workers: tuple[tuple[int, int], ...] | None
    ram: int | None
    threads: int

    @property
    def column_chunks(self) -> int:
        """Number of column ranges (1: one fused pass)."""
        return 1 if self.column_ranges is None else len(self.column_ranges)

    @property
    def worker_limits(self) -> tuple[int, ...] | None:
        """The workers' memory limits (None on a local scheduler)."""
        return None if self.workers is None else tuple(limit for limit, _ in self.workers)

    @property
    def distributed(self) -> bool:
        """Whether a distributed scheduler runs the tasks."""
        return self.workers is not None

    def describe(self) -> list[str]:
        """The plan in human lines, one per decision, with the numbers behind it."""
        m, n = self.shape
        of = "of" if self.rows_per_block * self.n_blocks == m else "of at most"
        lines = [
            f"matrix: {m} x {n}, {self.nnz} nonzeros, k = {self.k}, {self.itemsize}-byte values",
            f"row blocks: {self.n_blocks} {of} {self.rows_per_block} rows, "
            f"{self.blocks_per_task} per task",
            f"memory per task: {format_bytes(self.task_memory)} ({self._task_memory_why()})",
        ]
        where = "in memory" if self.w_storage == "memory" else "Zarr on disk"
        lines.append(f"W: {where} ({self.w_storage_why})")
        if self.column_ranges is None:
            lines.append(f"columns: one pass ({self.columns_why})")
        else:
            width = n // self.column_chunks
            lines.append(
                f"columns: {self.column_chunks} ranges of about {width} ({self.columns_why})"
            )
        if self.cache_budget is None:
            lines.append(f"cache of A: off ({self.cache_why})")
        else:
            lines.append(
                f"cache of A: {format_bytes(self.cache_budget)} per process ({self.cache_why})"
            )
        return lines

    def _task_memory_why(self) -> str:
        if not self.workers:
            ram = "?" if self.ram is None else format_bytes(self.ram)
            return f"{ram} of RAM / {_count(self.threads, 'thread')}"
        limit, threads = min(self.workers, key=lambda w: w[0] // w[1])
        limits = ", ".join(format_bytes(limit) for limit, _ in self.workers)
        workers = _count(len(self.workers), "worker")
        return (
            f"{format_bytes(limit)} / {_count(threads, 'thread')} on the tightest of {workers}, "
            f"limits {limits}"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def make_plan(
    m: int,
    n: int,
    nnz: int,
    k: int,
    itemsize: int,
    blocks: int | Sequence[int],
    blocks_per_task: int,
    *,
    workers: Iterable[tuple[int | None, int | None]] | None = None,
    ram: int | None = None,
    threads: int = 1,
    column_chunks: int | None = None,
    w_storage: str = "auto",
    cache_a: int | str | None = None,
    beta_loss: float = 2.0,
    init: str | None = None,
    missing: str | None = None,
) -> Plan:
    """Apply the memory rules to these numbers, in the engine's order.

    Parameters
    ----------
    m, n, nnz : int
        A's shape and stored entries.
    k : int
        Rank.
    itemsize : int
        Bytes per value of A and the factors.
    blocks : int or sequence of int
        A's row blocks: their number (rows then taken as ``⌈m / blocks⌉`` each), or their row
        offsets (``n_blocks + 1`` of them, from 0 to m).
    blocks_per_task : int
        Row blocks per fused task (:func:`blocks_per_task`).
    workers : iterable of (int, int), optional
        ``(memory limit, threads)`` of each worker of a distributed scheduler (a missing limit
        counts as ``ram``); None: a local scheduler.
    ram : int, optional
        This machine's RAM: needed on a local scheduler and for workers without a limit.
    threads : int
        Threads of a local scheduler.
    column_chunks : int, optional
        Requested column ranges (or a resumed run's); None: chosen (rule 3).
    w_storage : {'auto', 'memory', 'zarr'}
        Requested storage of W.
    cache_a : int, 'auto' or None
        Requested cache of A, as :func:`bignmf.store.blockcache.parse_budget` returns it.
    beta_loss : float
        The loss as a float (2.0: Frobenius).
    init : str, optional
        The user's initialisation (None: the default, NNDSVDA when ``k <= min(m, n)``).
    missing : str, optional
        Which entries are unknown (None: none). Each column of H then has its own gram: one
        pass over A per iteration, and the grams count in H's share
        (:func:`observed_task_bytes`).

    Returns
    -------
    Plan

    Raises
    ------
    ValueError
        For an out-of-range request, or a missing ``ram`` that a rule needs.
    """
    m, n, nnz, k, itemsize = int(m), int(n), int(nnz), int(k), int(itemsize)
    if isinstance(blocks, int | np.integer):
        n_blocks = int(blocks)
        if n_blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {n_blocks}")
        tallest = -(-m // n_blocks)
    else:
        offsets = np.asarray(blocks, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or offsets[-1] != m:
            raise ValueError(f"row offsets must run from 0 to m = {m}")
        n_blocks, tallest = offsets.size - 1, int(np.diff(offsets).max())
    per_task = int(blocks_per_task)
    listed = None if workers is None else tuple(worker_memory(workers, ram))
    distributed = listed is not None
    local_threads = 1 if distributed else max(int(threads), 1)
    memory = task_memory(listed, ram, local_threads)
    h_bytes = fused_task_bytes(n, k, itemsize, per_task)

    # rule 3: the columns (the engine decides them first, with the parameters)
    if missing is not None:
        if column_chunks not in (None, 1):
            raise ValueError(
                "column_chunks > 1 cannot be used with missing entries: each column's gram "
                "needs every row block in one pass"
            )
        h_bytes = observed_task_bytes(n, k, itemsize, per_task)
        bounds = (0, n)
        columns_why = _observed_why(h_bytes, memory)
    elif column_chunks is not None:
        bounds = column_bounds(n, int(column_chunks))
        columns_why = "requested"
    else:
        bounds = column_bounds(
            n, auto_column_chunks(m, n, k, itemsize, per_task, memory, beta_loss, init)
        )
        columns_why = _columns_why(m, n, k, itemsize, per_task, memory, beta_loss, init, bounds)
    ranges = None if len(bounds) == 2 else tuple(itertools.pairwise(bounds))

    # rule 4: W, then rule 5: the cache (in _fit, in this order)
    storage, storage_why = choose_w_storage(m, k, itemsize, ram, w_storage, distributed)
    if cache_a is None:
        budget, cache_why = None, "not requested"
    else:
        budget = cache_budget(cache_a, process_memory(listed, ram) if cache_a == "auto" else None)
        decoded = f"A decoded: {format_bytes(decoded_bytes(m, n, nnz, itemsize))}"
        if cache_a == "auto":
            whose = "the smallest worker's limit" if listed else "RAM"
            cache_why = (
                f"auto: a quarter of {format_bytes(process_memory(listed, ram))}, {whose}; "
                f"{decoded}"
            )
        else:
            cache_why = f"requested; {decoded}"
    return Plan(
        shape=(m, n),
        nnz=nnz,
        k=k,
        itemsize=itemsize,
        n_blocks=n_blocks,
        rows_per_block=tallest,
        blocks_per_task=per_task,
        column_ranges=ranges,
        columns_why=columns_why,
        w_storage=storage,
        w_storage_why=storage_why,
        cache_budget=budget,
        cache_why=cache_why,
        task_memory=memory,
        h_task_bytes=h_bytes,
        w_bytes=w_memory_bytes(m, k, itemsize),
        workers=listed,
        ram=None if ram is None else int(ram),
        threads=local_threads,
    )


def _observed_why(h_bytes: int, memory: int) -> str:
    budget = TASK_MEMORY_FRACTION * memory
    verb = "within" if h_bytes <= budget else "EXCEEDS"
    return (
        f"missing entries: H's share with every column's gram {format_bytes(h_bytes)}; "
        f"{verb} {format_bytes(budget)}, a quarter of {format_bytes(memory)} per task"
    )


def _columns_why(m, n, k, itemsize, per_task, memory, beta_loss, init, bounds) -> str:
    """Why the automatic rule chose these column ranges (a phrase)."""
    if float(beta_loss) != 2.0:
        return f"beta_loss={float(beta_loss):g}: every task needs all of H"
    budget = format_bytes(TASK_MEMORY_FRACTION * memory)
    share = f"H's share {format_bytes(fused_task_bytes(n, k, itemsize, per_task))}"
    if uses_sketch(init, k, m, n):
        sketch = fused_task_bytes(n, k + SKETCH_OVERSAMPLES, SKETCH_ITEMSIZE, per_task)
        share += f", the NNDSVD sketch's {format_bytes(sketch)}"
    verb = "within" if len(bounds) == 2 else "cut to fit"
    return f"{share}; {verb} {budget}, a quarter of {format_bytes(memory)} per task"


__all__ = [
    "CACHE_AUTO_FRACTION",
    "TASK_MEMORY_FRACTION",
    "W_MEMORY_FRACTION",
    "W_STORAGE",
    "Plan",
    "auto_column_chunks",
    "blocks_per_task",
    "cache_budget",
    "choose_column_chunks",
    "choose_w_storage",
    "column_bounds",
    "decoded_bytes",
    "default_init",
    "format_bytes",
    "fused_task_bytes",
    "make_plan",
    "observed_task_bytes",
    "process_memory",
    "task_memory",
    "w_memory_bytes",
    "worker_memory",
]


# --------------------------------------------------------------------------- studies


def fit_bytes(plan: Plan) -> int:
    """What one more fit in flight asks of the most loaded process (:func:`fits_in_flight`).

    On a local scheduler each fit runs its own tasks at once, one per thread, and keeps W in
    this process when the plan says so: its threads' tasks (H's share and a decoded row block
    each) plus W. On a distributed scheduler a worker thread runs one task at a time whatever
    the fits, and W is on disk: a fit adds the partial sums its finished tasks hold on a worker
    until they are reduced, one H share per task of the worker's part.
    """
    per_block = math.ceil(plan.nnz / max(plan.n_blocks, 1)) * (plan.itemsize + 4)
    block = per_block * plan.blocks_per_task
    tasks = math.ceil(plan.n_blocks / max(plan.blocks_per_task, 1))
    if plan.distributed:
        per_worker = math.ceil(tasks / max(len(plan.workers), 1))
        return per_worker * plan.h_task_bytes
    w = plan.w_bytes if plan.w_storage == "memory" else 0
    return w + min(plan.threads, tasks) * (plan.h_task_bytes + block)


def fits_in_flight(plan: Plan, fits: int, requested: int | None = None) -> tuple[int, str]:
    """How many fits of a study run at once, and why (a phrase).

    Parameters
    ----------
    plan : Plan
        The plan of the study's largest fit.
    fits : int
        Fits left to run.
    requested : int, optional
        The user's number; None: :data:`FITS_PER_THREAD` per thread of the scheduler.

    Returns
    -------
    (int, str)
        At least 1 and at most ``fits``; never more than :data:`STUDY_MEMORY_FRACTION` of one
        process's memory holds (:func:`fit_bytes` each), whatever was requested.
    """
    memory = process_memory(plan.workers, plan.ram)
    each = max(fit_bytes(plan), 1)
    room = max(int(STUDY_MEMORY_FRACTION * memory // each), 1)
    threads = sum(t for _, t in plan.workers) if plan.distributed else plan.threads
    wanted = FITS_PER_THREAD * threads if requested is None else int(requested)
    count = max(min(wanted, room, max(fits, 1)), 1)
    where = "the smallest worker's memory" if plan.distributed else "RAM"
    held = f"{format_bytes(each)} each, {int(STUDY_MEMORY_FRACTION * 100)}% of {where} holds {room}"
    if requested is not None and room < requested:
        return count, f"{requested} asked, {held}"
    if requested is None:
        return count, f"{FITS_PER_THREAD} per thread of {_count(threads, 'thread')}; {held}"
    return count, f"as asked; {held}"
