"""Per-block numerical kernels of bignmf (pure NumPy/SciPy; never imports dask or zarr).

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
solvers
    The per-solver contract used by the graph layer and the ``SOLVERS`` registry.
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
