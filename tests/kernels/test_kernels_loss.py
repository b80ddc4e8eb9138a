"""Tests of bignmf.kernels.loss against scikit-learn's ``_beta_divergence`` and dense NumPy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition._nmf import _beta_divergence

from bignmf.kernels.loss import (
    block_divergence,
    dense_part,
    frobenius_loss,
    frobenius_sq,
    nonzero_part,
)
from bignmf.kernels.products import a_ht, gram, inner, sq_norm, wh_at_nonzeros

BETAS = [2.0, 1.0, 0.0, 1.5, 3.0, -0.5]


def make_problem(rng, m, n, k, density, tiny=False):
    dense = rng.random((m, n)) * (rng.random((m, n)) < density)
    if tiny:  # entries at or below EPSILON, left out of the sums as scikit-learn does
        dense[0, :2] = [1e-9, 2e-8]
    A = sp.csr_matrix(dense)
    W = rng.random((m, k)) + 0.05
    H = rng.random((k, n)) + 0.05
    return A, W, H


def split_rows(m, n_blocks):
    edges = np.linspace(0, m, n_blocks + 1).round().astype(int)
    return list(itertools.pairwise(int(e) for e in edges))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("n_blocks", [1, 3])
@pytest.mark.parametrize("tiny", [False, True])
def test_block_divergence_sums_to_sklearn(beta, n_blocks, tiny):
    rng = np.random.default_rng(int(10 * beta) + n_blocks + 7 * tiny + 100)
    A, W, H = make_problem(rng, 13, 9, 3, 0.4, tiny)
    if beta < 0:  # negative powers of 0 are inf in scikit-learn too: keep W·H positive
        W += 0.1
    Ht = np.ascontiguousarray(H.T)
    total = sum(
        block_divergence(A[r0:r1], W[r0:r1], Ht, beta, batch_size=4)
        for r0, r1 in split_rows(13, n_blocks)
    )
    ref = _beta_divergence(A, W, H, beta, square_root=False)
    assert total == pytest.approx(ref, rel=1e-11, abs=1e-11)


@pytest.mark.parametrize("beta", [1.0, 0.0])
def test_block_divergence_with_tiny_wh_is_floored_like_sklearn(beta):
    rng = np.random.default_rng(8)
    A, W, H = make_problem(rng, 6, 5, 2, 0.7)
    W[0] = 0.0  # W·H = 0 on a row with data: floored at EPSILON
    A = sp.csr_matrix(A.toarray() + (beta == 0) * 0.1)
    Ht = np.ascontiguousarray(H.T)
    ref = _beta_divergence(A, W, H, beta, square_root=False)
    assert block_divergence(A, W, Ht, beta) == pytest.approx(ref, rel=1e-11)


def test_parts_add_up_and_accept_precomputed_wh():
    rng = np.random.default_rng(9)
    A, W, H = make_problem(rng, 7, 6, 2, 0.5)
    Ht = np.ascontiguousarray(H.T)
    wh = wh_at_nonzeros(A, W, Ht)
    for beta in (1.0, 0.0, 1.5):
        whole = block_divergence(A, W, Ht, beta, wh=wh)
        parts = nonzero_part(A.data, wh, beta) + dense_part(W, Ht, beta)
        assert whole == pytest.approx(parts, rel=1e-14)
    assert dense_part(W, Ht, 0.0) == -42.0
    assert dense_part(W, Ht, 1.0, H_sum=H.sum(axis=1)) == pytest.approx(W.sum(0) @ H.sum(1))
    # general β: dense batches of a single row give the same sum
    assert dense_part(W, Ht, 1.5, batch_elements=1) == pytest.approx(dense_part(W, Ht, 1.5))
    with pytest.raises(ValueError, match="frobenius"):
        nonzero_part(A.data, wh, 2.0)
    with pytest.raises(ValueError, match="frobenius"):
        dense_part(W, Ht, 2.0)


def test_explicit_zeros_do_not_count():
    rng = np.random.default_rng(10)
    A, W, H = make_problem(rng, 6, 5, 2, 0.6)
    Az = A.copy()
    Az.data[::3] = 0.0  # explicitly stored zeros
    Ht = np.ascontiguousarray(H.T)
    Ae = Az.copy()
    Ae.eliminate_zeros()
    for beta in (2.0, 1.0, 0.0, 1.5):
        assert block_divergence(Az, W, Ht, beta) == pytest.approx(
            _beta_divergence(Ae, W, H, beta), rel=1e-11
        )


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 8),
    n=st.integers(1, 8),
    k=st.integers(1, 4),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_frobenius_from_reductions_matches_dense(m, n, k, density, seed):
    rng = np.random.default_rng(seed)
    A, W, H = make_problem(rng, m, n, k, density)
    Ht = np.ascontiguousarray(H.T)
    ref = np.sum((A.toarray() - W @ H) ** 2)
    cross = inner(W, a_ht(A, Ht))
    got = frobenius_sq(sq_norm(A), cross, gram(W), gram(Ht))
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-10)
    assert frobenius_loss(sq_norm(A), cross, gram(W), gram(Ht)) == pytest.approx(got / 2)
    assert block_divergence(A, W, Ht, 2.0) == pytest.approx(ref / 2, rel=1e-10, abs=1e-10)


def test_frobenius_is_clipped_at_zero_for_an_exact_fit():
    rng = np.random.default_rng(11)
    W = rng.random((30, 3))
    H = rng.random((3, 20))
    A = sp.csr_matrix(W @ H)
    Ht = np.ascontiguousarray(H.T)
    values = []
    for scale in (1.0, 1.0 + 1e-15, 1.0 - 1e-15):
        values.append(
            frobenius_sq(sq_norm(A), inner(W * scale, a_ht(A, Ht)), gram(W * scale), gram(Ht))
        )
    assert min(values) >= 0.0
    assert max(values) <= 1e-9 * sq_norm(A)
    assert frobenius_sq(1.0, 1.0, np.zeros((1, 1)), np.zeros((1, 1))) == 0.0


def test_float32_inputs_give_float64_sums():
    rng = np.random.default_rng(12)
    A, W, H = make_problem(rng, 9, 7, 3, 0.5)
    Ht = np.ascontiguousarray(H.T)
    for beta in (2.0, 1.0, 0.0):
        ref = block_divergence(A, W, Ht, beta)
        got = block_divergence(
            A.astype(np.float32), W.astype(np.float32), Ht.astype(np.float32), beta
        )
        assert isinstance(got, float)
        assert got == pytest.approx(ref, rel=1e-5)
