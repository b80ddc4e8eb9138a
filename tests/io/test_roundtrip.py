"""Every input format through its reader and the writer into a store, and back, exactly."""

from __future__ import annotations

import gzip
import shutil
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

from bignmf import InputError, convert, open_matrix, write_matrix
from bignmf.io.registry import open_source

WRITE = {"chunk_size": 256, "block_nnz": 700}


def canonical(A, dtype):
    A = sp.csr_matrix(A, dtype=dtype, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def random_matrix(m=300, n=120, density=0.05, seed=0):
    """Values with few bits (exact in float32 and in any summation order), empty rows."""
    rng = np.random.default_rng(seed)
    A = sp.random(m, n, density=density, format="csr", random_state=seed)
    A.data = rng.integers(1, 4096, A.nnz) / 64
    keep = np.ones(m, dtype=bool)
    keep[[0, 7, 8, m - 1]] = False
    A = sp.csr_matrix(sp.diags(keep.astype(float)) @ A)
    A.eliminate_zeros()
    return A


@pytest.fixture(scope="module")
def A():
    return random_matrix()


def round_trip(src, dst, expected, dtype=None, **open_kwargs):
    """Write ``src`` through open_source and write_matrix, read the store back, compare."""
    store = write_matrix(open_source(src, **open_kwargs), dst, **WRITE)
    assert store.dtype == (dtype or np.float64)
    got = open_matrix(dst).to_scipy()
    want = canonical(expected, store.dtype)
    assert got.shape == want.shape
    assert store.nnz == want.nnz
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)
    assert got.data.dtype == want.dtype
    blocks = list(store.iter_blocks())
    assert sum(b.shape[0] for b in blocks) == want.shape[0]
    return store


def messy_coo(A, seed=1):
    """A's entries shuffled, some duplicated (halves that sum back) and some explicit zeros."""
    C = A.tocoo()
    rng = np.random.default_rng(seed)
    dup = rng.choice(C.nnz, 40, replace=False)
    rows = np.r_[C.row, C.row[dup], C.row[:5]]
    cols = np.r_[C.col, C.col[dup], C.col[:5]]
    vals = np.r_[C.data, np.zeros(40), np.zeros(5)]
    vals[dup] = C.data[dup] / 2
    vals[C.nnz : C.nnz + 40] = C.data[dup] / 2
    order = rng.permutation(rows.size)
    return sp.coo_matrix((vals[order], (rows[order], cols[order])), shape=A.shape)


def test_in_memory_sources(tmp_path, A):
    round_trip(A, tmp_path / "csr", A)
    round_trip(messy_coo(A), tmp_path / "coo", A)
    round_trip(A.toarray(), tmp_path / "numpy", A)
    x = da.from_array(A.toarray(), chunks=((50, 1, 100, 149), (30, 90)))
    round_trip(x, tmp_path / "dask-dense", A)
    round_trip(x.map_blocks(sp.csr_matrix, dtype=x.dtype), tmp_path / "dask-sparse", A)
    ints = A.astype(np.int64)
    round_trip(ints, tmp_path / "ints", ints, dtype=np.float32)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("compressed", [True, False])
def test_npz(tmp_path, A, fmt, compressed):
    M = messy_coo(A) if fmt == "coo" else A.asformat(fmt)
    sp.save_npz(tmp_path / "a.npz", M, compressed=compressed)
    round_trip(tmp_path / "a.npz", tmp_path / "store", A, slab_nnz=100, memory_nnz=300)


@pytest.mark.parametrize("memory_nnz", [10**6, 300])
def test_mtx(tmp_path, A, memory_nnz):
    kwargs = {"slab_nnz": 100, "memory_nnz": memory_nnz, "tmpdir": tmp_path / "tmp"}
    scipy.io.mmwrite(tmp_path / "a.mtx", A)
    round_trip(tmp_path / "a.mtx", tmp_path / "general", A, **kwargs)
    scipy.io.mmwrite(tmp_path / "shuffled.mtx", messy_coo(A))
    round_trip(tmp_path / "shuffled.mtx", tmp_path / "shuffled", A, **kwargs)
    with (
        open(tmp_path / "shuffled.mtx", "rb") as src,
        gzip.open(tmp_path / "s.mtx.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    round_trip(tmp_path / "s.mtx.gz", tmp_path / "gz", A, **kwargs)
    S = sp.csr_matrix(A[:120] + A[:120].T)
    scipy.io.mmwrite(tmp_path / "s.mtx", S, symmetry="symmetric")
    round_trip(tmp_path / "s.mtx", tmp_path / "symmetric", S, **kwargs)
    P = A.copy()
    P.data[:] = 1
    scipy.io.mmwrite(tmp_path / "p.mtx", P, field="pattern")
    round_trip(tmp_path / "p.mtx", tmp_path / "pattern", P, dtype=np.float32, **kwargs)
    ints = A.copy()
    ints.data = np.ceil(ints.data).astype(np.int64)
    scipy.io.mmwrite(tmp_path / "i.mtx", ints)
    round_trip(tmp_path / "i.mtx", tmp_path / "integer", ints, dtype=np.float32, **kwargs)
    scipy.io.mmwrite(tmp_path / "d.mtx", A[:80].toarray())
    round_trip(tmp_path / "d.mtx", tmp_path / "array", A[:80], **kwargs)
    assert list((tmp_path / "tmp").glob("*")) == []


def test_anndata_stores(tmp_path, A):
    counts = A.copy()
    counts.data = np.ceil(counts.data).astype(np.int32)
    adata = ad.AnnData(X=A.astype(np.float32))
    adata.layers["csc"] = A.tocsc()
    adata.layers["dense"] = A.toarray()
    adata.layers["counts"] = counts
    paths = [tmp_path / "a.h5ad", tmp_path / "a2.zarr", tmp_path / "a3.zarr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about zarr format defaults
        adata.write_h5ad(paths[0])
        with ad.settings.override(zarr_write_format=2):
            adata.write_zarr(paths[1])
        with ad.settings.override(zarr_write_format=3):
            adata.write_zarr(paths[2])
    for i, path in enumerate(paths):
        kw = {"slab_nnz": 100, "memory_nnz": 300}
        round_trip(path, tmp_path / f"x{i}", A, dtype=np.float32, **kw)
        round_trip(path, tmp_path / f"csc{i}", A, key="layers/csc", **kw)
        round_trip(path, tmp_path / f"dense{i}", A, key="layers/dense", **kw)
        round_trip(path, tmp_path / f"counts{i}", counts, dtype=np.float32, key="layers/counts")


def test_zarr_dense_and_a_store_converted_again(tmp_path, A):
    z = zarr.create_array(tmp_path / "dense.zarr", shape=A.shape, chunks=(64, 64), dtype="f8")
    z[:] = A.toarray()
    round_trip(tmp_path / "dense.zarr", tmp_path / "from-dense", A)
    # a bignmf store is a csr_matrix group: it converts again (to another blocking, say)
    round_trip(tmp_path / "from-dense", tmp_path / "again", A)


def test_convert_entry_point(tmp_path, A):
    scipy.io.mmwrite(tmp_path / "a.mtx", messy_coo(A))
    store = convert(tmp_path / "a.mtx", tmp_path / "store", slab_nnz=100, **WRITE)
    np.testing.assert_array_equal(store.to_scipy().toarray(), A.toarray())


def test_empty_matrix_is_refused_by_the_writer(tmp_path):
    path = tmp_path / "empty.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n4 3 0\n")
    with pytest.raises(InputError, match="no nonzero"):
        write_matrix(open_source(path), tmp_path / "store")


def test_reader_errors_reach_the_writer_with_their_place(tmp_path, A):
    C = A.tocoo()
    with open(tmp_path / "bad.mtx", "w") as fh:
        fh.write(f"%%MatrixMarket matrix coordinate real general\n300 120 {C.nnz}\n")
        for k, (r, c, v) in enumerate(zip(C.row, C.col, C.data, strict=True)):
            fh.write(f"{r + 1} {c + 1 if k != 500 else 121} {v}\n")
    with pytest.raises(InputError, match=r"bad\.mtx, line 503: column index 121"):
        write_matrix(open_source(tmp_path / "bad.mtx"), tmp_path / "store")
    assert not (tmp_path / "store").exists()
    negative = A.copy()
    negative.data[10] = -1
    with pytest.raises(InputError, match="negative"):
        write_matrix(open_source(negative), tmp_path / "store")
