"""Loss-versus-time curves of scikit-learn's NMF solvers, for ``engine.py --parts sklearn``.

scikit-learn reports no per-iteration losses, so the curves of ``NMF(solver='cd')`` and
``NMF(solver='mu')`` come from one run each with their iteration functions wrapped: after every
H update the wrapper stops a clock, evaluates ½‖A − WH‖²_F of the current (W, H) (one sparse
product; the time it takes is subtracted from the elapsed time) and restarts the clock. The
solvers run exactly as unwrapped (same arrays, same order); only the loss evaluations are added.
``MiniBatchNMF`` has no full-matrix iterate between its mini-batch steps, so its curve comes from
separate runs with ``max_iter`` (epochs) = 1, 2, 4, 8, ... each timed whole.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["Curve", "frobenius_rel", "minibatch_curve", "sklearn_curve"]


@dataclass
class Curve:
    """Relative errors ‖A − WH‖_F/‖A‖_F against elapsed seconds, one point per iteration."""

    name: str
    seconds: list[float] = field(default_factory=list)
    rel: list[float] = field(default_factory=list)
    n_iter: int = 0
    final_rel: float = float("nan")  # the estimator's own reconstruction_err_ / ‖A‖_F
    wall: float = float("nan")  # fit_transform wall time, loss evaluations subtracted
    note: str = ""
    epochs: list[int] = field(default_factory=list)  # MiniBatchNMF: max_iter of each point

    def time_to(self, rel: float) -> float | None:
        """Seconds at the first point whose relative error is at most ``rel`` (None: never)."""
        for s, r in zip(self.seconds, self.rel, strict=True):
            if r <= rel:
                return s
        return None

    def iterations_to(self, rel: float) -> int | None:
        """Iterations (epochs for MiniBatchNMF) at the first point at most ``rel`` (None: never)."""
        for i, r in enumerate(self.rel):
            if r <= rel:
                return self.epochs[i] if self.epochs else i + 1
        return None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "rel": self.rel,
            "n_iter": self.n_iter,
            "final_rel": self.final_rel,
            "wall": self.wall,
            "note": self.note,
        }


def frobenius_rel(A: sp.csr_matrix, norm_a_sq: float, W: np.ndarray, Ht: np.ndarray) -> float:
    """‖A − W·Htᵀ‖_F / ‖A‖_F from ‖A‖² − 2⟨A·Ht, W⟩ + ⟨WᵀW, HtᵀHt⟩, in float64."""
    AHt = np.asarray(A @ Ht.astype(A.dtype, copy=False), dtype=np.float64)
    W64, Ht64 = W.astype(np.float64), Ht.astype(np.float64)
    sq = norm_a_sq - 2 * float(np.vdot(AHt, W64)) + float(np.vdot(W64.T @ W64, Ht64.T @ Ht64))
    return float(np.sqrt(max(sq, 0.0) / norm_a_sq))


class _Recorder:
    def __init__(self, A, norm_a_sq: float, curve: Curve):
        self.A, self.norm_a_sq, self.curve = A, norm_a_sq, curve
        self.start = 0.0
        self.excluded = 0.0

    def record(self, W: np.ndarray, Ht: np.ndarray) -> None:
        t = time.perf_counter()
        self.curve.seconds.append(t - self.start - self.excluded)
        self.curve.rel.append(frobenius_rel(self.A, self.norm_a_sq, W, Ht))
        self.excluded += time.perf_counter() - t


@contextlib.contextmanager
def _instrumented(solver: str, recorder: _Recorder):
    """Wrap scikit-learn's module-level iteration functions for the duration of one fit."""
    import sklearn.decomposition._nmf as skn

    if solver == "cd":
        original = skn._update_coordinate_descent
        calls = [0]

        def wrapped(X, W, Ht, *args):
            violation = original(X, W, Ht, *args)
            calls[0] += 1
            if calls[0] % 2 == 0:  # the H half-step is called as (X.T, Ht, W, ...)
                recorder.record(Ht, W)
            return violation

        skn._update_coordinate_descent = wrapped
        try:
            yield
        finally:
            skn._update_coordinate_descent = original
    else:
        original = skn._multiplicative_update_h

        def wrapped(X, W, H, *args, **kwargs):
            H_new = original(X, W, H, *args, **kwargs)
            recorder.record(W, H_new.T)
            return H_new

        skn._multiplicative_update_h = wrapped
        try:
            yield
        finally:
            skn._multiplicative_update_h = original


def sklearn_curve(
    A: sp.csr_matrix,
    W0: np.ndarray,
    H0: np.ndarray,
    solver: str,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
) -> Curve:
    """Fit ``NMF(solver=solver, init='custom')`` from (W0, H0), recording every iteration."""
    from sklearn.decomposition import NMF

    norm_a_sq = float(np.dot(A.data.astype(np.float64), A.data))
    curve = Curve(f"sklearn {solver}")
    recorder = _Recorder(A, norm_a_sq, curve)
    model = NMF(W0.shape[1], solver=solver, init="custom", max_iter=max_iter, tol=tol)
    with _instrumented(solver, recorder), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter is reached
        recorder.start = time.perf_counter()
        model.fit_transform(A, W=W0.copy(), H=H0.copy())
        curve.wall = time.perf_counter() - recorder.start - recorder.excluded
    curve.n_iter = int(model.n_iter_)
    curve.final_rel = float(model.reconstruction_err_ / np.sqrt(norm_a_sq))
    return curve


def minibatch_curve(
    A: sp.csr_matrix,
    W0: np.ndarray,
    H0: np.ndarray,
    *,
    max_epochs: int = 256,
    budget_s: float = float("inf"),
) -> Curve:
    """``MiniBatchNMF`` run afresh with max_iter = 1, 2, 4, ... epochs (defaults otherwise).

    Stops doubling when a run stops early on its own criterion, at ``max_epochs``, or once the
    runs so far took ``budget_s``.
    """
    from sklearn.decomposition import MiniBatchNMF

    norm = float(np.sqrt(np.dot(A.data.astype(np.float64), A.data)))
    curve = Curve("sklearn MiniBatchNMF", note="separate runs, max_iter = 1, 2, 4, ... epochs")
    spent, epochs = 0.0, 1
    while epochs <= max_epochs:
        model = MiniBatchNMF(W0.shape[1], init="custom", max_iter=epochs, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            model.fit_transform(A, W=W0.copy(), H=H0.copy())
            seconds = time.perf_counter() - start
        spent += seconds
        curve.seconds.append(seconds)
        curve.rel.append(float(model.reconstruction_err_ / norm))
        curve.epochs.append(int(model.n_iter_))
        curve.n_iter = int(model.n_iter_)
        curve.final_rel, curve.wall = curve.rel[-1], seconds
        if model.n_iter_ < epochs or spent >= budget_s:
            break
        epochs *= 2
    return curve
