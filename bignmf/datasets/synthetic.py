"""Planted low-rank sparse non-negative matrices, generated block by block.

The generator draws text-like count matrices from a topic model, so that tests and benchmarks have
matrices of any size whose non-negative factorization is known:

* Each of the ``k`` planted topics is a distribution over the columns that mixes a global column
  popularity, a Zipf-like power law over a random ordering of the columns (so column frequencies
  are skewed like word frequencies), with a topic-specific set of boosted columns (itself
  power-law weighted).
* Each row (document) draws a length scale ``lam`` from a log-normal law, a sparse topic mixture
  ``theta`` from a Dirichlet law with a small concentration, then ``Poisson(lam)`` tokens, each of
  them a topic from ``theta`` and a column from that topic. The entries are the token counts.

Given ``lam`` and ``theta``, the entry ``(i, j)`` is ``Poisson(lam_i * (theta_i @ H)[j])`` where
the rows of ``H`` are the topics, so ``E[A] = W @ H`` with ``W[i] = lam_i * theta_i``:
:func:`planted_factors` returns these true factors.

Rows are generated in fixed blocks of :data:`GENERATION_BLOCK_ROWS` rows, each from its own seed
derived from ``(seed, block index)``; the matrix is therefore the same, bit for bit, whatever
slab size is asked for, memory stays at one generation block plus the model (``O(k * n_cols)``),
and any row range can be generated without generating the rows before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError
from bignmf.types import Source

if TYPE_CHECKING:
    from bignmf.store.csr import CSRStore

__all__ = [
    "GENERATION_BLOCK_ROWS",
    "PlantedFactors",
    "make_planted",
    "planted_factors",
    "planted_source",
    "power_law_masses",
    "power_law_ranks",
]

#: Rows per generation block. Part of the definition of the matrix: changing it changes the
#: matrix a seed gives.
GENERATION_BLOCK_ROWS = 4096

_MODEL_KEY = 0  # spawn key of the stream that draws the model (column order, topics)
_BLOCK_KEY = 1  # spawn key prefix of the streams that draw the row blocks
_CALIBRATION_KEY = 2  # spawn key of the stream that draws the calibration sample
_PILOT_ELEMENTS = 2**21  # budget of the calibration sample: pilot rows x boosted columns
_HERMITE_NODES = 32
_VALUE_DTYPES = "fd" + np.typecodes["AllInteger"]  # value dtypes scipy.sparse supports
_MAX_LOG_TOKENS_PER_NNZ = 8.0  # refuse matrices needing e**7 tokens per nonzero


@dataclass(frozen=True, eq=False)
class _Model:
    """Everything that defines a planted matrix; rows are drawn from it block by block."""

    n_rows: int
    n_cols: int
    n_components: int
    seed: int
    dtype: np.dtype
    zipf_exponent: float
    topic_weight: float
    concentration: float
    length_sigma: float
    length_scale: float
    column_order: np.ndarray  # column_order[r] is the column of global popularity rank r + 1
    topic_columns: np.ndarray  # (k, m): topic_columns[t, r] is topic t's boosted rank r + 1

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // GENERATION_BLOCK_ROWS)

    def block_rows(self, b: int) -> int:
        return min(GENERATION_BLOCK_ROWS, self.n_rows - b * GENERATION_BLOCK_ROWS)

    def block_rng(self, b: int) -> np.random.Generator:
        seq = np.random.SeedSequence(self.seed, spawn_key=(_BLOCK_KEY, b))
        return np.random.default_rng(seq)


@dataclass(frozen=True)
class PlantedFactors:
    """The true factors of a planted matrix: ``E[A] = W @ H``.

    Attributes
    ----------
    H : numpy.ndarray
        ``(n_components, n_cols)`` float64; each row is a topic, a distribution over the columns
        (rows sum to 1).
    w_rows : callable
        ``w_rows(start, stop)`` returns rows ``start:stop`` of ``W`` as a
        ``(stop - start, n_components)`` float64 array: row ``i`` is the document's length scale
        times its topic mixture.
    w_blocks : callable
        Returns a fresh iterator of the rows of ``W`` in consecutive generation blocks of
        :data:`GENERATION_BLOCK_ROWS` rows (the last may be shorter).
    length_scale : float
        Median of the per-row length scale (expected tokens per row), as calibrated to give the
        requested mean number of nonzeros per row.
    """

    H: np.ndarray
    w_rows: Callable[[int, int], np.ndarray]
    w_blocks: Callable[[], Iterator[np.ndarray]]
    length_scale: float


# --------------------------------------------------------------------------------------------
# Truncated power laws over ranks 1..N: P(r) proportional to (r + 1)**g - r**g, g = 1 - s, the
# exact discretisation of the density x**-s on [1, N + 1), so that ranks can be drawn by a closed
# form inverse of the CDF (O(1) per draw) and P(r) is close to a Zipf law r**-s.
# --------------------------------------------------------------------------------------------


def power_law_masses(n: int, exponent: float) -> np.ndarray:
    """Probabilities of ranks ``1..n`` under the discretised power law of exponent ``exponent``."""
    g = 1.0 - exponent
    r = np.arange(1, n + 1, dtype=np.float64)
    if g == 0.0:
        return np.log1p(1.0 / r) / np.log(n + 1.0)
    return r**g * np.expm1(g * np.log1p(1.0 / r)) / np.expm1(g * np.log(n + 1.0))


def power_law_ranks(u: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """Zero-based ranks in ``[0, n)`` drawn by inverting the power-law CDF at uniforms ``u``."""
    g = 1.0 - exponent
    log_top = np.log(n + 1.0)
    log_x = u * log_top if g == 0.0 else np.log1p(u * np.expm1(g * log_top)) / g
    x = np.exp(log_x)
    ranks = x.astype(np.int64) - 1
    return np.clip(ranks, 0, n - 1, out=ranks)


# --------------------------------------------------------------------------------------------
# Model construction and calibration
# --------------------------------------------------------------------------------------------


def _check_args(
    n_rows,
    n_cols,
    n_components,
    nnz_per_row,
    seed,
    dtype,
    zipf_exponent,
    topic_weight,
    concentration,
    length_sigma,
    topic_columns,
):
    """Raise :class:`~bignmf.errors.InputError` on arguments that define no matrix."""
    for name, value, low in (
        ("n_rows", n_rows, 0),
        ("n_cols", n_cols, 1),
        ("n_components", n_components, 1),
        ("seed", seed, 0),
    ):
        if not isinstance(value, int | np.integer) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 < nnz_per_row <= n_cols / 2:
        raise InputError(
            f"nnz_per_row must be in (0, n_cols / 2] = (0, {n_cols / 2:g}], got {nnz_per_row!r}"
        )
    if dtype.char not in _VALUE_DTYPES:
        raise InputError(f"dtype must be a float32/64 or integer dtype, got {dtype}")
    if not zipf_exponent >= 0:
        raise InputError(f"zipf_exponent must be >= 0, got {zipf_exponent!r}")
    if not 0 <= topic_weight <= 1:
        raise InputError(f"topic_weight must be in [0, 1], got {topic_weight!r}")
    if not concentration > 0:
        raise InputError(f"concentration must be > 0, got {concentration!r}")
    if not length_sigma >= 0:
        raise InputError(f"length_sigma must be >= 0, got {length_sigma!r}")
    if topic_columns is not None and not 1 <= topic_columns <= n_cols:
        raise InputError(f"topic_columns must be in [1, n_cols], got {topic_columns!r}")


def _default_topic_columns(n_cols: int, n_components: int) -> int:
    """Boosted columns per topic: topics cover about half the columns, at most 1000 each."""
    return int(min(max(n_cols // (2 * n_components), 1), 1000))


def _draw_topics(seed: int, n_cols: int, n_components: int, m: int):
    """Draw the column popularity order and each topic's boosted columns (in rank order)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_MODEL_KEY,)))
    column_order = rng.permutation(n_cols)
    topic_columns = np.empty((n_components, m), dtype=np.int64)
    for t in range(n_components):
        topic_columns[t] = rng.choice(n_cols, size=m, replace=False)
    return column_order, topic_columns


def _popularity(model: _Model) -> np.ndarray:
    """Global popularity of each column (a distribution over the columns)."""
    pop = np.empty(model.n_cols)
    pop[model.column_order] = power_law_masses(model.n_cols, model.zipf_exponent)
    return pop


def _pilot_probabilities(model: _Model) -> tuple[np.ndarray, np.ndarray]:
    """Column probabilities ``theta @ H`` of a sample of pilot rows, as (values, weights).

    Columns boosted by no topic have the same probability in every row and are listed once
    with weight 1; the boosted columns are listed once per pilot row with weight ``1 / P``.
    """
    k, m = model.topic_columns.shape
    b = model.topic_weight
    base = (1.0 - b) * _popularity(model)
    boosted, where = np.unique(model.topic_columns, return_inverse=True)
    placed = np.zeros((k, boosted.size))
    placed[np.repeat(np.arange(k), m), where.ravel()] = power_law_masses(m, model.zipf_exponent)[
        np.tile(np.arange(m), k)
    ]
    n_pilots = int(np.clip(_PILOT_ELEMENTS // boosted.size, 16, 1024))
    seq = np.random.SeedSequence(model.seed, spawn_key=(_CALIBRATION_KEY,))
    theta = _draw_mixtures(np.random.default_rng(seq), n_pilots, model)
    q_boosted = base[boosted] + b * (theta @ placed)
    rest = np.ones(model.n_cols, dtype=bool)
    rest[boosted] = False
    values = np.concatenate((base[rest], q_boosted.ravel()))
    weights = np.concatenate((np.ones(int(rest.sum())), np.full(q_boosted.size, 1.0 / n_pilots)))
    return values, weights


def _binned(values: np.ndarray, weights: np.ndarray, n_bins: int = 4096):
    """Summarise weighted probabilities by log-spaced bins: (mean probability, total weight)."""
    positive = values > 0  # columns no row can reach add no nonzeros
    values, weights = values[positive], weights[positive]
    logq = np.log(values)
    lo, hi = logq.min(), logq.max()
    scale = n_bins / max(hi - lo, 1e-12)
    which = np.clip(((logq - lo) * scale).astype(np.int64), 0, n_bins - 1)
    total = np.bincount(which, weights=weights, minlength=n_bins)
    sums = np.bincount(which, weights=weights * values, minlength=n_bins)
    keep = total > 0
    return sums[keep] / total[keep], total[keep]


def _calibrate(model: _Model, nnz_per_row: float) -> float:
    """Median length scale giving ``nnz_per_row`` expected distinct columns per row.

    A row with length scale ``lam`` and column probabilities ``q`` has ``Poisson(lam * q_j)``
    tokens in column ``j``, so ``sum_j 1 - exp(-lam * q_j)`` expected nonzeros; this averages it
    over the log-normal law of ``lam`` (Gauss-Hermite) and a sample of topic mixtures, and solves
    for the median of ``lam`` by bisection.
    """
    q, weight = _binned(*_pilot_probabilities(model))
    nodes, node_weights = np.polynomial.hermite.hermgauss(_HERMITE_NODES)
    spread = np.exp(model.length_sigma * np.sqrt(2.0) * nodes)
    node_weights = node_weights / np.sqrt(np.pi)

    def expected_nnz(log_scale: float) -> float:
        rates = np.exp(log_scale) * spread[:, None] * q[None, :]
        return float(node_weights @ (-np.expm1(-rates)) @ weight)

    lo = np.log(nnz_per_row) - model.length_sigma**2 / 2 - 1.0  # fewer tokens than wanted
    hi = lo + 1.0
    while expected_nnz(hi) < nnz_per_row:
        hi += 1.0
        if hi - lo > _MAX_LOG_TOKENS_PER_NNZ:
            raise InputError(
                f"nnz_per_row={nnz_per_row} would take more than "
                f"{np.exp(_MAX_LOG_TOKENS_PER_NNZ - 1):.0f} tokens per nonzero: too dense for "
                "these n_cols, topic_columns, topic_weight and zipf_exponent"
            )
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_nnz(mid) < nnz_per_row else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def _build_model(
    n_rows,
    n_cols,
    n_components,
    *,
    nnz_per_row,
    seed,
    dtype,
    zipf_exponent,
    topic_weight,
    concentration,
    length_sigma,
    topic_columns,
) -> _Model:
    """Validate the arguments, draw the topics and calibrate the document lengths."""
    dtype = np.dtype(dtype)
    _check_args(
        n_rows,
        n_cols,
        n_components,
        nnz_per_row,
        seed,
        dtype,
        zipf_exponent,
        topic_weight,
        concentration,
        length_sigma,
        topic_columns,
    )
    m = topic_columns or _default_topic_columns(n_cols, n_components)
    column_order, columns = _draw_topics(int(seed), int(n_cols), int(n_components), int(m))
    model = _Model(
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        n_components=int(n_components),
        seed=int(seed),
        dtype=dtype,
        zipf_exponent=float(zipf_exponent),
        topic_weight=float(topic_weight),
        concentration=float(concentration),
        length_sigma=float(length_sigma),
        length_scale=np.nan,  # calibrated below
        column_order=column_order,
        topic_columns=columns,
    )
    return replace(model, length_scale=_calibrate(model, float(nnz_per_row)))


# --------------------------------------------------------------------------------------------
# Row blocks
# --------------------------------------------------------------------------------------------


def _draw_mixtures(rng: np.random.Generator, n: int, model: _Model) -> np.ndarray:
    """Topic mixtures of ``n`` rows, ``(n, k)``, from a symmetric Dirichlet law."""
    if model.n_components == 1:
        return np.ones((n, 1))
    return rng.dirichlet(np.full(model.n_components, model.concentration), size=n)


def _draw_w(rng: np.random.Generator, n: int, model: _Model) -> np.ndarray:
    """First draws of a block: the rows of the true ``W`` (length scale times mixture)."""
    lam = rng.lognormal(np.log(model.length_scale), model.length_sigma, size=n)
    return lam[:, None] * _draw_mixtures(rng, n, model)


def _draw_token_topics(rng: np.random.Generator, w: np.ndarray):
    """Tokens per row, then each token's row and topic (tokens in row order)."""
    lam = w.sum(axis=1)
    n_tokens = rng.poisson(lam)
    theta = w / np.where(lam > 0, lam, 1.0)[:, None]
    per_topic = rng.multinomial(n_tokens, theta)  # (n, k)
    n, k = per_topic.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), n_tokens)
    topics = np.repeat(np.tile(np.arange(k, dtype=np.int64), n), per_topic.ravel())
    return rows, topics


def _draw_token_columns(rng: np.random.Generator, topics: np.ndarray, model: _Model):
    """Column of each token: its topic's boosted columns or the global popularity law."""
    u = rng.random(topics.size)
    b = model.topic_weight
    boosted = u < b
    columns = np.empty(topics.size, dtype=np.int64)
    m = model.topic_columns.shape[1]
    if b > 0:
        ranks = power_law_ranks(u[boosted] / b, m, model.zipf_exponent)
        columns[boosted] = model.topic_columns[topics[boosted], ranks]
    if b < 1:
        rest = ~boosted
        ranks = power_law_ranks((u[rest] - b) / (1.0 - b), model.n_cols, model.zipf_exponent)
        columns[rest] = model.column_order[ranks]
    return columns


def _aggregate(rows: np.ndarray, columns: np.ndarray, n: int, model: _Model) -> sp.csr_matrix:
    """Sum duplicate (row, column) tokens into a canonical CSR block of ``n`` rows."""
    keys = rows * model.n_cols + columns
    keys.sort(kind="stable")  # tokens come in row order: sorting runs is cheap
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, keys.size))
    keys = keys[starts]
    key_rows = keys // model.n_cols
    index_dtype = np.int32 if model.n_cols <= np.iinfo(np.int32).max else np.int64
    indices = (keys - key_rows * model.n_cols).astype(index_dtype)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(key_rows, minlength=n), out=indptr[1:])
    if indptr[-1] <= np.iinfo(np.int32).max and index_dtype == np.int32:
        indptr = indptr.astype(np.int32)
    data = counts.astype(model.dtype)
    return sp.csr_matrix((data, indices, indptr), shape=(n, model.n_cols))


def _generate_block(model: _Model, b: int) -> sp.csr_matrix:
    """Generation block ``b``: rows ``b * GENERATION_BLOCK_ROWS`` onwards."""
    n = model.block_rows(b)
    rng = model.block_rng(b)
    w = _draw_w(rng, n, model)
    rows, topics = _draw_token_topics(rng, w)
    columns = _draw_token_columns(rng, topics, model)
    return _aggregate(rows, columns, n, model)


def _w_block(model: _Model, b: int) -> np.ndarray:
    """Rows of the true ``W`` in generation block ``b`` (the same draws the block starts with)."""
    return _draw_w(model.block_rng(b), model.block_rows(b), model)


def _stack(pieces: list[sp.csr_matrix]) -> sp.csr_matrix:
    return pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")


def _iter_slabs(model: _Model, slab_rows: int) -> Iterator[sp.csr_matrix]:
    """Cut the generation blocks into consecutive slabs of ``slab_rows`` rows."""
    pending: list[sp.csr_matrix] = []
    pending_rows = 0
    for b in range(model.n_blocks):
        block = _generate_block(model, b)
        pos = 0
        while pos < block.shape[0]:
            take = min(slab_rows - pending_rows, block.shape[0] - pos)
            whole = pos == 0 and take == block.shape[0]
            pending.append(block if whole else block[pos : pos + take])
            pending_rows += take
            pos += take
            if pending_rows == slab_rows:
                yield _stack(pending)
                pending, pending_rows = [], 0
    if pending:
        yield _stack(pending)


def _iter_w_blocks(model: _Model) -> Iterator[np.ndarray]:
    """The rows of the true ``W``, one generation block at a time."""
    for b in range(model.n_blocks):
        yield _w_block(model, b)


def _w_rows(model: _Model, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the true ``W``."""
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= model.n_rows:
        raise IndexError(f"rows {start}:{stop} out of range for {model.n_rows} rows")
    first = start // GENERATION_BLOCK_ROWS
    last = -(-stop // GENERATION_BLOCK_ROWS)
    parts = [_w_block(model, b) for b in range(first, last)]
    w = np.concatenate(parts) if parts else np.zeros((0, model.n_components))
    offset = first * GENERATION_BLOCK_ROWS
    return w[start - offset : stop - offset]


def _topic_matrix(model: _Model) -> np.ndarray:
    """The true ``H``: each row is a topic's distribution over the columns."""
    k, m = model.topic_columns.shape
    boost = power_law_masses(m, model.zipf_exponent)
    h = np.tile((1.0 - model.topic_weight) * _popularity(model), (k, 1))
    for t in range(k):
        h[t, model.topic_columns[t]] += model.topic_weight * boost
    return h


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def planted_source(
    n_rows: int,
    n_cols: int,
    n_components: int,
    *,
    nnz_per_row: float = 50,
    seed: int = 0,
    dtype: Any = np.float32,
    zipf_exponent: float = 1.1,
    topic_weight: float = 0.5,
    concentration: float = 0.1,
    length_sigma: float = 0.5,
    topic_columns: int | None = None,
    slab_rows: int = GENERATION_BLOCK_ROWS,
    name: str | None = None,
) -> Source:
    """A planted rank-``n_components`` sparse count matrix, streamed as CSR row slabs.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape of the matrix.
    n_components : int
        Number of planted topics ``k`` (the rank of ``E[A]``).
    nnz_per_row : float, default 50
        Wanted mean number of nonzeros per row, at most ``n_cols / 2``. The document lengths are
        calibrated so that the expected mean is this (realised means are within a few percent).
    seed : int, default 0
        Non-negative seed. The same arguments give the same matrix, bit for bit.
    dtype : numpy dtype, default float32
        Dtype of the values (the counts): float32, float64 or an integer dtype.
    zipf_exponent : float, default 1.1
        Exponent ``s`` of the power law ``rank**-s`` of the global column popularity (and of the
        weights within each topic's boosted columns).
    topic_weight : float, default 0.5
        Share of each topic's mass on its boosted columns; the rest follows the global
        popularity. 0 gives a matrix of expected rank 1.
    concentration : float, default 0.1
        Concentration of the symmetric Dirichlet law of the topic mixtures; small values give
        rows dominated by one or two topics.
    length_sigma : float, default 0.5
        Standard deviation of the log of the per-row length scale.
    topic_columns : int, optional
        Boosted columns per topic; default ``n_cols // (2 * n_components)``, between 1 and 1000.
    slab_rows : int, default GENERATION_BLOCK_ROWS
        Rows per slab the source yields (the last may be shorter). It does not change the matrix.
    name : str, optional
        Name of the source; default describes the arguments.

    Returns
    -------
    bignmf.types.Source
        Whose ``blocks()`` generates the matrix afresh on each call, holding one generation block
        of :data:`GENERATION_BLOCK_ROWS` rows (plus one slab) at a time.

    Raises
    ------
    bignmf.errors.InputError
        If the arguments define no matrix (negative sizes, ``nnz_per_row > n_cols / 2``...).
    """
    model = _build_model(
        n_rows,
        n_cols,
        n_components,
        nnz_per_row=nnz_per_row,
        seed=seed,
        dtype=dtype,
        zipf_exponent=zipf_exponent,
        topic_weight=topic_weight,
        concentration=concentration,
        length_sigma=length_sigma,
        topic_columns=topic_columns,
    )
    if not isinstance(slab_rows, int | np.integer) or slab_rows < 1:
        raise InputError(f"slab_rows must be an integer >= 1, got {slab_rows!r}")
    if name is None:
        name = f"<planted {n_rows}x{n_cols} k={n_components} nnz/row={nnz_per_row} seed={seed}>"
    return Source(
        name=name,
        shape=(model.n_rows, model.n_cols),
        dtype=model.dtype,
        blocks=partial(_iter_slabs, model, int(slab_rows)),
    )


def planted_factors(
    n_rows: int,
    n_cols: int,
    n_components: int,
    *,
    nnz_per_row: float = 50,
    seed: int = 0,
    dtype: Any = np.float32,
    zipf_exponent: float = 1.1,
    topic_weight: float = 0.5,
    concentration: float = 0.1,
    length_sigma: float = 0.5,
    topic_columns: int | None = None,
) -> PlantedFactors:
    """The true factors of the matrix :func:`planted_source` gives for the same arguments.

    Parameters
    ----------
    n_rows, n_cols, n_components, nnz_per_row, seed, dtype, zipf_exponent, topic_weight, \
concentration, length_sigma, topic_columns
        As for :func:`planted_source`.

    Returns
    -------
    PlantedFactors
        ``H`` (``k x n_cols``, rows summing to 1) and ways to get the rows of ``W``, such that
        ``E[A] = W @ H`` given ``W``.
    """
    model = _build_model(
        n_rows,
        n_cols,
        n_components,
        nnz_per_row=nnz_per_row,
        seed=seed,
        dtype=dtype,
        zipf_exponent=zipf_exponent,
        topic_weight=topic_weight,
        concentration=concentration,
        length_sigma=length_sigma,
        topic_columns=topic_columns,
    )
    return PlantedFactors(
        H=_topic_matrix(model),
        w_rows=partial(_w_rows, model),
        w_blocks=partial(_iter_w_blocks, model),
        length_scale=model.length_scale,
    )


def make_planted(
    dst: Any,
    n_rows: int,
    n_cols: int,
    n_components: int,
    *,
    overwrite: bool = False,
    chunk_size: int | None = None,
    block_nnz: int | None = None,
    block_rows: int | None = None,
    codec: str | None = None,
    progress: Any = None,
    **kwargs: Any,
) -> CSRStore:
    """Write a planted matrix to a store: ``write_matrix(planted_source(...), dst, ...)``.

    Parameters
    ----------
    dst : str or path-like
        Where to write the store.
    n_rows, n_cols, n_components : int
        As for :func:`planted_source`.
    overwrite, chunk_size, block_nnz, block_rows, codec, progress
        Passed to :func:`bignmf.store.csr.write_matrix`; those left at ``None`` take its defaults.
    **kwargs
        Passed to :func:`planted_source` (``nnz_per_row``, ``seed``, ``dtype``...).

    Returns
    -------
    bignmf.store.csr.CSRStore
        The written store.
    """
    from bignmf.store.csr import write_matrix

    source = planted_source(n_rows, n_cols, n_components, **kwargs)
    options = {
        "chunk_size": chunk_size,
        "block_nnz": block_nnz,
        "block_rows": block_rows,
        "codec": codec,
        "progress": progress,
    }
    options = {key: value for key, value in options.items() if value is not None}
    return write_matrix(source, dst, overwrite=overwrite, **options)
