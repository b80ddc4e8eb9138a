"""Per-solver contract called by the graph layer, and the solver registry.

One bignmf iteration, for any solver::

    Ht, HHt = prepare_h(H)                     # broadcast to every block
    acc = solver.new_accumulator(n, k, A.dtype, params.beta_loss)
    for each row block i (any order, on any worker):
        acc_i = solver.new_accumulator(...)
        W[i] = solver.update_w_block(A[i], W[i], H, Ht, HHt, params, acc_i, work)
        acc = solver.combine(acc, acc_i)       # or any tree of combines
    H_new, loss = solver.update_h(H, acc, params, norm_a_sq)
    objective = loss + penalty(acc, H, params)  # with the H the blocks were updated with

``update_w_block`` updates the block's rows of W locally (they only need H through ``Ht`` and
``HHt``), then adds to the block's accumulator everything ``update_h`` and the loss need,
computed with the **new** ``W_i`` and the current H; the ``loss`` returned by ``update_h``
is therefore that of ``(W_new, H_old)``, the iterate after the W half-step. The order (all
W blocks, then H) is the order of scikit-learn's MU loop, so ``"mu"`` reproduces
``NMF(solver="mu")`` iterate for iterate and ``"hals"`` with ``n_inner=1`` reproduces
``NMF(solver="cd")`` (without shuffling).

Accumulators are ``dict[str, numpy.ndarray]`` of partial sums (0-d arrays for scalars), so
reducing them is an elementwise sum and their order only affects rounding:

=========  ===============  ==========================  ====================================
key        shape            dtype                       content (summed over blocks)
=========  ===============  ==========================  ====================================
``AtW``    (n, k)           A's dtype                   β = 2: ``AᵀW``; MU β ≠ 2: the H-side
                                                        numerator ``(A∘(WH)^(β−2))ᵀ·W``
``WtW``    (k, k)           float64                     β = 2: ``WᵀW``
``cross``  ()               float64                     β = 2: ``⟨W, A·Hᵀ⟩``
``W_sum``  (k,)             float64                     MU β = 1: column sums of W
``den``    (n, k)           A's dtype                   MU β ∉ {1, 2}: ``((WH)^(β−1))ᵀ·W``
``loss``   ()               float64                     MU β ≠ 2: sum of block divergence parts
``W_l1``   ()               float64                     ``ΣW`` (the L1 penalty's sum)
``W_sq``   ()               float64                     β ≠ 2: ``‖W‖²_F`` (β = 2 has it as
                                                        ``trace(WᵀW)``)
``A_sq``   ()               float64                     ``Σ a²`` of the blocks' stored values:
                                                        the driver checks a store's recorded
                                                        norm against it
=========  ===============  ==========================  ====================================

The penalty sums are of the new W, like the loss: :func:`penalty` turns them (and the H the
blocks were updated with) into the objective's penalty terms, so the driver never needs W.

The kernels never import dask or zarr; ``work`` is an optional per-thread ``dict`` of
scratch buffers reused across blocks (never share one between threads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from bignmf.kernels._util import (
    DEFAULT_BATCH_ELEMENTS,
    Work,
    as_csr,
    factor_dtype,
    scratch,
)
from bignmf.kernels.bpp import nnls_bpp
from bignmf.kernels.hals import hals_update
from bignmf.kernels.loss import dense_part, frobenius_expansion, frobenius_loss, nonzero_part
from bignmf.kernels.mu import (
    accumulate_h_denominator_dense,
    beta_ratio,
    csr_with_data,
    mu_step,
    mu_update_h,
    mu_update_w,
)
from bignmf.kernels.observed import (
    GATHER_ENTRIES,
    a_ht_packed,
    cd_rows,
    observed_loss,
    packed,
    packed_outer,
    packed_size,
    targets_and_deltas,
    targets_and_weights,
)
from bignmf.kernels.products import a_ht, accumulate_at_w, gram, inner, sq_norm, wh_at_nonzeros

__all__ = [
    "MASK",
    "MASKED_SOLVERS",
    "MISSING",
    "OBSERVED_SOLVERS",
    "SOLVERS",
    "BPPSolver",
    "HALSSolver",
    "MUSolver",
    "MaskedHALSSolver",
    "MaskedMUSolver",
    "ObservedHALSSolver",
    "ObservedMUSolver",
    "Regularization",
    "Solver",
    "SolverParams",
    "beta_loss_to_float",
    "combine",
    "get_solver",
    "penalty",
    "penalty_sums",
    "prepare_h",
    "regularization",
]

Accumulator = dict[str, np.ndarray]

BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}

#: Which entries of A are unknown rather than zero (``missing=``; None: none of them).
MISSING = {
    "zeros": "every entry that is not stored is unknown: the fit sees only the stored ones",
}
#: ``missing`` of a fit given ``mask=``: the mask's entries are unknown, every other is seen.
MASK = "mask"


def beta_loss_to_float(beta_loss: float | str) -> float:
    """β as a float.

    Parameters
    ----------
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}
        Names map to 2, 1 and 0, as in scikit-learn; numbers must be finite.

    Returns
    -------
    float
    """
    if isinstance(beta_loss, str):
        try:
            return BETA_NAMES[beta_loss]
        except KeyError:
            raise ValueError(
                f"unknown beta_loss {beta_loss!r}; valid names: {sorted(BETA_NAMES)} "
                "or a real number"
            ) from None
    value = float(beta_loss)
    if not math.isfinite(value):
        raise ValueError(f"beta_loss must be finite, got {beta_loss!r}")
    return value


class Regularization(NamedTuple):
    """Scaled penalties, as scikit-learn's ``NMF._compute_regularization`` returns them."""

    l1_W: float
    l2_W: float
    l1_H: float
    l2_H: float


def regularization(
    alpha_W: float,
    alpha_H: float | str,
    l1_ratio: float,
    n_samples: int,
    n_features: int,
) -> Regularization:
    """Scale ``alpha_W``/``alpha_H`` into L1/L2 penalties exactly as scikit-learn does.

    ``l1_W = n_features·alpha_W·l1_ratio``, ``l2_W = n_features·alpha_W·(1 − l1_ratio)``,
    ``l1_H = n_samples·alpha_H·l1_ratio``, ``l2_H = n_samples·alpha_H·(1 − l1_ratio)``, with
    ``alpha_H="same"`` meaning ``alpha_W``. The objective is then
    ``D(A, WH) + l1_W·ΣW + ½·l2_W·‖W‖² + l1_H·ΣH + ½·l2_H·‖H‖²``.

    Parameters
    ----------
    alpha_W : float
        Non-negative.
    alpha_H : float or "same"
    l1_ratio : float
        In [0, 1].
    n_samples, n_features : int
        Rows (m) and columns (n) of A.

    Returns
    -------
    Regularization
        Named tuple ``(l1_W, l2_W, l1_H, l2_H)`` (note: scikit-learn's helper returns them
        in the order ``l1_W, l1_H, l2_W, l2_H``; use the field names).
    """
    if isinstance(alpha_H, str):
        if alpha_H != "same":
            raise ValueError(f"alpha_H must be a number or 'same', got {alpha_H!r}")
        alpha_H = alpha_W
    if alpha_W < 0 or alpha_H < 0:
        raise ValueError(f"alpha_W and alpha_H must be >= 0, got {alpha_W!r}, {alpha_H!r}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be in [0, 1], got {l1_ratio!r}")
    return Regularization(
        l1_W=n_features * alpha_W * l1_ratio,
        l2_W=n_features * alpha_W * (1.0 - l1_ratio),
        l1_H=n_samples * alpha_H * l1_ratio,
        l2_H=n_samples * alpha_H * (1.0 - l1_ratio),
    )


@dataclass(frozen=True)
class SolverParams:
    """Parameters of the per-block kernels.

    Parameters
    ----------
    beta_loss : float or str, default 2
        β of the divergence (names as scikit-learn); stored as a float. HALS and BPP
        require 2.
    l1_W, l2_W, l1_H, l2_H : float, default 0
        Penalties already scaled (see :func:`regularization`).
    n_inner : int, default 1
        HALS sweeps per product (accelerated HALS); ignored by MU and BPP.
    batch_elements : int, default 2**21
        Element budget of the batch temporaries (gathers for ``W·H`` at nonzeros, dense row
        batches of ``W·H`` for MU with β ∉ {1, 2}); bounds kernel memory, not results.
    missing : {None, 'zeros', 'mask'}, default None
        Which entries are unknown (see :data:`MISSING`): None, none (the plain fit);
        ``'zeros'``, every entry that is not stored (:mod:`bignmf.kernels.observed`);
        ``'mask'`` (:data:`MASK`), a fit given ``mask=``: the mask's entries, every other
        seen. Entry weights ride on the blocks, not here (:mod:`bignmf.store.weighted`).
    """

    beta_loss: float = 2.0
    l1_W: float = 0.0
    l2_W: float = 0.0
    l1_H: float = 0.0
    l2_H: float = 0.0
    n_inner: int = 1
    batch_elements: int = DEFAULT_BATCH_ELEMENTS
    missing: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta_loss", beta_loss_to_float(self.beta_loss))
        if self.missing is not None and self.missing not in (*MISSING, MASK):
            choices = ", ".join(repr(name) for name in MISSING)
            raise ValueError(f"missing must be None or one of {choices}, got {self.missing!r}")
        for name in ("l1_W", "l2_W", "l1_H", "l2_H"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        if int(self.n_inner) != self.n_inner or self.n_inner < 1:
            raise ValueError(f"n_inner must be an integer >= 1, got {self.n_inner!r}")
        object.__setattr__(self, "n_inner", int(self.n_inner))
        if int(self.batch_elements) < 1:
            raise ValueError(f"batch_elements must be >= 1, got {self.batch_elements!r}")

    @classmethod
    def from_alpha(
        cls,
        *,
        n_samples: int,
        n_features: int,
        beta_loss: float | str = 2.0,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        n_inner: int = 1,
        batch_elements: int = DEFAULT_BATCH_ELEMENTS,
        missing: str | None = None,
    ) -> SolverParams:
        """Build params from scikit-learn-style ``alpha_W``, ``alpha_H``, ``l1_ratio``."""
        reg = regularization(alpha_W, alpha_H, l1_ratio, n_samples, n_features)
        return cls(
            beta_loss=beta_loss,
            n_inner=n_inner,
            batch_elements=batch_elements,
            missing=missing,
            **reg._asdict(),
        )


def prepare_h(H: np.ndarray, dtype: np.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What every block needs from H: ``(Ht, HHt)``.

    Parameters
    ----------
    H : ndarray, shape (k, n)
    dtype : numpy dtype, optional
        Dtype of ``Ht`` (default H's); use A's dtype.

    Returns
    -------
    Ht : ndarray, shape (n, k)
        ``Hᵀ``, C-contiguous.
    HHt : ndarray, shape (k, k)
        ``H·Hᵀ`` in float64.

    Notes
    -----
    Memory O(n·k); time O(n·k²).
    """
    Ht = np.ascontiguousarray(H.T, dtype=dtype)
    return Ht, gram(Ht)


def combine(acc_a: Accumulator, acc_b: Accumulator) -> Accumulator:
    """Elementwise sum of two accumulators, written into and returning ``acc_a``.

    Parameters
    ----------
    acc_a, acc_b : dict of str to ndarray
        Accumulators with the same keys and shapes; ``acc_b`` is not modified.

    Returns
    -------
    dict
        ``acc_a``.

    Notes
    -----
    Both must have the same keys and shapes (from the same ``new_accumulator`` call
    signature). No allocation.
    """
    if acc_a.keys() != acc_b.keys():
        raise ValueError(f"accumulator keys differ: {sorted(acc_a)} vs {sorted(acc_b)}")
    for key, value in acc_b.items():
        acc_a[key] += value
    return acc_a


def penalty_sums(W_i: np.ndarray, *, squares: bool) -> Accumulator:
    """A block's contribution to the penalty sums of an accumulator, in float64.

    Parameters
    ----------
    W_i : ndarray, shape (m_i, k)
        Rows of W (any float dtype).
    squares : bool
        Also ``‖W_i‖²_F`` (needed where the accumulator has no ``WtW`` to take it from).

    Returns
    -------
    dict
        ``{"W_l1": ΣW_i}`` and, with ``squares``, ``"W_sq"``; 0-d float64 arrays.

    Notes
    -----
    O(m_i·k) time; a float64 copy of ``W_i`` only for ``squares`` with float32 factors.
    """
    sums = {"W_l1": np.asarray(W_i.sum(dtype=np.float64))}
    if squares:
        W64 = np.asarray(W_i, dtype=np.float64).ravel()
        sums["W_sq"] = np.asarray(np.dot(W64, W64))
    return sums


def penalty(acc: Accumulator, H: np.ndarray, params: SolverParams) -> float:
    """The penalty terms of the objective, from a reduced accumulator and H.

    ``l1_W·ΣW + ½·l2_W·‖W‖²_F + l1_H·ΣH + ½·l2_H·‖H‖²_F`` with scikit-learn's scaling (see
    :func:`regularization`); the objective minimised is the loss plus this.

    Parameters
    ----------
    acc : dict
        Accumulator reduced over all blocks (the W it was made with is the W penalised).
    H : ndarray, shape (k, n)
        The H penalised (for the iterate ``(W_new, H_old)`` of ``update_h``'s loss: the H the
        blocks were updated with).
    params : SolverParams

    Returns
    -------
    float
        Exactly 0.0 when every penalty is 0 (then the objective is the loss, bit for bit); the
        sums a zero penalty would multiply are not read.

    Notes
    -----
    O(k·n) for the H terms, O(k) otherwise; ``‖W‖²_F`` is ``trace(WᵀW)`` when the accumulator
    has ``WtW``, else its ``W_sq``.
    """
    total = 0.0
    if params.l1_W:
        total += params.l1_W * float(acc["W_l1"])
    if params.l2_W:
        w_sq = float(np.trace(acc["WtW"])) if "WtW" in acc else float(acc["W_sq"])
        total += 0.5 * params.l2_W * w_sq
    if params.l1_H:
        total += params.l1_H * float(H.sum(dtype=np.float64))
    if params.l2_H:
        H64 = np.asarray(H, dtype=np.float64).ravel()
        total += 0.5 * params.l2_H * float(np.dot(H64, H64))
    return total


class Solver:
    """Base of the solvers; see the module docstring for the contract."""

    name: ClassVar[str] = ""

    def check_params(self, params: SolverParams) -> None:
        """Raise ValueError if the solver cannot run with ``params``."""
        if params.beta_loss != 2.0:
            raise ValueError(
                f"solver {self.name!r} supports only beta_loss=2 (Frobenius), got "
                f"{params.beta_loss!r}; use solver 'mu' for other divergences"
            )

    def new_accumulator(
        self, n: int, k: int, dtype: np.dtype, beta_loss: float | str = 2.0
    ) -> Accumulator:
        """Zero-filled partial sums for ``n`` columns and rank ``k`` (see module table).

        Notes
        -----
        Memory: ``n x k`` in ``dtype`` (two such arrays for MU with β ∉ {1, 2}) plus O(k²).
        """
        beta = beta_loss_to_float(beta_loss)
        self.check_params(SolverParams(beta_loss=beta))
        dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
        acc: Accumulator = {"AtW": np.zeros((n, k), dtype=dtype)}
        if beta == 2:
            acc["WtW"] = np.zeros((k, k), dtype=np.float64)
            acc["cross"] = np.zeros((), dtype=np.float64)
        elif beta == 1:
            acc["W_sum"] = np.zeros(k, dtype=np.float64)
            acc["loss"] = np.zeros((), dtype=np.float64)
        else:
            acc["den"] = np.zeros((n, k), dtype=dtype)
            acc["loss"] = np.zeros((), dtype=np.float64)
        acc["W_l1"] = np.zeros((), dtype=np.float64)
        acc["A_sq"] = np.zeros((), dtype=np.float64)
        if beta != 2:
            acc["W_sq"] = np.zeros((), dtype=np.float64)
        return acc

    def combine(self, acc_a: Accumulator, acc_b: Accumulator) -> Accumulator:
        """Elementwise sum into ``acc_a`` (see :func:`combine`)."""
        return combine(acc_a, acc_b)

    def update_w_block(
        self,
        A_i,
        W_i: np.ndarray,
        H: np.ndarray | None,
        Ht: np.ndarray,
        HHt: np.ndarray | None,
        params: SolverParams,
        acc: Accumulator,
        work: Work | None = None,
    ) -> np.ndarray:
        """Update a row block of W and accumulate the block's partial sums into ``acc``.

        Parameters
        ----------
        A_i : scipy.sparse CSR matrix or array, shape (m_i, n)
            Row block of A (float32 or float64; factors are computed in its dtype).
        W_i : ndarray, shape (m_i, k)
            Current rows of W; not modified.
        H : ndarray, shape (k, n) or None
            Current H; only read by MU with β ≠ 2 (row sums, for scikit-learn's rounding).
            ``None`` means ``Ht.T``.
        Ht : ndarray, shape (n, k)
            ``Hᵀ``, C-contiguous, in A's dtype (see :func:`prepare_h`).
        HHt : ndarray, shape (k, k) or None
            ``H·Hᵀ`` in float64; required when β = 2.
        params : SolverParams
        acc : dict
            Accumulator from :meth:`new_accumulator`, updated in place.
        work : dict, optional
            Per-thread scratch buffers reused across calls.

        Returns
        -------
        ndarray, shape (m_i, k)
            New rows of W (a new array, A's dtype, C-contiguous, non-negative).

        Notes
        -----
        Time O(nnz(A_i)·k + m_i·k²·sweeps) for β ∈ {1, 2}; memory O(m_i·k) plus, for MU with
        β ≠ 2, a length-nnz array and the batch temporaries (``params.batch_elements``).
        """
        raise NotImplementedError

    def w_from_aht(
        self, W_i: np.ndarray, aht: np.ndarray, HHt: np.ndarray, params: SolverParams
    ) -> np.ndarray:
        """New rows of W from ``A_i·Hᵀ`` (Frobenius loss: the block's data enter only there).

        Parameters
        ----------
        W_i : ndarray, shape (m_i, k)
            Current rows of W, in A's dtype; not modified.
        aht : ndarray, shape (m_i, k)
            ``A_i·Hᵀ``, in A's dtype (the two-pass iteration sums it over column ranges).
        HHt : ndarray, shape (k, k)
            ``H·Hᵀ`` in float64.
        params : SolverParams

        Returns
        -------
        ndarray, shape (m_i, k)
            New rows of W (a new array, C-contiguous, non-negative).

        Raises
        ------
        ValueError
            For β ≠ 2, where the update needs ``W_i·H`` at A's nonzeros, i.e. all of H.
        """
        self.check_params(params)
        if params.beta_loss != 2.0:
            raise ValueError(
                f"solver {self.name!r} with beta_loss={params.beta_loss!r} needs all of H per "
                "row block; only the Frobenius loss updates W from A·Hᵀ alone"
            )
        W_i = np.asarray(W_i, dtype=aht.dtype, order="C")
        return self._w_from_aht(W_i, aht, self._check_hht(HHt, W_i.shape[1]), params)

    def _w_from_aht(self, W_i, aht, HHt, params):
        raise NotImplementedError

    def update_h(
        self,
        H: np.ndarray,
        acc: Accumulator,
        params: SolverParams,
        norm_a_sq: float | None = None,
    ) -> tuple[np.ndarray, float]:
        """Update H from the reduced accumulator; also return the loss of ``(W_new, H)``.

        Parameters
        ----------
        H : ndarray, shape (k, n)
            Current H (the one the W blocks were updated with).
        acc : dict
            Accumulator reduced over all blocks; not modified.
        params : SolverParams
        norm_a_sq : float, optional
            ``‖A‖²_F``; required when β = 2.

        Returns
        -------
        H_new : ndarray, shape (k, n)
            C-contiguous, dtype of ``acc["AtW"]``, non-negative.
        loss : float
            scikit-learn's ``_beta_divergence(A, W_new, H, β)`` (for β = 2 that is
            ``½‖A − W_new·H‖²_F``), without penalty terms (:func:`penalty` gives them).

        Notes
        -----
        Memory O(n·k) (a few ``n x k`` temporaries); time O(n·k²·sweeps) (BPP: plus one small
        solve per distinct passive set).
        """
        raise NotImplementedError

    def loss_after_h(
        self, acc: Accumulator, H: np.ndarray, norm_a_sq: float | None
    ) -> float | None:
        """The loss of ``(W_new, H)``, H the one :meth:`update_h` returned, from the same sums.

        Exact for the Frobenius loss (``½(‖A‖² − 2⟨AᵀW, Hᵀ⟩ + ⟨WᵀW, HHᵀ⟩)``); None where the
        sums cannot give it (other β, masked MU): the caller then keeps the last iteration's.
        """
        if "WtW" not in acc or norm_a_sq is None:
            return None
        Ht = np.ascontiguousarray(H.T, dtype=np.float64)
        cross = float(np.vdot(acc["AtW"].astype(np.float64), Ht))
        return frobenius_loss(norm_a_sq, cross, acc["WtW"], gram(Ht))

    # helpers shared by the Frobenius solvers ---------------------------------------------

    def _prepare_block(self, A_i, W_i, Ht, params):
        self.check_params(params)
        A_i = as_csr(A_i)
        dtype = factor_dtype(A_i)
        m, n = A_i.shape
        W_i = np.asarray(W_i, dtype=dtype, order="C")
        Ht = np.asarray(Ht, dtype=dtype, order="C")
        if W_i.ndim != 2 or W_i.shape[0] != m:
            raise ValueError(f"W_i must have shape ({m}, k), got {W_i.shape}")
        k = W_i.shape[1]
        if Ht.shape != (n, k):
            raise ValueError(f"Ht must have shape ({n}, {k}), got {Ht.shape}")
        return A_i, W_i, Ht, dtype

    @staticmethod
    def _check_hht(HHt, k):
        if HHt is None:
            raise ValueError("HHt (= H·Hᵀ, see prepare_h) is required for beta_loss=2")
        HHt = np.asarray(HHt, dtype=np.float64)
        if HHt.shape != (k, k):
            raise ValueError(f"HHt must have shape ({k}, {k}), got {HHt.shape}")
        return HHt

    def _update_w_frobenius(self, A_i, W_i, Ht, HHt, params, acc, work):
        """``update_w_block`` for β = 2: W's new rows from ``A_i·Hᵀ``, then the partial sums."""
        A_i, W_i, Ht, dtype = self._prepare_block(A_i, W_i, Ht, params)
        m, k = W_i.shape
        HHt = self._check_hht(HHt, k)
        aht = a_ht(A_i, Ht, out=scratch(work, "aht", (m, k), dtype))
        W_new = self._w_from_aht(W_i, aht, HHt, params)
        self._accumulate_frobenius(A_i, W_new, aht, acc)
        return W_new

    @staticmethod
    def _accumulate_frobenius(A_i, W_new, aht, acc):
        acc["A_sq"] += sq_norm(A_i)
        accumulate_at_w(A_i, W_new, acc["AtW"])
        gram(W_new, out=acc["WtW"])
        acc["cross"] += inner(W_new, aht)
        acc["W_l1"] += penalty_sums(W_new, squares=False)["W_l1"]

    @staticmethod
    def _frobenius_loss(acc, Ht, norm_a_sq):
        if norm_a_sq is None:
            raise ValueError("norm_a_sq (= ‖A‖²_F) is required for beta_loss=2")
        return frobenius_loss(norm_a_sq, float(acc["cross"]), acc["WtW"], gram(Ht))

    @staticmethod
    def _ht_of(H, acc):
        dtype = acc["AtW"].dtype
        n, k = acc["AtW"].shape
        if H.shape != (k, n):
            raise ValueError(f"H must have shape ({k}, {n}), got {H.shape}")
        return np.ascontiguousarray(H.T, dtype=dtype)


class HALSSolver(Solver):
    """Accelerated HALS / coordinate descent for the Frobenius loss (``n_inner`` sweeps)."""

    name: ClassVar[str] = "hals"

    def update_w_block(self, A_i, W_i, H, Ht, HHt, params, acc, work=None):
        return self._update_w_frobenius(A_i, W_i, Ht, HHt, params, acc, work)

    def _w_from_aht(self, W_i, aht, HHt, params):
        W_new = W_i.copy()
        hals_update(W_new, aht, HHt, l1=params.l1_W, l2=params.l2_W, n_sweeps=params.n_inner)
        return W_new

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht = self._ht_of(H, acc)
        loss = self._frobenius_loss(acc, Ht, norm_a_sq)
        Ht_new = Ht.copy()
        hals_update(
            Ht_new,
            acc["AtW"],
            acc["WtW"],
            l1=params.l1_H,
            l2=params.l2_H,
            n_sweeps=params.n_inner,
        )
        return np.ascontiguousarray(Ht_new.T), loss


class BPPSolver(Solver):
    """Alternating nonnegative least squares by block principal pivoting (Frobenius loss).

    Each half-step solves its NNLS problems exactly (warm-started from the current factor's
    passive set), so the sequence of losses is non-increasing.
    """

    name: ClassVar[str] = "bpp"

    def update_w_block(self, A_i, W_i, H, Ht, HHt, params, acc, work=None):
        return self._update_w_frobenius(A_i, W_i, Ht, HHt, params, acc, work)

    def _w_from_aht(self, W_i, aht, HHt, params):
        X = nnls_bpp(HHt, aht.T, l1=params.l1_W, l2=params.l2_W, init=W_i.T)
        return np.ascontiguousarray(X.T, dtype=aht.dtype)

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht = self._ht_of(H, acc)
        loss = self._frobenius_loss(acc, Ht, norm_a_sq)
        X = nnls_bpp(acc["WtW"], acc["AtW"].T, l1=params.l1_H, l2=params.l2_H, init=H)
        return np.ascontiguousarray(X, dtype=acc["AtW"].dtype), loss


class MUSolver(Solver):
    """Multiplicative updates for any β (scikit-learn's ``solver="mu"``)."""

    name: ClassVar[str] = "mu"

    def check_params(self, params: SolverParams) -> None:
        return None

    def update_w_block(self, A_i, W_i, H, Ht, HHt, params, acc, work=None):
        if params.beta_loss == 2:
            return self._update_w_frobenius(A_i, W_i, Ht, HHt, params, acc, work)
        A_i, W_i, Ht, dtype = self._prepare_block(A_i, W_i, Ht, params)
        k = W_i.shape[1]
        beta = params.beta_loss

        # row sums of H as scikit-learn computes them (H.sum(axis=1)) when H is given
        H_sum = H.sum(axis=1) if H is not None else Ht.sum(axis=0)
        nnz = A_i.indptr[-1]
        batch_size = max(1, params.batch_elements // max(k, 1))
        W_new = mu_update_w(
            A_i,
            W_i,
            Ht,
            beta=beta,
            H_sum=H_sum,
            l1=params.l1_W,
            l2=params.l2_W,
            ratio_out=scratch(work, "wh", (nnz,), dtype),
            batch_size=batch_size,
            batch_elements=params.batch_elements,
        )
        # H-side numerator/denominator and loss pieces with the new W_i and the current H
        wh = wh_at_nonzeros(
            A_i, W_new, Ht, out=scratch(work, "wh", (nnz,), dtype), batch_size=batch_size
        )
        acc["A_sq"] += sq_norm(A_i)
        acc["loss"] += nonzero_part(A_i.data, wh, beta) + dense_part(
            W_new, Ht, beta, H_sum=H_sum, batch_elements=params.batch_elements
        )
        beta_ratio(A_i.data, wh, beta)
        accumulate_at_w(csr_with_data(A_i, wh), W_new, acc["AtW"])
        for key, value in penalty_sums(W_new, squares=True).items():
            acc[key] += value
        if beta == 1:
            acc["W_sum"] += W_new.sum(axis=0, dtype=np.float64)
        else:
            accumulate_h_denominator_dense(
                W_new, Ht, beta, acc["den"], batch_elements=params.batch_elements
            )
        return W_new

    def _w_from_aht(self, W_i, aht, HHt, params):
        # with β = 2 and A·Hᵀ given, the MU step reads neither A_i nor Hᵀ
        return mu_update_w(
            None, W_i, None, beta=2.0, HHt=HHt, l1=params.l1_W, l2=params.l2_W, aht=aht
        )

    def update_h(self, H, acc, params, norm_a_sq=None):
        Ht = self._ht_of(H, acc)
        beta = params.beta_loss
        if beta == 2:
            loss = self._frobenius_loss(acc, Ht, norm_a_sq)
            denominator = Ht @ acc["WtW"].astype(Ht.dtype)
        elif beta == 1:
            loss = float(acc["loss"])
            W_sum = acc["W_sum"].copy()
            W_sum[W_sum == 0] = 1.0
            denominator = W_sum[np.newaxis, :]
        else:
            loss = float(acc["loss"])
            denominator = acc["den"].copy()
        Ht_new = mu_update_h(Ht, acc["AtW"], denominator, beta=beta, l1=params.l1_H, l2=params.l2_H)
        return np.ascontiguousarray(Ht_new.T), loss


class _ObservedSolver(Solver):
    """The Frobenius loss on the stored entries only (``missing="zeros"``), weighted when the
    blocks carry ``weights``, see :mod:`bignmf.kernels.observed`: the W half-step from each
    row's own gram or weights, then the block's share of H's per-column sums, with the new
    W_i and the current H."""

    def check_params(self, params: SolverParams) -> None:
        if params.beta_loss != 2.0:
            raise ValueError(
                f"solver {self.name!r} with missing entries supports only beta_loss=2 "
                f"(Frobenius), got {params.beta_loss!r}"
            )

    def _new_w(self, A_i, C, W_i, Ht, params, aht, work):
        raise NotImplementedError

    def _accumulate_h(self, C, W_new, wh, acc):
        raise NotImplementedError

    def update_w_block(self, A_i, W_i, H, Ht, HHt, params, acc, work=None):
        weights = getattr(A_i, "weights", None)
        Y, C = targets_and_weights(A_i)
        A_i, W_i, Ht, dtype = self._prepare_block(A_i, W_i, Ht, params)
        m, k = W_i.shape
        nnz = A_i.indptr[-1]
        aht = a_ht(Y, Ht, out=scratch(work, "aht", (m, k), dtype))
        W_new = self._new_w(A_i, C, W_i, Ht, params, aht, work)
        wh = wh_at_nonzeros(
            A_i, W_new, Ht, out=scratch(work, "wh", (nnz,), dtype), batch_size=GATHER_ENTRIES
        )
        acc["loss"] += observed_loss(A_i.data, wh, weights)
        acc["A_sq"] += sq_norm(A_i)
        accumulate_at_w(Y, W_new, acc["AtW"])
        self._accumulate_h(C, W_new, wh, acc)
        for key, value in penalty_sums(W_new, squares=True).items():
            acc[key] += value
        return W_new

    def w_from_aht(self, W_i, aht, HHt, params):
        raise ValueError(
            "missing entries need each row's own gram: H cannot be cut into column ranges"
        )


def _weighted(C, values: np.ndarray) -> np.ndarray:
    """``values`` times C's weights (unchanged for a pattern of ones, whose bits it keeps)."""
    if np.all(C.data == 1.0):
        return values
    return (C.data * values).astype(values.dtype)


class ObservedHALSSolver(_ObservedSolver):
    """Coordinate descent on each row's (and column's) own gram: ``n_inner`` exact sweeps."""

    name: ClassVar[str] = "hals"

    def new_accumulator(self, n, k, dtype, beta_loss=2.0):
        self.check_params(SolverParams(beta_loss=beta_loss))
        acc = _observed_accumulator(n, k, dtype)
        acc["grams"] = np.zeros((n, packed_size(k)), dtype=np.float64)
        return acc

    def _new_w(self, A_i, C, W_i, Ht, params, aht, work):
        grams = a_ht_packed(C, Ht)
        return _descend(W_i.copy(), aht, grams, params.l1_W, params.l2_W, params)

    def _accumulate_h(self, C, W_new, wh, acc):
        accumulate_at_w(C, packed_outer(W_new), acc["grams"])

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht_new = self._ht_of(H, acc).copy()
        _descend(Ht_new, acc["AtW"], acc["grams"], params.l1_H, params.l2_H, params)
        return np.ascontiguousarray(Ht_new.T), float(acc["loss"])

    def loss_after_h(self, acc, H, norm_a_sq):
        # ½Σ_observed c(t − w·h)² = ½(Σct² − 2Σ_j h_j·((C∘T)ᵀW)_j + Σ_j h_jᵀ·G_j·h_j), G_j
        # column j's gram: the sums of the W pass give it for the new H too (norm_a_sq: Σct²)
        if norm_a_sq is None:
            return None
        Ht = np.ascontiguousarray(H.T, dtype=np.float64)
        cross = float(np.vdot(acc["AtW"].astype(np.float64), Ht))
        quadratic = float(np.vdot(acc["grams"], packed_outer(Ht) * _off_diagonal_twice(H.shape[0])))
        return 0.5 * max(norm_a_sq - 2.0 * cross + quadratic, 0.0)


def _descend(X, B, grams, l1: float, l2: float, params: SolverParams) -> np.ndarray:
    """``params.n_inner`` sweeps of coordinate descent of X's rows on their own grams."""
    return cd_rows(
        X, B, grams, l1=l1, l2=l2, n_sweeps=params.n_inner, batch_elements=params.batch_elements
    )


def _off_diagonal_twice(k: int) -> np.ndarray:
    """Weights turning a packed gram's dot with a packed outer product into ``hᵀGh``."""
    a, b = np.triu_indices(k)
    return np.where(a == b, 1.0, 2.0)


class ObservedMUSolver(_ObservedSolver):
    """Multiplicative updates with the mask: ``W ← W∘(C∘A)Hᵀ / (C∘(WH))Hᵀ``, H likewise (C:
    the stored entries' weights, 1 without)."""

    name: ClassVar[str] = "mu"

    def new_accumulator(self, n, k, dtype, beta_loss=2.0):
        self.check_params(SolverParams(beta_loss=beta_loss))
        acc = _observed_accumulator(n, k, dtype)
        acc["den"] = np.zeros_like(acc["AtW"])
        return acc

    def _new_w(self, A_i, C, W_i, Ht, params, aht, work):
        wh = wh_at_nonzeros(A_i, W_i, Ht, batch_size=GATHER_ENTRIES)
        denominator = a_ht(csr_with_data(A_i, _weighted(C, wh)), Ht)
        W_new = W_i.copy()
        mu_step(W_new, aht, denominator, l1=params.l1_W, l2=params.l2_W, keep_numerator=True)
        return W_new

    def _accumulate_h(self, C, W_new, wh, acc):
        accumulate_at_w(csr_with_data(C, _weighted(C, wh)), W_new, acc["den"])

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht = self._ht_of(H, acc)
        Ht_new = mu_update_h(
            Ht, acc["AtW"], acc["den"].copy(), beta=2.0, l1=params.l1_H, l2=params.l2_H
        )
        return np.ascontiguousarray(Ht_new.T), float(acc["loss"])


class _MaskedSolver(Solver):
    """The Frobenius loss on every entry, weighted 1 but on a sparse pattern: off a mask
    (``mask=``: the blocks are A off the mask carrying their mask rows,
    :class:`bignmf.store.masked.MaskedBlock`), or with confidence weights on A's stored
    entries (:class:`bignmf.store.weighted.WeightedBlock`). The plain sums over the weighted
    targets give the loss and grams of all entries with weight 1; the pattern's deltas
    ``d = c − 1`` (−1 under a mask) correct them, ``W_iᵀ·(D∘WH)``-style, on that pattern only
    (:func:`bignmf.kernels.observed.targets_and_deltas`)."""

    def new_accumulator(self, n, k, dtype, beta_loss=2.0):
        acc = super().new_accumulator(n, k, dtype, beta_loss)  # AtW, WtW, cross, W_l1
        acc["delta_sq"] = np.zeros((), dtype=np.float64)
        return acc

    def _new_w(self, Y, D, W_i, Ht, HHt, params, aht):
        raise NotImplementedError

    def _accumulate_deltas(self, D, W_new, wh, acc):
        raise NotImplementedError

    def update_w_block(self, A_i, W_i, H, Ht, HHt, params, acc, work=None):
        Y, D = targets_and_deltas(A_i)
        Y, W_i, Ht, dtype = self._prepare_block(Y, W_i, Ht, params)
        HHt = self._check_hht(HHt, W_i.shape[1])
        aht = a_ht(Y, Ht, out=scratch(work, "aht", W_i.shape, dtype))
        W_new = self._new_w(Y, D, W_i, Ht, HHt, params, aht)
        self._accumulate_frobenius(Y, W_new, aht, acc)
        wh = wh_at_nonzeros(D, W_new, Ht, batch_size=GATHER_ENTRIES)
        wh64 = wh.astype(np.float64)
        acc["delta_sq"] += np.dot(D.data * wh64, wh64)
        self._accumulate_deltas(D, W_new, wh, acc)
        return W_new

    def _masked_loss(self, acc, Ht, norm_a_sq):
        # ½Σ_all c(t − wh)² = ½Σ_all (ct² − 2ct·wh + wh²) + ½Σ_pattern d·wh², since t is 0
        # off A's pattern: the plain expansion of the weighted targets (norm_a_sq is Σct²)
        # corrected on the pattern; only the sum is a sum of squares, clipped at 0
        return _corrected(acc, acc["cross"], Ht, norm_a_sq, float(acc["delta_sq"]))

    def w_from_aht(self, W_i, aht, HHt, params):
        raise ValueError(
            "a mask or entry weights need each row's own gram: H cannot be cut into column ranges"
        )


class MaskedHALSSolver(_MaskedSolver):
    """Coordinate descent on each row's (and column's) gram: the plain one corrected by the
    pattern's deltas."""

    name: ClassVar[str] = "hals"

    def new_accumulator(self, n, k, dtype, beta_loss=2.0):
        acc = super().new_accumulator(n, k, dtype, beta_loss)
        acc["delta_grams"] = np.zeros((n, packed_size(k)), dtype=np.float64)
        return acc

    def _new_w(self, Y, D, W_i, Ht, HHt, params, aht):
        grams = packed(HHt)[np.newaxis, :] + a_ht_packed(D, Ht)
        return _descend(W_i.copy(), aht, grams, params.l1_W, params.l2_W, params)

    def _accumulate_deltas(self, D, W_new, wh, acc):
        accumulate_at_w(D, packed_outer(W_new), acc["delta_grams"])

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht = self._ht_of(H, acc)
        loss = self._masked_loss(acc, Ht, norm_a_sq)
        grams = packed(acc["WtW"])[np.newaxis, :] + acc["delta_grams"]
        Ht_new = _descend(Ht.copy(), acc["AtW"], grams, params.l1_H, params.l2_H, params)
        return np.ascontiguousarray(Ht_new.T), loss

    def loss_after_h(self, acc, H, norm_a_sq):
        if norm_a_sq is None:
            return None
        Ht = np.ascontiguousarray(H.T, dtype=np.float64)
        cross = np.vdot(acc["AtW"].astype(np.float64), Ht)
        weights = _off_diagonal_twice(H.shape[0])
        deltas = float(np.vdot(acc["delta_grams"], packed_outer(Ht) * weights))
        return _corrected(acc, cross, Ht, norm_a_sq, deltas)


class MaskedMUSolver(_MaskedSolver):
    """Multiplicative updates, ``W ← W∘(C∘T)Hᵀ / (C∘(WH))Hᵀ`` with ``C∘(WH) = WH + D∘(WH)``."""

    name: ClassVar[str] = "mu"

    def new_accumulator(self, n, k, dtype, beta_loss=2.0):
        acc = super().new_accumulator(n, k, dtype, beta_loss)
        acc["delta_den"] = np.zeros_like(acc["AtW"])
        return acc

    def _new_w(self, Y, D, W_i, Ht, HHt, params, aht):
        wh = wh_at_nonzeros(D, W_i, Ht, batch_size=GATHER_ENTRIES)
        denominator = W_i @ HHt.astype(W_i.dtype) + a_ht(_times_deltas(D, wh), Ht)
        np.maximum(denominator, 0, out=denominator)  # rounding may leave tiny negatives
        W_new = W_i.copy()
        mu_step(W_new, aht, denominator, l1=params.l1_W, l2=params.l2_W, keep_numerator=True)
        return W_new

    def _accumulate_deltas(self, D, W_new, wh, acc):
        accumulate_at_w(_times_deltas(D, wh), W_new, acc["delta_den"])

    def update_h(self, H, acc, params, norm_a_sq=None):
        self.check_params(params)
        Ht = self._ht_of(H, acc)
        loss = self._masked_loss(acc, Ht, norm_a_sq)
        denominator = Ht @ acc["WtW"].astype(Ht.dtype) + acc["delta_den"]
        np.maximum(denominator, 0, out=denominator)
        Ht_new = mu_update_h(Ht, acc["AtW"], denominator, beta=2.0, l1=params.l1_H, l2=params.l2_H)
        return np.ascontiguousarray(Ht_new.T), loss

    def loss_after_h(self, acc, H, norm_a_sq):
        return None  # the pattern's part of the new H's loss needs its columns' grams


def _corrected(acc, cross, Ht, norm_a_sq, correction: float) -> float:
    """½·max(‖T‖²_C − 2·cross + ⟨WᵀW, H·Hᵀ⟩ + correction, 0): the loss of all entries with
    weight 1 but on a pattern whose part is ``correction``."""
    if norm_a_sq is None:
        raise ValueError("norm_a_sq (= Σ c·t²) is required for beta_loss=2")
    whole = frobenius_expansion(norm_a_sq, float(cross), acc["WtW"], gram(Ht))
    return 0.5 * max(whole + correction, 0.0)


def _times_deltas(D, wh: np.ndarray):
    """``D∘(WH)`` on D's pattern, in ``wh``'s dtype."""
    return csr_with_data(D, (D.data * wh).astype(wh.dtype))


def _observed_accumulator(n: int, k: int, dtype) -> Accumulator:
    dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    return {
        "AtW": np.zeros((n, k), dtype=dtype),
        "loss": np.zeros((), dtype=np.float64),
        "W_l1": np.zeros((), dtype=np.float64),
        "W_sq": np.zeros((), dtype=np.float64),
        "A_sq": np.zeros((), dtype=np.float64),
    }


SOLVERS: dict[str, Solver] = {
    "hals": HALSSolver(),
    "mu": MUSolver(),
    "bpp": BPPSolver(),
}

#: The solvers that fit the stored entries only (``missing="zeros"``), by the same names.
OBSERVED_SOLVERS: dict[str, Solver] = {
    "hals": ObservedHALSSolver(),
    "mu": ObservedMUSolver(),
}

#: The solvers that fit every entry off a mask (``mask=``), by the same names.
MASKED_SOLVERS: dict[str, Solver] = {
    "hals": MaskedHALSSolver(),
    "mu": MaskedMUSolver(),
}


def get_solver(name: str, missing: str | None = None) -> Solver:
    """The registered solver called ``name``, for entries ``missing`` (see :data:`MISSING`).

    Parameters
    ----------
    name : str
        One of ``"hals"``, ``"mu"``, ``"bpp"``.
    missing : {None, 'zeros'}
        With ``'zeros'``, the solver of that name that fits the stored entries only.

    Returns
    -------
    Solver

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the valid names), or has no
        version for missing entries.
    """
    if missing is not None and name in SOLVERS:
        table = MASKED_SOLVERS if missing == MASK else OBSERVED_SOLVERS
        if name not in table:
            raise ValueError(
                f"solver {name!r} cannot fit around unknown entries or with entry weights; use "
                "one of "
                f"{', '.join(sorted(table))}"
            )
        return table[name]
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown solver {name!r}; valid solvers: {', '.join(sorted(SOLVERS))}"
        ) from None
