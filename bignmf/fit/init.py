"""Initial factors, computed blockwise: random, custom, and NNDSVD from a randomized SVD.

This module computes (its passes run between graph building and the driver's loop).

Every initialisation produces W's row blocks where the iterations will keep them (persisted in
memory, or in buffer 0 of the Zarr blocks) and H in the driver. NNDSVD (Boutsidis & Gallopoulos,
2008) needs the leading singular vectors of A; they come from a randomized SVD (Halko, Martinsson
& Tropp, 2011) whose every pass over A is one blockwise pass with the partial sums ``YᵀY`` and
``AᵀY`` reduced like an iteration's, so A is never held in memory and ``Y = A·Z`` is never stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bignmf.fit.graph import WIO, block_pass
from bignmf.kernels.products import accumulate_at_w

EPS = np.finfo(np.float32).eps


@dataclass(frozen=True)
class InitSpec:
    """Everything an initialisation step needs besides the matrix."""

    k: int
    dtype: np.dtype
    seed: int
    row_offsets: np.ndarray
    #: only the stored entries are observed: their mean is A's (``missing="zeros"``)
    observed_only: bool = False


def random_scale(matrix: Any, k: int, observed_only: bool = False) -> float:
    """scikit-learn's scale for random init: ``sqrt(mean(A) / k)``; with ``observed_only``
    the mean of the stored entries, so that ``W·H`` starts at the observed values' scale."""
    m, n = matrix.shape
    # a masked matrix knows its observed entries (zeros among them); else the stored ones
    count = getattr(matrix, "observed", matrix.nnz) if observed_only else m * n
    return float(np.sqrt(matrix.value_sum / max(count, 1) / k))


# ------------------------------------------------------------------------ random and custom


def _random_step(A_i, W_i, i, spec: InitSpec, scale: float, work):
    rows = int(spec.row_offsets[i + 1] - spec.row_offsets[i])
    block = scale * np.random.default_rng([spec.seed, 1, i]).standard_normal((rows, spec.k))
    return None, np.abs(block, out=block).astype(spec.dtype, copy=False)


def _block_of(W: np.ndarray, i: int, spec: InitSpec) -> np.ndarray:
    r0, r1 = int(spec.row_offsets[i]), int(spec.row_offsets[i + 1])
    return np.ascontiguousarray(W[r0:r1], dtype=spec.dtype)


def _slice_step(A_i, W_i, i, W: np.ndarray, spec: InitSpec, work):
    return None, _block_of(W, i, spec)


def random_init(matrix, groups, spec: InitSpec, w_store=None) -> tuple[list | None, np.ndarray]:
    """``scale·|N(0, 1)|`` with scikit-learn's scale, seeded per row block (W) and for H."""
    scale = random_scale(matrix, spec.k, spec.observed_only)
    rng = np.random.default_rng([spec.seed, 0])
    H = np.abs(scale * rng.standard_normal((spec.k, matrix.shape[1]))).astype(spec.dtype)
    w, _ = block_pass(
        matrix, groups, _random_step, (spec, scale), None, WIO(w_store, None, 0), reads_a=False
    )
    return w, H


def check_custom(W, H, shape: tuple[int, int], k: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The user's initial W and H as arrays, checked as scikit-learn's ``NMF`` checks them.

    Parameters
    ----------
    W, H : array-like
        Initial factors, shapes ``(m, k)`` and ``(k, n)``.
    shape : (int, int)
        ``(m, n)`` of A.
    k : int
        Number of components.
    dtype : numpy dtype
        A's dtype, which both must have: no silent cast (as scikit-learn's ``_check_w_h``).

    Returns
    -------
    W, H : ndarray

    Raises
    ------
    ValueError
        A factor missing, of the wrong shape (naming the expected and given shapes), not
        finite or negative.
    TypeError
        A factor whose dtype is not A's, naming both.
    """
    m, n = shape
    if W is None or H is None:
        raise ValueError("init='custom' needs both W and H")
    W, H = np.asarray(W), np.asarray(H)
    for name, X, expected in (("W", W, (m, k)), ("H", H, (k, n))):
        if X.shape != expected:
            raise ValueError(f"initial {name} must have shape {expected}, got {X.shape}")
    dtype = np.dtype(dtype)
    if H.dtype != dtype or W.dtype != dtype:
        raise TypeError(
            f"H and W should have the same dtype as X ({dtype}). Got H.dtype = {H.dtype} and "
            f"W.dtype = {W.dtype}."
        )
    for name, X in (("W", W), ("H", H)):
        if not np.isfinite(X).all() or (X < 0).any():
            raise ValueError(f"initial {name} must be finite and non-negative")
    return W, H


def custom_init(matrix, groups, spec: InitSpec, W, H, w_store=None) -> tuple[list | None, Any]:
    """The user's W (cut into row blocks) and H, checked (:func:`check_custom`)."""
    W, H = check_custom(W, H, matrix.shape, spec.k, spec.dtype)
    H = np.ascontiguousarray(H, dtype=spec.dtype)
    if w_store is not None:
        # written here, block by block: as a graph input, all of W would go to every worker
        for i in range(len(spec.row_offsets) - 1):
            w_store.write(0, i, _block_of(W, i, spec))
        return [], H
    w, _ = block_pass(
        matrix, groups, _slice_step, (W, spec), None, WIO(None, None, 0), reads_a=False
    )
    return w, H


# ------------------------------------------------------------------------ randomized SVD


def _sketch_step(A_i, W_i, i, Z: np.ndarray, work):
    """``Y_i = A_i·Z`` and its contributions to ``YᵀY`` and ``AᵀY`` (float64)."""
    Y = np.asarray(A_i @ Z)
    return {"G": Y.T @ Y, "AtY": np.asarray(A_i.T @ Y)}, None


def _orthonormalizer(G: np.ndarray) -> np.ndarray:
    """M with ``(YM)ᵀ(YM) = I`` from the gram ``G = YᵀY`` (eigen-decomposition, clipped)."""
    values, vectors = np.linalg.eigh(G)
    floor = max(values.max(), 0.0) * 1e-14 + np.finfo(np.float64).tiny
    return vectors / np.sqrt(np.maximum(values, floor))


def _ranged_sketch_step(A_i, Y_i, i, c0: int, c1: int, first: bool, work):
    """One column range of ``AᵀY`` from the stored ``Y_i`` (and ``YᵀY`` with the first)."""
    partial = {"AtY": accumulate_at_w(A_i[:, c0:c1], Y_i, np.zeros((c1 - c0, Y_i.shape[1])))}
    if first:
        partial["G"] = Y_i.T @ Y_i
    return partial, None


def _sketch(matrix, groups, Z: np.ndarray, runner, ranges) -> tuple[dict, WIO | None]:
    """``YᵀY`` and ``AᵀY`` for ``Y = A·Z``, in one pass or (``ranges``: a
    :class:`~bignmf.fit.columns.TwoPasses`) over Z's row ranges, keeping Y's blocks; where Y is."""
    if ranges is None:
        z = runner.share(Z, f"bignmf-sketch-{uuid.uuid4().hex}")  # named: no hash of n×l values
        _, total = block_pass(matrix, groups, _sketch_step, (z,))
        return runner.compute(total)[0], None
    Y = ranges.product(runner, matrix, groups, Z, ranges.buffers("Y", Z.shape[1], Z.dtype))
    parts = ranges.transposed(runner, matrix, groups, _ranged_sketch_step, None, Y)
    return {"G": parts[0]["G"], "AtY": np.concatenate([p["AtY"] for p in parts])}, Y


def power_iterations(k: int, m: int, n: int) -> int:
    """scikit-learn's ``randomized_svd`` default of power iterations for rank ``k``."""
    return 7 if k < 0.1 * min(m, n) else 4


def nndsvd_passes(k: int, m: int, n: int) -> int:
    """Passes over A of the NNDSVD initialisation: one per sketch (the power iterations and
    the last one), one for the left singular vectors (read from A, or from the sketch)."""
    return power_iterations(k, m, n) + 2


def randomized_range(
    matrix,
    groups,
    k: int,
    seed: int,
    runner,
    n_oversamples=10,
    n_iter=None,
    ranges=None,
    on_pass=None,
):
    """Sketch ``Z`` and orthonormaliser ``M`` with ``Q = A·Z·M`` spanning A's top singular space.

    Returns ``(Z, M, B, Y)`` where ``B = QᵀA`` (l×n) and ``Y`` says where the blocks of ``A·Z``
    were kept (None: not kept). Each of the ``n_iter + 1`` passes reads A once, or twice per
    column range when ``ranges`` (a :class:`~bignmf.fit.columns.TwoPasses`) cuts Z into ranges;
    ``on_pass(i)``, when given, is called before pass ``i`` (from 1).
    """
    m, n = matrix.shape
    if k > min(m, n):  # the sketch would have fewer than k columns: k would drop silently
        raise ValueError(f"the randomized SVD of a {m} × {n} matrix has no {k} vectors")
    l = min(k + n_oversamples, m, n)  # noqa: E741 - Halko et al.'s name
    if n_iter is None:
        n_iter = power_iterations(k, m, n)
    Z = np.random.default_rng([seed, 2]).standard_normal((n, l))
    for step in range(n_iter + 1):
        if on_pass is not None:
            on_pass(step + 1)
        sums, Y = _sketch(matrix, groups, Z, runner, ranges)
        M = _orthonormalizer(sums["G"])
        AtQ = sums["AtY"] @ M  # = Aᵀ·Q, Q = Y·M orthonormal
        if step == n_iter:
            return Z, M, AtQ.T, Y
        Z, _ = np.linalg.qr(AtQ)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------ NNDSVD


def _left_vectors_step(A_i, W_i, i, Z, P, dtype, work):
    """``U_i = A_i·Z·P`` and the squared norms of its positive and negative parts.

    The norms come from the float64 U; U itself is kept in the factors' dtype, as W's Zarr
    buffers store it, so W does not depend on where it is kept.
    """
    return _left_vectors(np.asarray(A_i @ Z) @ P, dtype)


def _left_vectors_from_y_step(A_i, W_i, i, Y: WIO, P, dtype, work):
    """``U_i = Y_i·P`` from the stored blocks of ``Y = A·Z`` (see :func:`_left_vectors_step`)."""
    return _left_vectors(Y.store.read(Y.read, i) @ P, dtype)


def _left_vectors(U: np.ndarray, dtype):
    pos, neg = np.maximum(U, 0), np.minimum(U, 0)
    norms = {"pos": np.einsum("ij,ij->j", pos, pos), "neg": np.einsum("ij,ij->j", neg, neg)}
    return norms, U.astype(dtype, copy=False)


@dataclass(frozen=True)
class NNDSVDColumns:
    """Per component: which part of u (positive or negative) and the factor it is scaled by."""

    use_positive: np.ndarray
    w_scale: np.ndarray
    fill: str
    fill_value: float


def _nndsvd_step(A_i, U_i, i, cols: NNDSVDColumns, spec: InitSpec, work):
    U_i = np.asarray(U_i, dtype=np.float64)
    W = np.where(cols.use_positive, np.maximum(U_i, 0), np.maximum(-U_i, 0))
    W[:, 0] = np.abs(U_i[:, 0])
    W *= cols.w_scale
    W[W < EPS] = 0
    zeros = W == 0
    if cols.fill == "nndsvda":
        W[zeros] = cols.fill_value
    elif cols.fill == "nndsvdar":
        rng = np.random.default_rng([spec.seed, 3, i])
        W[zeros] = np.abs(cols.fill_value * rng.standard_normal(int(zeros.sum())) / 100)
    return None, W.astype(spec.dtype)


def nndsvd_init(
    matrix, groups, spec: InitSpec, variant: str, runner, w_store=None, ranges=None, on_pass=None
):
    """NNDSVD ('nndsvd'), zeros filled with mean(A) ('nndsvda') or small noise ('nndsvdar').

    Follows scikit-learn's ``_initialize_nmf`` on the out-of-core randomized SVD: W's column
    ``j`` is the positive or negative part of ``u_j`` (whichever carries more of
    ``σ_j·u_j·v_jᵀ``) scaled, H's row likewise from ``v_j``. With ``ranges`` (a
    :class:`~bignmf.fit.columns.TwoPasses`, for very wide matrices) the n×l sketches are cut into
    its column ranges like H in the iterations. ``on_pass(i)`` is called before each of the
    :func:`nndsvd_passes` passes (``i`` from 1).
    """
    m, n = matrix.shape
    k = spec.k
    Z, M, B, Y = randomized_range(
        matrix, groups, k, spec.seed, runner, ranges=ranges, on_pass=on_pass
    )
    Ub, S, Vt = np.linalg.svd(B, full_matrices=False)
    Ub, S, Vt = Ub[:, :k], S[:k], Vt[:k]
    P = M @ Ub  # U = A·Z·P; signs need no flipping: NNDSVD is invariant to (u, v) -> (-u, -v)
    if Y is None:
        z = runner.share(Z, f"bignmf-sketch-{uuid.uuid4().hex}")
        step, args, reads_a = _left_vectors_step, (z, P, spec.dtype), True
    else:
        step, args, reads_a = _left_vectors_from_y_step, (Y, P, spec.dtype), False
    if on_pass is not None:
        on_pass(nndsvd_passes(k, m, n))
    u_groups, total = block_pass(
        matrix, groups, step, args, None, WIO(w_store, None, 1), reads_a=reads_a
    )
    if w_store is None:  # keep U's blocks for the next pass instead of recomputing them
        u_groups, norms = runner.persist_and_compute(*u_groups, total)
    else:  # U went to buffer 1 when the pass ran; the next pass reads it from there
        u_groups, (norms,) = None, runner.compute(total)
    u_pos, u_neg = np.sqrt(norms["pos"]), np.sqrt(norms["neg"])
    v_pos = np.linalg.norm(np.maximum(Vt, 0), axis=1)
    v_neg = np.linalg.norm(np.minimum(Vt, 0), axis=1)
    use_pos = u_pos * v_pos > u_neg * v_neg
    sigma = np.where(use_pos, u_pos * v_pos, u_neg * v_neg)
    # the first pair is taken whole, in absolute value, with unit norms
    sigma[0] = 1.0
    lam = np.sqrt(S * sigma)
    u_norm = np.where(use_pos, u_pos, u_neg)
    v_norm = np.where(use_pos, v_pos, v_neg)
    u_norm[0], v_norm[0] = 1.0, 1.0
    H = np.where(use_pos[:, None], np.maximum(Vt, 0), np.maximum(-Vt, 0))
    H[0] = np.abs(Vt[0])
    H = H * (lam / np.where(v_norm > 0, v_norm, 1))[:, None]
    w_scale = lam / np.where(u_norm > 0, u_norm, 1)
    mean = matrix.value_sum / (m * n)
    cols = NNDSVDColumns(use_pos, w_scale, variant, mean)
    H[H < EPS] = 0
    if variant == "nndsvda":
        H[H == 0] = mean
    elif variant == "nndsvdar":
        zeros = H == 0
        rng = np.random.default_rng([spec.seed, 4])
        H[zeros] = np.abs(mean * rng.standard_normal(int(zeros.sum())) / 100)
    w, _ = block_pass(
        matrix, groups, _nndsvd_step, (cols, spec), u_groups, WIO(w_store, 1, 0), reads_a=False
    )
    return w, np.ascontiguousarray(H, dtype=spec.dtype)
