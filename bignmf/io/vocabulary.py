"""Names of a matrix's columns (words, genes): a vocabulary file beside the store, one name a
line, or the ``var_names`` of an AnnData file. Only names are read, never the matrix."""

from __future__ import annotations

import os
from pathlib import Path

from bignmf.errors import BigNMFError


def vocabulary_path(store: str | os.PathLike) -> Path:
    """The vocabulary file of a store: ``<store>.vocab.txt``, beside it.

    Parameters
    ----------
    store : str or path-like
        The store (``docs.zarr`` gives ``docs.zarr.vocab.txt``).

    Returns
    -------
    pathlib.Path
    """
    store = Path(store)
    return store.with_name(store.name + ".vocab.txt")


def var_names(path: str | os.PathLike) -> list[str] | None:
    """The ``var_names`` of an AnnData ``.h5ad`` file or ``.zarr`` store, else None.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    list of str or None
        None when ``path`` is not AnnData or has no ``var`` index.
    """
    path = Path(path)
    try:
        if path.is_file() and path.suffix == ".h5ad":
            import h5py

            with h5py.File(path, "r") as f:
                var = f["var"]
                return [str(x) for x in var[var.attrs["_index"]].asstr()[...]]
        if path.is_dir():
            import zarr

            var = zarr.open_group(path, mode="r", use_consolidated=False)["var"]
            return [str(x) for x in var[var.attrs["_index"]][...]]
    except (KeyError, OSError, ImportError, TypeError, ValueError):
        return None
    return None


def load_vocabulary(path: str | os.PathLike) -> list[str]:
    """Read a vocabulary (or titles) file: one entry per line, UTF-8.

    Parameters
    ----------
    path : str or path-like
        One entry per line, as :func:`bignmf.datasets.docstring_corpus` writes them.

    Returns
    -------
    list of str
        Entry ``j`` is line ``j``, without its line end: the name of column ``j`` of the matrix
        (row ``j`` for a titles file).
    """
    with open(path, encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in lines]


def read_vocabulary(path: str | os.PathLike, n_features: int) -> list[str]:
    """The names in a vocabulary file, checked against the number of columns.

    Parameters
    ----------
    path : str or path-like
        One name a line.
    n_features : int
        Columns of the matrix.

    Returns
    -------
    list of str

    Raises
    ------
    BigNMFError
        If the file is missing or holds another number of names than ``n_features``.
    """
    try:
        names = load_vocabulary(path)
    except FileNotFoundError:
        raise BigNMFError(f"vocabulary file {path} not found") from None
    except UnicodeDecodeError as error:
        raise BigNMFError(f"vocabulary file {path} is not UTF-8 text ({error})") from None
    if len(names) != n_features:
        raise BigNMFError(
            f"vocabulary file {path} has {len(names):,} lines; the matrix has "
            f"{n_features:,} columns"
        )
    return names


def find_vocabulary(
    store: str | os.PathLike | None, n_features: int, given: str | os.PathLike | None = None
) -> list[str] | None:
    """The column names of a matrix: ``given``, else ``<store>.vocab.txt``, else the store's
    AnnData ``var_names``; None when there are none.

    Parameters
    ----------
    store : str or path-like or None
        The store the matrix was read from.
    n_features : int
        Columns of the matrix: every source must name exactly these.
    given : str or path-like, optional
        A vocabulary file named by the user (an error if unusable).

    Returns
    -------
    list of str or None
    """
    if given is not None:
        return read_vocabulary(given, n_features)
    if store is None:
        return None
    if vocabulary_path(store).is_file():
        return read_vocabulary(vocabulary_path(store), n_features)
    names = var_names(store)
    return names if names is not None and len(names) == n_features else None


def write_vocabulary(names: list[str], store: str | os.PathLike) -> Path:
    """Write ``names`` as the vocabulary file of ``store``.

    Parameters
    ----------
    names : list of str
    store : str or path-like

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = vocabulary_path(store)
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path
