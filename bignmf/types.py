"""Shared vocabulary: small immutable records passed between the layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Source:
    """A matrix that can be streamed as consecutive row slabs.

    Parameters
    ----------
    name : str
        What to call the source in messages (a file name, ``"<scipy.sparse>"``...).
    shape : tuple of int
        ``(n_rows, n_cols)`` of the whole matrix.
    dtype : numpy.dtype
        Dtype of the values as the source holds them (before any conversion).
    blocks : callable
        Returns a fresh iterator of ``scipy.sparse.csr_matrix`` slabs, consecutive in row order,
        each with ``shape[1]`` columns, whose row counts add up to ``shape[0]``. Slabs may have
        any number of rows (zero included); the writer re-blocks them. Calling it again restarts
        the stream, so a source can be read twice.
    """

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    blocks: Callable[[], Iterator[sp.csr_matrix]]
