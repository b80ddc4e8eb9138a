"""The stopping rules of a fit's ``tol``: whether to stop, from the objective history alone.

A rule depends on the history alone, so a resumed run stops where an uninterrupted one does.
Imports nothing but the standard library: the command's ``--help`` lists the rules without
loading dask (the registry's 'stopping' table is :data:`STOPPING`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["STOPPING", "decrease_ratio", "get_stopping", "relative_decrease", "sklearn_decrease"]


def decrease_ratio(objective: Sequence[float]) -> float | None:
    """How much the last iteration lowered the objective, relative to its previous value: what
    the ``'relative'`` rule compares with ``tol`` (shown by the progress); None before two
    iterations."""
    if len(objective) < 2 or not objective[-2]:
        return None
    return (objective[-2] - objective[-1]) / abs(objective[-2])


def relative_decrease(objective: Sequence[float], tol: float, noise: float = 0.0) -> bool:
    """bignmf's rule: stop when one iteration lowered the objective by less than ``tol`` of it.

    Converged after iteration t when ``−noise <= f_{t−1} − f_t <= tol·|f_{t−1}|``, ``f_t``
    being the objective of ``(W_t, H_{t−1})``. Checked every iteration; a rise by more than
    ``noise`` is not convergence. ``tol = 0`` never stops.

    Parameters
    ----------
    objective : sequence of float
        The objective after each iteration so far.
    tol : float
    noise : float, default 0
        How far rounding alone moves the computed objective (:meth:`FitState.rounding`).

    Returns
    -------
    bool
    """
    if tol <= 0 or len(objective) < 2:
        return False
    decrease = objective[-2] - objective[-1]
    return -noise <= decrease <= tol * abs(objective[-2])


def sklearn_decrease(objective: Sequence[float], tol: float, noise: float = 0.0) -> bool:
    """scikit-learn's multiplicative-update rule, on the objective.

    At t = 10, 20, ... take the error ``e_t = sqrt(2·f_t)`` and stop when
    ``e_{t−10} − e_t < tol·e_ref``, with ``e_{t−10}`` read as ``e_ref`` at t = 10.
    scikit-learn's ``_fit_multiplicative_update`` does this with ``e_ref`` the error of the
    initial factors and ``e_t`` that of ``(W_t, H_t)`` (the divergence alone); here
    ``e_ref = e_1``, the error after the first iteration (the initial factors' error would
    cost a pass over A), and ``f_t`` is the objective (divergence + penalties) of
    ``(W_t, H_{t−1})``, which every iteration measures. A rise of ``f`` since the last check
    by more than ``noise`` is not convergence (scikit-learn stops on one). ``tol = 0`` never
    stops.

    Parameters
    ----------
    objective : sequence of float
        The objective after each iteration so far.
    tol : float
    noise : float, default 0
        How far rounding alone moves the computed objective (:meth:`FitState.rounding`).

    Returns
    -------
    bool

    Notes
    -----
    ``e_1 <= e_0``, so against scikit-learn's rule on the same iterates the first check
    (t = 10) stops at least as readily and later checks less readily: the fit may stop a
    check earlier or several later (see :class:`bignmf.NMF`, Notes, for measurements).
    """
    t = len(objective)
    if tol <= 0 or t == 0 or t % 10:
        return False
    before = objective[0] if t == 10 else objective[t - 11]
    if before - objective[-1] < -noise:
        return False
    reference = math.sqrt(2 * max(objective[0], 0.0))
    if reference == 0:  # an exact fit after one iteration: nothing left to decrease
        return True
    error = math.sqrt(2 * max(objective[-1], 0.0))
    return math.sqrt(2 * max(before, 0.0)) - error < tol * reference


#: The stopping rules by name: ``rule(objective_history, tol, noise) -> bool`` (stop now?). A
#: rule depends on the history alone, so a resumed run stops where an uninterrupted one does.
STOPPING: dict[str, Callable[..., bool]] = {
    "relative": relative_decrease,
    "sklearn": sklearn_decrease,
}


def get_stopping(name: str) -> Callable[..., bool]:
    """The stopping rule called ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`STOPPING`.

    Returns
    -------
    callable

    Raises
    ------
    ParameterError
        For any other name; the message lists the valid ones.
    """
    from bignmf import registry

    return STOPPING[registry.check("stopping", name)]
