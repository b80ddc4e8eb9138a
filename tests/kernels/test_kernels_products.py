"""Tests of bignmf.kernels.products (and the batching helpers) against dense NumPy references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bignmf.kernels import _util, products
from bignmf.kernels.products import (
    a_ht,
    accumulate_at_w,
    gram,
    inner,
    sq_norm,
    wh_at_nonzeros,
)
from tests.conftest import imported_modules

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def rand_csr(rng, m, n, density, dtype=np.float64):
    dense = rng.random((m, n)) * (rng.random((m, n)) < density)
    return sp.csr_matrix(dense.astype(dtype))


@st.composite
def block_case(draw):
    m = draw(st.integers(0, 9))
    n = draw(st.integers(1, 9))
    k = draw(st.integers(1, 5))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    A = rand_csr(rng, m, n, density, dtype)
    W = rng.random((m, k)).astype(dtype)
    Ht = rng.random((n, k)).astype(dtype)
    return A, W, Ht, dtype


@pytest.fixture(params=[True, False], ids=["sparsetools", "public-api"])
def kernel_path(request, monkeypatch):
    """Run a test through the compiled direct path and through the public fallback."""
    monkeypatch.setattr(products, "USE_SPARSETOOLS", request.param and products.USE_SPARSETOOLS)
    return request.param


@settings(max_examples=40, deadline=None)
@given(case=block_case(), use_direct=st.booleans())
def test_a_ht_matches_dense(case, use_direct):
    A, _, Ht, dtype = case
    old = products.USE_SPARSETOOLS
    products.USE_SPARSETOOLS = use_direct and old
    try:
        ref = A.toarray().astype(np.float64) @ Ht.astype(np.float64)
        got = a_ht(A, Ht)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=RTOL[dtype])
        out = np.full((A.shape[0], Ht.shape[1]), 7.0, dtype=dtype)  # stale content
        assert a_ht(A, Ht, out=out) is out
        np.testing.assert_allclose(out, ref, rtol=RTOL[dtype], atol=RTOL[dtype])
    finally:
        products.USE_SPARSETOOLS = old


@settings(max_examples=40, deadline=None)
@given(case=block_case(), use_direct=st.booleans())
def test_accumulate_at_w_adds_transpose_product(case, use_direct):
    A, W, Ht, dtype = case
    old = products.USE_SPARSETOOLS
    products.USE_SPARSETOOLS = use_direct and old
    try:
        n, k = Ht.shape
        start = np.random.default_rng(0).random((n, k)).astype(dtype)
        out = start.copy()
        assert accumulate_at_w(A, W, out) is out
        ref = start.astype(np.float64) + A.toarray().T.astype(np.float64) @ W.astype(np.float64)
        np.testing.assert_allclose(out, ref, rtol=RTOL[dtype], atol=RTOL[dtype])
    finally:
        products.USE_SPARSETOOLS = old


def test_a_ht_accepts_csr_array_and_other_formats(kernel_path):
    rng = np.random.default_rng(1)
    A = rand_csr(rng, 6, 5, 0.5)
    Ht = rng.random((5, 3))
    ref = A.toarray() @ Ht
    for variant in (sp.csr_array(A), A.tocsc(), A.tocoo()):
        np.testing.assert_allclose(a_ht(variant, Ht), ref, rtol=1e-13)
    # a non-contiguous Ht (a transposed view) is accepted
    H = np.ascontiguousarray(Ht.T)
    np.testing.assert_allclose(a_ht(A, H.T), ref, rtol=1e-13)


def test_products_on_overallocated_csr(kernel_path):
    rng = np.random.default_rng(2)
    A = rand_csr(rng, 5, 4, 0.6)
    nnz = A.nnz
    big = A.copy()  # the constructor trims, so over-allocate by assignment
    big.data = np.r_[A.data, [5.0, 6.0]]
    big.indices = np.r_[A.indices, [0, 1]].astype(A.indices.dtype)
    assert big.data.shape[0] == nnz + 2
    W = rng.random((5, 2))
    Ht = rng.random((4, 2))
    np.testing.assert_allclose(a_ht(big, Ht), A.toarray() @ Ht, rtol=1e-13)
    wh = wh_at_nonzeros(big, W, Ht)
    assert wh.shape == (nnz,)


def test_a_ht_rejects_bad_buffers():
    rng = np.random.default_rng(3)
    A = rand_csr(rng, 4, 3, 0.5)
    Ht = rng.random((3, 2))
    with pytest.raises(ValueError, match="out must be"):
        a_ht(A, Ht, out=np.empty((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="Ht must have shape"):
        a_ht(A, rng.random((4, 2)))
    with pytest.raises(ValueError, match="W_i must have shape"):
        accumulate_at_w(A, rng.random((3, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"scipy\.sparse"):
        a_ht(A.toarray(), Ht)


def test_accumulate_at_w_casts_w_to_accumulator_dtype(kernel_path):
    rng = np.random.default_rng(4)
    A = rand_csr(rng, 7, 5, 0.5, np.float32)
    W = rng.random((7, 3))  # float64 factor, float32 accumulator
    out = np.zeros((5, 3), dtype=np.float32)
    accumulate_at_w(A, W, out)
    np.testing.assert_allclose(out, A.toarray().T @ W, rtol=1e-5)
    assert out.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_is_float64_and_accumulates(dtype):
    rng = np.random.default_rng(5)
    X = rng.random((11, 4)).astype(dtype)
    ref = X.astype(np.float64).T @ X.astype(np.float64)
    G = gram(X)
    assert G.dtype == np.float64
    np.testing.assert_allclose(G, ref, rtol=1e-13)
    acc = np.ones((4, 4))
    assert gram(X, out=acc) is acc
    np.testing.assert_allclose(acc, ref + 1.0, rtol=1e-13)
    assert gram(np.zeros((0, 3), dtype=dtype)).shape == (3, 3)


def test_inner_and_sq_norm():
    rng = np.random.default_rng(6)
    X = rng.random((5, 3)).astype(np.float32)
    Y = rng.random((5, 3)).astype(np.float32)
    assert inner(X, Y) == pytest.approx(float(np.sum(X.astype(float) * Y.astype(float))))
    with pytest.raises(ValueError, match="shape mismatch"):
        inner(X, Y.T)
    A = rand_csr(rng, 6, 4, 0.5, np.float32)
    assert sq_norm(A) == pytest.approx(float(np.sum(A.toarray().astype(float) ** 2)))


@settings(max_examples=40, deadline=None)
@given(case=block_case(), batch=st.sampled_from([None, 1, 2, 3, 5]))
def test_wh_at_nonzeros_matches_dense(case, batch):
    A, W, Ht, dtype = case
    coo = A.tocoo()
    ref = (W.astype(np.float64) @ Ht.T.astype(np.float64))[coo.row, coo.col]
    got = wh_at_nonzeros(A, W, Ht, batch_size=batch)
    assert got.shape == (A.nnz,)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=RTOL[dtype])
    out = np.empty(A.nnz, dtype=np.float64)
    assert wh_at_nonzeros(A, W, Ht, out=out, batch_size=batch) is out


def test_wh_at_nonzeros_bad_shapes():
    rng = np.random.default_rng(7)
    A = rand_csr(rng, 4, 3, 0.5)
    with pytest.raises(ValueError, match="shapes do not match"):
        wh_at_nonzeros(A, rng.random((4, 2)), rng.random((3, 3)))
    with pytest.raises(ValueError, match="out must have shape"):
        wh_at_nonzeros(A, rng.random((4, 2)), rng.random((3, 2)), out=np.empty(A.nnz + 1))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=0, max_size=12),
    max_entries=st.integers(1, 8),
)
def test_row_batches_partition_rows(counts, max_entries):
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    ranges = list(_util.row_batches(indptr, max_entries))
    covered = [r for r0, r1 in ranges for r in range(r0, r1)]
    assert covered == list(range(len(counts)))
    for r0, r1 in ranges:
        assert r1 > r0
        # over budget only when the range is a single row
        assert indptr[r1] - indptr[r0] <= max_entries or r1 - r0 == 1


def test_scratch_reuses_storage():
    work = {}
    a = _util.scratch(work, "x", (4, 3), np.float32)
    b = _util.scratch(work, "x", (2, 3), np.float32)
    assert np.shares_memory(a, b)
    c = _util.scratch(work, "x", (2, 3), np.float64)  # other dtype, other buffer
    assert not np.shares_memory(a, c)
    d = _util.scratch(work, "x", (10, 3), np.float32)  # grows
    assert d.shape == (10, 3)
    assert d.flags.c_contiguous
    assert _util.scratch(None, "x", (2, 2), np.float64).shape == (2, 2)
    assert _util.scratch(work, "y", (0, 3), np.float64).shape == (0, 3)


def test_factor_dtype():
    assert _util.factor_dtype(sp.csr_matrix(np.eye(2, dtype=np.float32))) == np.float32
    assert _util.factor_dtype(sp.csr_matrix(np.eye(2, dtype=np.int64))) == np.float64


def test_kernels_never_import_dask_or_zarr():
    # static check: the package bignmf/__init__ may pull zarr in, the kernels must not
    allowed = {"__future__", "collections", "dataclasses", "functools", "typing", "math"}
    allowed |= {"numpy", "scipy"}
    kernel_dir = Path(products.__file__).parent
    files = sorted(kernel_dir.glob("*.py"))
    assert len(files) >= 7
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top in allowed or name.startswith("bignmf.kernels"), (path.name, name)
