"""Tests of the planted ratings generator (bignmf.datasets.ratings)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import bignmf
from bignmf.datasets.ratings import (
    RATING_BLOCK_ROWS,
    RatingsSpec,
    _build_model,
    _draw_activity,
    _draw_items,
    _draw_w,
    _splitmix64,
    held_out_ratings,
    is_held_out,
    make_ratings,
    ratings_factors,
    ratings_source,
    write_held_out_mtx,
)
from bignmf.errors import ParameterError, StoreExistsError
from bignmf.io.mtx import from_mtx

# Three generation blocks, the last one partial.
N_USERS = 2 * RATING_BLOCK_ROWS + 500
N_ITEMS = 400
SPEC = RatingsSpec(N_USERS, N_ITEMS, 4, ratings_per_user=12, seed=5)


def _train(spec: RatingsSpec) -> sp.csr_matrix:
    slabs = list(ratings_source(spec).blocks())
    assert sum(slab.shape[0] for slab in slabs) == spec.n_users
    return sp.vstack(slabs, format="csr")


def _assert_same(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.data.tobytes() == b.data.tobytes()


def _keys(rows, cols) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) * N_ITEMS + np.asarray(cols, dtype=np.int64)


def _observed(train: sp.csr_matrix, test) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values of every observed entry, train and test together, sorted by key."""
    coo = train.tocoo()
    keys = np.concatenate((_keys(coo.row, coo.col), _keys(test.rows, test.cols)))
    values = np.concatenate((coo.data, test.values))
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


@pytest.fixture(scope="module")
def train() -> sp.csr_matrix:
    return _train(SPEC)


@pytest.fixture(scope="module")
def held_out():
    return held_out_ratings(SPEC)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_same_bits(train, held_out):
    _assert_same(train, _train(RatingsSpec(N_USERS, N_ITEMS, 4, ratings_per_user=12, seed=5)))
    again = held_out_ratings(SPEC)
    for got, expected in zip(again, held_out, strict=True):
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()


def test_blocks_restarts_the_stream(train):
    source = ratings_source(SPEC)
    first = sp.vstack(list(source.blocks()), format="csr")
    _assert_same(first, sp.vstack(list(source.blocks()), format="csr"))
    _assert_same(train, first)


def test_different_seed_gives_different_data(train):
    other = _train(replace(SPEC, seed=6))
    same_pattern = train.multiply(other).nnz / train.nnz
    assert same_pattern < 0.5


@pytest.mark.parametrize(
    "options", [{"block_rows": 777}, {"block_rows": RATING_BLOCK_ROWS + 1}, {"block_nnz": 5000}]
)
def test_written_store_does_not_depend_on_blocks(tmp_path, train, options):
    store = bignmf.write_matrix(ratings_source(SPEC), tmp_path / "a.zarr", **options)
    assert store.n_blocks > 1
    _assert_same(train, store.to_scipy())


def test_convert_accepts_the_source(tmp_path, train):
    store = bignmf.convert(ratings_source(SPEC), tmp_path / "a.zarr")
    _assert_same(train, store.to_scipy())


def test_prefix_does_not_depend_on_n_users(train, held_out):
    """Blocks are drawn alone, so fewer whole blocks give a prefix of the rows, split alike."""
    shorter = replace(SPEC, n_users=RATING_BLOCK_ROWS)
    _assert_same(train[: shorter.n_users], _train(shorter))
    rows = held_out_ratings(shorter).rows
    np.testing.assert_array_equal(rows, held_out.rows[held_out.rows < shorter.n_users])


def test_source_and_factors_pickle(train):
    source = pickle.loads(pickle.dumps(ratings_source(SPEC)))
    _assert_same(train, sp.vstack(list(source.blocks()), format="csr"))
    factors = ratings_factors(SPEC)
    copy = pickle.loads(pickle.dumps(factors))
    np.testing.assert_array_equal(copy.w_rows(4000, 4200), factors.w_rows(4000, 4200))


def test_w_rows_and_w_blocks_agree():
    factors = ratings_factors(SPEC)
    w = np.concatenate(list(factors.w_blocks()))
    assert w.shape == (N_USERS, 4)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    for start, stop in [(0, 0), (10, 20), (RATING_BLOCK_ROWS - 3, 2 * RATING_BLOCK_ROWS + 7)]:
        np.testing.assert_array_equal(factors.w_rows(start, stop), w[start:stop])
    with pytest.raises(IndexError):
        factors.w_rows(0, N_USERS + 1)


# ---------------------------------------------------------------------------------------------
# The observed pattern and the values
# ---------------------------------------------------------------------------------------------


def test_shape_dtype_and_canonical_positive(train, held_out):
    assert train.shape == (N_USERS, N_ITEMS)
    assert train.dtype == np.float32
    assert train.has_canonical_format  # sorted, no duplicates within the train matrix
    assert train.data.min() > 0
    assert held_out.values.dtype == np.float32
    assert held_out.values.min() > 0
    keys, _ = _observed(train, held_out)
    assert np.unique(keys).size == keys.size  # nor between train and test


def test_ratings_per_user(train, held_out):
    per_user = train.getnnz(axis=1) + np.bincount(held_out.rows, minlength=N_USERS)
    assert per_user.min() >= 1
    assert per_user.max() <= N_ITEMS
    assert per_user.mean() == pytest.approx(12, rel=0.05)
    assert per_user.std() > 5  # activity varies from user to user


@pytest.mark.parametrize("exponent", [0.0, 1.0, 3.0, 50.0])
def test_each_user_gets_exactly_its_count(exponent):
    """Heavy users of a small catalogue go through the Gumbel-top-k completion too."""
    spec = RatingsSpec(2000, 30, 3, ratings_per_user=25, popularity_exponent=exponent)
    model = _build_model(spec)
    rng = model.block_rng(0)
    _draw_w(rng, 2000, spec)
    counts = _draw_activity(rng, 2000, spec)
    keys = _draw_items(rng, counts, model)
    assert (counts == 30).any()
    assert np.unique(keys).size == keys.size
    np.testing.assert_array_equal(np.bincount(keys // 30, minlength=2000), counts)


def test_popularity_is_power_law(train, held_out):
    keys, _ = _observed(train, held_out)
    per_item = np.sort(np.bincount(keys % N_ITEMS, minlength=N_ITEMS))[::-1]
    decile = N_ITEMS // 10
    assert per_item[:decile].sum() > 10 * per_item[-decile:].sum()
    uniform = _train(replace(SPEC, n_users=RATING_BLOCK_ROWS, popularity_exponent=0.0))
    per_item = np.sort(uniform.getnnz(axis=0))[::-1]
    assert per_item[:decile].sum() < 1.5 * per_item[-decile:].sum()


def _planted(spec: RatingsSpec, rows, cols) -> np.ndarray:
    factors = ratings_factors(spec)
    w = factors.w_rows(0, spec.n_users)
    return np.einsum("ij,ji->i", w[rows], factors.H[:, cols])


def test_values_are_planted_ratings_plus_noise(train):
    coo = train.tocoo()
    planted = _planted(SPEC, coo.row, coo.col)
    assert planted.min() >= 1
    assert planted.max() <= 5
    rmse = np.sqrt(np.mean((coo.data - planted) ** 2))
    assert rmse == pytest.approx(SPEC.noise, rel=0.03)
    assert 2.5 < coo.data.mean() < 3.5


def test_noiseless_values_are_w_times_h():
    spec = replace(SPEC, n_users=600, noise=0.0, dtype=np.float64)
    coo = _train(spec).tocoo()
    np.testing.assert_allclose(coo.data, _planted(spec, coo.row, coo.col), rtol=1e-12)


def test_integer_ratings_on_the_scale():
    spec = replace(SPEC, n_users=600, integer=True, noise=1.0, rating_scale=(1, 5))
    values = _train(spec).data
    np.testing.assert_array_equal(values, np.rint(values))
    assert set(np.unique(values)) == {1, 2, 3, 4, 5}


def test_values_never_below_the_floor():
    spec = replace(SPEC, n_users=600, noise=3.0)
    values = _train(spec).data
    assert values.min() == pytest.approx(spec.floor)  # the noise pushed some below zero
    assert spec.floor > 0


# ---------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------


def test_splitmix64_matches_the_reference():
    # The first outputs of Vigna's splitmix64.c seeded with 0: states golden, 2 * golden.
    golden = 0x9E3779B97F4A7C15
    got = _splitmix64(np.array([0, golden], dtype=np.uint64))
    assert [int(v) for v in got] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_split_is_exact_and_disjoint(train, held_out):
    full = _train(replace(SPEC, test_fraction=0.0))
    assert full.nnz == train.nnz + held_out.rows.size
    keys, values = _observed(train, held_out)
    coo = full.tocoo()
    np.testing.assert_array_equal(keys, _keys(coo.row, coo.col))
    assert values.tobytes() == coo.data.tobytes()


def test_split_decisions_come_from_the_hash(train, held_out):
    coo = train.tocoo()
    split = {"seed": SPEC.seed, "test_fraction": SPEC.test_fraction}
    assert not is_held_out(coo.row, coo.col, N_ITEMS, **split).any()
    assert is_held_out(held_out.rows, held_out.cols, N_ITEMS, **split).all()


def test_test_fraction_is_near_the_requested_one(train, held_out):
    n_test = held_out.rows.size
    assert n_test / (n_test + train.nnz) == pytest.approx(SPEC.test_fraction, abs=0.005)


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5])
def test_is_held_out_fraction_and_nesting(fraction):
    rows, cols = np.divmod(np.arange(10**6), 1000)
    held = is_held_out(rows, cols, 1000, seed=3, test_fraction=fraction)
    assert held.mean() == pytest.approx(fraction, abs=5 * np.sqrt(fraction / 10**6))
    larger = is_held_out(rows, cols, 1000, seed=3, test_fraction=fraction + 0.1)
    assert not (held & ~larger).any()
    other_seed = is_held_out(rows, cols, 1000, seed=4, test_fraction=fraction)
    assert (held != other_seed).mean() == pytest.approx(2 * fraction * (1 - fraction), abs=0.005)


def test_is_held_out_does_not_depend_on_the_cut():
    rows, cols = np.divmod(np.arange(50_000), 700)
    whole = is_held_out(rows, cols, 700, seed=9, test_fraction=0.2)
    pieces = [
        is_held_out(rows[a:b], cols[a:b], 700, seed=9, test_fraction=0.2)
        for a, b in [(0, 1), (1, 12_345), (12_345, 50_000)]
    ]
    np.testing.assert_array_equal(whole, np.concatenate(pieces))


# ---------------------------------------------------------------------------------------------
# The held-out Matrix Market file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mtx_reads_back_to_the_triples(tmp_path, dtype):
    spec = replace(SPEC, dtype=dtype)
    path = tmp_path / "test.mtx"
    n = write_held_out_mtx(spec, path)
    rows, cols, values = held_out_ratings(spec)
    assert n == rows.size > 0
    assert path.read_text().startswith("%%MatrixMarket matrix coordinate real general\n")
    read = scipy.io.mmread(path).tocoo()
    assert read.shape == (N_USERS, N_ITEMS)
    np.testing.assert_array_equal(read.row, rows)
    np.testing.assert_array_equal(read.col, cols)
    assert read.data.astype(dtype).tobytes() == values.tobytes()
    again = sp.vstack(list(from_mtx(str(path)).blocks()), format="csr").tocoo()
    np.testing.assert_array_equal(_keys(again.row, again.col), _keys(rows, cols))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_mtx_refuses_to_overwrite(tmp_path):
    path = tmp_path / "test.mtx"
    path.write_text("old")
    with pytest.raises(StoreExistsError):
        write_held_out_mtx(SPEC, path)
    assert path.read_text() == "old"
    write_held_out_mtx(replace(SPEC, n_users=100), path, overwrite=True)
    assert path.read_text().startswith("%%MatrixMarket")


# ---------------------------------------------------------------------------------------------
# make_ratings
# ---------------------------------------------------------------------------------------------


def test_make_ratings_writes_both_parts(tmp_path, train, held_out):
    data = make_ratings(
        tmp_path / "r.zarr", N_USERS, N_ITEMS, 4, ratings_per_user=12, seed=5, block_nnz=20_000
    )
    assert data.spec == SPEC
    assert data.train_path == tmp_path / "r.zarr"
    assert data.test_path == tmp_path / "r.zarr.test.mtx"
    assert (data.n_train, data.n_test) == (train.nnz, held_out.rows.size)
    _assert_same(train, bignmf.open_matrix(data.train_path).to_scipy())
    assert scipy.io.mmread(data.test_path).nnz == data.n_test
    np.testing.assert_array_equal(data.factors.H, ratings_factors(SPEC).H)
    with pytest.raises(AttributeError):
        data.n_test = 0  # frozen


def test_make_ratings_checks_both_outputs_first(tmp_path):
    test_path = tmp_path / "held.mtx"
    test_path.write_text("old")
    with pytest.raises(StoreExistsError):
        make_ratings(tmp_path / "r.zarr", 100, 50, 2, ratings_per_user=5, test_path=test_path)
    assert not (tmp_path / "r.zarr").exists()
    data = make_ratings(
        tmp_path / "r.zarr", 100, 50, 2, ratings_per_user=5, test_path=test_path, overwrite=True
    )
    assert data.test_path == test_path
    assert data.n_train + data.n_test == _train(replace(data.spec, test_fraction=0.0)).nnz


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_users": 0}, "n_users must be an integer >= 1, got 0"),
        ({"n_items": 2.5}, "n_items must be an integer >= 1, got 2.5"),
        ({"n_components": 0}, "n_components must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"n_users": 2**40, "n_items": 2**30}, "n_users * n_items must be < 2**63"),
        ({"ratings_per_user": 11}, "ratings_per_user must be in [1, n_items=10], got 11"),
        ({"ratings_per_user": 0.5}, "ratings_per_user must be in [1, n_items=10], got 0.5"),
        ({"test_fraction": 1.0}, "test_fraction must be in [0, 1), got 1.0"),
        ({"test_fraction": -0.1}, "test_fraction must be in [0, 1), got -0.1"),
        ({"noise": -0.5}, "noise must be a finite number >= 0, got -0.5"),
        ({"noise": float("nan")}, "noise must be a finite number >= 0, got nan"),
        ({"activity_sigma": -1}, "activity_sigma must be a finite number >= 0, got -1"),
        ({"popularity_exponent": "x"}, "popularity_exponent must be a finite number >= 0"),
        ({"concentration": 0}, "concentration must be a finite number > 0, got 0"),
        ({"rating_scale": (0, 5)}, "rating_scale must be (low, high) with 0 < low < high"),
        ({"rating_scale": (5, 1)}, "rating_scale must be (low, high) with 0 < low < high"),
        ({"rating_scale": 5}, "rating_scale must be (low, high) with 0 < low < high, got 5"),
        ({"rating_scale": (0.5, 5), "integer": True}, "rating_scale must hold integers"),
        ({"integer": "yes"}, "integer must be a bool, got 'yes'"),
        ({"dtype": np.int32}, "dtype must be float32 or float64"),
    ],
)
def test_bad_parameters(tmp_path, changes, message):
    args = {"n_users": 20, "n_items": 10, "n_components": 2, "ratings_per_user": 5, **changes}
    with pytest.raises(ParameterError) as info:
        RatingsSpec(**args)
    assert message in str(info.value)
    with pytest.raises(ParameterError):  # make_ratings checks before writing anything
        make_ratings(tmp_path / "r.zarr", **args)
    assert not list(tmp_path.iterdir())


def test_unknown_parameter_is_a_type_error():
    with pytest.raises(TypeError):
        RatingsSpec(10, 5, 2, ratings_per_users=3)
