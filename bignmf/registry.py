"""Every name a user may give for a solver, an initialisation, a loss or a stopping rule.

Each kind has one table, kept beside its implementation: solvers in
:data:`bignmf.kernels.solvers.SOLVERS`, β-divergences in
:data:`bignmf.kernels.solvers.BETA_NAMES`, initialisations in :data:`bignmf.plan.INITS`,
stopping rules in :data:`bignmf.fit.stopping.STOPPING`, W's storage in
:data:`bignmf.plan.W_STORAGE`, unknown entries in :data:`bignmf.kernels.solvers.MISSING`
(with the solvers that fit them, :data:`~bignmf.kernels.solvers.OBSERVED_SOLVERS`),
implicit feedback's confidence functions in :data:`bignmf.kernels.observed.IMPLICIT_F`. This
module is the one door to them:
the CLI's choices and help, the estimator's parameter constraints, the checks of
:class:`~bignmf.fit.settings.FitSettings` and the error messages all come from here, so a name
added to a table appears everywhere at once.

May import: the tables above (lazily, so that importing this module costs nothing) and
:mod:`bignmf.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bignmf.errors import ParameterError

#: The estimator's solver names as scikit-learn spells them: 'cd' is HALS with one sweep per
#: pass over A (scikit-learn's coordinate descent is exactly that update).
ESTIMATOR_ALIASES = {"cd": ("hals", 1)}

#: How a kind is named in messages.
_LABELS = {"stopping": "stopping rule"}


def table(kind: str) -> Mapping[str, Any]:
    """The registered names of ``kind``: 'solver', 'init', 'beta_loss', 'stopping',
    'w_storage', 'missing' or 'implicit_f'."""
    if kind == "solver":
        from bignmf.kernels.solvers import SOLVERS

        return SOLVERS
    if kind == "beta_loss":
        from bignmf.kernels.solvers import BETA_NAMES

        return BETA_NAMES
    if kind == "init":
        from bignmf.plan import INITS

        return INITS
    if kind == "missing":
        from bignmf.kernels.solvers import MISSING

        return MISSING
    if kind == "implicit_f":
        from bignmf.kernels.observed import IMPLICIT_F

        return IMPLICIT_F
    if kind == "w_storage":
        from bignmf.plan import W_STORAGE

        return W_STORAGE
    if kind == "stopping":
        from bignmf.fit.stopping import STOPPING

        return STOPPING
    raise KeyError(kind)


def names(kind: str) -> list[str]:
    """The names of ``kind``, sorted."""
    return sorted(table(kind))


def check(kind: str, name: Any) -> str:
    """``name`` when registered; otherwise :class:`ParameterError` listing the valid names."""
    if not isinstance(name, str) or name not in table(kind):
        label = _LABELS.get(kind, kind)
        raise ParameterError(f"unknown {label} {name!r}; choose one of {', '.join(names(kind))}")
    return name


def summary(kind: str, name: str) -> str:
    """One line saying what ``name`` is: its entry's text or its docstring's first line."""
    entry = table(kind)[name]
    if isinstance(entry, int | float):  # a β-divergence's β
        return f"β = {entry:g}"
    text = entry if isinstance(entry, str) else (getattr(entry, "__doc__", None) or "")
    first = text.strip().splitlines()[0].rstrip(".") if text.strip() else name
    return first.replace("``", "")


def help_text(kind: str, exclude: tuple[str, ...] = ()) -> str:
    """``name: summary`` for every name of ``kind``, for a command's help."""
    return "; ".join(f"{n}: {summary(kind, n)}" for n in names(kind) if n not in exclude)


def check_missing(solver: str, beta: float, missing: str = "zeros") -> None:
    """:class:`ParameterError` unless ``solver`` can fit with these missing entries at this
    β (``missing``: a name of the 'missing' table, or ``'mask'``)."""
    from bignmf.kernels.solvers import SolverParams, get_solver

    try:
        get_solver(solver, missing).check_params(SolverParams(beta_loss=beta))
    except ValueError as error:
        raise ParameterError(str(error)) from None


def beta_value(beta_loss: float | str) -> float:
    """β as a float: a name of the 'beta_loss' table or a finite number."""
    from bignmf.kernels.solvers import beta_loss_to_float

    try:
        return beta_loss_to_float(beta_loss)
    except (TypeError, ValueError) as error:
        raise ParameterError(str(error)) from None


def estimator_solvers() -> dict[str, tuple[str, int | None]]:
    """The estimator's ``solver`` values → (registered solver, sweeps per pass or None)."""
    return {**{name: (name, None) for name in names("solver")}, **ESTIMATOR_ALIASES}


__all__ = [
    "ESTIMATOR_ALIASES",
    "beta_value",
    "check",
    "check_missing",
    "estimator_solvers",
    "help_text",
    "names",
    "summary",
    "table",
]
