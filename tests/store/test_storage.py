"""The sparse Zarr store: layout, round trips, blocking, validation and atomic writes."""

from __future__ import annotations

import pickle
from pathlib import Path

import anndata as ad
import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from bignmf import InputError, StoreExistsError, StoreFormatError, open_matrix, write_matrix
from bignmf.store.csr import DirectChunkReader, RowBlockPlanner
from bignmf.types import Source


def as_source(A, step=97, name="<test>", dtype=None):
    """A Source over an in-memory matrix, sliced in slabs of ``step`` rows."""
    A = sp.csr_matrix(A)

    def blocks():
        for i in range(0, A.shape[0], step):
            yield A[i : i + step]

    return Source(name, A.shape, np.dtype(dtype or A.dtype), blocks)


def canonical(A, dtype=None):
    A = sp.csr_matrix(A, dtype=dtype or A.dtype, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def random_csr(m=500, n=120, density=0.05, seed=0, dtype=np.float64):
    return sp.random(m, n, density=density, format="csr", dtype=dtype, random_state=seed)


def assert_same_csr(B, A):
    assert B.shape == A.shape
    np.testing.assert_array_equal(B.indptr, A.indptr)
    np.testing.assert_array_equal(B.indices, A.indices)
    np.testing.assert_array_equal(B.data, A.data)
    assert B.dtype == A.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("chunk", "block_nnz", "block_rows"), [(64, 300, None), (1000, None, 7)])
def test_round_trip_exact(tmp_path, dtype, chunk, block_nnz, block_rows):
    A = random_csr(dtype=dtype)
    store = write_matrix(
        as_source(A),
        tmp_path / "a.zarr",
        chunk_size=chunk,
        block_nnz=block_nnz,
        block_rows=block_rows,
    )
    assert store.shape == A.shape
    assert store.nnz == A.nnz
    assert store.dtype == dtype
    assert_same_csr(store.to_scipy(), canonical(A))
    assert store.frobenius_sq == pytest.approx(float((A.data.astype(float) ** 2).sum()), rel=1e-12)
    assert store.value_sum == pytest.approx(float(A.data.astype(float).sum()), rel=1e-12)
    reopened = open_matrix(tmp_path / "a.zarr")
    assert reopened.frobenius_sq == store.frobenius_sq
    np.testing.assert_array_equal(reopened.row_offsets, store.row_offsets)


def test_blocks_follow_nnz_target(tmp_path):
    A = random_csr(m=2000, n=50, density=0.1)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=100, block_nnz=400)
    sizes = np.diff(store.nnz_offsets)
    assert store.n_blocks > 10
    assert (sizes[:-1] <= 400).all()
    assert (sizes[:-1] > 400 - A.getnnz(axis=1).max()).all()
    for i in range(store.n_blocks):
        r0, r1 = store.block_rows(i)
        assert_same_csr(store.read_block(i), canonical(A[r0:r1]))


def test_same_matrix_same_bytes_whatever_the_slabs(tmp_path):
    A = random_csr(m=700, n=90, density=0.07, seed=3)
    paths = []
    for step in (1, 13, 700):
        path = tmp_path / f"a{step}.zarr"
        write_matrix(as_source(A, step=step), path, chunk_size=128, block_nnz=500)
        paths.append(path)
    files = [sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) for path in paths]
    assert files[0] == files[1] == files[2]
    for rel in files[0]:
        contents = {(path / rel).read_bytes() for path in paths}
        assert len(contents) == 1, rel


def test_canonical_form_and_dtype_conversion(tmp_path):
    # duplicates, unsorted indices and explicit zeros in an integer matrix
    data = np.array([3, 1, 0, 2, 5], dtype=np.int64)
    rows = np.array([0, 0, 1, 2, 0])
    cols = np.array([4, 1, 2, 0, 4])
    A = sp.coo_matrix((data, (rows, cols)), shape=(3, 6))
    unsorted = sp.csr_matrix(
        (np.array([3, 1, 5, 0, 2]), np.array([4, 1, 4, 2, 0]), np.array([0, 3, 4, 5])),
        shape=(3, 6),
    )
    store = write_matrix(as_source(unsorted, step=2), tmp_path / "a.zarr")
    assert store.dtype == np.float32
    assert_same_csr(store.to_scipy(), canonical(A, dtype=np.float32))
    assert store.nnz == 3


@pytest.mark.parametrize(
    ("value", "words"),
    [(-1.5, "1 negative values"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
def test_bad_values_named_with_block_and_row(tmp_path, value, words):
    A = random_csr(m=400, n=30, density=0.2, seed=4).tolil()
    A[321, 7] = value
    with pytest.raises(InputError) as err:
        write_matrix(as_source(A.tocsr(), name="bad.mtx"), tmp_path / "a.zarr", block_rows=100)
    message = str(err.value)
    assert "bad.mtx" in message
    assert words in message
    assert "row 321, column 7" in message
    assert "row block 2" in message
    assert not (tmp_path / "a.zarr").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_structural_errors(tmp_path):
    bad_index = sp.csr_matrix((np.ones(2), np.array([0, 9]), np.array([0, 1, 2])), shape=(2, 9))
    with pytest.raises(InputError, match=r"1 column indices outside \[0, 9\).*row 1: 9"):
        write_matrix(as_source(bad_index), tmp_path / "a.zarr")

    def wrong_width():
        yield sp.csr_matrix(np.ones((2, 4)))

    with pytest.raises(InputError, match="has 4 columns, expected 5"):
        write_matrix(Source("w", (2, 5), np.dtype("f8"), wrong_width), tmp_path / "b.zarr")

    def too_few():
        yield sp.csr_matrix(np.ones((2, 5)))

    with pytest.raises(InputError, match="yields 2 rows but declares 3"):
        write_matrix(Source("s", (3, 5), np.dtype("f8"), too_few), tmp_path / "c.zarr")
    with pytest.raises(InputError, match="empty"):
        write_matrix(as_source(sp.csr_matrix((0, 5))), tmp_path / "d.zarr")
    with pytest.raises(InputError, match="no nonzero entries"):
        write_matrix(as_source(sp.csr_matrix((4, 5))), tmp_path / "e.zarr")
    with pytest.raises(InputError, match="complex"):
        write_matrix(as_source(sp.csr_matrix(np.ones((2, 2), dtype=complex))), tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_decreasing_indptr_is_reported(tmp_path):
    block = sp.csr_matrix((3, 4))
    block.indptr = np.array([0, 2, 1, 0])
    block.indices = np.array([0, 1], dtype=np.int32)
    block.data = np.ones(2)

    def blocks():
        yield block

    with pytest.raises(InputError, match="indptr"):
        write_matrix(Source("p", (3, 4), np.dtype("f8"), blocks), tmp_path / "a.zarr")


def test_existing_store_is_never_overwritten_without_flag(tmp_path):
    A, B = random_csr(seed=1), random_csr(seed=2)
    write_matrix(as_source(A), tmp_path / "a.zarr")
    with pytest.raises(StoreExistsError):
        write_matrix(as_source(B), tmp_path / "a.zarr")
    assert_same_csr(open_matrix(tmp_path / "a.zarr").to_scipy(), canonical(A))

    bad = B.tolil()
    bad[5, 5] = -1
    with pytest.raises(InputError):
        write_matrix(as_source(bad.tocsr()), tmp_path / "a.zarr", overwrite=True)
    assert_same_csr(open_matrix(tmp_path / "a.zarr").to_scipy(), canonical(A))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]

    write_matrix(as_source(B), tmp_path / "a.zarr", overwrite=True)
    assert_same_csr(open_matrix(tmp_path / "a.zarr").to_scipy(), canonical(B))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_reading_a_block_touches_only_its_chunks(tmp_path):
    A = random_csr(m=1000, n=40, density=0.1, seed=5)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=50, block_nnz=400)
    i = store.n_blocks // 2
    s, e = store.nnz_offsets[i], store.nnz_offsets[i + 1]
    r0, r1 = store.block_rows(i)
    keep = {"data": range(s // 50, (e - 1) // 50 + 1), "indices": range(s // 50, (e - 1) // 50 + 1)}
    ic = store.arrays[2].chunks[0]
    keep["indptr"] = range(r0 // ic, r1 // ic + 1)
    removed = 0
    for name, chunks in keep.items():
        for f in (tmp_path / "a.zarr" / name / "c").iterdir():
            if int(f.name) not in chunks:
                f.unlink()
                removed += 1
    assert removed > 10
    assert sorted(int(f.name) for f in (tmp_path / "a.zarr" / "data" / "c").iterdir()) == list(
        keep["data"]
    )
    assert_same_csr(open_matrix(tmp_path / "a.zarr").read_block(i), canonical(A[r0:r1]))


def test_buffers_and_rows(tmp_path):
    A = random_csr(m=600, n=70, density=0.1, seed=6, dtype=np.float32)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=64, block_nnz=500)
    buffers = store.new_buffers()
    for i in range(store.n_blocks):
        block = store.read_block(i, buffers)
        r0, r1 = store.block_rows(i)
        assert_same_csr(block, canonical(A[r0:r1]))
        assert np.shares_memory(block.data, buffers.data)
    for i, block in enumerate(store.iter_blocks(reuse_buffers=True)):
        assert_same_csr(block, canonical(A[slice(*store.block_rows(i))]))
    assert_same_csr(store.read_rows(17, 401), canonical(A[17:401]))
    with pytest.raises(IndexError):
        store.read_block(store.n_blocks)


def test_corrupt_block_table_is_detected(tmp_path):
    A = random_csr(seed=7)
    write_matrix(as_source(A), tmp_path / "a.zarr", block_rows=100)
    group = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    meta = dict(group.attrs["bignmf"])
    meta["nnz_offsets"] = [0, *[x + 1 for x in meta["nnz_offsets"][1:-1]], meta["nnz_offsets"][-1]]
    group.attrs["bignmf"] = meta
    with pytest.raises(StoreFormatError, match="row block 0"):
        open_matrix(tmp_path / "a.zarr").read_block(0)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreFormatError):
        open_matrix(tmp_path / "missing.zarr")
    zarr.create_array(str(tmp_path / "dense.zarr"), shape=(3, 3), dtype="f4")
    with pytest.raises(StoreFormatError):
        open_matrix(tmp_path / "dense.zarr")


@pytest.mark.filterwarnings("ignore:.*zarr v2 data will no longer be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:.*autosharding will be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_anndata_zarr_opens_directly(tmp_path, zarr_format):
    A = random_csr(m=300, n=50, seed=8, dtype=np.float32)
    with ad.settings.override(zarr_write_format=zarr_format):
        ad.AnnData(X=A, layers={"counts": A * 2}).write_zarr(tmp_path / "cells.zarr")
    store = open_matrix(tmp_path / "cells.zarr", block_nnz=200)
    assert store.key == "X"
    assert store.n_blocks > 1
    assert_same_csr(store.to_scipy(), canonical(A))
    assert store.frobenius_sq == pytest.approx(float((A.data.astype(float) ** 2).sum()))
    assert store.value_sum == pytest.approx(float(A.data.astype(float).sum()))
    layer = open_matrix(tmp_path / "cells.zarr", key="layers/counts")
    assert_same_csr(layer.to_scipy(), canonical(A * 2))


def test_store_reads_back_in_anndata(tmp_path):
    A = random_csr(m=80, n=20, seed=9, dtype=np.float32)
    write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=64)
    X = ad.io.read_elem(zarr.open_group(tmp_path / "a.zarr", mode="r"))
    assert_same_csr(sp.csr_matrix(X), canonical(A))


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_dask_views(tmp_path, scheduler):
    A = random_csr(m=900, n=60, density=0.08, seed=10)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=64, block_nnz=700)
    x = store.to_dask()
    assert x.numblocks == (store.n_blocks, 1)
    with dask.config.set(scheduler=scheduler):
        assert_same_csr(sp.csr_matrix(x.compute()), canonical(A))
        parts = dask.compute(*store.to_delayed())
    assert_same_csr(sp.vstack(parts, format="csr"), canonical(A))
    # the graph carries the handle, never the matrix: it pickles small
    graph_bytes = len(pickle.dumps(dict(x.__dask_graph__())))
    assert graph_bytes < 20_000 + 100 * store.n_blocks


def test_handle_pickles_small_and_reopens(tmp_path):
    A = random_csr(m=2000, n=100, density=0.05, seed=11)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=64, block_nnz=500)
    payload = pickle.dumps(store)
    assert len(payload) < 5000
    assert_same_csr(pickle.loads(payload).read_block(3), store.read_block(3))


@settings(max_examples=40, deadline=None)
@given(
    row_nnz=st.lists(st.integers(0, 30), min_size=1, max_size=80),
    target=st.integers(1, 60),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_planner_is_independent_of_slicing(row_nnz, target, cuts):
    row_nnz = np.array(row_nnz)

    def plan(pieces):
        planner, bounds, row = RowBlockPlanner(target), [], 0
        for piece in pieces:
            for _, stop, closes in planner.cuts(piece):
                if closes:
                    bounds.append(row + stop)
            row += piece.size
        return bounds

    edges = sorted({c for c in cuts if c < row_nnz.size})
    whole, sliced = plan([row_nnz]), plan(np.split(row_nnz, edges))
    assert whole == sliced
    starts = [0, *whole]
    for a, b in zip(starts, [*whole, row_nnz.size], strict=True):
        assert b > a
        assert row_nnz[a:b].sum() <= target or b - a == 1


def test_info(tmp_path):
    A = random_csr(m=1000, n=200, density=0.02, seed=12, dtype=np.float32)
    info = write_matrix(as_source(A), tmp_path / "a.zarr").info()
    assert info["shape"] == [1000, 200]
    assert info["nnz"] == A.nnz
    assert info["density"] == pytest.approx(A.nnz / 200_000)
    assert info["codec"] == "blosc-lz4"
    assert info["bytes_on_disk"] > 0
    assert info["compression_ratio"] > 0
    assert Path(info["path"]).name == "a.zarr"


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_direct_chunk_reads_equal_zarr_reads(tmp_path, codec):
    A = random_csr(m=3000, n=300, density=0.02, seed=13, dtype=np.float32)
    store = write_matrix(as_source(A), tmp_path / "a.zarr", chunk_size=1000, codec=codec)
    rng = np.random.default_rng(0)
    for array in store.arrays:
        reader = DirectChunkReader.for_array(array)
        assert reader is not None
        n = array.shape[0]
        for start, stop in [(0, n), (0, 1), (n - 1, n), (999, 2001), (1000, 2000)] + [
            tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(20)
        ]:
            out = np.full(n + 5, -1, dtype=array.dtype)
            got = reader.read(start, stop, out)
            np.testing.assert_array_equal(got, array[start:stop])
            np.testing.assert_array_equal(reader.read(start, stop), array[start:stop])


@pytest.mark.filterwarnings("ignore:.*zarr v2 data will no longer be the default:UserWarning")
def test_direct_reads_only_for_layouts_they_know(tmp_path):
    with ad.settings.override(zarr_write_format=2):
        ad.AnnData(X=random_csr(m=50, n=10, seed=14)).write_zarr(tmp_path / "v2.zarr")
    store = open_matrix(tmp_path / "v2.zarr")
    assert all(DirectChunkReader.for_array(a) is None for a in store.arrays)
    assert store.read_block(0).shape[1] == 10
