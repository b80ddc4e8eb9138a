"""The speckled held-out set: its entries, their independence of the blocking, its scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import bignmf
from bignmf.kernels.speckle import hash_key, held_out_sums, speckled_rows
from bignmf.store.matrix import as_block_matrix
from bignmf.store.speckled import SpeckledMask

KEY = hash_key(7, 0x5BECC1ED)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.9])
def test_a_fraction_of_every_entry_is_held_out_the_same_however_the_rows_are_cut(fraction):
    indptr, indices = speckled_rows(0, 500, 400, fraction, KEY)
    assert abs(indices.size / (500 * 400) - fraction) < 4 * np.sqrt(fraction / (500 * 400))
    for r in range(500):
        row = indices[indptr[r] : indptr[r + 1]]
        assert np.all(np.diff(row) > 0)
        assert row.size == 0 or 0 <= row.min() <= row.max() < 400
    pieces = [speckled_rows(a, b, 400, fraction, KEY)[1] for a, b in [(0, 7), (7, 333), (333, 500)]]
    assert np.array_equal(np.concatenate(pieces), indices)
    columns = np.bincount(indices, minlength=400)  # no column favoured
    assert columns.std() < 3 * np.sqrt(500 * fraction * (1 - fraction)) + 1


def test_another_seed_holds_out_other_entries():
    _, a = speckled_rows(0, 200, 300, 0.1, KEY)
    _, b = speckled_rows(0, 200, 300, 0.1, hash_key(8, 0x5BECC1ED))
    assert not np.array_equal(a, b)


def test_held_out_sums_equal_a_dense_reference():
    rng = np.random.default_rng(0)
    A = sp.random(60, 50, density=0.3, random_state=1, format="csr", dtype=np.float64)
    W, H = rng.random((60, 3)), rng.random((3, 50))
    indptr, indices = speckled_rows(0, 60, 50, 0.25, KEY)
    got = held_out_sums(A, indptr, indices, W, np.ascontiguousarray(H.T))
    held = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=A.shape).toarray() > 0
    error = (A.toarray() - W @ H)[held]
    assert int(got["count"]) == held.sum()
    np.testing.assert_allclose(float(got["sse"]), np.sum(error**2), rtol=1e-12)
    np.testing.assert_allclose(float(got["sae"]), np.sum(np.abs(error)), rtol=1e-12)
    np.testing.assert_allclose(float(got["sst"]), np.sum(A.toarray()[held] ** 2), rtol=1e-12)


def test_a_speckled_mask_is_the_explicit_mask_of_its_entries_bit_for_bit(tmp_path):
    A = sp.random(300, 80, density=0.2, random_state=0, format="csr", dtype=np.float32)
    blocks = as_block_matrix(A, block_nnz=1000)
    mask = SpeckledMask(A.shape, blocks.row_offsets, 0.1, 3)
    explicit = sp.vstack([mask.read_block(i) for i in range(mask.n_blocks)]).tocsr()
    assert mask.nnz == explicit.nnz > 0
    options = {"max_iter": 12, "tol": 0, "random_state": 0, "block_nnz": 1000}
    run = tmp_path / "run"
    got = bignmf.nmf(A, 4, mask=mask, scheduler="threads", checkpoint_dir=run, **options)
    want = bignmf.nmf(A, 4, mask=explicit, scheduler="sync", **options)
    assert got.H.tobytes() == want.H.tobytes()
    # the run records the mask by its seed: resumed without being given it
    resumed = bignmf.resume(run, A=A, max_iter=14, scheduler="sync")
    longer = bignmf.nmf(A, 4, mask=explicit, scheduler="sync", **{**options, "max_iter": 14})
    assert resumed.H.tobytes() == longer.H.tobytes()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, float("nan")])
def test_a_held_out_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(bignmf.ParameterError, match="fraction"):
        SpeckledMask((10, 10), [0, 10], fraction, 0)
