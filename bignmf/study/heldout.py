"""The held-out error of a fit on a speckled mask: one blockwise pass over A.

A cross-validated fit never sees the entries of its :class:`~bignmf.store.speckled.SpeckledMask`;
this pass reads A's blocks (every stored entry) and the fit's W rows (``W.zarr`` of its run
directory, where every worker can read them), and sums the errors of ``W·H`` on the held-out
entries, stored ones and zeros alike (:func:`bignmf.kernels.speckle.held_out_sums`), in the
fixed reduction tree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from bignmf.cluster.runner import Runner, scheduler_threads
from bignmf.fit.graph import block_pass
from bignmf.fit.reduction import aligned_groups
from bignmf.kernels.speckle import held_out_sums
from bignmf.store.speckled import SpeckledMask

__all__ = ["held_out_error"]


@dataclass(frozen=True)
class _HeldOut:
    """What every block task needs: the mask, W's path and ``Hᵀ``."""

    mask: SpeckledMask
    w_path: str
    Ht: np.ndarray


def _held_out_step(A_i, W_i, i, h: _HeldOut, work):
    import zarr

    r0, r1 = int(h.mask.row_offsets[i]), int(h.mask.row_offsets[i + 1])
    indptr, indices = h.mask.pattern(i)
    W_rows = zarr.open_array(h.w_path, mode="r")[r0:r1]
    return held_out_sums(A_i, indptr, indices, W_rows, h.Ht), None


def held_out_error(matrix, mask: SpeckledMask, w_path: str | os.PathLike, H, scheduler=None):
    """The errors of a fit (its ``W.zarr`` and H) on the held-out entries of ``mask``.

    Parameters
    ----------
    matrix : BlockMatrix
        A, every entry (not masked).
    mask : SpeckledMask
        The held-out entries, in A's row blocks.
    w_path : path
        The fit's W (m × k Zarr array).
    H : ndarray, shape (k, n)
    scheduler : optional
        As :func:`bignmf.nmf`'s.

    Returns
    -------
    dict
        ``rmse`` and ``mae`` over the held-out entries, ``relative`` (``√(Σ err² / Σ a²)``),
        and ``count``.
    """
    groups = tuple(aligned_groups(matrix.n_blocks, 4 * scheduler_threads(scheduler)))
    step_args = (_HeldOut(mask, os.path.abspath(w_path), np.ascontiguousarray(H.T)),)
    _, total = block_pass(matrix, groups, _held_out_step, step_args)
    (sums,) = Runner(scheduler).compute(total)
    count = int(sums["count"])
    sse, sae, sst = float(sums["sse"]), float(sums["sae"]), float(sums["sst"])
    return {
        "rmse": math.sqrt(sse / count) if count else float("nan"),
        "mae": sae / count if count else float("nan"),
        "relative": math.sqrt(sse / sst) if sst > 0 else float("nan"),
        "count": count,
    }
