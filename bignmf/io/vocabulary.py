"""Names of a matrix's columns (words, genes): a vocabulary file beside the store, one name a
line, or the ``var_names`` of an AnnData file; and of its rows (documents, cells): a titles
file beside the store, or the ``obs_names``, read lazily. Only names are read, never the
matrix."""

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


def titles_path(store: str | os.PathLike) -> Path:
    """The row names file of a store: ``<store>.titles.txt``, beside it.

    Parameters
    ----------
    store : str or path-like
        The store (``docs.zarr`` gives ``docs.zarr.titles.txt``, as
        :func:`bignmf.datasets.docstring_corpus` writes it).

    Returns
    -------
    pathlib.Path
    """
    store = Path(store)
    return store.with_name(store.name + ".titles.txt")


class LazyNames:
    """Names of a matrix's rows, read only when asked for: ``len(names)`` reads none,
    ``names.take(rows)`` only the chunks (or lines) holding those rows.

    A matrix may have 10^8 rows, whose names as Python strings would take gigabytes; a report
    needs a few hundred of them.

    Parameters
    ----------
    length : int
        The number of names.
    take : callable
        ``take(sorted unique rows)`` returns their names, in that order.
    source : str
        Where the names come from, for messages.
    """

    def __init__(self, length: int, take, source: str):
        self._length, self._take, self.source = length, take, source

    def __len__(self) -> int:
        return self._length

    def take(self, rows) -> list[str]:
        """The names of ``rows`` (any order, repeats allowed), in that order.

        Parameters
        ----------
        rows : sequence of int

        Returns
        -------
        list of str
        """
        rows = [int(i) for i in rows]
        if any(not 0 <= i < self._length for i in rows):
            raise IndexError(f"{self.source}: a row out of range 0..{self._length - 1}")
        wanted = sorted(set(rows))
        found = dict(zip(wanted, self._take(wanted), strict=True))
        return [found[i] for i in rows]


def _lines_take(path: Path):
    def take(rows: list[int]) -> list[str]:
        names, wanted = [], iter(rows)
        target = next(wanted, None)
        with open(path, encoding="utf-8") as lines:  # one streamed pass, up to the last row
            for i, line in enumerate(lines):
                if i == target:
                    names.append(line.rstrip("\n"))
                    target = next(wanted, None)
                    if target is None:
                        break
        return names

    return take


def _count_lines(path: Path) -> int:
    """Lines of a text file, as :func:`load_vocabulary` reads them, streamed."""
    count, last = 0, b"\n"
    with open(path, "rb") as data:
        while piece := data.read(1 << 24):
            count, last = count + piece.count(b"\n"), piece[-1:]
    return count + (last != b"\n")  # a last line without its line end


def obs_names(path: str | os.PathLike) -> LazyNames | None:
    """The ``obs_names`` (row names) of an AnnData ``.h5ad`` file or ``.zarr`` store, read
    lazily; None when ``path`` is not AnnData or has no ``obs`` index.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    LazyNames or None
        Its length comes from the index's metadata; :meth:`LazyNames.take` reads only the
        rows asked for (h5py and zarr read the chunks holding them). ``X`` is never read.
    """
    path = Path(path)
    try:
        if path.is_file() and path.suffix == ".h5ad":
            import h5py

            with h5py.File(path, "r") as f:
                name = "obs/" + f["obs"].attrs["_index"]
                length = f[name].shape[0]

            def take(rows: list[int]) -> list[str]:
                with h5py.File(path, "r") as f:
                    return [str(x) for x in f[name].asstr()[rows]]

            return LazyNames(length, take, f"{path}:{name}")
        if path.is_dir():
            import zarr

            obs = zarr.open_group(path, mode="r", use_consolidated=False)["obs"]
            index = obs[obs.attrs["_index"]]
            length = index.shape[0]

            def take(rows: list[int]) -> list[str]:
                return [str(x) for x in index.oindex[rows]]

            return LazyNames(length, take, f"{path}/obs")
    except (KeyError, OSError, ImportError, TypeError, ValueError, AttributeError):
        return None
    return None


def find_row_names(
    store: str | os.PathLike | None, n_rows: int, source: str | os.PathLike | None = None
) -> LazyNames | None:
    """The row names of a matrix: ``<store>.titles.txt``, else the store's AnnData
    ``obs_names``, else those of ``source`` (the AnnData file the store was converted from);
    None when there are none.

    Parameters
    ----------
    store : str or path-like or None
        The store the matrix was read from.
    n_rows : int
        Rows of the matrix: a titles file must name exactly these; AnnData indices of another
        length are passed over.
    source : str or path-like, optional
        The file the store was converted from, when it was.

    Returns
    -------
    LazyNames or None

    Raises
    ------
    BigNMFError
        If the titles file names another number of rows.
    """
    if store is None:
        return None
    titles = titles_path(store)
    if titles.is_file():
        count = _count_lines(titles)
        if count != n_rows:
            raise BigNMFError(
                f"titles file {titles} has {count:,} lines; the matrix has {n_rows:,} rows"
            )
        return LazyNames(count, _lines_take(titles), str(titles))
    for path in (store, source):
        names = obs_names(path) if path is not None else None
        if names is not None and len(names) == n_rows:
            return names
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
