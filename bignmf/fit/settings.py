"""What a run is: the settings that fix its iterates and the options that may change.

Two frozen objects, in the manner of cubed's ``Spec``: :class:`FitSettings` (what a run
records and a resume must match: they fix every iterate) and :class:`RunOptions` (how far and
where it runs: a resume may change them). ``run.json`` is their serialisation
(:meth:`FitSettings.to_record`, :meth:`RunOptions.to_record`); a resume compares objects
(:meth:`FitSettings.differences`). :func:`bignmf.nmf`, :class:`bignmf.NMF` and the CLI all
build them through :meth:`FitSettings.build` and :class:`RunOptions`, so every check is made
once, before anything is written.

May import: :mod:`bignmf.registry`, :mod:`bignmf.plan`, :mod:`bignmf.errors` and NumPy; no
Dask.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bignmf import registry
from bignmf.errors import ParameterError
from bignmf.kernels.solvers import MASK
from bignmf.plan import default_init

#: HALS sweeps per pass with unknown entries by default: there building each row's and
#: column's own gram costs most of an iteration, and three sweeps on them cost 1.26x one and
#: reached a held-out RMSE of 0.42 where one reached 0.47 (planted ratings, 60 iterations).
MISSING_SWEEPS = 3
#: Implicit feedback's default α: Hu, Koren & Volinsky's (their f linear; Spark's ALS
#: defaults to 1.0).
IMPLICIT_ALPHA = 40.0
#: ``checkpoint_every``'s default: every 10 iterations, or fewer where checkpoints would take
#: more than 5% of the fit's time (:class:`bignmf.fit.callbacks.Checkpointer`).
AUTO_CHECKPOINTS = "auto"


@dataclass(frozen=True)
class FitSettings:
    """What fixes the iterates of a run: recorded in ``run.json``, matched on resume.

    Attributes
    ----------
    n_components : int
    solver : str
        A name of :data:`bignmf.registry.SOLVERS`.
    beta_loss : float
        The β of the divergence (names resolved through :data:`bignmf.registry.BETA_LOSSES`).
    init : str
        A name of :data:`bignmf.plan.INITS`, ``None`` resolved as scikit-learn does.
    seed : int or None
        The random state of the initialisation (None when only compared on resume).
    alpha_W, alpha_H, l1_ratio : float (alpha_H may be ``'same'``)
    n_inner : int
    dtype : str
        The dtype of A's values, and so of W and H.
    column_chunks : int
        Column ranges of H (1: one fused pass per iteration).
    missing : str or None
        Which entries are unknown: None (none), a name of the registry's 'missing' table
        (``'zeros'``: every entry that is not stored), or ``'mask'`` (those of ``mask=``).
    weights : str or None
        Entry weights: None (none), ``'implicit'`` (implicit feedback's confidence
        ``1 + implicit_alpha·f(a)`` on A's stored entries, target 1) or ``'given'`` (a
        matrix of weights on A's pattern, ``weights=``); see :mod:`bignmf.store.weighted`.
    implicit_alpha : float or None
        Implicit feedback's α (with ``weights='implicit'``).
    implicit_f : str or None
        Implicit feedback's f, a name of :data:`bignmf.kernels.observed.IMPLICIT_F`.
    """

    n_components: int
    solver: str
    beta_loss: float
    init: str
    seed: int | None
    alpha_W: float
    alpha_H: float | str
    l1_ratio: float
    n_inner: int
    dtype: str
    column_chunks: int = 1
    missing: str | None = None
    weights: str | None = None
    implicit_alpha: float | None = None
    implicit_f: str | None = None

    #: Used only before the first checkpoint, which a resume restores: never compared.
    MAY_DIFFER: ClassVar[tuple[str, ...]] = ("seed", "init")

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        dtype: Any,
        n_components: Any,
        *,
        solver: str = "hals",
        beta_loss: float | str = "frobenius",
        init: str | None = None,
        seed: int | None = None,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        n_inner: int | None = None,
        column_chunks: int = 1,
        missing: str | None = None,
        weights: str | None = None,
        implicit_alpha: float = IMPLICIT_ALPHA,
        implicit_f: str = "linear",
    ) -> FitSettings:
        """Check the user's values and resolve the defaults; :class:`ParameterError` names
        the first that is wrong (``weights``: 'implicit', 'given' or None)."""
        try:
            k = int(n_components)
        except (TypeError, ValueError):
            raise ParameterError(f"n_components must be an int, got {n_components!r}") from None
        if k < 1:
            raise ParameterError(f"n_components must be >= 1, got {n_components}")
        registry.check("solver", solver)
        beta = registry.beta_value(beta_loss)
        if missing is not None and missing != MASK:  # a mask is given as mask=, not named
            registry.check("missing", missing)
        implicit = check_implicit(weights, missing, implicit_alpha, implicit_f)
        seen = kernel_entries(missing, weights)
        if seen is not None:
            registry.check_missing(solver, beta, seen)
        init = default_init(init, k, shape, seen)
        registry.check("init", init)
        if init.startswith("nndsvd") and k > min(shape):
            # scikit-learn's words (_initialize_nmf); the SVD has only min(m, n) vectors and k
            # is never lowered behind the user's back
            raise ParameterError(
                f"init = '{init}' can only be used when n_components <= min(n_samples, "
                f"n_features) (n_components = {k}, n_samples = {shape[0]}, "
                f"n_features = {shape[1]})"
            )
        return cls(
            n_components=k,
            solver=solver,
            beta_loss=beta,
            init=init,
            seed=seed,
            alpha_W=float(alpha_W),
            alpha_H=alpha_H if isinstance(alpha_H, str) else float(alpha_H),
            l1_ratio=float(l1_ratio),
            n_inner=int(n_inner or (MISSING_SWEEPS if seen is not None else 1)),
            dtype=str(np.dtype(dtype)),
            column_chunks=int(column_chunks),
            missing=missing,
            weights=weights,
            **implicit,
        )

    @property
    def entries(self) -> str | None:
        """The kernels' ``missing`` (:func:`kernel_entries`)."""
        return kernel_entries(self.missing, self.weights)

    def to_record(self) -> dict:
        """The ``settings`` of ``run.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> FitSettings:
        """Read back :meth:`to_record` (runs recorded before ``column_chunks`` had one pass,
        before ``missing`` none)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})

    def differences(self, given: FitSettings) -> dict[str, tuple[Any, Any]]:
        """``{name: (recorded, given)}`` for every compared setting that differs."""
        mine, theirs = self.to_record(), given.to_record()
        return {
            name: (mine[name], theirs[name])
            for name in mine
            if name not in self.MAY_DIFFER and mine[name] != theirs[name]
        }


def kernel_entries(missing: str | None, weights: str | None) -> str | None:
    """The solvers' ``missing`` for a fit's ``missing`` and ``weights``: weights on a matrix
    whose every entry is seen are fitted by the mask's solvers (the plain grams corrected on a
    sparse pattern, :mod:`bignmf.kernels.observed`); on the stored entries only, by the
    observed ones."""
    if weights is not None and missing is None:
        return MASK
    return missing


def check_implicit(weights: Any, missing: str | None, alpha: Any, f: Any) -> dict:
    """The implicit-feedback settings to record: α and f with ``weights='implicit'`` (none
    otherwise); :class:`ParameterError` for a bad α or f, or ``missing`` beside them."""
    if weights != "implicit":
        return {}
    if missing is not None:
        raise ParameterError(
            "weights='implicit' sees every entry (the zeros are 'not liked' with confidence "
            f"1): it cannot be combined with missing={missing!r}"
        )
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ParameterError(f"implicit_alpha must be a finite number >= 0, got {alpha!r}")
    registry.check("implicit_f", f)
    return {"implicit_alpha": float(alpha), "implicit_f": f}


def _at_least(bound: float, *, strict: bool = False, none: bool = False, auto: str = ""):
    def ok(value) -> bool:
        if value is None:
            return none
        if isinstance(value, str):
            return bool(auto) and value == auto
        return bool(np.isfinite(value)) and (value > bound if strict else value >= bound)

    words = f"> {bound:g}" if strict else f">= {bound:g}"
    return ok, words + (f", {auto!r}" if auto else "") + (" or None" if none else "")


def _power_of_two(value) -> bool:
    return value >= 2 and value & (value - 1) == 0


@dataclass(frozen=True)
class RunOptions:
    """How far, how often and where a run goes: what a resume may change.

    The fields in :attr:`RECORDED` are written to ``run.json`` and are a resume's defaults;
    the others (the scheduler, the task layout, where W's buffers go) belong to one session
    of the run. A resume may change every field but :attr:`KEPT_ON_RESUME`.

    Attributes
    ----------
    max_iter : int
    tol : float
    stopping : str
        A name of :data:`bignmf.registry.STOPPING`.
    w_storage : {'auto', 'memory', 'zarr'}
    block_nnz : int or None
        The row blocking of an in-memory input (a resume must block A the same way).
    checkpoint_every : int, 'auto' or None
    checkpoint_seconds : float or None
    cache_a : int or None
        Bytes of decoded blocks each process keeps (None: off).
    scheduler : optional
    n_tasks : int or None
        None: 4 per scheduler thread.
    split_every : int
    workdir : path or None
    """

    max_iter: int = 200
    tol: float = 1e-4
    stopping: str = "relative"
    w_storage: str = "auto"
    block_nnz: int | None = None
    checkpoint_every: int | str | None = AUTO_CHECKPOINTS
    checkpoint_seconds: float | None = 600.0
    cache_a: int | None = None
    scheduler: Any = None
    n_tasks: int | None = None
    split_every: int = 8
    workdir: Any = None

    RECORDED: ClassVar[tuple[str, ...]] = (
        "max_iter",
        "tol",
        "stopping",
        "w_storage",
        "block_nnz",
        "checkpoint_every",
        "checkpoint_seconds",
        "cache_a",
    )
    #: How W is kept and A is blocked decide where the checkpoints' W goes: kept as recorded.
    KEPT_ON_RESUME: ClassVar[tuple[str, ...]] = ("w_storage", "block_nnz")
    _CHECKS: ClassVar[dict] = {
        "max_iter": _at_least(0),
        "tol": _at_least(0),
        "n_tasks": _at_least(1, none=True),
        "checkpoint_every": _at_least(1, none=True, auto=AUTO_CHECKPOINTS),
        "checkpoint_seconds": _at_least(0, strict=True, none=True),
    }

    def __post_init__(self) -> None:
        for name, kind in (("max_iter", int), ("tol", float)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except (TypeError, ValueError):
                raise ParameterError(
                    f"{name} must be a number, got {getattr(self, name)!r}"
                ) from None
        for name, (ok, expected) in self._CHECKS.items():
            if not ok(getattr(self, name)):
                raise ParameterError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if not _power_of_two(self.split_every):
            raise ParameterError(
                f"split_every must be a power of two >= 2, got {self.split_every!r}"
            )
        registry.check("stopping", self.stopping)
        registry.check("w_storage", self.w_storage)

    @classmethod
    def may_change(cls) -> tuple[str, ...]:
        """The options a resume may be given."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.KEPT_ON_RESUME)

    def to_record(self) -> dict:
        """The ``options`` of ``run.json``."""
        return {name: getattr(self, name) for name in self.RECORDED}

    @classmethod
    def from_record(cls, record: dict, **overrides: Any) -> RunOptions:
        """The recorded options, with ``overrides`` (as given: ``cache_a=None`` turns the
        cache off)."""
        values = {name: record[name] for name in cls.RECORDED if name in record}
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: a run's settings and options, the matrix it runs on and the versions that
    computed it."""

    settings: FitSettings
    options: RunOptions
    matrix: dict
    versions: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        """What :meth:`bignmf.fit.rundir.RunDir.create` writes."""
        return {
            "settings": self.settings.to_record(),
            "options": self.options.to_record(),
            "matrix": self.matrix,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, record: dict) -> RunRecord:
        """Read back :meth:`to_json` (as :meth:`bignmf.fit.rundir.RunDir.record` returns it)."""
        return cls(
            FitSettings.from_record(record["settings"]),
            RunOptions.from_record(record["options"]),
            record["matrix"],
            record.get("versions", {}),
        )

    @property
    def store(self) -> tuple[str, str | None] | None:
        """``(path, key)`` of the store the run reads; None for an in-memory matrix."""
        if "path" not in self.matrix:
            return None
        return self.matrix["path"], self.matrix.get("key")


__all__ = ["FitSettings", "RunOptions", "RunRecord"]
