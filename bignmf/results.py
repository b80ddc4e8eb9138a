"""A run's results as people read them: each component's top features (words, genes) and top
rows (documents, cells, users), named when names are known, as plain data.

The front ends format these: ``bignmf top-features`` and ``bignmf top-rows`` as text, CSV or
JSON, ``bignmf report`` as a page. The factors come from the finished run's ``W.zarr`` and
``H.zarr`` or, for a run that was stopped, its newest checkpoint
(:func:`bignmf.fit.inspect.open_factors`); W is streamed by row slabs, never held whole.
Names: columns by :func:`bignmf.io.vocabulary.find_vocabulary`, rows by
:func:`bignmf.io.vocabulary.find_row_names` (``<store>.titles.txt``, or AnnData
``obs_names``); otherwise their numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from bignmf.errors import ParameterError
from bignmf.fit.inspect import ROWS_PER_SLAB, RowScan, RunFactors, open_factors, scan_rows
from bignmf.fit.outputs import top_features as _top_columns
from bignmf.fit.rundir import RunDir
from bignmf.fit.settings import RunRecord
from bignmf.io.vocabulary import LazyNames, find_row_names, find_vocabulary
from bignmf.study.layout import StudyDir


class Ranked(NamedTuple):
    """One of a component's top features or rows.

    Attributes
    ----------
    index : int
        The column (feature) or row number.
    name : str
        Its name; the number as text when no names are known.
    weight : float
        Its entry of H (a feature) or of W (a row).
    """

    index: int
    name: str
    weight: float


@dataclass(frozen=True)
class Top:
    """Each component's top features or rows.

    Attributes
    ----------
    components : list of list of Ranked
        Per component, largest weight first; only positive weights, so a component may list
        fewer than asked for.
    named : bool
        Whether names were found (otherwise ``name`` is the number as text).
    store : str or None
        The store the run read, whose names were looked for.
    origin : str
        Where the factors came from: ``"W.zarr"`` (or ``"H.zarr"``) of the finished run, or the
        checkpoint's name.
    """

    components: list[list[Ranked]]
    named: bool
    store: str | None
    origin: str


def store_path(run: str | os.PathLike) -> str | None:
    """The store a run reads (``run.json`` records it); None for an in-memory matrix.

    Parameters
    ----------
    run : str or path-like
        The run directory.

    Returns
    -------
    str or None
    """
    store = RunRecord.from_json(RunDir(run).record()).store
    return store[0] if store else None


def _named(ranked: list[list[tuple[int, float]]], names: list[str] | None) -> list[list[Ranked]]:
    return [
        [Ranked(i, names[i] if names is not None else str(i), w) for i, w in component]
        for component in ranked
    ]


def top_features(
    run: str | os.PathLike,
    n: int = 10,
    vocab: str | os.PathLike | None = None,
    factors: RunFactors | None = None,
) -> Top:
    """Each component's ``n`` largest features (columns of H), named by the vocabulary.

    Parameters
    ----------
    run : str or path-like
        The run directory: finished, or stopped (its newest checkpoint's H).
    n : int
        Features per component.
    vocab : str or path-like, optional
        One feature name per line; by default ``<store>.vocab.txt`` beside the run's store, or
        its AnnData ``var_names``.
    factors : RunFactors, optional
        The run's factors, already opened.

    Returns
    -------
    Top

    Raises
    ------
    bignmf.CheckpointError
        When ``run`` holds no run, or the run has neither its outputs nor a checkpoint.
    bignmf.BigNMFError
        When a vocabulary file names another number of columns.

    Examples
    --------
    >>> top = top_features("run/", 5)  # doctest: +SKIP
    >>> [f.name for f in top.components[0]]  # doctest: +SKIP
    ['array', 'dtype', 'numpy', 'arrays', 'shape']
    """
    factors = factors if factors is not None else open_factors(run)
    store = store_path(run)
    names = find_vocabulary(store, factors.H.shape[1], vocab)
    origin = "H.zarr" if factors.finished else factors.origin
    return Top(_named(_top_columns(factors.H, n), names), names is not None, store, origin)


def consensus_top_features(
    study: str | os.PathLike,
    k: int | None = None,
    n: int = 10,
    vocab: str | os.PathLike | None = None,
) -> Top:
    """Each consensus component's ``n`` largest features in a finished study.

    Parameters
    ----------
    study : str or path-like
        The study directory (:func:`bignmf.sweep`).
    k : int, optional
        Which k's consensus; default the k the study chose.
    n : int
        Features per component.
    vocab : str or path-like, optional
        As :func:`top_features`'s; by default found beside the study's store.

    Returns
    -------
    Top
        ``origin`` names the consensus (``"consensus k=15"``).
    """
    from bignmf.study.summary import open_study

    found = open_study(study)
    if k is None:
        if found.chosen_k is None:
            raise ParameterError(f"{found.path} chose no k: give one with -k")
        k = found.chosen_k
    _, H = found.consensus(k)
    store = StudyDir(study).record()["input"].get("path")
    names = find_vocabulary(store, H.shape[1], vocab)
    return Top(_named(_top_columns(H, n), names), names is not None, store, f"consensus k={k}")


def row_names(run: str | os.PathLike, n_rows: int) -> LazyNames | None:
    """The names of a run's rows, read lazily; None when none are known.

    Parameters
    ----------
    run : str or path-like
        The run directory.
    n_rows : int
        Rows of W.

    Returns
    -------
    bignmf.io.vocabulary.LazyNames or None
        From ``<store>.titles.txt``, the store's AnnData ``obs_names``, or those of the AnnData
        file ``bignmf fit`` converted into the run.
    """
    return find_row_names(store_path(run), n_rows, RunDir(run).fit_input())


def name_rows(scan: RowScan, names: LazyNames | None) -> list[list[Ranked]]:
    """A :class:`~bignmf.fit.inspect.RowScan`'s top rows with their names (numbers without).

    Parameters
    ----------
    scan : RowScan
    names : LazyNames or None

    Returns
    -------
    list of list of Ranked
    """
    if names is None:
        return _named(scan.top, None)
    wanted = sorted({i for component in scan.top for i, _ in component})
    found = dict(zip(wanted, names.take(wanted), strict=True))  # only the rows listed
    return [[Ranked(i, found[i], w) for i, w in component] for component in scan.top]


def top_rows(
    run: str | os.PathLike,
    n: int = 10,
    factors: RunFactors | None = None,
    rows: int = ROWS_PER_SLAB,
) -> Top:
    """Each component's ``n`` largest rows (of W), named when row names are known.

    Parameters
    ----------
    run : str or path-like
        The run directory: finished (``W.zarr``), or stopped (its newest checkpoint's W).
    n : int
        Rows per component.
    factors : RunFactors, optional
        The run's factors, already opened.
    rows : int
        Rows of W read at a time.

    Returns
    -------
    Top

    Raises
    ------
    bignmf.CheckpointError
        When ``run`` holds no run, or the run has neither its outputs nor a checkpoint, or a
        checkpoint's W block fails its checksum.

    Notes
    -----
    W is read once, by slabs of ``rows`` rows, keeping a running top ``n`` per component:
    memory is one slab plus ``n × k`` candidates, whatever the number of rows. Only the names
    of the rows listed are read.
    """
    factors = factors if factors is not None else open_factors(run)
    scan = scan_rows(factors, n, rows)
    names = row_names(run, factors.n_rows)
    return Top(name_rows(scan, names), names is not None, store_path(run), factors.origin)


__all__ = [
    "Ranked",
    "Top",
    "consensus_top_features",
    "name_rows",
    "row_names",
    "store_path",
    "top_features",
    "top_rows",
]
