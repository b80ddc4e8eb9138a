"""AnnData in and out: ``bignmf.anndata.fit`` and ``bignmf fit --write-back`` store W, Hᵀ and a
summary in obsm["X_nmf"], varm["NMF"], uns["nmf"] of a .zarr store (in place), a .h5ad file
(rebuilt beside and swapped in) or an in-memory AnnData; read back with anndata itself."""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
import bignmf.anndata
from bignmf.cli import main
from bignmf.io import writeback

ad = pytest.importorskip("anndata")

M, N, K = 240, 30, 3
UNS_KEYS = {"params", "loss_history", "objective_history", "n_iter", "converged"}
UNS_KEYS |= {"reconstruction_err", "relative_error", "bignmf_version"}
FIT = {"random_state": 0, "max_iter": 8, "scheduler": "sync"}


def _adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    W, H = rng.random((M, K)), rng.random((K, N))
    counts = sp.csr_matrix(np.where(rng.random((M, N)) < 0.4, W @ H, 0).astype(np.float32))
    adata = ad.AnnData(counts.copy(), layers={"counts": counts * 3})
    adata.var_names = [f"GENE{j}" for j in range(N)]
    adata.obs_names = [f"cell{i}" for i in range(M)]
    return adata


def _write(adata: ad.AnnData, path, zarr_format: int | None = None) -> None:
    if zarr_format is None:
        adata.write_h5ad(path)
        return
    with ad.settings.override(zarr_write_format=zarr_format), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about zarr format 3 defaults
        adata.write_zarr(path)


def _read(path) -> ad.AnnData:
    if str(path).endswith(".h5ad"):
        return ad.read_h5ad(path)
    return ad.read_zarr(path)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_store_gets_the_results_in_place_and_stays_consolidated(tmp_path, zarr_format):
    adata = _adata()
    path = tmp_path / "cells.zarr"
    _write(adata, path, zarr_format)
    result = bignmf.anndata.fit(path, K, layer="counts", **FIT)
    back = _read(path)
    assert np.array_equal(back.obsm["X_nmf"], result.W)
    assert np.array_equal(back.varm["NMF"], result.H.T)
    assert back.obsm["X_nmf"].dtype == np.float32
    assert set(back.uns["nmf"]) >= UNS_KEYS
    assert back.uns["nmf"]["params"]["layer"] == "counts"
    assert back.uns["nmf"]["params"]["seed"] == 0
    assert back.uns["nmf"]["n_iter"] == result.n_iter
    assert np.array_equal(back.uns["nmf"]["loss_history"], result.loss_history)
    assert back.uns["nmf"]["relative_error"] == pytest.approx(result.relative_error)
    # nothing else changed: X, the layer, the names
    assert (back.X != adata.X).nnz == 0
    assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert list(back.var_names) == list(adata.var_names)
    # the consolidated index anndata reads lists the new elements (it would hide stale ones)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        root = zarr.open_consolidated(str(path), zarr_format=zarr_format)
    assert "X_nmf" in root["obsm"]
    assert "NMF" in root["varm"]
    assert "nmf" in root["uns"]
    assert root["obsm/X_nmf"].attrs["encoding-type"] == "array"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]  # no staging left


def test_h5ad_is_rewritten_and_swapped_and_a_second_write_replaces(tmp_path):
    adata = _adata()
    path = tmp_path / "cells.h5ad"
    _write(adata, path)
    first = bignmf.anndata.fit(path, K, **FIT)
    second = bignmf.anndata.fit(path, K + 1, **{**FIT, "random_state": 1})
    back = _read(path)
    assert np.array_equal(back.obsm["X_nmf"], second.W)  # replaced, not the first
    assert np.array_equal(back.varm["NMF"], second.H.T)
    assert back.obsm["X_nmf"].shape == (M, K + 1) != first.W.shape
    assert back.uns["nmf"]["params"]["layer"] == "X"
    assert (back.X != adata.X).nnz == 0
    assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]  # no temp file left


def test_a_failure_mid_write_leaves_the_h5ad_untouched(tmp_path, monkeypatch):
    path = tmp_path / "cells.h5ad"
    _write(_adata(), path)
    before = _digest(path)
    monkeypatch.setattr(writeback, "CHUNK_BYTES", 4 * K * 16)  # 16 rows a slab: several slabs
    real = writeback._row_slabs

    def failing(W, rows):
        for n, slab in enumerate(real(W, rows)):
            if n == 2:
                raise OSError("disk full (injected)")
            yield slab

    monkeypatch.setattr(writeback, "_row_slabs", failing)
    W, H = np.ones((M, K), np.float32), np.ones((K, N), np.float32)
    with pytest.raises(OSError, match="injected"):
        writeback.write_h5ad(path, W, H.T, {"n_iter": 1})
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]
    _write(_adata(), tmp_path / "cells.zarr", 3)
    with pytest.raises(OSError, match="injected"):  # the same for a .zarr store
        writeback.write_zarr(tmp_path / "cells.zarr", W, H.T, {"n_iter": 1})
    assert "X_nmf" not in _read(tmp_path / "cells.zarr").obsm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "cells.zarr"]


class _Rows:
    """A W that records the rows asked of it at a time (it must be streamed, never whole)."""

    def __init__(self, W):
        self.W, self.shape, self.dtype, self.largest = W, W.shape, W.dtype, 0

    def __getitem__(self, rows: slice):
        self.largest = max(self.largest, len(range(*rows.indices(self.shape[0]))))
        return self.W[rows]


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_w_is_streamed_by_slabs_of_rows(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"cells{suffix}"
    _write(_adata(), path, 3 if suffix == ".zarr" else None)
    monkeypatch.setattr(writeback, "CHUNK_BYTES", 50 * K * 4)  # 50 rows of float32 at a time
    W = _Rows(np.random.default_rng(1).random((M, K)).astype(np.float32))
    Ht = np.ones((N, K), np.float32)
    (writeback.write_zarr if suffix == ".zarr" else writeback.write_h5ad)(path, W, Ht, {})
    assert W.largest == 50
    assert np.array_equal(_read(path).obsm["X_nmf"], W.W)


def test_in_memory_anndata_gets_the_attributes(tmp_path):
    adata = _adata()
    result = bignmf.anndata.fit(adata, K, layer="counts", key_added="nmf_k3", **FIT)
    plain = bignmf.nmf(adata.layers["counts"], K, **FIT)
    assert np.array_equal(adata.obsm["X_nmf_k3"], plain.W)  # the same fit as bignmf.nmf's
    assert np.array_equal(adata.varm["NMF_K3"], plain.H.T)
    assert np.array_equal(result.W, plain.W)
    assert set(adata.uns["nmf_k3"]) >= UNS_KEYS
    adata.write_h5ad(tmp_path / "saved.h5ad")  # what was set is what anndata can save
    assert _read(tmp_path / "saved.h5ad").uns["nmf_k3"]["params"]["layer"] == "counts"


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    sp.save_npz(tmp_path / "a.npz", sp.random(20, 5, density=0.5, format="csr"))
    with pytest.raises(bignmf.InputError, match="not an AnnData"):
        bignmf.anndata.fit(tmp_path / "a.npz", 2)
    with pytest.raises(bignmf.InputError, match="no layer 'raw'"):
        bignmf.anndata.fit(_adata(), 2, layer="raw")
    with pytest.raises(bignmf.InputError, match="key_added"):
        bignmf.anndata.fit(_adata(), 2, key_added="a/b")
    monkeypatch.setitem(__import__("sys").modules, "anndata", None)  # as if not installed
    with pytest.raises(bignmf.MissingExtraError, match=r"bignmf-dask\[readers\]"):
        bignmf.anndata.fit(object(), 2)


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_cli_write_back_equals_the_run_factors(tmp_path, capsys, suffix):
    path = tmp_path / f"cells{suffix}"
    _write(_adata(), path, 3 if suffix == ".zarr" else None)
    run = tmp_path / "run"
    status = main(["fit", str(path), "-k", str(K), "--out", str(run), "--scheduler", "sync",
                   "--max-iter", "6", "--no-progress", "--write-back", "--top", "2"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"written back into {path}: obsm['X_nmf'], varm['NMF'], uns['nmf']" in out
    assert "component   0: GENE" in out  # var_names are the vocabulary
    back = _read(path)
    assert np.array_equal(back.obsm["X_nmf"], zarr.open_array(run / "W.zarr")[...])
    assert np.array_equal(back.varm["NMF"], zarr.open_array(run / "H.zarr")[...].T)
    assert back.uns["nmf"]["run_dir"] == str(run.absolute())
    assert back.uns["nmf"]["n_iter"] == 6
    # --no-progress: nothing on stderr but the notice that a .h5ad is converted
    assert err == ("" if suffix == ".zarr" else f"converting {path} into {run / 'A.zarr'}\n")
    assert main(["top-features", str(run), "-n", "2"]) == 0
    assert capsys.readouterr().out.startswith("component   0: GENE")


def test_cli_write_back_of_a_layer_with_progress(tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    _write(_adata(), path)
    status = main(["fit", str(path), "-k", "2", "--out", str(tmp_path / "run"), "--scheduler",
                   "sync", "--max-iter", "4", "--layer", "counts", "--write-back"])  # fmt: skip
    _, err = capsys.readouterr()
    assert status == 0
    assert f"writing obsm['X_nmf'], varm['NMF'], uns['nmf'] into {path}" in err
    assert _read(path).uns["nmf"]["params"]["layer"] == "counts"


def test_cli_write_back_refuses_an_input_that_is_not_anndata(tmp_path, capsys):
    sp.save_npz(tmp_path / "a.npz", sp.random(20, 5, density=0.5, format="csr"))
    status = main(["fit", str(tmp_path / "a.npz"), "-k", "2", "--out", str(tmp_path / "run"),
                   "--write-back", "--scheduler", "sync"])  # fmt: skip
    _, err = capsys.readouterr()
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bignmf fit: error: --write-back: ")
    assert str(tmp_path / "a.npz") in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything is converted or fitted
    status = main(["fit", str(tmp_path / "a.npz"), "-k", "2", "--out", str(tmp_path / "run"),
                   "--layer", "counts", "--key", "X"])  # fmt: skip
    assert status == 2
    assert "not both" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_resume_write_back_goes_into_the_fits_input_and_layer(tmp_path, capsys):
    """A fit stopped before its write-back (here: without one) is resumed with --write-back:
    the results go into the input and layer `bignmf fit` was given; a resume of a finished run
    writes back again (a write-back that was killed is done over)."""
    path = tmp_path / "cells.h5ad"
    _write(_adata(), path)
    run = tmp_path / "run"
    quiet = ["--scheduler", "sync", "--no-progress"]
    back_as = ["--write-back", "--key-added", "nmf_counts"]
    fit = ["fit", str(path), "-k", "2", "--out", str(run), "--max-iter", "3", "--tol", "0"]
    assert main([*fit, "--layer", "counts", *quiet]) == 0
    assert "nmf" not in _read(path).uns
    assert main(["resume", str(run), "--max-iter", "5", *quiet, *back_as]) == 0
    assert f"written back into {path}" in capsys.readouterr().out
    back = _read(path)
    assert np.array_equal(back.obsm["X_nmf_counts"], zarr.open_array(run / "W.zarr")[...])
    assert back.uns["nmf_counts"]["n_iter"] == 5
    assert back.uns["nmf_counts"]["params"]["layer"] == "counts"
    del back.obsm["X_nmf_counts"]
    back.write_h5ad(path)
    assert main(["resume", str(run), *quiet, *back_as]) == 0
    out, err = capsys.readouterr()
    assert "nothing changed" in err
    assert f"written back into {path}" in out
    assert np.array_equal(_read(path).obsm["X_nmf_counts"], zarr.open_array(run / "W.zarr")[...])


def test_resume_write_back_of_a_run_that_is_not_of_anndata_is_refused(tmp_path, capsys):
    sp.save_npz(tmp_path / "a.npz", sp.random(20, 5, density=0.5, format="csr", random_state=0))
    run = tmp_path / "run"
    fit = ["fit", str(tmp_path / "a.npz"), "-k", "2", "--out", str(run), "--max-iter", "2"]
    assert main([*fit, "--scheduler", "sync", "--no-progress"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in run.iterdir())
    assert main(["resume", str(run), "--write-back", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not an AnnData .zarr store or .h5ad file" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == before
