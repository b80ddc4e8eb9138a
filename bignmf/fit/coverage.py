"""How many stored entries each row and column of A has, for a fit on the stored entries only.

With ``missing="zeros"`` a row of W is determined by its row's stored entries alone, a column of
H by its column's: a row or column with none gets zeros, and one with fewer than k is
underdetermined (its least-squares problem has many solutions, and alternating between them
can drift to huge values unless an L2 penalty holds them). One pass over A's row blocks, before
the fit, counts them (reduced in the fixed tree, like every pass) and the fit warns, naming the
first ones, with :class:`~bignmf.errors.MissingEntriesWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from bignmf.errors import MissingEntriesWarning
from bignmf.fit.graph import block_pass

__all__ = ["Coverage", "count_entries", "warn_about"]

#: Names of rows or columns listed in a warning at the most.
LISTED = 5
#: The frame a warning names: past warn_about, the engine's _fit and _start, and nmf, the line
#: that called :func:`bignmf.nmf`.
CALLER = 5


@dataclass(frozen=True)
class Coverage:
    """Counts of stored entries per row and column, as far as a fit needs them.

    Attributes
    ----------
    empty_rows, thin_rows : int
        Rows with no stored entry; rows with at least one but fewer than k.
    first_empty_rows : tuple of int
        The first empty rows (at most :data:`LISTED`, in order).
    column_counts : ndarray, shape (n,)
        Stored entries per column.
    k : int
        The rank the counts were compared with.
    """

    empty_rows: int
    thin_rows: int
    first_empty_rows: tuple[int, ...]
    column_counts: np.ndarray
    k: int

    @property
    def empty_columns(self) -> np.ndarray:
        """Indices of the columns with no stored entry."""
        return np.flatnonzero(self.column_counts == 0)

    @property
    def thin_columns(self) -> int:
        """Columns with at least one stored entry but fewer than k."""
        return int(((self.column_counts > 0) & (self.column_counts < self.k)).sum())


def _count_step(A_i, W_i, i, r0: int, n_blocks: int, k: int, work):
    counts = np.diff(A_i.indptr)
    empty = np.flatnonzero(counts == 0)
    first = np.zeros((n_blocks, LISTED), dtype=np.float64)  # block i's own row: a sum is a copy
    first[i, : min(LISTED, empty.size)] = empty[:LISTED] + r0 + 1  # 0 means "none"
    partial = {
        "columns": np.bincount(A_i.indices, minlength=A_i.shape[1]).astype(np.float64),
        "empty_rows": np.asarray(float(empty.size)),
        "thin_rows": np.asarray(float(((counts > 0) & (counts < k)).sum())),
        "first_empty": first,
    }
    return partial, None


def _step(A_i, W_i, i, offsets: np.ndarray, k: int, work):
    return _count_step(A_i, W_i, i, int(offsets[i]), offsets.size - 1, k, work)


def count_entries(matrix, groups, runner, k: int) -> Coverage:
    """Count the stored entries of every row and column of ``matrix`` (one pass).

    Parameters
    ----------
    matrix : BlockMatrix
    groups : tuple of (start, stop)
        The fit's task groups.
    runner : Runner
        Computes the pass.
    k : int
        The rank (rows and columns with fewer entries are counted as thin).

    Returns
    -------
    Coverage
    """
    offsets = np.asarray(matrix.row_offsets, dtype=np.int64)
    _, total = block_pass(matrix, groups, _step, (offsets, k), None)
    (sums,) = runner.compute(total)
    listed = sums["first_empty"].ravel()
    first = tuple(int(r) - 1 for r in listed[listed > 0][:LISTED])
    return Coverage(
        empty_rows=int(sums["empty_rows"]),
        thin_rows=int(sums["thin_rows"]),
        first_empty_rows=first,
        column_counts=sums["columns"].astype(np.int64),
        k=k,
    )


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _have(count: int) -> str:
    return "has" if count == 1 else "have"


def _some(indices, count: int) -> str:
    shown = ", ".join(str(int(i)) for i in list(indices)[:LISTED])
    return shown + (f" and {count - LISTED} more" if count > LISTED else "")


def warn_about(coverage: Coverage, l2_W: float, l2_H: float) -> None:
    """Warn about rows and columns with no stored entry (they get zeros), and about ones with
    fewer than k when no L2 penalty holds them."""
    if coverage.empty_rows:
        warnings.warn(
            f"{_counted(coverage.empty_rows, 'row')} {_have(coverage.empty_rows)} no stored "
            f"entry ({_some(coverage.first_empty_rows, coverage.empty_rows)}): W is 0 there",
            MissingEntriesWarning,
            stacklevel=CALLER,
        )
    empty_columns = coverage.empty_columns
    if empty_columns.size:
        warnings.warn(
            f"{_counted(empty_columns.size, 'column')} {_have(empty_columns.size)} no stored "
            f"entry ({_some(empty_columns, empty_columns.size)}): H is 0 there",
            MissingEntriesWarning,
            stacklevel=CALLER,
        )
    thin = []
    if coverage.thin_rows and not l2_W:
        thin.append(_counted(coverage.thin_rows, "row"))
    if coverage.thin_columns and not l2_H:
        thin.append(_counted(coverage.thin_columns, "column"))
    if thin:
        one = len(thin) == 1 and thin[0].startswith("1 ")
        warnings.warn(
            f"{' and '.join(thin)} {_have(1 if one else 2)} fewer stored entries than "
            f"k = {coverage.k}: without an "
            "L2 penalty their factors are underdetermined and may grow without bound; give "
            "alpha_W (and alpha_H) with l1_ratio < 1 (e.g. alpha_W=1e-4)",
            MissingEntriesWarning,
            stacklevel=CALLER,
        )
