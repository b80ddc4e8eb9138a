"""Hierarchical alternating least squares (HALS) / coordinate descent, one routine for W and H.

For the Frobenius objective ``½‖A − WH‖² + l1·ΣX + ½·l2·‖X‖²`` the update of a factor ``X``
(``W``, or ``Hᵀ``) only needs the cross product ``XY`` (``A·Hᵀ`` for W, ``Aᵀ·W`` for Hᵀ) and
the gram ``G`` (``H·Hᵀ`` for W, ``WᵀW`` for Hᵀ). Rows of ``X`` are independent, so a row
block of W can be updated locally and Hᵀ is updated by the same routine from reduced sums.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hals_update"]


def hals_update(
    X: np.ndarray,
    XY: np.ndarray,
    G: np.ndarray,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    n_sweeps: int = 1,
) -> np.ndarray:
    """Update ``X`` in place by ``n_sweeps`` cyclic HALS sweeps over its k columns.

    For each column ``t`` (in order ``0..k-1``) and every row at once::

        grad = X @ G'[t] - XY[:, t] + l1          with G' = G + l2·I
        X[:, t] = max(X[:, t] - grad / G'[t, t], 0)   (skipped when G'[t, t] == 0)

    which is exactly the coordinate step of scikit-learn's ``_update_coordinate_descent`` /
    ``_update_cdnmf_fast`` (L2 added to the gram's diagonal, L1 subtracted from ``XY``),
    vectorised over rows; ``n_sweeps > 1`` repeats the sweep with the same ``XY`` and ``G``
    (accelerated HALS, Gillis & Glineur 2012).

    Parameters
    ----------
    X : ndarray, shape (r, k)
        Current factor rows (W_i, or Hᵀ); overwritten with the update.
    XY : ndarray, shape (r, k)
        Cross product (``A_i·Hᵀ`` for W_i, ``Aᵀ·W`` for Hᵀ). Not modified.
    G : ndarray, shape (k, k)
        Symmetric gram (``H·Hᵀ`` for W, ``WᵀW`` for Hᵀ). Not modified.
    l1, l2 : float, default 0
        L1 and L2 penalties (already scaled, as scikit-learn's ``l1_reg_*``/``l2_reg_*``).
    n_sweeps : int, default 1
        Number of sweeps over the k columns.

    Returns
    -------
    ndarray
        ``X``.

    Notes
    -----
    The sweeps run on a Fortran-ordered working copy of ``X`` and ``XY`` (column updates are
    then contiguous, about 5x faster than strided columns) in ``X``'s dtype, ``G`` cast to that
    dtype. Memory: two ``r x k`` copies plus two length-``r`` vectors. Time
    O(n_sweeps·r·k²). One sweep with ``n_sweeps=1`` gives scikit-learn's CD iterate.
    """
    if n_sweeps < 1:
        raise ValueError(f"n_sweeps must be >= 1, got {n_sweeps}")
    if X.ndim != 2 or XY.shape != X.shape:
        raise ValueError(f"X and XY must have the same 2-d shape, got {X.shape} and {XY.shape}")
    r, k = X.shape
    if G.shape != (k, k):
        raise ValueError(f"G must have shape ({k}, {k}), got {G.shape}")
    dtype = X.dtype
    Gd = np.array(G, dtype=dtype, order="C")
    if l2 != 0.0:
        Gd.flat[:: k + 1] += l2
    diag = Gd.diagonal().copy()
    Xf = np.asfortranarray(X)
    XYf = np.asfortranarray(XY, dtype=dtype)
    grad = np.empty(r, dtype=dtype)
    for _ in range(n_sweeps):
        for t in range(k):
            hess = diag[t]
            if hess == 0:
                continue
            np.dot(Xf, Gd[t], out=grad)
            grad -= XYf[:, t]
            if l1 != 0.0:
                grad += l1
            grad /= hess
            col = Xf[:, t]
            np.subtract(col, grad, out=grad)
            np.maximum(grad, 0, out=col)
    if Xf is not X:
        X[...] = Xf
    return X
