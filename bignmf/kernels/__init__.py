"""Per-block numerical kernels of bignmf: the NumPy/SciPy work done on one row block.

This layer owns everything computed on a block in memory: the sparse–dense products, the
solvers' updates of a factor, the pieces of the loss, and transform's per-block solves of W
against a fixed H. It may import NumPy and SciPy only; it never imports dask, zarr or another
bignmf layer (``store``, ``io``, ``fit``, ``cluster``...), which call it instead.

Modules
-------
products
    ``A_i·Hᵀ``, ``A_iᵀ·W_i`` (scatter-accumulated), grams, ``W·H`` at nonzeros.
hals
    HALS / coordinate-descent update of a factor from its cross product and gram.
mu
    Multiplicative updates for the β-divergence, matching scikit-learn.
bpp
    Nonnegative least squares by block principal pivoting.
loss
    β-divergence from reductions and per-block parts.
observed
    Fits on the stored entries only: packed per-row grams, coordinate descent on each row's
    own gram, the observed loss.
solvers
    The per-solver contract used by the graph layer, the ``SOLVERS`` registry and the
    ``OBSERVED_SOLVERS`` that fit the stored entries only.
transform
    Per-block solves of W with H fixed (exact NNLS, W-only MU with per-row stopping) and the
    per-row divergence, for :func:`bignmf.fit.transform.transform`.
_util
    Private helpers: constants (``EPSILON``), dtypes, scratch buffers and the row batching,
    including the one loop over dense batches of ``(W_i·H)^p`` (``wh_power_batches``).
"""

from __future__ import annotations

from bignmf.kernels.bpp import nnls_bpp
from bignmf.kernels.hals import hals_update
from bignmf.kernels.loss import block_divergence, frobenius_loss, frobenius_sq
from bignmf.kernels.products import a_ht, accumulate_at_w, gram, sq_norm, wh_at_nonzeros
from bignmf.kernels.solvers import (
    SOLVERS,
    Regularization,
    Solver,
    SolverParams,
    combine,
    get_solver,
    penalty,
    penalty_sums,
    prepare_h,
    regularization,
)

__all__ = [
    "SOLVERS",
    "Regularization",
    "Solver",
    "SolverParams",
    "a_ht",
    "accumulate_at_w",
    "block_divergence",
    "combine",
    "frobenius_loss",
    "frobenius_sq",
    "get_solver",
    "gram",
    "hals_update",
    "nnls_bpp",
    "penalty",
    "penalty_sums",
    "prepare_h",
    "regularization",
    "sq_norm",
    "wh_at_nonzeros",
]
