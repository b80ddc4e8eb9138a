"""Tests of the planted low-rank matrix generator (bignmf.datasets.synthetic)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bignmf.datasets.synthetic import (
    GENERATION_BLOCK_ROWS,
    make_planted,
    planted_factors,
    planted_source,
)
from bignmf.errors import InputError

# Three generation blocks, the last one partial.
N_ROWS = 2 * GENERATION_BLOCK_ROWS + 1808


def _matrix(n_rows=N_ROWS, n_cols=1000, n_components=4, **kwargs) -> sp.csr_matrix:
    source = planted_source(n_rows, n_cols, n_components, **kwargs)
    slabs = list(source.blocks())
    assert sum(slab.shape[0] for slab in slabs) == n_rows
    return sp.vstack(slabs, format="csr") if slabs else sp.csr_matrix((0, n_cols))


def _assert_same(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.data.tobytes() == b.data.tobytes()


@pytest.fixture(scope="module")
def reference() -> sp.csr_matrix:
    return _matrix(nnz_per_row=10, seed=7)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_same_matrix(reference):
    _assert_same(reference, _matrix(nnz_per_row=10, seed=7))


def test_source_and_factors_pickle(reference):
    source = pickle.loads(pickle.dumps(planted_source(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)))
    _assert_same(reference, sp.vstack(list(source.blocks()), format="csr"))
    factors = planted_factors(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    copy = pickle.loads(pickle.dumps(factors))
    np.testing.assert_array_equal(copy.w_rows(10, 20), factors.w_rows(10, 20))


def test_blocks_restarts_the_stream():
    source = planted_source(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    first = sp.vstack(list(source.blocks()), format="csr")
    second = sp.vstack(list(source.blocks()), format="csr")
    _assert_same(first, second)


def test_different_seed_gives_different_matrix(reference):
    other = _matrix(nnz_per_row=10, seed=8)
    assert reference.shape == other.shape
    assert reference.nnz != other.nnz or (reference != other).nnz > 0
    same_pattern = reference.multiply(other).nnz / max(reference.nnz, 1)
    assert same_pattern < 0.5


@pytest.mark.parametrize(
    "slab_rows", [7, 1000, GENERATION_BLOCK_ROWS, GENERATION_BLOCK_ROWS + 1, N_ROWS, 3 * N_ROWS]
)
def test_independent_of_slab_rows(reference, slab_rows):
    source = planted_source(N_ROWS, 1000, 4, nnz_per_row=10, seed=7, slab_rows=slab_rows)
    slabs = list(source.blocks())
    assert all(slab.shape[0] == slab_rows for slab in slabs[:-1])
    assert 0 < slabs[-1].shape[0] <= slab_rows
    _assert_same(reference, sp.vstack(slabs, format="csr"))


@settings(max_examples=10, deadline=None)
@given(slab_rows=st.integers(min_value=1, max_value=2 * N_ROWS))
def test_independent_of_slab_rows_property(slab_rows):
    n_rows = GENERATION_BLOCK_ROWS + 300
    expected = _matrix(n_rows, 300, 3, nnz_per_row=4, seed=3)
    got = _matrix(n_rows, 300, 3, nnz_per_row=4, seed=3, slab_rows=slab_rows)
    _assert_same(expected, got)


def test_default_slabs_are_generation_blocks():
    slabs = list(planted_source(N_ROWS, 1000, 4, nnz_per_row=10).blocks())
    assert [s.shape[0] for s in slabs] == [GENERATION_BLOCK_ROWS, GENERATION_BLOCK_ROWS, 1808]


def test_prefix_does_not_depend_on_n_rows(reference):
    """Rows are drawn per generation block, so a shorter matrix is a prefix of a longer one."""
    shorter = _matrix(GENERATION_BLOCK_ROWS, nnz_per_row=10, seed=7)
    _assert_same(reference[:GENERATION_BLOCK_ROWS], shorter)


# ---------------------------------------------------------------------------------------------
# Shape, values, density
# ---------------------------------------------------------------------------------------------


def test_shape_dtype_and_values(reference):
    source = planted_source(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    assert source.shape == (N_ROWS, 1000)
    assert source.dtype == np.float32
    assert "planted" in source.name
    assert reference.shape == (N_ROWS, 1000)
    assert reference.dtype == np.float32
    assert np.all(reference.data >= 1)
    np.testing.assert_array_equal(reference.data, np.round(reference.data))
    assert reference.has_canonical_format
    for slab in source.blocks():
        assert isinstance(slab, sp.csr_matrix)
        assert slab.has_sorted_indices
        assert slab.shape[1] == 1000


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_dtype(dtype):
    a = _matrix(100, 200, 2, nnz_per_row=5, dtype=dtype)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a.toarray(), _matrix(100, 200, 2, nnz_per_row=5).toarray())


def test_zero_rows():
    assert list(planted_source(0, 10, 2, nnz_per_row=2).blocks()) == []


@pytest.mark.parametrize(
    ("n_cols", "n_components", "nnz_per_row", "kwargs"),
    [
        (1000, 4, 10, {}),
        (5000, 10, 50, {}),
        (200, 3, 20, {}),
        (2000, 5, 3, {"zipf_exponent": 1.0, "length_sigma": 1.0}),
        (2000, 1, 30, {"topic_weight": 0.0, "zipf_exponent": 0.0}),
        (2000, 8, 30, {"topic_weight": 1.0, "concentration": 1.0}),
    ],
)
def test_mean_nnz_per_row(n_cols, n_components, nnz_per_row, kwargs):
    a = _matrix(GENERATION_BLOCK_ROWS, n_cols, n_components, nnz_per_row=nnz_per_row, **kwargs)
    mean = a.nnz / a.shape[0]
    assert mean == pytest.approx(nnz_per_row, rel=0.2)


def test_column_popularity_is_skewed():
    n_cols = 5000
    a = _matrix(GENERATION_BLOCK_ROWS, n_cols, 5, nnz_per_row=20)
    per_column = np.sort(np.bincount(a.indices, minlength=n_cols))[::-1]
    top_share = per_column[: n_cols // 100].sum() / a.nnz
    assert top_share > 0.15  # 1% of the columns would hold 1% of a uniform matrix
    assert per_column[-n_cols // 2 :].sum() / a.nnz < 0.2


# ---------------------------------------------------------------------------------------------
# Planted factors and low rank
# ---------------------------------------------------------------------------------------------


def test_factors_shapes_and_consistency():
    factors = planted_factors(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    assert factors.H.shape == (4, 1000)
    assert np.all(factors.H > 0)
    np.testing.assert_allclose(factors.H.sum(axis=1), 1.0)
    blocks = list(factors.w_blocks())
    assert [b.shape for b in blocks] == [(GENERATION_BLOCK_ROWS, 4)] * 2 + [(1808, 4)]
    w = np.concatenate(blocks)
    assert np.all(w >= 0)
    np.testing.assert_array_equal(factors.w_rows(0, N_ROWS), w)
    np.testing.assert_array_equal(factors.w_rows(4000, 9000), w[4000:9000])
    assert factors.w_rows(5, 5).shape == (0, 4)
    with pytest.raises(IndexError):
        factors.w_rows(0, N_ROWS + 1)


def test_matrix_follows_its_factors(reference):
    """E[A] = W @ H: column sums and the total agree with those of W @ H."""
    factors = planted_factors(N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    expected = factors.w_rows(0, N_ROWS) @ factors.H
    assert reference.sum() == pytest.approx(expected.sum(), rel=0.02)
    columns = np.asarray(reference.sum(axis=0)).ravel()
    assert np.corrcoef(columns, expected.sum(axis=0))[0, 1] > 0.99
    rows = np.asarray(reference.sum(axis=1)).ravel()
    assert np.corrcoef(rows, expected.sum(axis=1))[0, 1] > 0.8


@pytest.fixture(scope="module")
def planted_2000x500():
    a = _matrix(2000, 500, 5, nnz_per_row=50, seed=1).toarray().astype(np.float64)
    return a, planted_factors(2000, 500, 5, nnz_per_row=50, seed=1)


def _top_energy(a: np.ndarray, k: int) -> float:
    s = np.linalg.svd(a, compute_uv=False)
    return float((s[:k] ** 2).sum() / (s**2).sum())


def test_low_rank_beats_same_pattern_with_random_values(planted_2000x500):
    a, _ = planted_2000x500
    shuffled = a.copy()
    nonzero = shuffled != 0
    shuffled[nonzero] = np.random.default_rng(0).permutation(shuffled[nonzero])
    assert _top_energy(a, 5) > 0.6
    assert _top_energy(a, 5) > 2 * _top_energy(shuffled, 5)


def test_true_topics_span_the_matrix(planted_2000x500):
    a, factors = planted_2000x500
    basis, _ = np.linalg.qr(factors.H.T)  # orthonormal basis of the topics' span
    captured = np.linalg.norm(a @ basis) ** 2 / np.linalg.norm(a) ** 2
    permuted = a[:, np.random.default_rng(0).permutation(a.shape[1])]
    captured_permuted = np.linalg.norm(permuted @ basis) ** 2 / np.linalg.norm(a) ** 2
    assert captured > 0.6
    assert captured_permuted < 0.1


def test_spectral_gap_at_planted_rank(planted_2000x500):
    a, _ = planted_2000x500
    s = np.linalg.svd(a, compute_uv=False)
    null = _matrix(2000, 500, 5, nnz_per_row=50, seed=1, topic_weight=0.0).toarray()
    s_null = np.linalg.svd(null.astype(np.float64), compute_uv=False)
    assert s[4] / s[5] > 1.5
    assert s_null[4] / s_null[5] < 1.3


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource
    from bignmf.datasets.synthetic import GENERATION_BLOCK_ROWS, planted_source

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    source = planted_source(200 * GENERATION_BLOCK_ROWS, 2000, 5, nnz_per_row=5, seed=0)
    peaks, nnz = [], 0
    for i, slab in enumerate(source.blocks()):
        nnz += slab.nnz
        if i in (19, 199):
            peaks.append(peak_mib())
    print(json.dumps({"peaks": peaks, "nnz": nnz, "blocks": i + 1}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_memory_does_not_grow_with_blocks():
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["blocks"] == 200
    assert result["nnz"] > 200 * GENERATION_BLOCK_ROWS * 4  # ~16 MB of CSR in all
    after_20, after_200 = result["peaks"]
    assert after_200 - after_20 < 8  # MiB


# ---------------------------------------------------------------------------------------------
# Errors and the store
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_rows": -1},
        {"n_cols": 0},
        {"n_components": 0},
        {"n_rows": 2.5},
        {"nnz_per_row": 0},
        {"nnz_per_row": 600},
        {"seed": -1},
        {"dtype": np.bool_},
        {"dtype": np.float16},
        {"zipf_exponent": -1.0},
        {"topic_weight": 1.5},
        {"concentration": 0.0},
        {"length_sigma": -0.1},
        {"topic_columns": 0},
        {"slab_rows": 0},
        {"topic_weight": 1.0, "topic_columns": 2, "n_components": 1, "nnz_per_row": 100},
    ],
)
def test_bad_arguments_raise_input_error(kwargs):
    args = {"n_rows": 10, "n_cols": 1000, "n_components": 3, "nnz_per_row": 5} | kwargs
    with pytest.raises(InputError):
        planted_source(**args)


@pytest.mark.skipif(
    importlib.util.find_spec("bignmf.store.csr") is None, reason="bignmf.store.csr not written yet"
)
def test_make_planted_writes_the_source(tmp_path):
    store = make_planted(tmp_path / "planted.zarr", N_ROWS, 1000, 4, nnz_per_row=10, seed=7)
    expected = _matrix(nnz_per_row=10, seed=7)
    assert store.shape == expected.shape
    assert store.nnz == expected.nnz
    got = sp.vstack([sp.csr_matrix(b) for b in store.iter_blocks()], format="csr")
    _assert_same(expected, got.astype(expected.dtype))
