"""``k="auto"``: the rank chosen by a cross-validated study before the fit.

`bignmf fit A -k auto` and ``NMF(n_components="cv")`` run a study (:func:`bignmf.sweep`) over
:data:`AUTO_KS` (those up to min(m, n)), :data:`AUTO_REPLICATES` replicates each, on all but a
speckled :data:`AUTO_CV` of the entries, and take the k of its rule
(:func:`bignmf.study.summary.choose_k`: the smallest k within one standard error of the lowest
held-out RMSE). The study is kept (a run's ``choose-k/``), so a stopped choice resumes.
"""

from __future__ import annotations

import os
from typing import Any

from bignmf.errors import ParameterError
from bignmf.study.layout import StudyDir

__all__ = ["AUTO_CV", "AUTO_KS", "AUTO_REPLICATES", "auto_ks", "choose_rank"]

#: The ranks ``k="auto"`` tries, those up to min(m, n).
AUTO_KS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
#: Fits per k (enough for the standard error of the rule).
AUTO_REPLICATES = 3
#: The held-out fraction (RcppML's default test density).
AUTO_CV = 0.05


def auto_ks(shape) -> tuple[int, ...]:
    """:data:`AUTO_KS` up to min(m, n) (at least k = 1)."""
    return tuple(k for k in AUTO_KS if k <= min(shape)) or (1,)


def choose_rank(
    A: Any,
    *,
    out: str | os.PathLike,
    seed: int = 0,
    scheduler: Any = None,
    progress: Any = False,
    **fit: Any,
):
    """The study that chooses k for ``A``, run in ``out`` (or finished there, when a stopped
    one is found).

    Parameters
    ----------
    A : store, path or in-memory matrix
    out : path
        The study's directory.
    seed : int
        Its seed (replicate r: ``seed + r``; the held-out entries: ``seed``).
    scheduler, progress
        As :func:`bignmf.sweep`'s.
    **fit
        The fits' settings (:data:`bignmf.study.settings.FIT_SETTINGS`' keys): Frobenius loss
        only, as every cross-validated fit.

    Returns
    -------
    bignmf.study.summary.Study
        Its ``chosen_k`` is the rank.

    Raises
    ------
    ParameterError
        When the study could compare no k.
    """
    from bignmf.store.matrix import as_block_matrix
    from bignmf.study.sweep import resume_study, sweep

    if StudyDir(out).exists():
        study = resume_study(out, A=A, scheduler=scheduler, progress=progress)
    else:
        shape = as_block_matrix(A).shape
        study = sweep(
            A,
            auto_ks(shape),
            out=out,
            replicates=AUTO_REPLICATES,
            cv=AUTO_CV,
            seed=seed,
            scheduler=scheduler,
            progress=progress,
            **fit,
        )
    if study.chosen_k is None:
        raise ParameterError(f"{study.path}: no k could be compared; give k")
    return study
