"""Results written back into an AnnData input: W as an ``obsm`` array, Hᵀ as a ``varm`` array
and a summary as an ``uns`` dict, in anndata's on-disk encoding.

Owns the write side of the AnnData encoding (the read side is :mod:`bignmf.io.common`): every
element carries the ``encoding-type``/``encoding-version`` attributes anndata's reader
dispatches on — ``array`` 0.2.0 for the factors, ``dict`` 0.1.0 for groups,
``numeric-scalar``, ``string`` and ``string-array`` 0.2.0 inside ``uns`` — so that
``anndata.read_zarr``/``read_h5ad`` and scanpy see them as they see ``obsm["X_pca"]``.

Nothing is written where a reader could see it half done:

- a ``.zarr`` store gets each new element written in full beside the store (a hidden staging
  group on the same file system), then renamed into place; its consolidated metadata, when it
  has some, is rewritten last (a stale index would hide the new elements from anndata);
- a ``.h5ad`` file is rebuilt beside itself (every object copied by HDF5, the replaced
  elements left out) and swapped in with :func:`os.replace`; on any error the copy is removed
  and the original is untouched.

W is streamed: read and written one chunk of rows at a time from NumPy, a Zarr array (a run's
``W.zarr``) or a lazy Dask array, so it never has to fit in memory; nothing m × n is formed.

May import: :mod:`bignmf.errors`; zarr and h5py (the ``readers`` extra) only inside the
functions (absolute imports: the libraries, not bignmf's modules).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bignmf.errors import InputError, MissingExtraError

__all__ = ["Elements", "anndata_format", "write_h5ad", "write_zarr"]

ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}
DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}
SCALAR = {"encoding-type": "numeric-scalar", "encoding-version": "0.2.0"}
STRING = {"encoding-type": "string", "encoding-version": "0.2.0"}
STRINGS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}

#: Bytes of W read and written at a time (one chunk of the obsm array): a few MB keeps memory
#: flat however many rows there are, and chunks large enough that compression pays.
CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Elements:
    """Where the results go: ``obsm[obsm]``, ``varm[varm]``, ``uns[uns]``.

    Attributes
    ----------
    obsm, varm, uns : str
        Names of W's, Hᵀ's and the summary's elements, scanpy's as for PCA (``X_pca``,
        ``PCs``, ``pca``): by default ``X_nmf``, ``NMF``, ``nmf``.
    """

    obsm: str = "X_nmf"
    varm: str = "NMF"
    uns: str = "nmf"

    @classmethod
    def named(cls, key: str) -> Elements:
        """``obsm["X_<key>"]``, ``varm["<KEY>"]``, ``uns["<key>"]`` (``"nmf"``: the defaults)."""
        if not key or "/" in key or key.startswith("."):
            raise InputError(f"key_added {key!r}: must be a non-empty name without '/'")
        return cls(f"X_{key}", key.upper(), key)

    def describe(self) -> str:
        """The elements in words, as a user indexes them."""
        return f"obsm[{self.obsm!r}], varm[{self.varm!r}], uns[{self.uns!r}]"


def anndata_format(path: str | os.PathLike) -> str | None:
    """``'zarr'`` for an AnnData ``.zarr`` store, ``'h5ad'`` for an ``.h5ad`` file, else None.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str or None
        Decided from the root's ``encoding-type`` (``anndata``), read from the metadata file
        alone (a ``.h5ad`` is told by its suffix and HDF5 signature).
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".h5ad":
        with open(path, "rb") as f:
            return "h5ad" if f.read(8) == b"\x89HDF\r\n\x1a\n" else None
    if not path.is_dir():
        return None
    for name in ("zarr.json", ".zattrs"):
        try:
            meta = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attrs = meta.get("attributes", {}) if name == "zarr.json" else meta
        if attrs.get("encoding-type") == "anndata":
            return "zarr"
    return None


def _rows_per_chunk(m: int, k: int, itemsize: int) -> int:
    return max(1, min(m, CHUNK_BYTES // max(1, k * itemsize)))


def _row_slabs(W: Any, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows of W)`` one slab at a time, computed if W is lazy."""
    m = W.shape[0]
    for start in range(0, m, rows):
        part = W[start : start + rows]
        part = part.compute() if hasattr(part, "compute") else part
        yield start, np.asarray(part)


def _check(W: Any, Ht: np.ndarray, shape: tuple[int, int], where: str) -> None:
    m, n = shape
    if W.shape[0] != m or Ht.shape[0] != n or W.shape[1] != Ht.shape[1]:
        raise InputError(
            f"{where}: holds {m:,} x {n:,}; the results have W {tuple(W.shape)} and H "
            f"{tuple(Ht.shape[::-1])}: they belong to another matrix"
        )


def _uns_items(uns: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """``(name, kind, value)`` of a summary: ``dict``, ``scalar``, ``string``, ``strings``,
    ``array``; None values are left out (AnnData has no encoding for None)."""
    for name, value in uns.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield name, "dict", value
        elif isinstance(value, str):
            yield name, "string", value
        elif isinstance(value, bool | int | float | np.number | np.bool_):
            yield name, "scalar", np.asarray(value)
        else:
            values = list(value)
            if values and all(isinstance(v, str) for v in values):
                yield name, "strings", values
            else:
                yield name, "array", np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------- Zarr


def _zarr_dict(group: Any, uns: Mapping[str, Any]) -> None:
    """``uns`` into ``group`` (a Zarr group with the dict encoding), recursively."""
    group.attrs.update(DICT)
    for name, kind, value in _uns_items(uns):
        if kind == "dict":
            _zarr_dict(group.create_group(name), value)
        elif kind == "string":
            group.create_array(name, shape=(), dtype=str, attributes=STRING)[()] = value
        elif kind == "strings":
            array = group.create_array(name, shape=(len(value),), dtype=str, attributes=STRINGS)
            array[:] = np.array(value, dtype=object)
        else:
            attrs = SCALAR if kind == "scalar" else ARRAY
            chunks = tuple(max(1, s) for s in value.shape)  # one chunk; () for a scalar
            array = group.create_array(
                name, shape=value.shape, dtype=value.dtype, chunks=chunks, attributes=attrs
            )
            array[...] = value


def _has_consolidated(path: Path, zarr_format: int) -> bool:
    if zarr_format == 2:
        return (path / ".zmetadata").exists()
    try:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


def write_zarr(
    path: str | os.PathLike,
    W: Any,
    Ht: np.ndarray,
    uns: Mapping[str, Any],
    elements: Elements = Elements(),
) -> None:
    """Write W, Hᵀ and a summary into an AnnData ``.zarr`` store, in place.

    Parameters
    ----------
    path : str or path-like
        The store (zarr format 2 or 3; its format is kept). ``X`` and everything else in it is
        left as it is.
    W : array-like, shape (m, k)
        NumPy, a Zarr array or a lazy Dask array: read one chunk of rows at a time.
    Ht : ndarray, shape (n, k)
        Hᵀ, the loadings of the variables.
    uns : mapping
        The summary: strings, numbers, sequences of numbers or of strings, nested mappings.
    elements : Elements
        The names in ``obsm``, ``varm`` and ``uns`` (replaced when they exist).

    Raises
    ------
    InputError
        If ``path`` is no AnnData store or the results are of another shape.

    Notes
    -----
    Memory: one chunk of W's rows (:data:`CHUNK_BYTES`), and Hᵀ. Each element is written
    whole beside the store, in a hidden staging directory, and renamed into place, so that a
    failure leaves the store as it was (the staging directory is removed); the consolidated
    metadata, when the store has any, is rewritten at the end.
    """
    import zarr

    path = Path(path).absolute()
    if anndata_format(path) != "zarr":
        raise InputError(f"{path}: not an AnnData .zarr store (encoding-type 'anndata')")
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    zarr_format = root.metadata.zarr_format
    _check(W, Ht, _zarr_shape(root, path), str(path))
    staging = path.with_name(f".{path.name}.bignmf-{uuid.uuid4().hex[:8]}")
    try:
        stage = zarr.open_group(staging, mode="w", zarr_format=zarr_format)
        m, k = W.shape
        rows = _rows_per_chunk(m, k, np.dtype(W.dtype).itemsize)
        out = stage.create_array(
            "obsm", shape=(m, k), dtype=W.dtype, chunks=(rows, k), attributes=ARRAY
        )
        for start, part in _row_slabs(W, rows):
            out[start : start + len(part)] = part
        Ht = np.ascontiguousarray(Ht)
        varm = stage.create_array("varm", shape=Ht.shape, dtype=Ht.dtype, attributes=ARRAY)
        varm[...] = Ht
        _zarr_dict(stage.create_group("uns"), uns)
        for parent in ("obsm", "varm", "uns"):  # AnnData always writes them; older tools not
            if parent not in root:
                root.create_group(parent, attributes=DICT)
        for parent in ("obsm", "varm", "uns"):
            _swap_in(staging / parent, path / parent / getattr(elements, parent), staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if _has_consolidated(path, zarr_format):
        with warnings.catch_warnings():
            # zarr says format 3 does not specify consolidated metadata; anndata reads it
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            zarr.consolidate_metadata(str(path), zarr_format=zarr_format)


def _zarr_shape(root: Any, path: Path) -> tuple[int, int]:
    """(n_obs, n_vars) from the obs and var indexes (AnnData records no shape at the root)."""
    try:
        obs, var = root["obs"], root["var"]
        return int(obs[obs.attrs["_index"]].shape[0]), int(var[var.attrs["_index"]].shape[0])
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: an AnnData store without obs/var indexes ({error})") from None


def _swap_in(new: Path, target: Path, staging: Path) -> None:
    """Rename ``new`` to ``target``, an older ``target`` moved into ``staging`` first (and put
    back if the rename fails): readers see the old element or the new one."""
    old = staging / f"old-{target.parent.name}"
    replaced = target.exists()
    if replaced:
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if replaced:
            os.replace(old, target)
        raise


# ------------------------------------------------------------------------------------- HDF5


def _h5_dict(group: Any, uns: Mapping[str, Any]) -> None:
    import h5py

    group.attrs.update(DICT)
    for name, kind, value in _uns_items(uns):
        if kind == "dict":
            _h5_dict(group.create_group(name), value)
        elif kind in ("string", "strings"):
            data = value if kind == "string" else np.array(value, dtype=object)
            dataset = group.create_dataset(name, data=data, dtype=h5py.string_dtype())
            dataset.attrs.update(STRING if kind == "string" else STRINGS)
        else:
            group.create_dataset(name, data=value).attrs.update(
                SCALAR if kind == "scalar" else ARRAY
            )


def _h5_shape(f: Any, path: Path) -> tuple[int, int]:
    try:
        obs, var = f["obs"], f["var"]
        index = {g.name: g.attrs["_index"] for g in (obs, var)}
        return int(obs[index["/obs"]].shape[0]), int(var[index["/var"]].shape[0])
    except (KeyError, TypeError) as error:
        raise InputError(f"{path}: an AnnData file without obs/var indexes ({error})") from None


def write_h5ad(
    path: str | os.PathLike,
    W: Any,
    Ht: np.ndarray,
    uns: Mapping[str, Any],
    elements: Elements = Elements(),
) -> None:
    """Write W, Hᵀ and a summary into an AnnData ``.h5ad`` file: rebuilt beside it and swapped
    in atomically.

    Parameters
    ----------
    path : str or path-like
        The ``.h5ad`` file.
    W, Ht, uns, elements
        As for :func:`write_zarr`.

    Raises
    ------
    InputError
        If ``path`` is no AnnData file or the results are of another shape.

    Notes
    -----
    The new file ``.<name>.bignmf-<id>.h5ad`` beside it receives every object of the original
    (HDF5's object copy: chunk by chunk, out of core), less the elements replaced, then the
    new ones (W one chunk of rows at a time), and replaces the original with
    :func:`os.replace` once closed and synced. The original is never opened for writing: on
    any error, the new file is removed and the original is as it was. Needs free space for a
    second copy of the file while it runs.
    """
    try:
        import h5py
    except ImportError as error:
        raise MissingExtraError(
            f"writing into .h5ad needs h5py ({error}): pip install 'bignmf-dask[readers]'"
        ) from None

    path = Path(path).absolute()
    if anndata_format(path) != "h5ad":
        raise InputError(f"{path}: not an AnnData .h5ad file")
    tmp = path.with_name(f".{path.stem}.bignmf-{uuid.uuid4().hex[:8]}.h5ad")
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            _check(W, Ht, _h5_shape(src, path), str(path))
            _h5_copy(src, dst, elements)
            m, k = W.shape
            rows = _rows_per_chunk(m, k, np.dtype(W.dtype).itemsize)
            obsm = dst.create_dataset(
                f"obsm/{elements.obsm}", shape=(m, k), dtype=W.dtype, chunks=(rows, k)
            )
            for start, part in _row_slabs(W, rows):
                obsm[start : start + len(part)] = part
            obsm.attrs.update(ARRAY)
            dst.create_dataset(f"varm/{elements.varm}", data=np.asarray(Ht)).attrs.update(ARRAY)
            _h5_dict(dst.create_group(f"uns/{elements.uns}"), uns)
        with open(tmp, "rb+") as f:  # on disk before it replaces the original
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _h5_copy(src: Any, dst: Any, elements: Elements) -> None:
    """Every object of ``src`` into ``dst`` but the elements to replace; the three parent
    groups made (with the dict encoding) when ``src`` has none."""
    dst.attrs.update(src.attrs)
    replaced = {"obsm": elements.obsm, "varm": elements.varm, "uns": elements.uns}
    for name in src:
        if name in replaced:
            group = dst.create_group(name)
            group.attrs.update(src[name].attrs)
            for child in src[name]:
                if child != replaced[name]:
                    src[name].copy(child, group)
        else:
            src.copy(name, dst)
    for name in replaced:
        if name not in dst:
            dst.create_group(name).attrs.update(DICT)
