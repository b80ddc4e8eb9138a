"""What a study's fits run with unless told otherwise (no imports: the command's --help reads
it)."""

from __future__ import annotations

__all__ = ["FIT_SETTINGS", "STUDY_MAX_ITER", "STUDY_TOL"]

#: A study's default tolerance. A consensus wants converged replicates: with the fit's 1e-4
#: (the objective's relative decrease in one iteration) HALS stopped after ~16 iterations at
#: k = 10 on planted single-cell counts, where scikit-learn's cd (cNMF's) ran ~50, and the
#: consensus spectra were 0.0015 of a correlation below cNMF's; 1e-6 matched them
#: (benchmarks/README.md, "Study").
STUDY_TOL = 1e-6
#: cNMF's ``max_NMF_iter``.
STUDY_MAX_ITER = 1000

#: The keywords of :func:`bignmf.nmf` a study passes to every fit, with their defaults
#: (``init`` is 'random': replicates of an SVD start would all be the same fit).
FIT_SETTINGS = {
    "solver": "hals",
    "beta_loss": "frobenius",
    "init": "random",
    "tol": STUDY_TOL,
    "stopping": "relative",
    "max_iter": STUDY_MAX_ITER,
    "alpha_W": 0.0,
    "alpha_H": "same",
    "l1_ratio": 0.0,
    "n_inner": None,
    "checkpoint_every": "auto",
    "checkpoint_seconds": 600.0,
}
