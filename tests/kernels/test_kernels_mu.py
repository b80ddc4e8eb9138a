"""Tests of the multiplicative-update kernels against dense NumPy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bignmf.kernels.mu import (
    accumulate_h_denominator_dense,
    beta_ratio,
    mu_gamma,
    mu_step,
    mu_update_h,
    mu_update_w,
    ratio_at_nonzeros,
    w_denominator,
)

EPS = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
BETAS = [2.0, 1.0, 0.0, 1.5, 3.0, 0.5]


def dense_ratio(A, WH, beta):
    """A∘(WH)^(β−2) on A's nonzeros (zero elsewhere), WH floored at EPS when β < 2."""
    base = np.maximum(WH, EPS) if beta < 2 else WH
    with np.errstate(divide="ignore"):
        return np.where(A != 0, A * base ** (beta - 2), 0.0)


def dense_mu_w(A, W, H, beta, l1, l2):
    WH = W @ H
    if beta == 2:
        num, den = A @ H.T, W @ (H @ H.T)
    else:
        num = dense_ratio(A, WH, beta) @ H.T
        if beta == 1:
            den = np.broadcast_to(H.sum(axis=1), W.shape).copy()
        else:
            base = np.maximum(WH, EPS) if beta < 1 else WH
            den = base ** (beta - 1) @ H.T
    if l1 > 0:
        den = den + l1
    if l2 > 0:
        den = den + l2 * W
    den[den == 0] = EPS
    W_new = W * (num / den) ** mu_gamma(beta)
    if beta < 1:
        W_new[W_new < EPS64] = 0.0
    return W_new


def case(seed, m, n, k, density, dtype=np.float64):
    rng = np.random.default_rng(seed)
    A = rng.random((m, n)) * (rng.random((m, n)) < density)
    W = rng.random((m, k)) + 0.01
    H = rng.random((k, n)) + 0.01
    return A.astype(dtype), W.astype(dtype), H.astype(dtype)


def test_gamma():
    assert mu_gamma(0.0) == 0.5
    assert mu_gamma(-1.0) == pytest.approx(1 / 3)
    assert mu_gamma(1.0) == mu_gamma(1.5) == mu_gamma(2.0) == 1.0
    assert mu_gamma(3.0) == 0.5


@settings(max_examples=40, deadline=None)
@given(
    beta=st.sampled_from(BETAS),
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    k=st.integers(1, 4),
    density=st.sampled_from([0.3, 1.0]),
    penalties=st.sampled_from([(0.0, 0.0), (0.2, 0.0), (0.0, 0.3), (0.1, 0.4)]),
    batch=st.sampled_from([1, 3, 1 << 21]),
    seed=st.integers(0, 2**32 - 1),
)
def test_mu_update_w_matches_dense_formula(beta, m, n, k, density, penalties, batch, seed):
    A, W, H = case(seed, m, n, k, density)
    l1, l2 = penalties
    Ht = np.ascontiguousarray(H.T)
    Acsr = sp.csr_matrix(A)
    W_before = W.copy()
    got = mu_update_w(
        Acsr,
        W,
        Ht,
        beta=beta,
        HHt=H @ H.T,
        l1=l1,
        l2=l2,
        batch_size=batch,
        batch_elements=batch,
    )
    np.testing.assert_array_equal(W, W_before)
    np.testing.assert_allclose(got, dense_mu_w(A, W, H, beta, l1, l2), rtol=1e-11, atol=1e-14)
    assert np.all(got >= 0)


@pytest.mark.parametrize("beta", BETAS)
def test_mu_update_w_float32_close_to_float64(beta):
    A, W, H = case(1, 9, 8, 3, 0.5)
    Ht = np.ascontiguousarray(H.T)
    ref = mu_update_w(sp.csr_matrix(A), W, Ht, beta=beta, HHt=H @ H.T, l1=0.1)
    got = mu_update_w(
        sp.csr_matrix(A.astype(np.float32)),
        W.astype(np.float32),
        Ht.astype(np.float32),
        beta=beta,
        HHt=H @ H.T,
        l1=0.1,
    )
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.0, 1.5, 3.0])
def test_ratio_and_denominators_match_dense(beta):
    A, W, H = case(2, 6, 5, 3, 0.5)
    Ht = np.ascontiguousarray(H.T)
    R = ratio_at_nonzeros(sp.csr_matrix(A), W, Ht, beta, batch_size=2)
    np.testing.assert_allclose(R.toarray(), dense_ratio(A, W @ H, beta), rtol=1e-13)
    if beta != 1:
        base = np.maximum(W @ H, EPS) if beta < 1 else W @ H
        P = base ** (beta - 1)
        den = w_denominator(W, Ht, beta, batch_elements=5)
        np.testing.assert_allclose(den, P @ H.T, rtol=1e-13)
        out = np.ones((5, 3))
        accumulate_h_denominator_dense(W, Ht, beta, out, batch_elements=5)
        np.testing.assert_allclose(out, 1.0 + P.T @ W, rtol=1e-13)
    else:
        den = w_denominator(W, Ht, beta)
        np.testing.assert_allclose(den, H.sum(axis=1)[np.newaxis, :], rtol=1e-13)
    with pytest.raises(ValueError, match="HHt"):
        w_denominator(W, Ht, 2.0)


def test_beta_ratio_floors_small_products():
    a = np.array([1.0, 2.0, 3.0])
    wh = np.array([0.0, 1e-12, 2.0])
    np.testing.assert_allclose(beta_ratio(a, wh.copy(), 1.0), [1 / EPS, 2 / EPS, 1.5])
    np.testing.assert_allclose(beta_ratio(a, wh.copy(), 0.0), [1 / EPS**2, 2 / EPS**2, 0.75])
    # β > 2: no floor (0 ** positive power is 0)
    np.testing.assert_allclose(beta_ratio(a, wh.copy(), 3.0), [0.0, 2e-12, 6.0])


def test_mu_step_follows_sklearn_order():
    X = np.array([[1.0, 2.0], [0.0, 3.0]])
    num = np.array([[2.0, 1.0], [1.0, 0.0]])
    den = np.array([[0.0, 1.0], [1.0, 2.0]])
    ref = X * (num / np.where(den + 0.5 + 0.25 * X == 0, EPS, den + 0.5 + 0.25 * X)) ** 0.5
    got = mu_step(X.copy(), num.copy(), den.copy(), l1=0.5, l2=0.25, gamma=0.5)
    np.testing.assert_allclose(got, ref, rtol=1e-15)
    # zero denominators become EPSILON; numerator kept on request
    num2 = num.copy()
    got = mu_step(X.copy(), num2, den.copy(), keep_numerator=True)
    np.testing.assert_array_equal(num2, num)
    np.testing.assert_allclose(got[0, 0], 1.0 * 2.0 / EPS)
    # negative penalties are ignored, as scikit-learn only applies them when > 0
    np.testing.assert_array_equal(
        mu_step(X.copy(), num.copy(), den + 1.0, l1=-1.0, l2=-1.0),
        mu_step(X.copy(), num.copy(), den + 1.0),
    )


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
def test_mu_update_h_zeroes_tiny_entries_for_beta_at_most_one(beta):
    Ht = np.array([[1.0, 1e-17], [2.0, 3.0]])
    num = np.ones((2, 2))
    den = np.ones((2, 2))
    out = mu_update_h(Ht, num, den, beta=beta)
    assert out is not Ht
    np.testing.assert_array_equal(Ht, [[1.0, 1e-17], [2.0, 3.0]])
    if beta <= 1:
        assert out[0, 1] == 0.0
    else:
        assert out[0, 1] == 1e-17
