"""Tests of the planted implicit-feedback generator (bignmf.datasets.implicit).

Memory is argued, not measured: :func:`make_plays` draws the users in blocks of
``RATING_BLOCK_ROWS`` rows, each from its own random stream (so a block needs nothing from the
ones before it), and hands each block to the store's writer, or to the held-out file's, before
drawing the next; the model it keeps is ``O(n_items)`` (item order, popularity and groups).
What is held at a time is therefore one block of plays and tastes plus the writer's row block,
whatever ``n_users``; the tests below check the blocks' independence that this rests on.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from bignmf.datasets import (
    RATING_BLOCK_ROWS,
    PlaysSpec,
    held_out_plays,
    is_held_out,
    make_plays,
    plays_factors,
    plays_source,
)
from bignmf.errors import ParameterError, StoreExistsError

N_USERS = RATING_BLOCK_ROWS + 300  # two generation blocks, the last one partial
N_ITEMS = 300
K = 4
ARGS = {"plays_per_user": 20, "seed": 3}


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    return make_plays(tmp_path_factory.mktemp("plays") / "p.zarr", N_USERS, N_ITEMS, K, **ARGS)


@pytest.fixture(scope="module")
def train(plays) -> sp.csr_matrix:
    return plays.store.to_scipy()


def _keys(rows, cols) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) * N_ITEMS + np.asarray(cols, dtype=np.int64)


def test_shape_and_counts(plays, train):
    assert plays.store.shape == train.shape == (N_USERS, N_ITEMS)
    assert plays.test_path == plays.train_path.with_name("p.zarr.test.mtx")
    assert plays.n_train == train.nnz
    assert train.data.dtype == np.float32
    assert train.data.min() >= 1
    np.testing.assert_array_equal(train.data, np.round(train.data))  # counts are integers
    assert train.data.max() > 100  # heavy-tailed
    held = np.bincount(held_out_plays(plays.spec).rows, minlength=N_USERS)
    per_user = train.getnnz(axis=1) + held
    assert per_user.min() >= 1
    assert per_user.mean() == pytest.approx(20, rel=0.1)


def test_held_out_file_holds_the_held_out_plays(plays, train):
    rows, cols, counts = held_out_plays(plays.spec)
    assert plays.n_test == rows.size > 0.15 * (rows.size + train.nnz)  # test_fraction 0.2
    read = scipy.io.mmread(plays.test_path).tocoo()
    assert read.shape == (N_USERS, N_ITEMS)
    np.testing.assert_array_equal(_keys(read.row, read.col), _keys(rows, cols))
    np.testing.assert_array_equal(read.data, counts)
    assert is_held_out(rows, cols, N_ITEMS, seed=3, test_fraction=0.2).all()
    coo = train.tocoo()
    assert not is_held_out(coo.row, coo.col, N_ITEMS, seed=3, test_fraction=0.2).any()
    assert np.intersect1d(_keys(rows, cols), _keys(coo.row, coo.col)).size == 0


def test_plays_follow_taste(train):
    """Users play mostly the items of the groups they like: the taste is there to be found."""
    factors = plays_factors(PlaysSpec(N_USERS, N_ITEMS, K, **ARGS))
    coo = train.tocoo()
    w = factors.w_rows(0, N_USERS)
    liked = w[coo.row, factors.item_groups[coo.col]]
    assert liked.mean() > 2 * w.mean()
    assert np.ptp(np.bincount(factors.item_groups)) <= 1  # groups of equal size


def test_same_seed_gives_same_bits(plays, train, tmp_path):
    again = make_plays(tmp_path / "q.zarr", N_USERS, N_ITEMS, K, **ARGS).store.to_scipy()
    for part in ("indptr", "indices", "data"):
        assert getattr(again, part).tobytes() == getattr(train, part).tobytes()
    assert (tmp_path / "q.zarr.test.mtx").read_bytes() == plays.test_path.read_bytes()
    other = sp.vstack(list(plays_source(replace(plays.spec, seed=4)).blocks()), format="csr")
    assert train.multiply(other).nnz < 0.5 * train.nnz


def test_blocks_are_drawn_alone(train):
    """Fewer users give a prefix of the rows: a block needs none of the others."""
    shorter = PlaysSpec(RATING_BLOCK_ROWS, N_ITEMS, K, **ARGS)
    prefix = sp.vstack(list(plays_source(shorter).blocks()), format="csr")
    assert (prefix != train[:RATING_BLOCK_ROWS]).nnz == 0


def test_small_catalogue_gives_each_user_distinct_items():
    """Heavy users of few items go through the Gumbel-top-k completion, still by taste."""
    spec = PlaysSpec(500, 12, 3, plays_per_user=11, test_fraction=0.0, crossover=0.0)
    train = sp.vstack(list(plays_source(spec).blocks()), format="csr")
    assert train.has_canonical_format  # distinct, sorted items per user
    assert train.getnnz(axis=1).max() == 12


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_components": 0}, "n_components"),
        ({"n_components": N_ITEMS + 1}, "n_components must be <= n_items"),
        ({"plays_per_user": N_ITEMS + 1}, "plays_per_user"),
        ({"tail": 0}, "tail"),
        ({"tail": np.inf}, "tail"),
        ({"crossover": 1.5}, "crossover"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"dtype": np.int32}, "dtype"),
        ({"concentration": "much"}, "concentration"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, change, match):
    args = {"n_users": 10, "n_items": N_ITEMS, "n_components": K, **change}
    with pytest.raises(ParameterError, match=match):
        make_plays(tmp_path / "p.zarr", **args)
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_existing_outputs_are_kept(tmp_path):
    make_plays(tmp_path / "p.zarr", 10, N_ITEMS, K)
    (tmp_path / "p.zarr").rename(tmp_path / "moved.zarr")  # only the held-out file is left
    with pytest.raises(StoreExistsError):
        make_plays(tmp_path / "p.zarr", 10, N_ITEMS, K)
    assert not (tmp_path / "p.zarr").exists()  # refused before writing the store
    again = make_plays(tmp_path / "p.zarr", 20, N_ITEMS, K, overwrite=True)
    assert again.store.shape == (20, N_ITEMS)
