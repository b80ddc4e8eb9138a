"""AnnData in and out: factorize the ``X`` (or a layer) of an AnnData object, ``.h5ad`` file or
``.zarr`` store, and put the results where the scverse tools look for them.

As ``scanpy.tl.pca`` writes ``obsm["X_pca"]``, ``varm["PCs"]`` and ``uns["pca"]``,
:func:`fit` writes

- ``obsm["X_nmf"]``: W, n_obs × k, each cell's (row's) usage of each component;
- ``varm["NMF"]``: Hᵀ, n_vars × k, each component's loadings over the genes (columns);
- ``uns["nmf"]``: ``params`` (the settings the fit ran with, the seed included, and the
  layer), ``loss_history``, ``objective_history``, ``n_iter``, ``converged``,
  ``reconstruction_err``, ``relative_error`` (Frobenius loss), ``run_dir`` (when
  checkpointed) and the ``bignmf_version``.

A ``.zarr`` store is written in place (``X`` is not rewritten; consolidated metadata is
rewritten), a ``.h5ad`` file is rebuilt beside itself and swapped in atomically, an in-memory
``AnnData`` gets the attributes set (see :mod:`bignmf.io.writeback`). In the ``bignmf`` command
this is ``bignmf fit cells.zarr -k 10 --out run/ --write-back``.

A front end: the fit is :func:`bignmf.nmf`, the writing :mod:`bignmf.io.writeback`. Needs the
``readers`` extra (anndata, h5py) for ``.h5ad`` files and AnnData objects.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bignmf.errors import BigNMFError, InputError, MissingExtraError, StoreFormatError
from bignmf.io.writeback import Elements, anndata_format, write_h5ad, write_zarr

__all__ = ["fit", "summary", "write"]


def _anndata():
    """The anndata package, or an error naming the extra that installs it."""
    try:
        import anndata
    except ImportError as error:
        raise MissingExtraError(
            f"AnnData objects need the anndata package ({error}): "
            "pip install 'bignmf-dask[readers]'"
        ) from None
    return anndata


def _key(layer: str | None) -> str | None:
    """The matrix's path in an AnnData store or file: X (None) or ``layers/<layer>``."""
    if layer is None:
        return None
    if not layer or "/" in layer:
        raise InputError(f"layer {layer!r}: give a layer's name (a key of adata.layers)")
    return f"layers/{layer}"


def fit(
    adata: Any,
    n_components: int,
    layer: str | None = None,
    key_added: str = "nmf",
    **nmf_kwargs: Any,
):
    """Factorize an AnnData's ``X`` (or a layer) and store W, Hᵀ and a summary in it.

    Parameters
    ----------
    adata : anndata.AnnData, path
        An AnnData object (its attributes are set), or the path of a ``.zarr`` store (written
        in place) or ``.h5ad`` file (rebuilt beside itself and swapped in atomically).
    n_components : int
        Rank k.
    layer : str, optional
        Factorize ``adata.layers[layer]`` (e.g. raw ``"counts"``) instead of ``X``.
    key_added : str, default 'nmf'
        Names of the results: ``obsm["X_<key>"]``, ``varm["<KEY>"]`` (upper case),
        ``uns["<key>"]``; the default gives ``X_nmf``, ``NMF``, ``nmf``. Existing elements of
        these names are replaced.
    **nmf_kwargs
        Passed to :func:`bignmf.nmf` (``solver``, ``beta_loss``, ``max_iter``, ``tol``,
        ``random_state``, ``scheduler``, ``checkpoint_dir``, ``progress``...).

    Returns
    -------
    NMFResult
        The fit's result (the memory plan with ``plan_only=True``, and nothing is written).

    Raises
    ------
    InputError
        If a path is not an AnnData ``.zarr`` store or ``.h5ad`` file, or has no such layer.
    MissingExtraError
        If anndata (for an object) or h5py (for ``.h5ad``) is not installed.

    Notes
    -----
    Out of core for paths: the fit reads a CSR ``X`` of a ``.zarr`` store in place; a CSC or
    dense one, or any ``.h5ad``, is converted first (streamed) into ``checkpoint_dir/A.zarr``
    when checkpointing — the run then resumes and names its features like one of ``bignmf
    fit`` — else into a temporary store beside the input, removed afterwards. W is then
    written one chunk of rows at a time; no m × n array is formed. An in-memory AnnData is fitted
    from its matrix in memory, as :func:`bignmf.nmf` fits a scipy.sparse matrix.

    Examples
    --------
    >>> import bignmf.anndata  # doctest: +SKIP
    >>> bignmf.anndata.fit("cells.zarr", 10, layer="counts", random_state=0)  # doctest: +SKIP
    >>> adata = anndata.read_zarr("cells.zarr")  # doctest: +SKIP
    >>> adata.obsm["X_nmf"].shape  # doctest: +SKIP
    (60000, 10)
    """
    from bignmf.fit.engine import NMFResult, nmf

    Elements.named(key_added)  # a bad name is refused before the fit, not after it
    key = _key(layer)
    if isinstance(adata, str | os.PathLike):
        path = Path(adata)
        if anndata_format(path) is None:
            raise InputError(f"{path}: not an AnnData .zarr store or .h5ad file")
        with _matrix_of(path, key, nmf_kwargs) as matrix:
            result = nmf(matrix, n_components, **nmf_kwargs)
            if isinstance(result, NMFResult):  # not a memory plan
                write(path, result, key_added=key_added, layer=layer)
        return result
    anndata = _anndata()
    if not isinstance(adata, anndata.AnnData):
        raise TypeError(
            f"adata must be an anndata.AnnData or the path of a .zarr store or .h5ad file, "
            f"got {type(adata).__name__}"
        )
    matrix = _in_memory(adata, layer)
    result = nmf(matrix, n_components, **nmf_kwargs)
    if isinstance(result, NMFResult):
        write(adata, result, key_added=key_added, layer=layer)
    return result


def _in_memory(adata: Any, layer: str | None) -> Any:
    """The matrix of an AnnData object to fit: X or a layer (a backed one, as a store)."""
    if getattr(adata, "isbacked", False):
        raise InputError(
            f"{adata.filename}: a backed AnnData: pass its path to fit it out of core, or "
            "adata.to_memory() to fit it in memory"
        )
    if layer is None:
        matrix = adata.X
    elif layer in adata.layers:
        matrix = adata.layers[layer]
    else:
        raise InputError(f"<AnnData>: no layer {layer!r} (layers: {list(adata.layers.keys())})")
    if matrix is None:
        raise InputError(f"<AnnData>: {'X' if layer is None else layer} is empty (None)")
    return matrix


@contextlib.contextmanager
def _matrix_of(path: Path, key: str | None, nmf_kwargs: dict) -> Iterator[Any]:
    """The store to fit: an AnnData store's CSR matrix in place, or the matrix converted (into
    ``checkpoint_dir/A.zarr`` when checkpointing, else a temporary store beside ``path``)."""
    from bignmf.io.convert import convert
    from bignmf.store.csr import open_matrix

    store = None
    if anndata_format(path) == "zarr":
        with contextlib.suppress(StoreFormatError):  # a CSC or dense X: converted like a file
            store = open_matrix(path, key)
    if store is not None:
        yield store
        return
    checkpoint_dir = nmf_kwargs.get("checkpoint_dir")
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix=".bignmf-", dir=path.absolute().parent) as tmp:
            yield convert(path, Path(tmp, "A.zarr"), key=key)
        return
    with _claimed(Path(checkpoint_dir), path, key) as (target, reuse):
        yield open_matrix(target) if reuse else convert(path, target, key=key)


@contextlib.contextmanager
def _claimed(run_dir: Path, path: Path, key: str | None) -> Iterator[tuple[Path, bool]]:
    """``(RUN_DIR/A.zarr, whether it holds this input converted by an earlier attempt)``, the
    run directory claimed for the input as ``bignmf fit`` claims it (so that the fit may start
    there and be resumed); the claim is released if the fit fails."""
    from bignmf.fit.rundir import CONVERTED, RunDir

    run = RunDir(run_dir)
    created = not run.path.exists()
    stat = path.stat()
    source = {
        "input": str(path.absolute()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "key": key,
        "block_nnz": None,
    }
    run.check_free()
    with run.locked():
        reuse = run.claim(source)  # a conversion of another input is removed
        try:
            yield run.path / CONVERTED, reuse
        except BaseException:
            run.release(created)
            raise


def summary(result: Any, layer: str | None = None) -> dict:
    """What :func:`fit` stores in ``uns["nmf"]``, from a result or a finished run directory.

    Parameters
    ----------
    result : NMFResult or path
        A fit's result, or a finished run directory (its ``summary.json``, ``run.json`` and
        ``metrics.jsonl``).
    layer : str, optional
        The layer fitted (None: X), recorded in ``params``.

    Returns
    -------
    dict
        ``params``, ``loss_history``, ``objective_history``, ``n_iter``, ``converged``,
        ``reconstruction_err``, ``relative_error``, ``run_dir``, ``bignmf_version`` (None
        values are left out when written: AnnData cannot store them).
    """
    from bignmf._version import __version__

    if isinstance(result, str | os.PathLike):
        found = _run_summary(Path(result))
    else:
        found = {
            "params": dict(result.settings),
            "loss_history": list(result.loss_history),
            "objective_history": list(result.objective_history),
            "n_iter": int(result.n_iter),
            "converged": bool(result.converged),
            "reconstruction_err": float(result.reconstruction_err),
            "relative_error": result.relative_error,
            "run_dir": result.run_dir,
        }
    found["params"]["layer"] = "X" if layer is None else layer
    found["bignmf_version"] = __version__
    return found


def _run_summary(run_dir: Path) -> dict:
    from bignmf.fit.outputs import read_metrics, read_summary
    from bignmf.fit.rundir import RunDir
    from bignmf.fit.settings import RunRecord

    done = read_summary(run_dir)
    if done is None:
        raise BigNMFError(
            f"{run_dir} has no summary.json: the run has not finished (`bignmf resume "
            f"{run_dir}` finishes it)"
        )
    options = RunRecord.from_json(RunDir(run_dir).record()).options
    metrics = read_metrics(run_dir)
    return {
        "params": {
            **done["settings"],
            "max_iter": options.max_iter,
            "tol": options.tol,
            "stopping": options.stopping,
        },
        "loss_history": [r["loss"] for r in metrics],
        "objective_history": [r.get("objective", r["loss"]) for r in metrics],
        "n_iter": done["n_iter"],
        "converged": done["converged"],
        "reconstruction_err": done["reconstruction_err"],
        "relative_error": done["relative_error"],
        "run_dir": str(Path(run_dir).absolute()),
    }


def _factors(result: Any) -> tuple[Any, np.ndarray]:
    """(W, Hᵀ): W as the result holds it, or a run's ``W.zarr`` opened lazily (read by
    slabs of rows when written, never whole)."""
    if not isinstance(result, str | os.PathLike):
        return result.W, np.ascontiguousarray(np.asarray(result.H).T)
    import zarr

    from bignmf.fit.rundir import RunDir

    w_path, h_path = RunDir(result).factor_paths
    if not (w_path.exists() and h_path.exists()):
        raise BigNMFError(f"{result} has no W.zarr and H.zarr: the run has not finished")
    H = zarr.open_array(h_path, mode="r")[...]
    return zarr.open_array(w_path, mode="r"), np.ascontiguousarray(H.T)


def write(target: Any, result: Any, *, key_added: str = "nmf", layer: str | None = None) -> None:
    """Store a fit's W, Hᵀ and summary in an AnnData object, ``.zarr`` store or ``.h5ad`` file.

    Parameters
    ----------
    target : anndata.AnnData or path
        Where the fitted matrix came from (its shape must be the fit's).
    result : NMFResult or path
        A fit's result, or a finished run directory (W streamed from its ``W.zarr``).
    key_added : str, default 'nmf'
        ``obsm["X_<key>"]``, ``varm["<KEY>"]``, ``uns["<key>"]``, replaced if they exist.
    layer : str, optional
        The layer that was fitted (recorded in ``uns``).

    Raises
    ------
    InputError
        If ``target`` is no AnnData, or of another shape than the fit.
    """
    elements = Elements.named(key_added)
    W, Ht = _factors(result)
    uns = summary(result, layer)
    if isinstance(target, str | os.PathLike):
        kind = anndata_format(target)
        if kind is None:
            raise InputError(f"{target}: not an AnnData .zarr store or .h5ad file")
        (write_zarr if kind == "zarr" else write_h5ad)(target, W, Ht, uns, elements)
        return
    if tuple(target.shape) != (W.shape[0], Ht.shape[0]):
        raise InputError(
            f"<AnnData>: {target.shape[0]:,} x {target.shape[1]:,}; the results are of a "
            f"{W.shape[0]:,} x {Ht.shape[0]:,} matrix"
        )
    target.obsm[elements.obsm] = np.asarray(W.compute() if hasattr(W, "compute") else W)
    target.varm[elements.varm] = Ht
    target.uns[elements.uns] = _without_none(uns)


def _without_none(values: dict) -> dict:
    """``values`` less its None entries, at every depth: what a later ``adata.write_h5ad``
    can store."""
    return {
        name: _without_none(value) if isinstance(value, dict) else value
        for name, value in values.items()
        if value is not None
    }
