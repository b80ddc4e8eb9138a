"""Nonnegative least squares with many right-hand sides by block principal pivoting (BPP).

Kim & Park, "Fast nonnegative matrix factorization: an active-set-like method and
comparisons", SIAM J. Sci. Comput. 33(6), 2011. Each right-hand side (a column of ``CᵀB``)
is an independent problem ``min_{x≥0} ½‖Cx − b‖²`` that only needs ``CᵀC`` and ``Cᵀb``;
columns that currently share a passive set are solved together with one ``k x k`` solve.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nnls_bpp"]

#: Passive-set groups smaller than this are solved as a batch of masked systems instead of
#: one solve per group (the Python overhead of a group solve is ~10 column solves).
_MIN_GROUP = 8

#: Rows per batched masked solve (``_BATCH_ROWS x k x k`` float64 temporaries).
_BATCH_ROWS = 2048


def nnls_bpp(
    CtC: np.ndarray,
    CtB: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    init: np.ndarray | None = None,
    max_iter: int | None = None,
    return_info: bool = False,
):
    """Solve ``min_{X ≥ 0} ½‖C·X − B‖²_F + l1·ΣX + ½·l2·‖X‖²_F`` from ``CᵀC`` and ``CᵀB``.

    Used for a row block of W (``CtC = H·Hᵀ``, ``CtB = (A_i·Hᵀ)ᵀ``, solution ``W_iᵀ``) and for
    H (``CtC = WᵀW``, ``CtB = Wᵀ·A``, i.e. ``AtW.T``, solution ``H``).

    Parameters
    ----------
    CtC : ndarray, shape (k, k)
        Symmetric positive semi-definite gram ``CᵀC``.
    CtB : ndarray, shape (k, r)
        ``CᵀB``; each of the r columns is an independent problem. A transposed view of a
        C-contiguous ``r x k`` array (e.g. ``(A_i @ Ht).T``) is read without a copy per column.
    l1, l2 : float, default 0
        Penalties (scaled as scikit-learn's ``l1_reg``/``l2_reg``): ``l2`` is added to the
        diagonal of ``CtC`` and ``l1`` subtracted from ``CtB``.
    init : ndarray, shape (k, r), optional
        Warm start: the initial passive set is ``init > 0`` (e.g. the previous iterate).
        The solution does not depend on it (the problems are strictly convex), only the
        number of pivoting iterations does.
    max_iter : int, optional
        Maximum number of pivoting iterations (default ``10·k + 100``); columns not settled
        by then are solved by Lawson–Hanson (``scipy.optimize.nnls``) on the Cholesky factor.
    return_info : bool, default False
        Also return a dict with ``n_iter``, ``n_fallback`` (columns solved by the fallback)
        and ``ridge`` (regularisation added, see Notes).

    Returns
    -------
    X : ndarray, shape (k, r)
        The solution (non-negative), dtype of ``CtB`` (float64 if not floating). It is the
        transpose of a C-contiguous ``r x k`` array, so ``X.T`` is a C-contiguous ``W_i``.
    info : dict
        Only with ``return_info``.

    Notes
    -----
    Computation is in float64. Memory: O(r·k) (the solution, the dual ``Y``, the passive set
    and a float64 copy of ``CtB``). Each pivoting iteration groups the unsettled columns by
    passive set and costs one ``|F| x |F|`` solve per distinct set plus O(r·k²).

    Degenerate grams: a variable whose diagonal entry of ``CtC + l2·I`` is ≤ 0 (a zero
    column of C) is fixed at 0 — its gradient is ``l1 - Cᵀb = l1 ≥ 0`` for a consistent gram.
    If the remaining gram is not numerically positive definite (its Cholesky factorization
    fails), a ridge ``δ·I`` is added to it, starting at ``δ = 10·k·eps·max(diag)`` and growing
    tenfold until the factorization succeeds: the problem then solved is the one with an
    extra L2 penalty ``δ``, a relative perturbation of order ``k·eps``. Sub-solves that still
    fail fall back to least squares (``numpy.linalg.lstsq``).
    """
    G = np.array(CtC, dtype=np.float64)
    k = G.shape[0]
    if G.shape != (k, k):
        raise ValueError(f"CtC must be square, got {G.shape}")
    if CtB.ndim != 2 or CtB.shape[0] != k:
        raise ValueError(f"CtB must have shape ({k}, r), got {CtB.shape}")
    r = CtB.shape[1]
    out_dtype = CtB.dtype if np.issubdtype(CtB.dtype, np.floating) else np.dtype(np.float64)
    info = {"n_iter": 0, "n_fallback": 0, "ridge": 0.0}
    if max_iter is None:
        max_iter = 10 * k + 100
    if l2 != 0.0:
        G.flat[:: k + 1] += l2
    B = np.array(CtB.T, dtype=np.float64, order="C")  # r x k, one problem per row
    if l1 != 0.0:
        B -= l1
    Xfull = np.zeros((r, k), dtype=np.float64)
    live = np.flatnonzero(np.diagonal(G) > 0)
    if r == 0 or live.size == 0:
        return (Xfull.T.astype(out_dtype), info) if return_info else Xfull.T.astype(out_dtype)

    Gl = np.ascontiguousarray(G[np.ix_(live, live)])
    Bl = np.ascontiguousarray(B[:, live])
    L, ridge = _cholesky_with_ridge(Gl)
    if ridge:
        Gl.flat[:: live.size + 1] += ridge
        info["ridge"] = float(ridge)

    P = np.zeros((r, live.size), dtype=bool)
    if init is not None:
        if init.shape != (k, r):
            raise ValueError(f"init must have shape ({k}, {r}), got {init.shape}")
        P[...] = (np.asarray(init).T > 0)[:, live]
    X = np.zeros((r, live.size), dtype=np.float64)
    Y = -Bl
    start = np.flatnonzero(P.any(axis=1))
    if start.size:
        _solve_groups(Gl, Bl, P, X, Y, start)

    n_live = live.size
    ninf = np.full(r, n_live + 1, dtype=np.int64)
    backup = np.full(r, 3, dtype=np.int64)
    act = np.arange(r)
    n_iter = 0
    while True:
        Pa = P[act]
        infeas = (Pa & (X[act] < 0)) | (~Pa & (Y[act] < 0))
        nv = infeas.sum(axis=1)
        bad = nv > 0
        act, infeas, nv = act[bad], infeas[bad], nv[bad]
        if act.size == 0 or n_iter >= max_iter:
            break
        n_iter += 1
        better = nv < ninf[act]
        ninf[act[better]] = nv[better]
        backup[act[better]] = 3
        retry = ~better & (backup[act] >= 1)
        backup[act[retry]] -= 1
        full = better | retry
        P[act[full]] ^= infeas[full]
        single = ~full
        if single.any():
            # backup rule: exchange only the infeasible variable of largest index
            j = n_live - 1 - np.argmax(infeas[single][:, ::-1], axis=1)
            P[act[single], j] ^= True
        _solve_groups(Gl, Bl, P, X, Y, act)
    info["n_iter"] = n_iter
    if act.size:
        info["n_fallback"] = int(act.size)
        # imported here, on the rare fallback: scipy.linalg and scipy.optimize take ~0.6 s to
        # load, which every command (and `bignmf --help`) would pay through bignmf.kernels
        from scipy.linalg import solve_triangular
        from scipy.optimize import nnls as _scipy_nnls

        rhs = solve_triangular(L, Bl[act].T, lower=True, check_finite=False)
        for idx, row in enumerate(act):
            X[row] = _scipy_nnls(L.T, rhs[:, idx])[0]
    np.maximum(X, 0.0, out=X)
    Xfull[:, live] = X
    Xout = Xfull.astype(out_dtype, copy=False).T
    return (Xout, info) if return_info else Xout


def _cholesky_with_ridge(G: np.ndarray) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of ``G + δI`` with the smallest tried ``δ`` that works."""
    try:
        return np.linalg.cholesky(G), 0.0
    except np.linalg.LinAlgError:
        pass
    k = G.shape[0]
    scale = float(np.max(np.abs(np.diagonal(G))))
    ridge = 10.0 * k * np.finfo(np.float64).eps * scale
    eye = np.eye(k)
    for _ in range(17):
        try:
            return np.linalg.cholesky(G + ridge * eye), ridge
        except np.linalg.LinAlgError:
            ridge *= 10.0
    ridge = max(scale, 1.0)  # pragma: no cover - only for non-PSD input
    return np.linalg.cholesky(G + ridge * eye), ridge  # pragma: no cover


def _group_keys(P: np.ndarray) -> np.ndarray:
    """One hashable key per row of the boolean matrix ``P`` (equal rows, equal keys)."""
    k = P.shape[1]
    if k <= 62:
        weights = np.left_shift(np.int64(1), np.arange(k, dtype=np.int64))
        return P.astype(np.int64) @ weights
    packed = np.ascontiguousarray(np.packbits(P, axis=1))
    return packed.view(np.dtype((np.void, packed.shape[1]))).ravel()


def _solve_groups(
    G: np.ndarray,
    B: np.ndarray,
    P: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    rows: np.ndarray,
) -> None:
    """For ``rows``, set X to the unconstrained solution on the passive set and Y to the
    gradient ``X·G − B`` off it.

    Rows sharing a passive set with at least ``_MIN_GROUP - 1`` others are solved together
    (one solve per distinct set, Kim & Park); the rest, whose per-group overhead would
    dominate, are solved as a batch of masked ``k x k`` systems.
    """
    _, inverse, counts = np.unique(_group_keys(P[rows]), return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    grouped = counts[inverse] >= _MIN_GROUP
    if not grouped.all():
        _solve_batched(G, B, P, X, Y, rows[~grouped])
    if not grouped.any():
        return
    rows, inverse = rows[grouped], inverse[grouped]
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for members in np.split(rows[order], bounds):
        F = P[members[0]]
        Fi = np.flatnonzero(F)
        Bg = B[members]
        if Fi.size == 0:
            X[members] = 0.0
            Y[members] = -Bg
            continue
        GFF = G[np.ix_(Fi, Fi)]
        rhs = Bg[:, Fi].T
        try:
            XF = np.linalg.solve(GFF, rhs).T
        except np.linalg.LinAlgError:
            XF = np.linalg.lstsq(GFF, rhs, rcond=None)[0].T
        Yg = XF @ G[Fi] - Bg
        Yg[:, Fi] = 0.0
        Xg = np.zeros_like(Bg)
        Xg[:, Fi] = XF
        X[members] = Xg
        Y[members] = Yg


def _solve_batched(
    G: np.ndarray,
    B: np.ndarray,
    P: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Same as :func:`_solve_groups` for rows with (nearly) unique passive sets: each row's
    system is ``G`` restricted to its passive set, padded with the identity elsewhere, and
    all of them go to one batched LAPACK call per chunk of ``_BATCH_ROWS`` rows."""
    k = G.shape[0]
    diag = np.arange(k)
    for c0 in range(0, rows.size, _BATCH_ROWS):
        rc = rows[c0 : c0 + _BATCH_ROWS]
        Pc = P[rc]
        Bc = B[rc]
        M = G[np.newaxis] * (Pc[:, :, np.newaxis] & Pc[:, np.newaxis, :])
        M[:, diag, diag] += ~Pc
        rhs = np.where(Pc, Bc, 0.0)[:, :, np.newaxis]
        try:
            Xc = np.linalg.solve(M, rhs)[:, :, 0]
        except np.linalg.LinAlgError:
            Xc = np.stack(
                [
                    np.linalg.lstsq(Mj, bj, rcond=None)[0][:, 0]
                    for Mj, bj in zip(M, rhs, strict=True)
                ]
            )
        Xc[~Pc] = 0.0
        Yc = Xc @ G - Bc
        Yc[Pc] = 0.0
        X[rc] = Xc
        Y[rc] = Yc
