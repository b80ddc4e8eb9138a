"""The plain SciPy loop that ``benchmarks/engine.py`` compares bignmf's engine against.

One iteration of accelerated HALS for ½‖A − WH‖², written the obvious way: the row blocks are
split into ``threads`` contiguous halves (thirds...), each half runs in a thread of a
``concurrent.futures`` pool with BLAS limited to one thread, and for every block::

    AHt = A_i @ Ht                      # CSR times dense
    W_i = hals(W_i, AHt, H·Hᵀ)          # bignmf.kernels.hals.hals_update, n_inner sweeps
    AtW += A_i.T @ W_i                  # A_i.T is the CSC view: a scatter, no transpose copy
    WtW += W_iᵀ·W_i                     # float64
    cross += ⟨W_i, AHt⟩                 # float64, for the loss (bignmf computes it too)

then the per-thread sums are added and Hᵀ gets the same HALS update from ``AtW`` and ``WtW``. This
is the arithmetic of ``bignmf.nmf(..., solver='hals')`` minus everything the engine adds (graph,
scheduler, fixed reduction tree, per-block accumulators, block reads), so the ratio of the two
is the engine's overhead. No state leaves the function except the iterates.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bignmf.kernels.hals import hals_update

__all__ = ["LoopResult", "csr_views", "plain_loop", "split_even"]


class LoopResult:
    """Per-iteration wall seconds and losses (of ``(W_t, H_{t-1})``, as bignmf reports them)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.W: list[np.ndarray] = []
        self.H: np.ndarray | None = None


def csr_views(A: sp.csr_matrix, row_offsets: np.ndarray) -> list[sp.csr_matrix]:
    """The row blocks of ``A`` as CSR matrices sharing ``A``'s data and indices (no copy)."""
    blocks = []
    for r0, r1 in itertools.pairwise(row_offsets):
        s, e = int(A.indptr[r0]), int(A.indptr[r1])
        block = sp.csr_matrix((int(r1 - r0), A.shape[1]), dtype=A.dtype)
        block.data, block.indices = A.data[s:e], A.indices[s:e]
        block.indptr = (A.indptr[r0 : r1 + 1] - s).astype(A.indices.dtype)
        blocks.append(block)
    return blocks


def split_even(n_blocks: int, parts: int) -> list[range]:
    """``range(n_blocks)`` cut into ``parts`` contiguous runs of equal length (±1)."""
    bounds = np.linspace(0, n_blocks, parts + 1).round().astype(int)
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _gram64(X: np.ndarray) -> np.ndarray:
    X64 = X.astype(np.float64)
    return X64.T @ X64


def plain_loop(
    get_block: Callable[[int, object], sp.csr_matrix],
    n_blocks: int,
    W0: list[np.ndarray],
    H0: np.ndarray,
    norm_a_sq: float,
    n_iter: int,
    *,
    threads: int = 2,
    n_inner: int = 1,
    new_buffers: Callable[[], object] = lambda: None,
    callback: Callable[[int, float, float], object] | None = None,
) -> LoopResult:
    """Run ``n_iter`` HALS iterations; ``get_block(i, buffers)`` returns row block ``i``.

    ``W0`` is the list of the blocks' initial rows of W (copied), ``H0`` the initial H.
    ``new_buffers()`` makes one reusable read buffer per thread (for blocks read from a store).
    """
    W = [np.array(w, copy=True) for w in W0]
    H = np.ascontiguousarray(H0)
    n, k = H.shape[1], H.shape[0]
    dtype = H.dtype
    halves = split_even(n_blocks, threads)
    buffers = [new_buffers() for _ in halves]
    out = LoopResult()

    def half(part: int, Ht: np.ndarray, HHt: np.ndarray):
        AtW = np.zeros((n, k), dtype=dtype)
        WtW = np.zeros((k, k), dtype=np.float64)
        cross = 0.0
        for i in halves[part]:
            A_i = get_block(i, buffers[part])
            AHt = A_i @ Ht
            W_i = W[i].copy()
            hals_update(W_i, AHt, HHt, n_sweeps=n_inner)
            AtW += A_i.T @ W_i
            WtW += _gram64(W_i)
            cross += float(np.vdot(W_i.astype(np.float64), AHt.astype(np.float64)))
            W[i] = W_i
        return AtW, WtW, cross

    with threadpool_limits(limits=1), ThreadPoolExecutor(threads) as pool:
        for t in range(n_iter):
            start = time.perf_counter()
            Ht = np.ascontiguousarray(H.T)
            HHt = _gram64(Ht)
            parts = list(
                pool.map(half, range(len(halves)), [Ht] * len(halves), [HHt] * len(halves))
            )
            AtW, WtW, cross = parts[0]
            for a, g, c in parts[1:]:
                AtW += a
                WtW += g
                cross += c
            loss = 0.5 * max(norm_a_sq - 2 * cross + float(np.vdot(WtW, HHt)), 0.0)
            Ht_new = Ht.copy()
            hals_update(Ht_new, AtW, WtW, n_sweeps=n_inner)
            H = np.ascontiguousarray(Ht_new.T)
            seconds = time.perf_counter() - start
            out.seconds.append(seconds)
            out.losses.append(loss)
            if callback is not None:
                callback(t + 1, loss, seconds)
    out.W, out.H = W, H
    return out
