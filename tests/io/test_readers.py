"""Streaming readers: every input format back as the same matrix, and errors that say where."""

from __future__ import annotations

import gzip
import shutil
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

from bignmf import InputError
from bignmf.io.hdf5 import from_h5ad
from bignmf.io.memory import from_dask, from_numpy, from_scipy
from bignmf.io.mtx import from_mtx
from bignmf.io.npz import from_npz
from bignmf.io.registry import SUPPORTED_FORMATS, open_source
from bignmf.io.zarr import from_anndata_zarr, from_zarr_dense
from bignmf.types import Source

# --------------------------------------------------------------------------- helpers


def stream(source):
    """Concatenate a Source's slabs, checking the contract of every slab on the way."""
    m, n = source.shape
    slabs = list(source.blocks())
    for slab in slabs:
        assert type(slab) is sp.csr_matrix
        assert slab.shape[1] == n
        assert slab.dtype == source.dtype
        if slab.nnz:
            assert slab.indices.min() >= 0
            assert slab.indices.max() < n
        assert slab.indptr[0] == 0
        assert slab.indptr[-1] == slab.nnz
    assert sum(s.shape[0] for s in slabs) == m
    out = sp.vstack(slabs, format="csr") if slabs else sp.csr_matrix((m, n), dtype=source.dtype)
    return out, slabs


def canonical(A, dtype=None):
    A = sp.csr_matrix(A, dtype=dtype or A.dtype, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def assert_same(source, A, dtype=None):
    """The source streams exactly A (in canonical form), with the expected dtype."""
    B, slabs = stream(source)
    if dtype is not None:
        assert source.dtype == dtype
    B, A = canonical(B), canonical(A, dtype=B.dtype)
    assert B.shape == A.shape
    np.testing.assert_array_equal(B.indptr, A.indptr)
    np.testing.assert_array_equal(B.indices, A.indices)
    np.testing.assert_array_equal(B.data, A.data)
    return slabs


def random_matrix(m=300, n=120, density=0.05, seed=0):
    """float64 values with empty rows (first, last, 7 and 8) and an empty column."""
    A = sp.random(m, n, density=density, format="csr", random_state=seed)
    keep = np.ones(m, dtype=bool)
    keep[[0, 7, 8, m - 1]] = False
    A = sp.csr_matrix(sp.diags(keep.astype(float)) @ A)
    A = sp.csr_matrix(A @ sp.diags((np.arange(n) != 3).astype(float)))
    A.eliminate_zeros()
    A.data += 0.25
    return A


@pytest.fixture(scope="module")
def A():
    return random_matrix()


def check_slab_nnz(slabs, slab_nnz):
    """No slab holds more than slab_nnz entries, unless it is a single row."""
    for slab in slabs:
        assert slab.nnz <= slab_nnz or slab.shape[0] == 1


# --------------------------------------------------------------------------- in memory


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        sp.lil_matrix,
        lambda A: sp.bsr_matrix(A, blocksize=(3, 4)),
        sp.csr_array,
        sp.coo_array,
    ],
)
def test_from_scipy(A, convert):
    slabs = assert_same(from_scipy(convert(A), slab_nnz=150), A, dtype=np.float64)
    check_slab_nnz(slabs, 150)
    assert len(slabs) > 5


def test_from_scipy_slabs_are_copies(A):
    B = A.copy()
    for slab in from_scipy(B).blocks():
        slab.data[:] = -1
        slab.indices[:] = 0
    np.testing.assert_array_equal(B.data, A.data)
    np.testing.assert_array_equal(B.indices, A.indices)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.bool_, np.float32),
        (np.int32, np.int32),
        (np.uint16, np.uint16),
        (np.float32, np.float32),
    ],
)
def test_value_dtypes(A, dtype, expected):
    B = A.astype(dtype)
    assert_same(from_scipy(B), B, dtype=expected)
    assert_same(from_numpy(B.toarray()), B, dtype=expected)


def test_zero_nonzeros_and_empty_shapes():
    Z = sp.csr_matrix((50, 20))
    assert_same(from_scipy(Z), Z)
    assert_same(from_numpy(np.zeros((50, 20))), Z)
    assert_same(from_scipy(sp.csr_matrix((0, 4))), sp.csr_matrix((0, 4)))


def test_from_numpy(A):
    dense = A.toarray()
    slabs = assert_same(from_numpy(dense, slab_nnz=500), A, dtype=np.float64)
    assert {s.shape[0] for s in slabs[:-1]} == {500 // A.shape[1]}
    assert_same(from_numpy(np.asfortranarray(dense)), A)


def test_in_memory_errors():
    with pytest.raises(InputError, match="expected 2"):
        from_numpy(np.zeros(5))
    with pytest.raises(InputError, match="complex"):
        from_numpy(np.zeros((2, 2), dtype=complex))
    with pytest.raises(InputError, match="complex"):
        from_scipy(sp.csr_matrix(np.eye(2, dtype=complex)))
    with pytest.raises(InputError, match="not numbers"):
        from_numpy(np.array([["a"]]))
    with pytest.raises(ValueError, match="slab_nnz"):
        from_numpy(np.zeros((2, 2)), slab_nnz=0)
    bad = sp.csr_matrix((np.ones(2), np.array([0, 5]), np.array([0, 1, 2])), shape=(2, 3))
    with pytest.raises(
        InputError, match=r"column indices: 1 indices outside \[0, 3\) \(first: 5\)"
    ):
        stream(from_scipy(bad))
    bad = sp.csr_matrix((np.ones(2), np.array([0, 1]), np.array([0, 2, 2])), shape=(2, 3))
    bad.indptr[1] = 3  # no longer non-decreasing
    with pytest.raises(InputError, match="indptr decreases at row 1"):
        stream(from_scipy(bad))


# --------------------------------------------------------------------------- dask


@pytest.mark.parametrize("chunks", [(70, 45), ((50, 1, 100, 149), (30, 90)), (300, 120)])
@pytest.mark.parametrize("sparse_chunks", [False, True])
def test_from_dask(A, chunks, sparse_chunks):
    x = da.from_array(A.toarray(), chunks=chunks)
    if sparse_chunks:
        x = x.map_blocks(sp.csr_matrix, dtype=x.dtype)
    slabs = assert_same(from_dask(x, slab_nnz=100), A, dtype=np.float64)
    check_slab_nnz(slabs, 100)


def test_from_dask_computes_one_row_stripe_at_a_time(A):
    computed = []

    def record(block, block_info=None):
        computed.append(block_info[0]["chunk-location"])
        return block

    x = da.from_array(A.toarray(), chunks=(100, 60)).map_blocks(record, dtype=float)
    with dask.config.set(scheduler="synchronous"):
        it = from_dask(x).blocks()
        next(it)
        assert sorted(computed) == [(0, 0), (0, 1)]
        rest = list(it)
    assert sorted(computed) == [(i, j) for i in range(3) for j in range(2)]
    assert sum(s.shape[0] for s in rest) == 200


def test_from_dask_errors(A):
    x = da.from_array(A.toarray(), chunks=(100, 60))
    with pytest.raises(InputError, match="compute_chunk_sizes"):
        from_dask(x[x[:, 0] > 0.5])
    with pytest.raises(InputError, match="expected 2"):
        from_dask(x[0])
    wrong = x.map_blocks(lambda b: b[:-1], dtype=float)  # chunks lie about their shape
    with pytest.raises(InputError, match=r"chunk \(0, 0\) has shape \(99, 60\)"):
        stream(from_dask(wrong))


# --------------------------------------------------------------------------- .npz


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr"])
def test_from_npz(tmp_path, A, fmt, compressed):
    path = tmp_path / f"a_{fmt}.npz"
    M = sp.bsr_matrix(A, blocksize=(3, 4)) if fmt == "bsr" else A.asformat(fmt)
    sp.save_npz(path, M, compressed=compressed)
    slabs = assert_same(from_npz(path, slab_nnz=100, memory_nnz=400), A, dtype=np.float64)
    check_slab_nnz(slabs, 100)
    assert_same(open_source(path), A)


def test_from_npz_dia(tmp_path):
    D = sp.diags([np.arange(1.0, 50), np.full(50, 2.0), np.arange(1.0, 49)], [-1, 0, 2], (50, 50))
    sp.save_npz(tmp_path / "d.npz", sp.dia_matrix(D))
    assert_same(from_npz(tmp_path / "d.npz", slab_nnz=20), D)


def test_from_npz_coo_shuffled_with_duplicates_and_ints(tmp_path, A):
    C = A.tocoo()
    rng = np.random.default_rng(0)
    order = rng.permutation(C.nnz)
    rows, cols = np.r_[C.row[order], C.row[:10]], np.r_[C.col[order], C.col[:10]]
    vals = rng.integers(1, 100, rows.size)
    M = sp.coo_matrix((vals, (rows, cols)), shape=A.shape)
    sp.save_npz(tmp_path / "c.npz", M)
    assert_same(from_npz(tmp_path / "c.npz", memory_nnz=200), M, dtype=np.int64)


def test_from_npz_reads_piecewise(tmp_path, monkeypatch, A):
    """The data member is never read whole: at most slab-sized reads."""
    import bignmf.io.npz as npz

    sp.save_npz(tmp_path / "a.npz", A)
    sizes = []
    real = npz._NpyStream.read

    def spy(self, count):
        if self.name.endswith("[data.npy]"):
            sizes.append(count)
        return real(self, count)

    monkeypatch.setattr(npz._NpyStream, "read", spy)
    assert_same(from_npz(tmp_path / "a.npz", slab_nnz=100), A)
    assert len(sizes) > 5
    assert max(sizes) < 200


def test_from_npz_errors(tmp_path, A):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(InputError, match=r"plain\.npz: not written by scipy.sparse.save_npz"):
        from_npz(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match=r"junk\.npz: not a readable \.npz"):
        from_npz(tmp_path / "junk.npz")
    sp.save_npz(tmp_path / "c.npz", sp.csr_matrix(np.eye(3, dtype=complex)))
    with pytest.raises(InputError, match="complex"):
        from_npz(tmp_path / "c.npz")
    # a csr matrix whose shape says one row more than indptr has
    with zipfile.ZipFile(tmp_path / "shape.npz", "w") as zf:
        for key, value in {
            "format": np.array(b"csr"),
            "shape": np.array([A.shape[0] + 1, A.shape[1]]),
            "data": A.data,
            "indices": A.indices,
            "indptr": A.indptr,
        }.items():
            with zf.open(f"{key}.npy", "w") as fh:
                np.lib.format.write_array(fh, value)
    with pytest.raises(InputError, match=r"shape\.npz: indptr has 301 entries, expected 302"):
        stream(from_npz(tmp_path / "shape.npz"))
    # a truncated data member
    sp.save_npz(tmp_path / "full.npz", A, compressed=False)
    with (
        zipfile.ZipFile(tmp_path / "full.npz") as src,
        zipfile.ZipFile(tmp_path / "cut.npz", "w") as dst,
    ):
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item == "data.npy" else data)
    with pytest.raises(InputError, match=r"cut\.npz\[data\.npy\]: ends after"):
        stream(from_npz(tmp_path / "cut.npz"))


# --------------------------------------------------------------------------- Matrix Market


def mmwrite(path, M, **kwargs):
    scipy.io.mmwrite(path, M, **kwargs)
    return Path(path)


def gzipped(path):
    out = Path(f"{path}.gz")
    with open(path, "rb") as src, gzip.open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def write_entries(path, header, shape, rows, cols, vals=None, nnz=None):
    """A coordinate .mtx with the given 0-based entries in the given order."""
    with open(path, "w") as fh:
        fh.write(f"%%MatrixMarket matrix coordinate {header}\n% written by a test\n")
        fh.write(f"{shape[0]} {shape[1]} {len(rows) if nnz is None else nnz}\n")
        for k in range(len(rows)):
            value = "" if vals is None else f" {vals[k].item()!r}"
            fh.write(f"{rows[k] + 1} {cols[k] + 1}{value}\n")
    return Path(path)


@pytest.mark.parametrize("memory_nnz", [10**6, 300])
def test_mtx_general(tmp_path, A, memory_nnz):
    path = mmwrite(tmp_path / "a.mtx", A)
    slabs = assert_same(from_mtx(path, slab_nnz=100, memory_nnz=memory_nnz), A, np.float64)
    check_slab_nnz(slabs, 100)
    assert_same(from_mtx(gzipped(path), slab_nnz=100, memory_nnz=memory_nnz), A, np.float64)


@pytest.mark.parametrize("module", ["bz2", "lzma"])
def test_mtx_bz2_and_xz(tmp_path, A, module):
    import bz2
    import lzma

    path = mmwrite(tmp_path / "a.mtx", A)
    packed = tmp_path / f"a.mtx.{'bz2' if module == 'bz2' else 'xz'}"
    packed.write_bytes({"bz2": bz2, "lzma": lzma}[module].compress(path.read_bytes()))
    assert_same(open_source(packed, slab_nnz=100), A)


def test_mtx_symmetric_and_skew(tmp_path, A):
    S = sp.csr_matrix(A[:120] + A[:120].T)
    path = mmwrite(tmp_path / "s.mtx", S, symmetry="symmetric")
    assert b"symmetric" in path.read_bytes()[:60]
    assert_same(from_mtx(path, memory_nnz=200, slab_nnz=50), S)
    K = sp.csr_matrix(sp.triu(S, 1) - sp.triu(S, 1).T)
    path = mmwrite(tmp_path / "k.mtx", K, symmetry="skew-symmetric")
    assert b"skew-symmetric" in path.read_bytes()[:60]
    assert_same(from_mtx(path), K)  # negative values: the writer's business


def test_mtx_integer_and_pattern(tmp_path, A):
    rng = np.random.default_rng(1)
    ints = A.copy()
    ints.data = rng.integers(1, 1000, ints.nnz).astype(np.int64)
    path = mmwrite(tmp_path / "i.mtx", ints)
    assert b"integer" in path.read_bytes()[:60]
    assert_same(from_mtx(path), ints, dtype=np.int64)
    P = A.copy()
    P.data[:] = 1
    path = mmwrite(tmp_path / "p.mtx", P, field="pattern")
    assert b"pattern" in path.read_bytes()[:60]
    assert_same(from_mtx(path), P, dtype=np.float32)
    assert_same(from_mtx(gzipped(path)), P, dtype=np.float32)


def test_mtx_array(tmp_path, A):
    D = A[:60].toarray()
    path = mmwrite(tmp_path / "d.mtx", D)
    assert b"array" in path.read_bytes()[:60]
    assert_same(from_mtx(path, memory_nnz=100, slab_nnz=40), A[:60], dtype=np.float64)
    assert_same(from_mtx(gzipped(path)), A[:60])
    S = A[:60, :60] + A[:60, :60].T
    path = mmwrite(tmp_path / "ds.mtx", S.toarray(), symmetry="symmetric")
    assert b"array real symmetric" in path.read_bytes()[:60]
    assert_same(from_mtx(path, memory_nnz=100), S)
    ints = np.arange(12).reshape(3, 4)
    assert_same(from_mtx(mmwrite(tmp_path / "di.mtx", ints)), sp.csr_matrix(ints), dtype=np.int64)


@pytest.mark.parametrize("order", ["column", "random"])
def test_mtx_not_sorted_by_row(tmp_path, A, order):
    C = A.tocoo()
    idx = (
        np.lexsort((C.row, C.col))
        if order == "column"
        else np.random.default_rng(2).permutation(C.nnz)
    )
    path = write_entries(
        tmp_path / "x.mtx", "real general", A.shape, C.row[idx], C.col[idx], C.data[idx]
    )
    for memory_nnz in (10**6, 250):
        src = from_mtx(path, slab_nnz=90, memory_nnz=memory_nnz, tmpdir=tmp_path / "tmp")
        check_slab_nnz(assert_same(src, A), 90)
    assert list((tmp_path / "tmp").iterdir()) == []  # the bucket files are gone


def test_mtx_10x_like(tmp_path):
    """genes x cells integer counts, sorted by column, gzipped, as Cell Ranger writes them."""
    rng = np.random.default_rng(5)
    M = sp.random(500, 80, density=0.1, format="csc", random_state=rng)
    M.data = rng.integers(1, 30, M.nnz).astype(np.int64)
    C = M.tocoo()  # column-major order
    path = write_entries(tmp_path / "matrix.mtx", "integer general", M.shape, C.row, C.col, C.data)
    src = open_source(gzipped(path), slab_nnz=200, memory_nnz=800)
    assert src.dtype == np.int64
    assert_same(src, M)


def test_mtx_chunk_boundaries_blank_lines_comments_crlf_tabs(tmp_path, A):
    C = A.tocoo()
    lines = [
        f"{r + 1}\t{c + 1}   {float(v)!r}" for r, c, v in zip(C.row, C.col, C.data, strict=True)
    ]
    lines[10:10] = ["", "% a comment in the data", "   "]
    text = "%%MatrixMarket matrix coordinate real general\r\n%\r\n\r\n"
    text += f"  {A.shape[0]} {A.shape[1]} {C.nnz}  \r\n" + "\r\n".join(lines)  # no final newline
    path = tmp_path / "odd.mtx"
    path.write_text(text)
    for chunk_bytes in (7, 64, 1000, 10**6):
        assert_same(from_mtx(path, chunk_bytes=chunk_bytes), A)


def test_mtx_no_entries(tmp_path):
    path = tmp_path / "empty.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n4 3 0\n")
    assert_same(from_mtx(path), sp.csr_matrix((4, 3)))


def test_mtx_scientific_notation_and_signs(tmp_path):
    path = tmp_path / "e.mtx"
    path.write_text(
        "%%MatrixMarket matrix coordinate real general\n2 2 3\n1 1 1e-3\n2 1 +2.5E+2\n2 2 7\n"
    )
    assert_same(from_mtx(path), sp.csr_matrix([[1e-3, 0], [250.0, 7]]))


BANNER = "%%MatrixMarket matrix "
REAL = BANNER + "coordinate real general\n"
INT = BANNER + "coordinate integer general\n"
MTX_ERRORS = [
    (BANNER + "coordinate real\n2 2 1\n1 1 1\n", r"line 1: not a Matrix Market"),
    ("%MatrixMarket matrix coordinate real general\n", r"line 1: not a Matrix Market"),
    (BANNER + "coordinate complex general\n2 2 1\n1 1 1 0\n", r"line 1: complex"),
    (BANNER + "coordinate real hermitian-ish\n2 2 0\n", r"unknown symmetry"),
    ("%%MatrixMarket vector coordinate real general\n2 2 0\n", r"object 'vector'"),
    (BANNER + "array pattern general\n2 2\n", r"array format cannot be 'pattern'"),
    (REAL + "%\n", r"ends before the size line"),
    (REAL + "2 2\n1 1 1\n", r"line 2: size line must"),
    (REAL + "2 x 1\n", r"line 2: size line must"),
    (BANNER + "coordinate real symmetric\n2 3 1\n", r"must be square"),
    (REAL + "2 2 1\n1 3 1\n", r"line 3: column index 3 is outside 1\.\.2"),
    (REAL + "2 2 2\n1 1 1\n0 1 1\n", r"line 4: row index 0"),
    (REAL + "2 2 2\n1 1 1\n2 2\n", r"line 4: expected 3 numbers, found 2"),
    (REAL + "2 2 2\n1 1 1 1\n2 2\n", r"line 3: expected 3 numbers, found 4"),
    (REAL + "2 2 1\n1 1 abc\n", r"line 3: not a"),
    (REAL + "2 2 1\n1.5 1 1\n", r"line 3: row index 1\.5 is not an integer"),
    (INT + "2 2 1\n1 1 1.5\n", r"line 3: not an integer"),
    (INT + "2 2 1\n1 1 99999999999999999999\n", r"does not fit in 64 bits"),
    (REAL + "2 2 3\n1 1 1\n2 2 2\n", r"declares 3 entries but the file ends after 2 \(line 4\)"),
    (REAL + "2 2 1\n1 1 1\n2 2 2\n", r"line 4: more entries than the 1"),
    (BANNER + "array real general\n2 2\n1\n2\n3\n", r"declares 4 entries but .* after 3"),
]


@pytest.mark.parametrize(("text", "message"), MTX_ERRORS)
def test_mtx_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.mtx"
    path.write_text(text)
    with pytest.raises(InputError, match=r"bad\.mtx") as err:
        stream(from_mtx(path))
    assert err.match(message)


def test_mtx_error_line_in_a_later_chunk(tmp_path, A):
    C = A.tocoo()
    rows = C.row.copy()
    rows[700] = A.shape[0]  # 0-based m: out of range once written 1-based as m + 1
    path = write_entries(tmp_path / "late.mtx", "real general", A.shape, rows, C.col, C.data)
    with pytest.raises(InputError, match=rf"late\.mtx, line {700 + 4}: row index {A.shape[0] + 1}"):
        stream(from_mtx(path, chunk_bytes=300))


def test_mtx_truncated_gzip(tmp_path, A):
    path = gzipped(mmwrite(tmp_path / "a.mtx", A))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"a\.mtx\.gz"):
        stream(from_mtx(path))


def test_mtx_is_parsed_in_pieces(tmp_path, monkeypatch, A):
    import bignmf.io.mtx as mtx

    path = mmwrite(tmp_path / "a.mtx", A)
    sizes = []
    real = mtx._parse_chunk

    def spy(buf, *args):
        sizes.append(len(buf))
        return real(buf, *args)

    monkeypatch.setattr(mtx, "_parse_chunk", spy)
    assert_same(from_mtx(path, chunk_bytes=4096), A)
    assert len(sizes) > 5
    assert max(sizes) <= 4096 + 50  # a chunk, plus the end of a line cut off by the previous one


# --------------------------------------------------------------------------- AnnData, Zarr


@pytest.fixture(scope="module")
def anndata_files(tmp_path_factory, A):
    """The same AnnData written by the anndata package as .h5ad and .zarr (format 2 and 3)."""
    d = tmp_path_factory.mktemp("anndata")
    counts = A.copy()
    counts.data = np.ceil(counts.data * 10).astype(np.int32)
    adata = ad.AnnData(X=A.astype(np.float32))
    adata.layers["csc"] = A.tocsc()
    adata.layers["dense"] = A.toarray()
    adata.layers["counts"] = counts
    paths = {"h5ad": d / "a.h5ad", "zarr2": d / "a2.zarr", "zarr3": d / "a3.zarr"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about zarr format defaults
        adata.write_h5ad(paths["h5ad"])
        with ad.settings.override(zarr_write_format=2):
            adata.write_zarr(paths["zarr2"])
        with ad.settings.override(zarr_write_format=3):
            adata.write_zarr(paths["zarr3"])
    expected = {
        "X": (A.astype(np.float32), np.float32),
        "layers/csc": (A, np.float64),
        "layers/dense": (A, np.float64),
        "layers/counts": (counts, np.int32),
    }
    return paths, expected


@pytest.mark.parametrize("kind", ["h5ad", "zarr2", "zarr3"])
@pytest.mark.parametrize("key", ["X", "layers/csc", "layers/dense", "layers/counts"])
def test_anndata_files(anndata_files, kind, key):
    paths, expected = anndata_files
    path = paths[kind]
    if kind == "zarr3":
        assert (path / "zarr.json").exists()
    elif kind == "zarr2":
        assert (path / ".zgroup").exists()
    M, dtype = expected[key]
    read = from_h5ad if kind == "h5ad" else from_anndata_zarr
    slabs = assert_same(read(path, key, slab_nnz=100, memory_nnz=300), M, dtype=dtype)
    check_slab_nnz(slabs, 100)
    assert_same(open_source(path, key=key, slab_nnz=100, memory_nnz=300), M, dtype=dtype)
    assert_same(open_source(str(path), key=key), M, dtype=dtype)


@pytest.mark.parametrize("kind", ["h5ad", "zarr2", "zarr3"])
def test_anndata_default_key_is_X(anndata_files, kind):
    paths, expected = anndata_files
    assert_same(open_source(paths[kind]), *expected["X"])


def test_anndata_missing_key(anndata_files):
    paths, _ = anndata_files
    with pytest.raises(InputError, match=r"a\.h5ad: has no 'layers/nope'"):
        from_h5ad(paths["h5ad"], "layers/nope")
    with pytest.raises(InputError, match=r"a3\.zarr: has no 'layers/nope'"):
        from_anndata_zarr(paths["zarr3"], "layers/nope")
    with pytest.raises(InputError, match="encoding-type 'dict'"):
        from_h5ad(paths["h5ad"], "layers")


def test_anndata_in_memory_and_backed(tmp_path, anndata_files):
    paths, expected = anndata_files
    adata = ad.read_h5ad(paths["h5ad"])
    assert_same(open_source(adata), *expected["X"])
    assert_same(open_source(adata, key="counts"), *expected["layers/counts"])
    assert_same(open_source(adata, key="layers/dense"), *expected["layers/dense"])
    backed = ad.read_h5ad(paths["h5ad"], backed="r")
    try:
        assert_same(open_source(backed, key="layers/csc"), *expected["layers/csc"])
    finally:
        backed.file.close()


def test_malformed_sparse_groups_name_the_file(tmp_path, A):
    """Wrong structure in a hand-written csr_matrix group is reported with the file's name."""
    import h5py

    path = tmp_path / "bad.h5ad"
    with h5py.File(path, "w") as f:
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array(A.shape)
        g["data"], g["indices"] = A.data, A.indices
        indptr = A.indptr.copy()
        indptr[5] = indptr[6] + 1
        g["indptr"] = indptr
    with pytest.raises(InputError, match=r"bad\.h5ad\[X\]: indptr decreases at row 5"):
        stream(from_h5ad(path))
    root = zarr.open_group(tmp_path / "bad.zarr", mode="w", zarr_format=3)
    g = root.create_group("X")
    g.attrs.update({"encoding-type": "csc_matrix", "shape": [A.shape[0], A.shape[1] + 1]})
    C = A.tocsc()
    for key in ("data", "indices", "indptr"):
        g.create_array(key, data=getattr(C, key))
    with pytest.raises(
        InputError, match=r"bad\.zarr\[X\]: indptr has shape \(121,\), expected \(122,\)"
    ):
        from_anndata_zarr(tmp_path / "bad.zarr")


def test_zarr_dense_and_bare_groups(tmp_path, A):
    dense = A.toarray()
    for fmt in (2, 3):
        path = tmp_path / f"dense{fmt}.zarr"
        z = zarr.create_array(path, shape=A.shape, chunks=(64, 50), dtype="f8", zarr_format=fmt)
        z[:] = dense
        slabs = assert_same(from_zarr_dense(path, slab_nnz=20_000), A, dtype=np.float64)
        assert all(s.shape[0] % 64 == 0 for s in slabs[:-1])  # whole chunks of rows
        assert_same(open_source(path), A)
    # a bare csr_matrix group (bignmf's own store layout) and a group holding a dense array
    root = zarr.open_group(tmp_path / "bare.zarr", mode="w", zarr_format=3)
    root.attrs.update({"encoding-type": "csr_matrix", "shape": list(A.shape)})
    for key in ("data", "indices", "indptr"):
        root.create_array(key, data=getattr(A, key))
    root.create_array("dense", data=dense)
    assert_same(open_source(tmp_path / "bare.zarr"), A)
    assert_same(open_source(tmp_path / "bare.zarr", key="dense"), A)
    assert_same(from_zarr_dense(tmp_path / "bare.zarr", key="dense"), A)
    with pytest.raises(InputError, match="not an array"):
        from_zarr_dense(tmp_path / "bare.zarr")


# --------------------------------------------------------------------------- dispatch


def test_open_source_dispatch(tmp_path, A):
    src = from_scipy(A)
    assert open_source(src) is src
    assert_same(open_source(A), A)
    assert_same(open_source(A.toarray()), A)
    assert_same(open_source(da.from_array(A.toarray(), chunks=50)), A)
    path = mmwrite(tmp_path / "a.mtx", A)
    assert_same(open_source(path), A)
    assert_same(open_source(str(gzipped(path))), A)
    odd = tmp_path / "matrix.txt"
    shutil.copy(path, odd)
    assert_same(open_source(odd, format="mtx"), A)
    sp.save_npz(tmp_path / "m.dat", A)  # save_npz adds .npz
    assert_same(open_source(tmp_path / "m.dat.npz"), A)
    assert isinstance(open_source(path), Source)


def test_open_source_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "missing.mtx")
    (tmp_path / "a.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="supported formats are") as err:
        open_source(tmp_path / "a.csv")
    for fmt in SUPPORTED_FORMATS:
        assert err.match(repr(fmt))
    with pytest.raises(InputError, match="format 'csv'"):
        open_source(tmp_path / "a.csv", format="csv")
    with pytest.raises(InputError, match="cannot read a dict"):
        open_source({"a": 1})
    zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    with pytest.raises(InputError, match="give the matrix's key"):
        open_source(tmp_path / "g.zarr")
