"""Planted programs for the study tests: counts from known spectra (H) and usages (W)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def planted_programs(m: int = 300, n: int = 120, k: int = 4, seed: int = 0, depth: float = 4.0):
    """``(A, W, H)``: Poisson counts of ``W·H``; each program (a row of H, summing to 1) has
    its own genes over a faint shared background, each cell a Dirichlet mixture of programs,
    ``depth·n`` expected counts per cell."""
    rng = np.random.default_rng(seed)
    H = np.zeros((k, n))
    for c in range(k):
        own = rng.choice(n, n // (2 * k), replace=False)
        H[c] = rng.gamma(0.3, 1.0, n) * 0.1
        H[c, own] += rng.gamma(2.0, 1.0, own.size)
    H /= H.sum(axis=1, keepdims=True)
    W = rng.dirichlet(np.full(k, 0.3), size=m) * depth * n
    A = sp.csr_matrix(rng.poisson(W @ H).astype(np.float32))
    return A, W, H


def matched_correlations(planted: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Pearson correlation of each planted spectrum with its match among ``found`` (the
    assignment that maximises the total)."""
    from scipy.optimize import linear_sum_assignment

    k = planted.shape[0]
    C = np.corrcoef(np.vstack([planted, found]))[:k, k:]
    rows, cols = linear_sum_assignment(-C)
    return C[rows, cols]
